package setup

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/stepfort/stepfort/internal/cakeys"
)

// caValidity is the lifetime of every CA certificate init makes.
const caValidity = 10 * 365 * 24 * time.Hour

// caPair is a root CA and the intermediate it signed, as written to disk.
// The root key is written too (encrypted), for the operator to move
// offline; ca.json never names it.
type caPair struct {
	root     *x509.Certificate
	rootFile string // certs/<prefix>root_ca.crt
	certFile string // certs/<prefix>intermediate_ca.crt
	keyFile  string // secrets/<prefix>intermediate_ca_key, or its KMS URI
	// The intermediate and its key, kept in memory while init runs so it
	// can issue the SCEP RA certificate.
	inter    *x509.Certificate
	interKey crypto.Signer
}

// rootPEM is the root certificate as PEM, the form upstream's provisioners
// take roots in.
func (c *caPair) rootPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.root.Raw})
}

// writeCAPair makes "<name> Root CA" and "<name> Intermediate CA" and
// writes them under dir with file names starting with prefix. Keys are
// encrypted with password.
func writeCAPair(dir, name, prefix, password string, ks keyStore) (*caPair, error) {
	rootKey, err := ks.generate(prefix + "root")
	if err != nil {
		return nil, err
	}
	root, err := newCA(name+" Root CA", nil, rootKey, rootKey, 1)
	if err != nil {
		return nil, err
	}
	interKey, err := ks.generate(prefix + "intermediate")
	if err != nil {
		return nil, err
	}
	inter, err := newCA(name+" Intermediate CA", root, rootKey, interKey, 0)
	if err != nil {
		return nil, err
	}
	p := &caPair{
		root:     root,
		rootFile: filepath.Join(dir, "certs", prefix+"root_ca.crt"),
		certFile: filepath.Join(dir, "certs", prefix+"intermediate_ca.crt"),
		keyFile:  filepath.Join(dir, "secrets", prefix+"intermediate_ca_key"),
		inter:    inter,
		interKey: interKey,
	}
	if err := writeCert(p.rootFile, root); err != nil {
		return nil, err
	}
	if _, err := ks.save(prefix+"root", filepath.Join(dir, "secrets", prefix+"root_ca_key"), rootKey, password); err != nil {
		return nil, err
	}
	if err := writeCert(p.certFile, inter); err != nil {
		return nil, err
	}
	if p.keyFile, err = ks.save(prefix+"intermediate", p.keyFile, interKey, password); err != nil {
		return nil, err
	}
	return p, nil
}

// newCA makes a CA certificate for key, signed by parentKey; with a nil
// parent it is self-signed.
func newCA(cn string, parent *x509.Certificate, parentKey, key crypto.Signer, maxPathLen int) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	now := time.Now().Add(-time.Minute)
	notAfter := now.Add(caValidity)
	if parent != nil && parent.NotAfter.Before(notAfter) {
		notAfter = parent.NotAfter // a CA outliving its issuer fails validation early
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            maxPathLen,
		MaxPathLenZero:        maxPathLen == 0,
	}
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", cn, err)
	}
	return x509.ParseCertificate(der)
}

// writeCert writes certificates as one PEM file: a CA certificate
// followed by the chain above it, which upstream sends with every leaf.
func writeCert(path string, certs ...*x509.Certificate) error {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return writeFile(path, b, 0o644)
}

// writeKey writes key as an encrypted PKCS #8 PEM (PBES2:
// PBKDF2-HMAC-SHA-256, AES-256-CBC), not the legacy PEM encryption, whose
// key derivation uses MD5 and fails under GODEBUG=fips140=only
// (docs/fips.md). Upstream reads both forms.
func writeKey(path string, key crypto.PrivateKey, password string) error {
	block, err := encryptPKCS8(key, []byte(password))
	if err != nil {
		return fmt.Errorf("encrypt %s: %w", path, err)
	}
	return WriteSecretFile(path, pem.EncodeToMemory(block))
}

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// Bringing your own CA. Options.Root is a CA (usually an offline root,
// for instance exported from AD CS) that signs a new intermediate once,
// in memory; its key is never written into the installation, because it
// belongs offline. Options.Issuer is an issuing CA stepfort signs with
// directly; its key becomes the intermediate key, encrypted with the CA
// password like a generated one. Either way certs/root_ca.crt is the
// self-signed top of the chain, and certs/intermediate_ca.crt is the
// signing certificate followed by the CAs between it and the root.

// checkBroughtCA validates Options.Root or Options.Issuer before anything
// is written, so bad input leaves no installation behind.
func (o *Options) checkBroughtCA(now time.Time) error {
	switch {
	case o.KMS != "" && o.Issuer != nil:
		return errors.New("--kms and --issuer-*: an issuing CA brought as a key file would keep its key on disk; import the key into the token and use the token's copy (docs/hsm.md)")
	case o.Root != nil && o.Issuer != nil:
		return errors.New("--root-* and --issuer-* flags exclude each other: bring a root (stepfort makes the intermediate) or an issuing CA, not both")
	case o.Root != nil:
		// Below the brought CA sits the new intermediate.
		return checkBundle(o.Root, "--root", 1, now)
	case o.Issuer != nil:
		if err := checkBundle(o.Issuer, "--issuer", 0, now); err != nil {
			return err
		}
		// CRLs are on in the ca.json init writes, and Go signs a CRL only
		// with an explicit cRLSign bit and a subject key identifier.
		if err := o.Issuer.CheckCRLSigner(); err != nil {
			return fmt.Errorf("--issuer: %w (stepfort signs this CA's CRLs)", err)
		}
	}
	return nil
}

// checkBundle checks that b is a CA, valid now, whose chain reaches a
// self-signed root, and whose path length constraints allow below CAs
// under b.Cert.
func checkBundle(b *cakeys.Bundle, flag string, below int, now time.Time) error {
	if err := b.CheckCA(); err != nil {
		return fmt.Errorf("%s: %w", flag, err)
	}
	if b.Root() == nil {
		return fmt.Errorf("%s: %s: add the issuer's certificate with --root-cert FILE (PEM or DER; a bundle of every CA above is fine) or put the chain into the PFX", flag, missingRoot(b))
	}
	path := append([]*x509.Certificate{b.Cert}, b.Chain...)
	for i, c := range path {
		if now.After(c.NotAfter) || now.Before(c.NotBefore) {
			return fmt.Errorf("%s: certificate %q is valid from %s to %s, not now", flag, cakeys.Name(c), c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
		}
		limited := c.MaxPathLen > 0 || (c.MaxPathLen == 0 && c.MaxPathLenZero)
		if n := i + below; limited && c.MaxPathLen < n {
			return fmt.Errorf("%s: certificate %q has basicConstraints pathlen:%d, but the path would have %d CA certificate(s) below it%s",
				flag, cakeys.Name(c), c.MaxPathLen, n, pathLenHint(below))
		}
	}
	return nil
}

// missingRoot says where b's chain stops short of a root.
func missingRoot(b *cakeys.Bundle) string {
	if len(b.Chain) == 0 {
		return fmt.Sprintf("%q is not self-signed and the certificate of its issuer %q was not given", cakeys.Name(b.Cert), issuerName(b.Cert))
	}
	top := b.Chain[len(b.Chain)-1]
	return fmt.Sprintf("the chain of %q stops at %q, whose issuer %q was not given", cakeys.Name(b.Cert), cakeys.Name(top), issuerName(top))
}

func issuerName(c *x509.Certificate) string {
	if c.Issuer.CommonName != "" {
		return c.Issuer.CommonName
	}
	return c.Issuer.String()
}

func pathLenHint(below int) string {
	if below > 0 {
		return "; bring it as the issuing CA instead (--issuer-pfx or --issuer-cert/--issuer-key)"
	}
	return ""
}

// issuingCA writes the CA stepfort issues with: generated (with its own
// root) by default, under a brought root, or a brought issuing CA.
func issuingCA(o Options, password string, ks keyStore) (*caPair, error) {
	switch {
	case o.Root != nil:
		return writeUnderRoot(o.Dir, o.Name, o.Root, password, ks)
	case o.Issuer != nil:
		return writeIssuer(o.Dir, o.Issuer, password, ks)
	default:
		return writeCAPair(o.Dir, o.Name, "", password, ks)
	}
}

// writeUnderRoot makes "<name> Intermediate CA" signed by the brought CA.
func writeUnderRoot(dir, name string, root *cakeys.Bundle, password string, ks keyStore) (*caPair, error) {
	interKey, err := ks.generate("intermediate")
	if err != nil {
		return nil, err
	}
	inter, err := newCA(name+" Intermediate CA", root.Cert, root.Key, interKey, 0)
	if err != nil {
		return nil, err
	}
	return writeBroughtPair(dir, root, inter, interKey, password, ks)
}

// writeIssuer makes the brought issuing CA stepfort's intermediate.
func writeIssuer(dir string, issuer *cakeys.Bundle, password string, ks keyStore) (*caPair, error) {
	return writeBroughtPair(dir, issuer, nil, issuer.Key, password, ks)
}

// writeBroughtPair writes the root, the intermediate file (inter, if any,
// then b's certificates below the root) and the intermediate key. A root
// key left by an earlier init of this directory is removed: it belongs to
// a root this installation no longer uses.
func writeBroughtPair(dir string, b *cakeys.Bundle, inter *x509.Certificate, interKey crypto.Signer, password string, ks keyStore) (*caPair, error) {
	root := b.Root()
	var chain []*x509.Certificate
	if inter != nil {
		chain = append(chain, inter)
	}
	for _, c := range append([]*x509.Certificate{b.Cert}, b.Chain...) {
		if c != root {
			chain = append(chain, c)
		}
	}
	if len(chain) == 0 {
		chain = []*x509.Certificate{root} // a self-signed issuing CA signs as its own root
	}
	p := &caPair{
		root:     root,
		rootFile: filepath.Join(dir, "certs", "root_ca.crt"),
		certFile: filepath.Join(dir, "certs", "intermediate_ca.crt"),
		keyFile:  filepath.Join(dir, "secrets", "intermediate_ca_key"),
		inter:    chain[0],
		interKey: interKey,
	}
	if err := os.Remove(filepath.Join(dir, "secrets", "root_ca_key")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if err := writeCert(p.rootFile, root); err != nil {
		return nil, err
	}
	if err := writeCert(p.certFile, chain...); err != nil {
		return nil, err
	}
	var err error
	if p.keyFile, err = ks.save("intermediate", p.keyFile, interKey, password); err != nil {
		return nil, err
	}
	return p, nil
}
