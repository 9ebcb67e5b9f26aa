package setup

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"go.step.sm/crypto/jose"
)

// The JWK provisioner's encrypted key is the JWE the step CLI decrypts:
// PBES2-HS256+A128KW key wrapping, A256GCM content encryption, compact
// serialisation (RFC 7516, 7518). go-jose draws the GCM IV itself and
// seals with cipher.NewGCM, which Go refuses under GODEBUG=fips140=only
// ("use of GCM with arbitrary IVs"); this writes the same format with the
// module's cipher.NewGCMWithRandomNonce (the module draws the IV) and
// crypto/pbkdf2, so init also runs under only (docs/fips.md).
const (
	jweAlg = "PBES2-HS256+A128KW"
	jweEnc = "A256GCM"
	// The step CLI's own parameters (go.step.sm/crypto/jose).
	jweSaltSize   = jose.PBKDF2SaltSize
	jweIterations = jose.PBKDF2Iterations
	// NewGCMWithRandomNonce's 96-bit IV and 128-bit tag.
	gcmIVSize, gcmTagSize = 12, 16
)

// jweHeader is the protected header; its base64url form is the GCM AAD.
type jweHeader struct {
	Alg string `json:"alg"`
	Cty string `json:"cty"`
	Enc string `json:"enc"`
	P2C int    `json:"p2c"`
	P2S string `json:"p2s"`
}

// encryptJWK encrypts jwk under password as a compact JWE.
func encryptJWK(jwk *jose.JSONWebKey, password []byte) (string, error) {
	plain, err := json.Marshal(jwk)
	if err != nil {
		return "", fmt.Errorf("marshal JWK: %w", err)
	}
	return encryptJWE(plain, password, "jwk+json")
}

// encryptJWE encrypts plain under password (PBES2-HS256+A128KW, A256GCM).
func encryptJWE(plain, password []byte, cty string) (string, error) {
	salt := make([]byte, jweSaltSize)
	cek := make([]byte, 32)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	if _, err := rand.Read(cek); err != nil {
		return "", err
	}
	h := jweHeader{Alg: jweAlg, Cty: cty, Enc: jweEnc, P2C: jweIterations, P2S: b64(salt)}
	hb, err := json.Marshal(h)
	if err != nil {
		return "", err
	}
	// RFC 7518 §4.8.1.1: the PBKDF2 salt is the algorithm name, a zero
	// byte and p2s.
	kek, err := pbkdf2.Key(sha256.New, string(password), append(append([]byte(jweAlg), 0), salt...), jweIterations, 16)
	if err != nil {
		return "", fmt.Errorf("derive the key-encryption key: %w", err)
	}
	wrapped, err := aesKeyWrap(kek, cek)
	if err != nil {
		return "", err
	}
	block, err := aes.NewCipher(cek)
	if err != nil {
		return "", err
	}
	gcm, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return "", err
	}
	protected := b64(hb)
	// Seal returns IV (12 bytes) || ciphertext || tag (16 bytes): the
	// layout JWE's A256GCM wants, in three parts. (NonceSize is 0 here:
	// the caller gives no nonce.)
	sealed := gcm.Seal(nil, nil, plain, []byte(protected))
	if len(sealed) != gcmIVSize+len(plain)+gcmTagSize {
		return "", fmt.Errorf("AES-GCM sealed %d bytes, want %d", len(sealed), gcmIVSize+len(plain)+gcmTagSize)
	}
	iv, ct, tag := sealed[:gcmIVSize], sealed[gcmIVSize:len(sealed)-gcmTagSize], sealed[len(sealed)-gcmTagSize:]
	return protected + "." + b64(wrapped) + "." + b64(iv) + "." + b64(ct) + "." + b64(tag), nil
}

// aesKeyWrap is the AES Key Wrap of RFC 3394 (NIST SP 800-38F KW) with
// the default IV.
func aesKeyWrap(kek, key []byte) ([]byte, error) {
	if len(key)%8 != 0 || len(key) < 16 {
		return nil, errors.New("key wrap: key length must be a multiple of 8, at least 16")
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	n := len(key) / 8
	a := []byte{0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6}
	r := make([]byte, len(key))
	copy(r, key)
	var buf [16]byte
	for j := 0; j < 6; j++ {
		for i := 0; i < n; i++ {
			copy(buf[:8], a)
			copy(buf[8:], r[i*8:i*8+8])
			block.Encrypt(buf[:], buf[:])
			t := uint64(n*j + i + 1)
			binary.BigEndian.PutUint64(a, binary.BigEndian.Uint64(buf[:8])^t)
			copy(r[i*8:], buf[8:])
		}
	}
	return append(a, r...), nil
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// newProvisionerKey makes the JWK provisioner's key as the step CLI's
// GenerateDefaultKeyPair does (EC P-256, ES256, kid = thumbprint) and
// returns its public JWK and the private JWK encrypted under password.
func newProvisionerKey(password []byte) (*jose.JSONWebKey, string, error) {
	if len(password) == 0 {
		return nil, "", errors.New("the provisioner password is empty")
	}
	jwk, err := jose.GenerateJWK(jose.EC, jose.P256, jose.ES256, "sig", "", 0)
	if err != nil {
		return nil, "", err
	}
	if jwk.KeyID, err = jose.Thumbprint(jwk); err != nil {
		return nil, "", err
	}
	encrypted, err := encryptJWK(jwk, password)
	if err != nil {
		return nil, "", err
	}
	public := jwk.Public()
	return &public, encrypted, nil
}
