package setup

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	upstream "github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/nosql"
	"go.step.sm/crypto/pemutil"

	"github.com/stepfort/stepfort/internal/admin"
)

func initInto(t *testing.T, dir string, force bool) *Result {
	t.Helper()
	res, err := Init(Options{Dir: dir, Address: "127.0.0.1:9443", InsecureAddress: "127.0.0.1:9480", Force: force})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestInitWritesFilesWithModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	res := initInto(t, dir, false)
	files := []struct {
		path string
		mode os.FileMode
	}{
		{"config/ca.json", 0o600},
		{"config/defaults.json", 0o644},
		{"certs/root_ca.crt", 0o644},
		{"certs/intermediate_ca.crt", 0o644},
		{"certs/attestation_root_ca.crt", 0o644},
		{"certs/attestation_intermediate_ca.crt", 0o644},
		{"certs/scep_ra.crt", 0o644},
		{"templates/device.tpl", 0o644},
		{"secrets", os.ModeDir | 0o700},
		{"secrets/password", 0o600},
		{"secrets/admin-token", 0o600},
		{"secrets/root_ca_key", 0o600},
		{"secrets/intermediate_ca_key", 0o600},
		{"secrets/attestation_root_ca_key", 0o600},
		{"secrets/attestation_intermediate_ca_key", 0o600},
		{"secrets/scep_ra_key", 0o600},
		{"db/stepfort.db", 0o600},
	}
	for _, f := range files {
		t.Run(f.path, func(t *testing.T) {
			fi, err := os.Stat(filepath.Join(dir, f.path))
			if err != nil {
				t.Fatal(err)
			}
			if f.path == "db/stepfort.db" { // bbolt's own mode; only existence matters
				return
			}
			if fi.Mode() != f.mode {
				t.Errorf("mode %v, want %v", fi.Mode(), f.mode)
			}
		})
	}
	tmps, _ := filepath.Glob(filepath.Join(dir, "*", "*.tmp*"))
	if len(tmps) > 0 {
		t.Errorf("temporary files left behind: %v", tmps)
	}
	if res.ConfigFile != filepath.Join(dir, "config", "ca.json") || res.RootFile != filepath.Join(dir, "certs", "root_ca.crt") {
		t.Errorf("result paths: %+v", res)
	}
	if res.CAURL != "https://localhost:9443" || res.Provisioner != "admin" {
		t.Errorf("CAURL %q, Provisioner %q", res.CAURL, res.Provisioner)
	}
}

func TestInitPKIIsConsistent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	res := initInto(t, dir, false)
	password := strings.TrimSpace(string(mustRead(t, res.PasswordFile)))

	root := readCert(t, res.RootFile)
	if fp := fingerprint(root); fp != res.RootFingerprint {
		t.Errorf("RootFingerprint %s, root file has %s", res.RootFingerprint, fp)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	inter := readCert(t, filepath.Join(dir, "certs", "intermediate_ca.crt"))
	if _, err := inter.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("intermediate does not chain to the root: %v", err)
	}
	for _, key := range []string{"intermediate_ca_key", "root_ca_key", "attestation_intermediate_ca_key"} {
		if _, err := pemutil.Read(filepath.Join(dir, "secrets", key), pemutil.WithPassword([]byte(password))); err != nil {
			t.Errorf("%s does not decrypt with the password file: %v", key, err)
		}
	}

	// The provisioners trust the roots init wrote, not some other copy.
	ca, err := upstream.LoadConfiguration(res.ConfigFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ca.AuthorityConfig.Provisioners {
		switch p := p.(type) {
		case *provisioner.X5C:
			if !bytes.Equal(p.Roots, mustRead(t, res.RootFile)) {
				t.Errorf("X5C %s roots are not the CA root", p.Name)
			}
		case *provisioner.ACME:
			if p.Name == agentsProvisioner && !bytes.Equal(p.AttestationRoots, mustRead(t, filepath.Join(dir, "certs", "attestation_root_ca.crt"))) {
				t.Errorf("ACME %s attestationRoots are not the Attestation CA root", p.Name)
			}
		}
	}
}

func TestInitAdminTokenAuthenticates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	res := initInto(t, dir, false)
	tok := authenticate(t, filepath.Join(dir, "db", "stepfort.db"), string(mustRead(t, res.AdminTokenFile)))
	if tok == nil || !tok.Allows("tokens:write") {
		t.Fatalf("init token %+v does not hold every scope", tok)
	}
}

func TestInitRefusesNonEmptyDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "keep"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Init(Options{Dir: dir})
	if !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("Init into a non-empty dir = %v, want ErrNotEmpty", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "config", "ca.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ca.json written despite the refusal: %v", err)
	}
}

func TestInitForceReplacesInstallation(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	first := initInto(t, dir, false)
	oldToken := string(mustRead(t, first.AdminTokenFile))
	if _, err := Init(Options{Dir: dir}); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("second Init without --force = %v, want ErrNotEmpty", err)
	}
	second := initInto(t, dir, true)
	if second.RootFingerprint == first.RootFingerprint {
		t.Error("--force kept the old root")
	}
	// The old database held the old CA's certificates and tokens: it must
	// be gone, so the old admin token no longer works and the new one does.
	dbPath := filepath.Join(dir, "db", "stepfort.db")
	if authenticate(t, dbPath, oldToken) != nil {
		t.Error("the admin token of the replaced installation still authenticates")
	}
	if authenticate(t, dbPath, string(mustRead(t, second.AdminTokenFile))) == nil {
		t.Error("the new admin token does not authenticate")
	}
}

func TestOptionsRejected(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"no dir", Options{}, "--dir"},
		{"bad dns", Options{DNSNames: []string{"a b"}}, "--dns"},
		{"bad address", Options{Address: "9000"}, "--address"},
		{"bad insecure address", Options{InsecureAddress: "x"}, "--insecure-address"},
		{"postgresql without dsn", Options{DB: "postgresql"}, "--db-dsn"},
		{"unknown db", Options{DB: "mysql"}, "--db"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name != "no dir" {
				tt.o.Dir = t.TempDir()
			}
			_, err := Init(tt.o)
			if err == nil || !strings.HasPrefix(err.Error(), tt.want+":") {
				t.Fatalf("Init = %v, want an error about %s", err, tt.want)
			}
		})
	}
}

// authenticate opens the bbolt database and checks a bearer secret; nil
// means it does not authenticate.
func authenticate(t *testing.T, path, secret string) *admin.Token {
	t.Helper()
	db, err := nosql.New("bbolt", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	store, err := admin.NewTokenStore(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := store.Authenticate(strings.TrimSpace(secret))
	if errors.Is(err, admin.ErrUnauthenticated) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(mustRead(t, path))
	if block == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
