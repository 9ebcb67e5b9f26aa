package cakeys

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"software.sslmate.com/src/go-pkcs12"
)

// fixture is an "ADCS-like" hierarchy made with OpenSSL: an RSA root, an
// issuing CA under it, a leaf, and an unrelated CA for mismatches.
type fixture struct{ dir string }

var (
	fixOnce sync.Once
	fix     fixture
	fixErr  error
)

// hierarchy makes the fixture once per test binary: RSA key generation
// is the slow part.
func hierarchy(t *testing.T) fixture {
	t.Helper()
	fixOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cakeys-test-")
		if err != nil {
			fixErr = err
			return
		}
		fix = fixture{dir: dir}
		fixErr = fix.build()
	})
	if fixErr != nil {
		t.Fatal(fixErr)
	}
	return fix
}

func TestMain(m *testing.M) {
	code := m.Run()
	if fix.dir != "" {
		os.RemoveAll(fix.dir)
	}
	os.Exit(code)
}

func (f fixture) path(name string) string { return filepath.Join(f.dir, name) }

func (f fixture) openssl(args ...string) error {
	cmd := exec.Command("openssl", args...)
	cmd.Dir = f.dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (f fixture) build() error {
	ext := "[ca]\nbasicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,digitalSignature,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" +
		"[leaf]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n" +
		"[nosign]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,digitalSignature\nsubjectKeyIdentifier=hash\n"
	if err := os.WriteFile(f.path("ext.cnf"), []byte(ext), 0o600); err != nil {
		return err
	}
	steps := [][]string{
		{"req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "root.key", "-out", "root.crt", "-days", "3650",
			"-subj", "/DC=example/DC=corp/CN=Corp Root CA", "-addext", "keyUsage=critical,keyCertSign,cRLSign"},
		{"req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "issuing.key", "-out", "issuing.csr", "-subj", "/DC=example/DC=corp/CN=Corp Issuing CA 1"},
		{"x509", "-req", "-in", "issuing.csr", "-CA", "root.crt", "-CAkey", "root.key", "-CAcreateserial", "-out", "issuing.crt", "-days", "1825", "-extfile", "ext.cnf", "-extensions", "ca"},
		{"req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=www.corp.example"},
		{"x509", "-req", "-in", "leaf.csr", "-CA", "issuing.crt", "-CAkey", "issuing.key", "-CAcreateserial", "-out", "leaf.crt", "-days", "365", "-extfile", "ext.cnf", "-extensions", "leaf"},
		{"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "other.key", "-out", "other.crt", "-days", "365", "-subj", "/CN=Other CA"},
		{"req", "-x509", "-key", "other.key", "-out", "nosign.crt", "-days", "365", "-subj", "/CN=No Sign CA", "-extensions", "nosign", "-config", "ext.cnf"},
	}
	for _, s := range steps {
		if err := f.openssl(s...); err != nil {
			return err
		}
	}
	return nil
}

func (f fixture) read(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(f.path(name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (f fixture) cert(t *testing.T, name string) *x509.Certificate {
	t.Helper()
	certs, err := ParseCertificates(f.read(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

// exportPFX runs openssl pkcs12 -export with extra options and returns the file.
func (f fixture) exportPFX(t *testing.T, name string, extra ...string) []byte {
	t.Helper()
	args := append([]string{"pkcs12", "-export", "-inkey", "issuing.key", "-in", "issuing.crt", "-certfile", "root.crt",
		"-name", "Corp Issuing CA 1", "-out", name, "-passout", "pass:s3cret pfx"}, extra...)
	if err := f.openssl(args...); err != nil {
		t.Fatal(err)
	}
	return f.read(t, name)
}

func TestReadPFX(t *testing.T) {
	f := hierarchy(t)
	issuing, root := f.cert(t, "issuing.crt"), f.cert(t, "root.crt")
	tests := []struct {
		name  string
		extra []string
	}{
		{"aes256-pbes2", nil}, // OpenSSL 3 default: AES-256-CBC, PBKDF2, SHA-256 MAC
		{"legacy-rc2-3des", []string{"-legacy"}},
		{"windows-tripledes-sha1", []string{"-keypbe", "PBE-SHA1-3DES", "-certpbe", "PBE-SHA1-3DES", "-macalg", "sha1"}},
		{"microsoft-csp-attribute", []string{"-legacy", "-keyex", "-CSP", "Microsoft Software Key Storage Provider"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := ReadPFX(f.exportPFX(t, tt.name+".pfx", tt.extra...), "s3cret pfx")
			if err != nil {
				t.Fatal(err)
			}
			if !b.Cert.Equal(issuing) {
				t.Fatalf("Cert = %s, want the issuing CA", b.Cert.Subject)
			}
			if len(b.Chain) != 1 || !b.Chain[0].Equal(root) || !b.Root().Equal(root) {
				t.Fatalf("Chain = %v, want [root]", subjects(b.Chain))
			}
			if err := b.CheckCA(); err != nil {
				t.Fatal(err)
			}
			if err := b.CheckCRLSigner(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestReadPFXKeyCertNotFirst: the key's certificate is after the root, so
// go-pkcs12's "first certificate is the leaf" guess is wrong.
func TestReadPFXKeyCertNotFirst(t *testing.T) {
	f := hierarchy(t)
	bundle, err := ReadPEM(f.read(t, "issuing.crt"), f.read(t, "issuing.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	root := f.cert(t, "root.crt")
	data, err := pkcs12.Modern.Encode(bundle.Key, root, []*x509.Certificate{bundle.Cert}, "pw")
	if err != nil {
		t.Fatal(err)
	}
	b, err := ReadPFX(data, "pw")
	if err != nil {
		t.Fatal(err)
	}
	if !b.Cert.Equal(bundle.Cert) || len(b.Chain) != 1 || !b.Chain[0].Equal(root) {
		t.Fatalf("Cert = %s, Chain = %s", b.Cert.Subject, subjects(b.Chain))
	}
}

func TestReadPFXSelfSignedRoot(t *testing.T) {
	f := hierarchy(t)
	if err := f.openssl("pkcs12", "-export", "-legacy", "-inkey", "root.key", "-in", "root.crt", "-out", "root.pfx", "-passout", "pass:"); err != nil {
		t.Fatal(err)
	}
	b, err := ReadPFX(f.read(t, "root.pfx"), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Chain) != 0 || b.Root() != b.Cert {
		t.Fatalf("a self-signed root is its own root: chain %s", subjects(b.Chain))
	}
}

func TestReadPFXErrors(t *testing.T) {
	f := hierarchy(t)
	good := f.exportPFX(t, "errors.pfx")
	if err := f.openssl("pkcs12", "-export", "-nokeys", "-in", "issuing.crt", "-out", "nokey.pfx", "-passout", "pass:pw"); err != nil {
		t.Fatal(err)
	}
	other, err := ReadPEM(f.read(t, "other.crt"), f.read(t, "other.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	mismatched, err := pkcs12.Modern.Encode(other.Key, f.cert(t, "issuing.crt"), []*x509.Certificate{f.cert(t, "root.crt")}, "pw")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		data     []byte
		password string
		want     error
	}{
		{"wrong password", good, "not it", ErrWrongPassword},
		{"truncated", good[:len(good)/2], "s3cret pfx", ErrCorrupt},
		{"empty", nil, "", ErrCorrupt},
		{"pem instead of pfx", f.read(t, "issuing.crt"), "", ErrCorrupt},
		{"no key", f.read(t, "nokey.pfx"), "pw", ErrNoKey},
		{"mismatched key", mismatched, "pw", ErrKeyMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadPFX(tt.data, tt.password)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			t.Log(err)
		})
	}
}

func TestReadPEM(t *testing.T) {
	f := hierarchy(t)
	steps := [][]string{
		{"pkey", "-in", "issuing.key", "-aes256", "-passout", "pass:keypw", "-out", "issuing.p8.key"},
		{"rsa", "-in", "issuing.key", "-aes256", "-traditional", "-passout", "pass:keypw", "-out", "issuing.legacy.key"},
		{"pkey", "-in", "issuing.key", "-outform", "DER", "-out", "issuing.key.der"},
		{"x509", "-in", "issuing.crt", "-outform", "DER", "-out", "issuing.crt.der"},
	}
	for _, s := range steps {
		if err := f.openssl(s...); err != nil {
			t.Fatal(err)
		}
	}
	chainPEM := append(f.read(t, "root.crt"), f.read(t, "issuing.crt")...) // root first on purpose
	tests := []struct {
		name      string
		cert, key string
		chain     bool
		password  []byte
		want      error
	}{
		{"plain pkcs8 with chain", "", "issuing.key", true, nil, nil},
		{"encrypted pkcs8", "issuing.crt", "issuing.p8.key", false, []byte("keypw"), nil},
		{"encrypted legacy", "issuing.crt", "issuing.legacy.key", false, []byte("keypw"), nil},
		{"der", "issuing.crt.der", "issuing.key.der", false, nil, nil},
		{"encrypted without password", "issuing.crt", "issuing.p8.key", false, nil, ErrKeyPasswordNeeded},
		{"pkcs8 wrong password", "issuing.crt", "issuing.p8.key", false, []byte("nope"), ErrWrongKeyPassword},
		{"legacy wrong password", "issuing.crt", "issuing.legacy.key", false, []byte("nope"), ErrWrongKeyPassword},
		{"mismatched key", "issuing.crt", "other.key", false, nil, ErrKeyMismatch},
		{"key as cert", "issuing.key", "issuing.key", false, nil, ErrNoCertificate},
		{"cert as key", "issuing.crt", "issuing.crt", false, nil, ErrNoKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certData := chainPEM
			if !tt.chain {
				certData = f.read(t, tt.cert)
			}
			b, err := ReadPEM(certData, f.read(t, tt.key), tt.password)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if err != nil {
				t.Log(err)
				return
			}
			if !b.Cert.Equal(f.cert(t, "issuing.crt")) {
				t.Fatalf("Cert = %s", b.Cert.Subject)
			}
			if tt.chain && (len(b.Chain) != 1 || b.Root() == nil) {
				t.Fatalf("Chain = %s", subjects(b.Chain))
			}
			if !tt.chain && (len(b.Chain) != 0 || b.Root() != nil) {
				t.Fatalf("no root was given, Chain = %s", subjects(b.Chain))
			}
		})
	}
}

func TestCheckCA(t *testing.T) {
	f := hierarchy(t)
	tests := []struct {
		name, cert, key string
		missing         []string
	}{
		{"issuing CA", "issuing.crt", "issuing.key", nil},
		{"root without keyUsage extension", "other.crt", "other.key", nil},
		{"leaf", "leaf.crt", "leaf.key", []string{"basicConstraints CA:TRUE", "keyUsage keyCertSign"}},
		{"CA without keyCertSign", "nosign.crt", "other.key", []string{"keyUsage keyCertSign"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := ReadPEM(f.read(t, tt.cert), f.read(t, tt.key), nil)
			if err != nil {
				t.Fatal(err)
			}
			err = b.CheckCA()
			if tt.missing == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var notCA *NotCAError
			if !errors.As(err, &notCA) || !errors.Is(err, ErrNotCA) || strings.Join(notCA.Missing, ",") != strings.Join(tt.missing, ",") {
				t.Fatalf("err = %v, want missing %v", err, tt.missing)
			}
		})
	}
}

func TestCheckCRLSigner(t *testing.T) {
	f := hierarchy(t)
	// A plain `openssl req -x509` root has no keyUsage: a valid CA, but Go
	// will not sign a CRL with it.
	b, err := ReadPEM(f.read(t, "other.crt"), f.read(t, "other.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.CheckCRLSigner(); !errors.Is(err, ErrNotCA) || !strings.Contains(err.Error(), "cRLSign") {
		t.Fatalf("err = %v, want missing cRLSign", err)
	}
}

// TestPFXErrorMapping covers go-pkcs12 errors no test file here produces
// (OpenSSL cannot write a PFX with two keys).
func TestPFXErrorMapping(t *testing.T) {
	tests := []struct {
		in   error
		want error
	}{
		{errors.New("pkcs12: expected exactly one key bag"), ErrSeveralKeys},
		{pkcs12.ErrDecryption, ErrCorrupt},
		{errors.New("pkcs12: certificate missing"), ErrNoCertificate},
		{pkcs12.ErrIncorrectPassword, ErrWrongPassword},
	}
	for _, tt := range tests {
		if got := pfxError(tt.in); !errors.Is(got, tt.want) {
			t.Errorf("pfxError(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// TestReadWindowsPFX reads PFX files Windows wrote, Microsoft bag
// attributes included; they are end-entity certificates, so CheckCA
// refuses them.
func TestReadWindowsPFX(t *testing.T) {
	tests := []struct{ file, password, cn string }{
		{"windows-azure-tools-3des.pfx", "", "Windows Azure Tools"},
		{"windows-certmgr-aes256.pfx", "password", "*.ad.standalone.com"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			b, err := ReadPFX(data, tt.password)
			if err != nil {
				t.Fatal(err)
			}
			if b.Cert.Subject.CommonName != tt.cn || b.Root() != b.Cert {
				t.Fatalf("Cert %q, self-signed root %v", b.Cert.Subject.CommonName, b.Root() != nil)
			}
			if err := b.CheckCA(); !errors.Is(err, ErrNotCA) {
				t.Fatalf("CheckCA = %v, want ErrNotCA", err)
			}
			if _, err := ReadPFX(data, "wrong"); !errors.Is(err, ErrWrongPassword) {
				t.Fatalf("wrong password: %v", err)
			}
		})
	}
}
