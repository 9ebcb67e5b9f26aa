package setup

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.step.sm/crypto/pemutil"

	"github.com/stepfort/stepfort/internal/cakeys"
)

// caSpec describes a test CA certificate.
type caSpec struct {
	cn       string
	parent   *cakeys.Bundle // nil: self-signed
	keyUsage x509.KeyUsage
	isCA     bool
	pathLen  int // -1: none
	notAfter time.Time
}

var (
	rsaOnce sync.Once
	rsaKeys []*rsa.PrivateKey
)

// testKey returns one of a few RSA keys made once (AD CS CAs are RSA; RSA
// key generation is slow under -race), or a fresh P-256 key past them.
func testKey(t *testing.T, i int) crypto.Signer {
	t.Helper()
	rsaOnce.Do(func() {
		for range 2 {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			rsaKeys = append(rsaKeys, k)
		}
	})
	if i < len(rsaKeys) {
		return rsaKeys[i]
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func makeCA(t *testing.T, s caSpec, key crypto.Signer) *cakeys.Bundle {
	t.Helper()
	if s.notAfter.IsZero() {
		s.notAfter = time.Now().Add(5 * 365 * 24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: s.cn, Organization: []string{"Corp"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              s.notAfter,
		KeyUsage:              s.keyUsage,
		BasicConstraintsValid: true,
		IsCA:                  s.isCA,
		MaxPathLen:            s.pathLen,
		MaxPathLenZero:        s.pathLen == 0,
	}
	parent, signer := tmpl, key
	var chain []*x509.Certificate
	if s.parent != nil {
		parent, signer = s.parent.Cert, s.parent.Key
		chain = append([]*x509.Certificate{s.parent.Cert}, s.parent.Chain...)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &cakeys.Bundle{Cert: c, Chain: chain, Key: key}
}

const caUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature

func adcsRoot(t *testing.T) *cakeys.Bundle {
	return makeCA(t, caSpec{cn: "Corp Root CA", keyUsage: caUsage, isCA: true, pathLen: -1}, testKey(t, 0))
}

func adcsIssuer(t *testing.T, root *cakeys.Bundle) *cakeys.Bundle {
	return makeCA(t, caSpec{cn: "Corp Issuing CA 1", parent: root, keyUsage: caUsage, isCA: true, pathLen: 0}, testKey(t, 1))
}

func initWith(t *testing.T, o Options) (*Result, error) {
	t.Helper()
	o.Dir = filepath.Join(t.TempDir(), "ca")
	o.Address, o.InsecureAddress = "127.0.0.1:9443", "127.0.0.1:9480"
	return Init(o)
}

// verifyIntermediate checks certs/intermediate_ca.crt chains to
// certs/root_ca.crt and that the stored intermediate key (decrypted with
// the CA password) is the intermediate's.
func verifyIntermediate(t *testing.T, r *Result) (*x509.Certificate, []*x509.Certificate) {
	t.Helper()
	root := readCert(t, r.RootFile)
	certs, err := cakeys.ParseCertificates(mustRead(t, filepath.Join(r.Dir, "certs", "intermediate_ca.crt")))
	if err != nil {
		t.Fatal(err)
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	for _, c := range certs[1:] {
		inters.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil && !certs[0].Equal(root) {
		t.Fatalf("intermediate does not chain to the root: %v", err)
	}
	password := strings.TrimSpace(string(mustRead(t, r.PasswordFile)))
	key, err := pemutil.Read(filepath.Join(r.Dir, "secrets", "intermediate_ca_key"), pemutil.WithPassword([]byte(password)))
	if err != nil {
		t.Fatal(err)
	}
	if !key.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(certs[0].PublicKey) {
		t.Fatal("secrets/intermediate_ca_key is not the intermediate's key")
	}
	// The SCEP RA is issued by the intermediate.
	if err := readCert(t, filepath.Join(r.Dir, "certs", "scep_ra.crt")).CheckSignatureFrom(certs[0]); err != nil {
		t.Fatalf("SCEP RA not signed by the intermediate: %v", err)
	}
	return root, certs
}

func noRootKey(t *testing.T, r *Result) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(r.Dir, "secrets", "root_ca_key")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a brought root key must not be written: %v", err)
	}
}

func TestInitUnderBroughtRoot(t *testing.T) {
	root := adcsRoot(t)
	r, err := initWith(t, Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	gotRoot, certs := verifyIntermediate(t, r)
	if !gotRoot.Equal(root.Cert) || len(certs) != 1 || certs[0].Equal(root.Cert) {
		t.Fatalf("root %s, intermediate file %d certs", gotRoot.Subject, len(certs))
	}
	if inter := certs[0]; !inter.IsCA || inter.MaxPathLen != 0 || !inter.MaxPathLenZero || inter.NotAfter.After(root.Cert.NotAfter) {
		t.Errorf("intermediate: CA %v pathlen %d, notAfter %s (root's %s)", inter.IsCA, inter.MaxPathLen, inter.NotAfter, root.Cert.NotAfter)
	}
	noRootKey(t, r)
	if len(r.Notes) == 0 || !strings.Contains(strings.Join(r.Notes, " "), "offline") {
		t.Errorf("notes %q do not tell the operator to keep the root key offline", r.Notes)
	}
	if r.RootFingerprint != fingerprint(root.Cert) {
		t.Error("RootFingerprint is not the brought root's")
	}
}

// TestInitUnderBroughtPolicyCA: a CA that is not a root (a policy CA of a
// three-tier hierarchy) signs the intermediate; the chain file carries it.
func TestInitUnderBroughtPolicyCA(t *testing.T) {
	root := adcsRoot(t)
	policy := makeCA(t, caSpec{cn: "Corp Policy CA", parent: root, keyUsage: caUsage, isCA: true, pathLen: 1}, testKey(t, 1))
	r, err := initWith(t, Options{Root: policy})
	if err != nil {
		t.Fatal(err)
	}
	gotRoot, certs := verifyIntermediate(t, r)
	if !gotRoot.Equal(root.Cert) || len(certs) != 2 || !certs[1].Equal(policy.Cert) {
		t.Fatalf("root %s, intermediate file has %d certs", gotRoot.Subject, len(certs))
	}
}

func TestInitWithBroughtIssuer(t *testing.T) {
	root := adcsRoot(t)
	issuer := adcsIssuer(t, root)
	r, err := initWith(t, Options{Issuer: issuer})
	if err != nil {
		t.Fatal(err)
	}
	gotRoot, certs := verifyIntermediate(t, r)
	if !gotRoot.Equal(root.Cert) || len(certs) != 1 || !certs[0].Equal(issuer.Cert) {
		t.Fatalf("root %s, intermediate file has %d certs", gotRoot.Subject, len(certs))
	}
	noRootKey(t, r)
}

func TestInitWithSelfSignedIssuer(t *testing.T) {
	root := adcsRoot(t)
	r, err := initWith(t, Options{Issuer: root})
	if err != nil {
		t.Fatal(err)
	}
	gotRoot, certs := verifyIntermediate(t, r)
	if !gotRoot.Equal(root.Cert) || len(certs) != 1 || !certs[0].Equal(root.Cert) {
		t.Fatalf("a self-signed issuer is its own root: root %s, %d certs", gotRoot.Subject, len(certs))
	}
}

func TestInitBroughtCARejected(t *testing.T) {
	root := adcsRoot(t)
	issuer := adcsIssuer(t, root)
	orphan := &cakeys.Bundle{Cert: issuer.Cert, Key: issuer.Key} // root not given
	leaf := makeCA(t, caSpec{cn: "www.corp.example", parent: issuer, keyUsage: x509.KeyUsageDigitalSignature, pathLen: -1}, testKey(t, 2))
	noCRLSign := makeCA(t, caSpec{cn: "No CRL Sign CA", keyUsage: x509.KeyUsageCertSign, isCA: true, pathLen: -1}, testKey(t, 2))
	pathZeroRoot := makeCA(t, caSpec{cn: "Root pathlen 0", keyUsage: caUsage, isCA: true, pathLen: 0}, testKey(t, 2))
	expired := makeCA(t, caSpec{cn: "Expired CA", keyUsage: caUsage, isCA: true, pathLen: -1, notAfter: time.Now().Add(-time.Minute)}, testKey(t, 2))
	tests := []struct {
		name string
		o    Options
		want []string
	}{
		{"root and issuer", Options{Root: root, Issuer: issuer}, []string{"--root-*", "--issuer-*"}},
		{"issuer without its root", Options{Issuer: orphan}, []string{"--issuer", "Corp Issuing CA 1", "--root-cert"}},
		{"leaf as root", Options{Root: leaf}, []string{"--root", "not a CA", "basicConstraints CA:TRUE"}},
		{"leaf as issuer", Options{Issuer: leaf}, []string{"--issuer", "not a CA"}},
		{"issuer without cRLSign", Options{Issuer: noCRLSign}, []string{"--issuer", "cRLSign"}},
		{"root with pathlen 0", Options{Root: pathZeroRoot}, []string{"--root", "pathlen:0", "--issuer-pfx"}},
		{"expired", Options{Root: expired}, []string{"--root", "Expired CA", "not now"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ca")
			tt.o.Dir = dir
			_, err := Init(tt.o)
			if err == nil {
				t.Fatal("Init accepted it")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("Init wrote %s despite the error", dir)
			}
		})
	}
}

// TestInitForceWithBroughtRootRemovesOldRootKey: re-initialising over a
// generated installation must not leave the old root's key behind.
func TestInitForceWithBroughtRootRemovesOldRootKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	initInto(t, dir, false)
	r, err := Init(Options{Dir: dir, Root: adcsRoot(t), Force: true, Address: "127.0.0.1:9443", InsecureAddress: "127.0.0.1:9480"})
	if err != nil {
		t.Fatal(err)
	}
	noRootKey(t, r)
}
