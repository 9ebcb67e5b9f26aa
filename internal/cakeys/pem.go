package cakeys

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"go.step.sm/crypto/pemutil"

	"github.com/stepfort/stepfort/internal/fips"
)

// ReadPEM reads a CA from a certificate file and a key file. The
// certificate file holds one or more certificates (the CA's and, if the
// operator has them, its chain) as PEM or one DER certificate; the key file
// holds one private key as PEM (PKCS#8, PKCS#1 or SEC 1; encrypted PKCS#8
// or legacy "Proc-Type: 4,ENCRYPTED") or DER. keyPassword is nil when the
// key is not encrypted. Certificates in the key file are used too.
func ReadPEM(certPEM, keyPEM, keyPassword []byte) (*Bundle, error) {
	if len(certPEM) > MaxFileSize || len(keyPEM) > MaxFileSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrCorrupt, MaxFileSize)
	}
	certs, err := ParseCertificates(certPEM)
	if err != nil {
		return nil, err
	}
	key, extra, err := parseKey(keyPEM, keyPassword)
	if err != nil {
		return nil, err
	}
	return newBundle(key, append(certs, extra...))
}

// ParseCertificates reads every CERTIFICATE block of PEM data, or DER
// data holding one or more certificates.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	if !looksPEM(data) {
		certs, err := x509.ParseCertificates(data)
		if err != nil {
			return nil, fmt.Errorf("%w: not a PEM or DER certificate (%v)", ErrCorrupt, err)
		}
		if len(certs) == 0 {
			return nil, ErrNoCertificate
		}
		return certs, nil
	}
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: certificate %d: %v", ErrCorrupt, len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w (no CERTIFICATE block)", ErrNoCertificate)
	}
	return certs, nil
}

// parseKey returns the private key of data and any certificates that came
// with it in the same PEM file.
func parseKey(data, password []byte) (crypto.PrivateKey, []*x509.Certificate, error) {
	if !looksPEM(data) {
		key, err := parseDERKey(data)
		return key, nil, err
	}
	var key crypto.PrivateKey
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		switch {
		case block.Type == "CERTIFICATE":
			if c, err := x509.ParseCertificate(block.Bytes); err == nil {
				certs = append(certs, c)
			}
		case strings.HasSuffix(block.Type, "PRIVATE KEY"):
			if key != nil {
				return nil, nil, errors.New("the key file holds more than one private key")
			}
			k, err := parseKeyBlock(block, password)
			if err != nil {
				return nil, nil, err
			}
			key = k
		}
	}
	if key == nil {
		return nil, nil, fmt.Errorf("%w (no PRIVATE KEY block)", ErrNoKey)
	}
	return key, certs, nil
}

// decryptPEMBlock is pemutil's; under GODEBUG=fips140=only the Go
// module's panic on the legacy PEM encryption (MD5 key derivation, DES)
// becomes an error naming the algorithm.
func decryptPEMBlock(block *pem.Block, password []byte) (der []byte, err error) {
	defer fips.Refuse(&err, "decrypt the key")
	return pemutil.DecryptPEMBlock(block, password)
}

func parseKeyBlock(block *pem.Block, password []byte) (crypto.PrivateKey, error) {
	encrypted := block.Headers["Proc-Type"] == "4,ENCRYPTED" || block.Type == "ENCRYPTED PRIVATE KEY"
	if !encrypted {
		return parseKeyBytes(block.Type, block.Bytes)
	}
	if password == nil {
		return nil, ErrKeyPasswordNeeded
	}
	der, err := decryptPEMBlock(block, password)
	if err != nil {
		if fips.IsNotApproved(err) {
			return nil, fmt.Errorf("%w; convert the key to AES-256 PKCS#8 (openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256, with a password of at least 14 characters)", err)
		}
		if errors.Is(err, x509.IncorrectPasswordError) || strings.Contains(err.Error(), "padding") {
			return nil, ErrWrongKeyPassword
		}
		return nil, fmt.Errorf("decrypt key: %w", err)
	}
	typ := block.Type
	if typ == "ENCRYPTED PRIVATE KEY" {
		typ = "PRIVATE KEY"
	}
	key, err := parseKeyBytes(typ, der)
	if err != nil {
		// Some encryption schemes cannot detect a wrong password: the
		// result is noise that does not parse.
		return nil, fmt.Errorf("%w (the decrypted key does not parse)", ErrWrongKeyPassword)
	}
	return key, nil
}

func parseKeyBytes(typ string, der []byte) (crypto.PrivateKey, error) {
	var key crypto.PrivateKey
	var err error
	switch typ {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(der)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(der)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(der)
	default:
		return nil, fmt.Errorf("%w: PEM block %q", ErrUnsupportedKey, typ)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, typ, err)
	}
	return key, nil
}

// parseDERKey tries the DER private key encodings in turn.
func parseDERKey(der []byte) (crypto.PrivateKey, error) {
	if k, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return k, nil
	}
	if k, err := x509.ParseECPrivateKey(der); err == nil {
		return k, nil
	}
	return nil, fmt.Errorf("%w: not a PEM or DER private key (encrypted DER keys are not supported: convert to PEM)", ErrCorrupt)
}

func looksPEM(data []byte) bool {
	return bytes.Contains(data, []byte("-----BEGIN "))
}
