package legacy

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"github.com/stepfort/stepfort/internal/kmskey"
	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/pemutil"
)

// Issuer is a loaded legacy issuer: its certificate and a signer for its
// key (for CRLs and the OCSP responder certificate).
type Issuer struct {
	Config IssuerConfig
	Cert   *x509.Certificate
	Signer crypto.Signer
}

// SeriesPrefix starts the CRL series name of every legacy issuer.
const SeriesPrefix = "legacy/"

// Series is the issuer's CRL series in internal/crlchanges and the CRL
// publisher: "legacy/<name>".
func (i *Issuer) Series() string { return SeriesPrefix + i.Config.Name }

// Load reads the issuer's certificate and key. The key must match the
// certificate, and the certificate must be a CA allowed to sign CRLs.
// Errors name the file (c is expected to have passed Validate).
func Load(c IssuerConfig) (*Issuer, error) {
	cert, err := ReadCertificate(c.Certificate)
	if err != nil {
		return nil, err
	}
	if err := CheckCA(cert); err != nil {
		return nil, fmt.Errorf("legacy issuer %q: certificate %s: %w", c.Name, c.Certificate, err)
	}
	signer, err := loadSigner(c)
	if err != nil {
		return nil, fmt.Errorf("legacy issuer %q: key %s: %w", c.Name, c.Key, err)
	}
	if !keyutil.Equal(signer.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("legacy issuer %q: key %s does not match certificate %s", c.Name, c.Key, c.Certificate)
	}
	return &Issuer{Config: c, Cert: cert, Signer: signer}, nil
}

// ReadCertificate reads the first certificate of a PEM or DER file.
func ReadCertificate(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	der := b
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%s: PEM block %q, want CERTIFICATE", path, blk.Type)
		}
		der = blk.Bytes
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cert, nil
}

// CheckCA requires a CA certificate with the cRLSign key usage and a
// subject key identifier (which CRLs name in their AKI).
func CheckCA(cert *x509.Certificate) error {
	switch {
	case !cert.BasicConstraintsValid || !cert.IsCA:
		return errors.New("is not a CA certificate (basicConstraints CA:TRUE missing)")
	case cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCRLSign == 0:
		return errors.New("has no cRLSign key usage: it cannot sign CRLs")
	case len(cert.SubjectKeyId) == 0:
		return errors.New("has no subject key identifier")
	}
	return nil
}

func loadSigner(c IssuerConfig) (crypto.Signer, error) {
	if isKMSURI(c.Key) {
		s, _, err := kmskey.Open(c.Key) // kept for the life of the process
		return s, err
	}
	b, err := os.ReadFile(c.Key)
	if err != nil {
		return nil, err
	}
	var opts []pemutil.Options
	if c.PasswordFile != "" {
		opts = append(opts, pemutil.WithPasswordFile(c.PasswordFile))
	} else if encryptedPEM(b) {
		// pemutil would prompt on a terminal; a daemon must not.
		return nil, errors.New("the key is encrypted and no passwordFile is set")
	}
	k, err := pemutil.ParseKey(b, opts...)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%T is not a private key", k)
	}
	return s, nil
}

func encryptedPEM(b []byte) bool {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return false
	}
	//nolint:staticcheck // legacy PEM encryption is what we detect
	return blk.Type == "ENCRYPTED PRIVATE KEY" || x509.IsEncryptedPEMBlock(blk) || bytes.Contains(b, []byte("Proc-Type: 4,ENCRYPTED"))
}
