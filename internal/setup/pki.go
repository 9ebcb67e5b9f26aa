package setup

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"path/filepath"
	"time"

	"go.step.sm/crypto/pemutil"
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
	keyFile  string // secrets/<prefix>intermediate_ca_key
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
func writeCAPair(dir, name, prefix, password string) (*caPair, error) {
	root, rootKey, err := newCA(name+" Root CA", nil, nil, 1)
	if err != nil {
		return nil, err
	}
	inter, interKey, err := newCA(name+" Intermediate CA", root, rootKey, 0)
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
	if err := writeKey(filepath.Join(dir, "secrets", prefix+"root_ca_key"), rootKey, password); err != nil {
		return nil, err
	}
	if err := writeCert(p.certFile, inter); err != nil {
		return nil, err
	}
	if err := writeKey(p.keyFile, interKey, password); err != nil {
		return nil, err
	}
	return p, nil
}

// newCA makes a CA certificate; with a nil parent it is self-signed.
func newCA(cn string, parent *x509.Certificate, parentKey crypto.Signer, maxPathLen int) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now().Add(-time.Minute)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now,
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            maxPathLen,
		MaxPathLenZero:        maxPathLen == 0,
	}
	signer := crypto.Signer(key)
	if parent == nil {
		parent = tmpl
	} else {
		signer = parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return nil, nil, fmt.Errorf("create %s: %w", cn, err)
	}
	c, err := x509.ParseCertificate(der)
	return c, key, err
}

func writeCert(path string, c *x509.Certificate) error {
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}), 0o644)
}

func writeKey(path string, key crypto.PrivateKey, password string) error {
	block, err := pemutil.Serialize(key, pemutil.WithPassword([]byte(password)))
	if err != nil {
		return fmt.Errorf("encrypt %s: %w", path, err)
	}
	return WriteSecretFile(path, pem.EncodeToMemory(block))
}

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}
