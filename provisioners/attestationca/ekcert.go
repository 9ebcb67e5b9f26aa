package attestationca

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/smallstep/go-attestation/attest"
)

// maxEKCerts and maxEKCertBytes bound what a client may make us parse.
const (
	maxEKCerts     = 8
	maxEKCertBytes = 8 << 10
)

var oidSANString = oidSubjectAltName.String()

// ParseEKCertificate parses one EK certificate from a client. TPM NV
// storage pads certificates, so trailing bytes are tolerated (as
// go-attestation does).
func ParseEKCertificate(der []byte) (*x509.Certificate, error) {
	if len(der) == 0 || len(der) > maxEKCertBytes {
		return nil, fmt.Errorf("EK certificate: size %d out of range", len(der))
	}
	c, err := attest.ParseEKCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("EK certificate: %w", err)
	}
	return c, nil
}

// matchingEKCertificate returns the EK certificate among ders whose key is
// ek (nil if none). The step CLI sends every EK certificate it found, not
// only the one of the EK it uses, so non-matching ones are ignored.
func matchingEKCertificate(ders [][]byte, ekDER []byte) (*x509.Certificate, error) {
	if len(ders) > maxEKCerts {
		return nil, fmt.Errorf("ekCerts: at most %d certificates", maxEKCerts)
	}
	for i, der := range ders {
		c, err := ParseEKCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("ekCerts[%d]: %w", i, err)
		}
		if bytes.Equal(c.RawSubjectPublicKeyInfo, ekDER) {
			return c, nil
		}
		if pk, err := x509.MarshalPKIXPublicKey(c.PublicKey); err == nil && bytes.Equal(pk, ekDER) {
			return c, nil
		}
	}
	return nil, nil
}

// verifyEKCertificate checks an EK certificate chains to a manufacturer
// root. EK certificates have an empty subject and a critical SAN holding
// only a directoryName, which Go reports as unhandled: it is cleared before
// Verify, as step-ca does for AK certificates.
func verifyEKCertificate(c *x509.Certificate, roots *x509.CertPool, now time.Time) error {
	if roots == nil {
		return errors.New("no ekRoots configured")
	}
	cc := *c
	cc.UnhandledCriticalExtensions = nil
	for _, oid := range c.UnhandledCriticalExtensions {
		if oid.String() != oidSANString {
			cc.UnhandledCriticalExtensions = append(cc.UnhandledCriticalExtensions, oid)
		}
	}
	_, err := cc.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return fmt.Errorf("EK certificate does not chain to ekRoots: %w", err)
	}
	return nil
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}
