package cakeys

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"software.sslmate.com/src/go-pkcs12"

	"github.com/stepfort/stepfort/internal/fips"
)

// MaxFileSize bounds what the readers accept; a CA's PFX or PEM files are
// a few kilobytes.
const MaxFileSize = 1 << 20

// ReadPFX reads a DER PKCS#12 file as Windows (certutil -backupKey, the
// MMC export wizard) and OpenSSL write it: legacy 3DES/RC2-40 and
// AES-256/PBES2 encryption, certificates in any order, Microsoft bag
// attributes (1.3.6.1.4.1.311.17.x). The file must hold exactly one
// private key; its certificate is found by public key.
func ReadPFX(data []byte, password string) (*Bundle, error) {
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("%w: %d bytes is too large for a PFX (limit %d)", ErrCorrupt, len(data), MaxFileSize)
	}
	if looksPEM(data) {
		return nil, fmt.Errorf("%w: this is a PEM file, not a DER PFX (PKCS#12); use the PEM certificate and key flags", ErrCorrupt)
	}
	key, first, rest, err := decodePFX(data, password)
	switch {
	case fips.IsNotApproved(err):
		return nil, refusePFX(err, data)
	case err != nil:
		return nil, pfxError(err)
	}
	return newBundle(key, append([]*x509.Certificate{first}, rest...))
}

// decodePFX is go-pkcs12's DecodeChain; under GODEBUG=fips140=only the Go
// module's panic on a non-approved algorithm (SHA-1, 3DES, a short HMAC
// key) becomes an error.
func decodePFX(data []byte, password string) (key any, first *x509.Certificate, rest []*x509.Certificate, err error) {
	defer fips.Refuse(&err, "read the PFX")
	return pkcs12.DecodeChain(data, password)
}

// pfxError turns go-pkcs12's errors into ours. It reports most problems as
// plain errors.New strings, so they are told apart by text.
func pfxError(err error) error {
	msg := err.Error()
	var notImpl pkcs12.NotImplementedError
	switch {
	case errors.Is(err, pkcs12.ErrIncorrectPassword):
		return ErrWrongPassword
	case errors.Is(err, pkcs12.ErrDecryption):
		// The MAC verified, yet a bag does not decrypt: a file whose
		// parts use different passwords, or a damaged one.
		return fmt.Errorf("%w: a part of the PFX does not decrypt with the password (%v)", ErrCorrupt, err)
	case strings.Contains(msg, "expected exactly one key bag"):
		return ErrSeveralKeys
	case strings.Contains(msg, "private key missing"):
		return fmt.Errorf("%w in the PFX (export it with the private key)", ErrNoKey)
	case strings.Contains(msg, "certificate missing"):
		return fmt.Errorf("%w in the PFX", ErrNoCertificate)
	case strings.Contains(msg, "no MAC in data"):
		return fmt.Errorf("%w: the PFX has no integrity MAC, so it cannot be password-checked", ErrCorrupt)
	case errors.As(err, &notImpl):
		return fmt.Errorf("unsupported PFX: %v", err)
	default:
		return fmt.Errorf("%w: not a readable PFX (%v)", ErrCorrupt, err)
	}
}
