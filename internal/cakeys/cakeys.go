// Package cakeys reads an existing CA (certificate, private key and the
// rest of its chain) from the files an operator brings: a PFX (PKCS#12) as
// Windows and OpenSSL write it, or PEM/DER certificate and key files.
//
// The key is matched to its certificate by public key, never by position:
// PFX files from Windows list the CA chain in no fixed order, and a CA
// renewed with the same key has several certificates for one key.
package cakeys

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
)

// Errors a caller can test with errors.Is to explain what went wrong.
var (
	// ErrWrongPassword: the PFX's MAC does not verify with the password.
	ErrWrongPassword = errors.New("PFX password is wrong")
	// ErrWrongKeyPassword: an encrypted PEM key does not decrypt.
	ErrWrongKeyPassword = errors.New("key password is wrong")
	// ErrKeyPasswordNeeded: the PEM key is encrypted and no password was given.
	ErrKeyPasswordNeeded = errors.New("key is encrypted and no password was given")
	// ErrCorrupt: the file is truncated or not of the expected format.
	ErrCorrupt = errors.New("file is truncated or corrupt")
	// ErrNoKey: the input holds no private key.
	ErrNoKey = errors.New("no private key found")
	// ErrNoCertificate: the input holds no certificate.
	ErrNoCertificate = errors.New("no certificate found")
	// ErrSeveralKeys: the PFX holds more than one private key, which the
	// PKCS#12 reader (go-pkcs12 v0.7.0) does not support.
	ErrSeveralKeys = errors.New("PFX holds more than one private key; export each CA key to its own PFX")
	// ErrKeyMismatch: no certificate carries the key's public key.
	ErrKeyMismatch = errors.New("private key does not match any certificate")
	// ErrUnsupportedKey: the key cannot sign (for example X25519).
	ErrUnsupportedKey = errors.New("unsupported private key type")
	// ErrNotCA: the certificate cannot act as a CA; see NotCAError.
	ErrNotCA = errors.New("certificate is not a CA")
)

// Bundle is a CA certificate with its private key and the rest of the
// chain found alongside.
type Bundle struct {
	// Cert is the certificate whose public key is Key's.
	Cert *x509.Certificate
	// Chain is Cert's issuer, its issuer and so on, as far as the input
	// went, nearest first. Certificates of the input that are not on this
	// path are dropped.
	Chain []*x509.Certificate
	// Key is Cert's private key.
	Key crypto.Signer
}

// Root returns the self-signed top of the chain (Cert itself when it is
// self-signed), or nil when the input did not reach a self-signed root.
func (b *Bundle) Root() *x509.Certificate {
	top := b.Cert
	if len(b.Chain) > 0 {
		top = b.Chain[len(b.Chain)-1]
	}
	if IsSelfSigned(top) {
		return top
	}
	return nil
}

// AddChain completes Chain with more certificates (the operator's root
// file, say); certificates not on Cert's path are ignored.
func (b *Bundle) AddChain(certs ...*x509.Certificate) {
	b.Chain = chainOf(b.Cert, append(append([]*x509.Certificate(nil), b.Chain...), certs...))
}

// NotCAError names what a certificate lacks to act as a CA.
type NotCAError struct {
	Subject string
	Missing []string // e.g. "basicConstraints CA:TRUE", "keyUsage keyCertSign"
}

func (e *NotCAError) Error() string {
	return fmt.Sprintf("certificate %q is not a CA: missing %s", e.Subject, strings.Join(e.Missing, ", "))
}

// Is makes errors.Is(err, ErrNotCA) true.
func (e *NotCAError) Is(target error) bool { return target == ErrNotCA }

// CheckCA reports whether Cert may issue certificates: basicConstraints
// with CA:TRUE, and keyCertSign when a keyUsage extension is present (RFC
// 5280 4.2.1.3: without the extension every usage is allowed).
func (b *Bundle) CheckCA() error {
	var missing []string
	if !b.Cert.BasicConstraintsValid || !b.Cert.IsCA {
		missing = append(missing, "basicConstraints CA:TRUE")
	}
	if b.Cert.KeyUsage != 0 && b.Cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		missing = append(missing, "keyUsage keyCertSign")
	}
	return notCA(b.Cert, missing)
}

// CheckCRLSigner reports whether Cert can sign CRLs with Go's x509
// package, which step-ca uses: it needs the cRLSign key usage bit set
// explicitly and a subject key identifier (for the CRL's AKI).
func (b *Bundle) CheckCRLSigner() error {
	var missing []string
	if b.Cert.KeyUsage&x509.KeyUsageCRLSign == 0 {
		missing = append(missing, "keyUsage cRLSign")
	}
	if len(b.Cert.SubjectKeyId) == 0 {
		missing = append(missing, "subjectKeyIdentifier")
	}
	return notCA(b.Cert, missing)
}

func notCA(c *x509.Certificate, missing []string) error {
	if len(missing) == 0 {
		return nil
	}
	return &NotCAError{Subject: Name(c), Missing: missing}
}

// Name is how messages name a certificate: its common name, or the whole
// subject when it has none.
func Name(c *x509.Certificate) string {
	if c.Subject.CommonName != "" {
		return c.Subject.CommonName
	}
	return c.Subject.String()
}

// IsSelfSigned reports whether c names itself as issuer and is signed by
// its own key.
func IsSelfSigned(c *x509.Certificate) bool {
	return signedBy(c, c)
}

// signedBy reports whether parent issued c: names chain and the signature
// verifies with parent's key. Go refuses to verify SHA-1 signatures, which
// old ADCS hierarchies still carry; for those the key identifiers decide
// (the signature of a certificate stepfort only passes along is the
// relying party's to judge).
func signedBy(c, parent *x509.Certificate) bool {
	if !bytes.Equal(c.RawIssuer, parent.RawSubject) {
		return false
	}
	err := parent.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature)
	var insecure x509.InsecureAlgorithmError
	if errors.As(err, &insecure) {
		if len(c.AuthorityKeyId) == 0 {
			return c == parent // an old root often has no AKI
		}
		return bytes.Equal(c.AuthorityKeyId, parent.SubjectKeyId)
	}
	return err == nil
}

// newBundle picks the certificate of key among certs and builds its chain
// from the others.
func newBundle(key crypto.PrivateKey, certs []*x509.Certificate) (*Bundle, error) {
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w %T", ErrUnsupportedKey, key)
	}
	if len(certs) == 0 {
		return nil, ErrNoCertificate
	}
	cert := certFor(signer.Public(), certs)
	if cert == nil {
		return nil, fmt.Errorf("%w (%d certificate(s) checked: %s)", ErrKeyMismatch, len(certs), subjects(certs))
	}
	return &Bundle{Cert: cert, Chain: chainOf(cert, certs), Key: signer}, nil
}

// certFor returns the certificate with public key pub. A CA renewed with
// the same key has several; the one valid longest is taken (the newest).
func certFor(pub crypto.PublicKey, certs []*x509.Certificate) *x509.Certificate {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	k, ok := pub.(equaler)
	if !ok {
		return nil
	}
	var best *x509.Certificate
	for _, c := range certs {
		if k.Equal(c.PublicKey) && (best == nil || c.NotAfter.After(best.NotAfter)) {
			best = c
		}
	}
	return best
}

// chainOf walks from cert up through certs by issuer name and signature,
// stopping at a self-signed certificate or when no issuer is found.
func chainOf(cert *x509.Certificate, certs []*x509.Certificate) []*x509.Certificate {
	var chain []*x509.Certificate
	seen := map[*x509.Certificate]bool{cert: true}
	for c := cert; !IsSelfSigned(c); {
		next := issuerOf(c, certs, seen)
		if next == nil {
			break
		}
		chain = append(chain, next)
		seen[next] = true
		c = next
	}
	return chain
}

func issuerOf(c *x509.Certificate, certs []*x509.Certificate, seen map[*x509.Certificate]bool) *x509.Certificate {
	for _, p := range certs {
		if !seen[p] && signedBy(c, p) {
			return p
		}
	}
	return nil
}

func subjects(certs []*x509.Certificate) string {
	names := make([]string, len(certs))
	for i, c := range certs {
		names[i] = fmt.Sprintf("%q", Name(c))
	}
	return strings.Join(names, ", ")
}
