package setup

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
)

// keyIterations is the PBKDF2 iteration count of the CA key files. Init
// encrypts them with its own random 256-bit password (secrets/password),
// which no iteration count makes harder to guess; 10,000 is NIST SP
// 800-63B's floor, and keeps init and every start fast (pemutil's 600,000
// cost seconds per key in race-enabled tests). A brought password is
// never used for these files.
const keyIterations = 10_000

// OIDs of RFC 8018 (PKCS #5 v2.1) and NIST.
var (
	oidPBES2          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 13}
	oidPBKDF2         = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 12}
	oidHMACWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 9}
	oidAES256CBC      = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}
)

type pbkdf2Params struct {
	Salt           []byte
	IterationCount int
	PRF            pkix.AlgorithmIdentifier
}

type pbes2Params struct {
	KeyDerivationFunc struct {
		Algorithm asn1.ObjectIdentifier
		Params    pbkdf2Params
	}
	EncryptionScheme struct {
		Algorithm asn1.ObjectIdentifier
		IV        []byte
	}
}

type encryptedPrivateKeyInfo struct {
	Algorithm struct {
		Algorithm asn1.ObjectIdentifier
		Params    pbes2Params
	}
	EncryptedData []byte
}

// encryptPKCS8 returns key as an ENCRYPTED PRIVATE KEY PEM block (RFC
// 5958): PBES2 with PBKDF2-HMAC-SHA-256 and AES-256-CBC, the form OpenSSL
// 3 writes by default and upstream (pemutil) and the step CLI read. Every
// algorithm is an approved one of the Go module, so this runs under
// GODEBUG=fips140=only; the legacy PEM encryption needs MD5.
func encryptPKCS8(key any, password []byte) (*pem.Block, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	salt, iv := make([]byte, 16), make([]byte, aes.BlockSize)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	if _, err := rand.Read(iv); err != nil {
		return nil, err
	}
	kek, err := pbkdf2.Key(sha256.New, string(password), salt, keyIterations, 32)
	if err != nil {
		return nil, fmt.Errorf("derive the key-encryption key: %w", err)
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	pad := aes.BlockSize - len(der)%aes.BlockSize // PKCS #7 padding, 1..16 bytes
	data := append(der, make([]byte, pad)...)
	for i := len(der); i < len(data); i++ {
		data[i] = byte(pad)
	}
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(data, data)

	var info encryptedPrivateKeyInfo
	info.Algorithm.Algorithm = oidPBES2
	p := &info.Algorithm.Params
	p.KeyDerivationFunc.Algorithm = oidPBKDF2
	p.KeyDerivationFunc.Params = pbkdf2Params{Salt: salt, IterationCount: keyIterations,
		PRF: pkix.AlgorithmIdentifier{Algorithm: oidHMACWithSHA256, Parameters: asn1.NullRawValue}}
	p.EncryptionScheme.Algorithm, p.EncryptionScheme.IV = oidAES256CBC, iv
	info.EncryptedData = data
	b, err := asn1.Marshal(info)
	if err != nil {
		return nil, err
	}
	return &pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: b}, nil
}
