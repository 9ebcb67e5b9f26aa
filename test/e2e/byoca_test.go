package e2e

import (
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/testenv"
)

// adcsHierarchy is an "ADCS-like" CA hierarchy made with OpenSSL: an RSA
// root, an RSA 2048 issuing CA under it with AD CS's key usages, a leaf,
// and an unrelated CA key for mismatches. PFX files are exported in the
// legacy (3DES/RC2-40, what Windows writes by default) and AES-256 forms.
type adcsHierarchy struct {
	t   *testing.T
	dir string
	bin string
}

func newADCSHierarchy(t *testing.T) *adcsHierarchy {
	t.Helper()
	h := &adcsHierarchy{t: t, dir: t.TempDir(), bin: testenv.MustTool(t, "openssl")}
	ext := "[issuing]\nbasicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,digitalSignature,keyCertSign,cRLSign\n" +
		"subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" +
		"crlDistributionPoints=URI:http://pki.corp.example/CertEnroll/Corp%20Root%20CA.crl\n" +
		"[leaf]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
	h.write("ext.cnf", ext)
	h.write("pfx-password", "Sup3r secret PFX\n")
	h.write("wrong-password", "not the password\n")
	h.openssl("req", "-x509", "-newkey", "rsa:3072", "-nodes", "-keyout", "root.key", "-out", "root.crt", "-days", "7300", "-sha256",
		"-subj", "/DC=example/DC=corp/CN=Corp Root CA",
		"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,digitalSignature,keyCertSign,cRLSign")
	h.openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "issuing.key", "-out", "issuing.csr",
		"-subj", "/DC=example/DC=corp/CN=Corp Issuing CA 1")
	h.openssl("x509", "-req", "-in", "issuing.csr", "-CA", "root.crt", "-CAkey", "root.key", "-CAcreateserial",
		"-out", "issuing.crt", "-days", "3650", "-sha256", "-extfile", "ext.cnf", "-extensions", "issuing")
	h.openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=web.corp.example")
	h.openssl("x509", "-req", "-in", "leaf.csr", "-CA", "issuing.crt", "-CAkey", "issuing.key", "-CAcreateserial",
		"-out", "leaf.crt", "-days", "365", "-extfile", "ext.cnf", "-extensions", "leaf")
	h.openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "other.key")
	pass := "file:" + h.path("pfx-password")
	for _, form := range []struct {
		suffix string
		opts   []string
	}{{"legacy", []string{"-legacy"}}, {"aes", nil}} {
		h.openssl(append([]string{"pkcs12", "-export", "-inkey", "root.key", "-in", "root.crt", "-name", "Corp Root CA",
			"-out", "root-" + form.suffix + ".pfx", "-passout", pass}, form.opts...)...)
		// The chain inside, with Microsoft's CSP name bag attribute.
		h.openssl(append([]string{"pkcs12", "-export", "-inkey", "issuing.key", "-in", "issuing.crt", "-certfile", "root.crt",
			"-name", "Corp Issuing CA 1", "-CSP", "Microsoft Software Key Storage Provider",
			"-out", "issuing-" + form.suffix + ".pfx", "-passout", pass}, form.opts...)...)
	}
	return h
}

func (h *adcsHierarchy) path(name string) string { return filepath.Join(h.dir, name) }

func (h *adcsHierarchy) write(name, content string) {
	h.t.Helper()
	if err := os.WriteFile(h.path(name), []byte(content), 0o600); err != nil {
		h.t.Fatal(err)
	}
}

func (h *adcsHierarchy) openssl(args ...string) string {
	h.t.Helper()
	cmd := exec.Command(h.bin, args...)
	cmd.Dir = h.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		h.t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// issueLeaf serves c, issues a leaf with the step CLI (JWK provisioner)
// and returns its path.
func issueLeaf(t *testing.T, c *ca) string {
	t.Helper()
	serve(t, c.Config, c.Password, c.Port)
	step := newStepCLI(t)
	step.bootstrap(c, c.URL)
	dir := t.TempDir()
	crt := filepath.Join(dir, "leaf.crt")
	step.must("ca", "certificate", "app.corp.example", crt, filepath.Join(dir, "leaf.key"),
		"--provisioner", "admin", "--provisioner-password-file", c.Password)
	return crt
}

// opensslVerify runs openssl verify and fails unless it prints OK.
func (h *adcsHierarchy) verify(cafile, untrusted, cert string) {
	h.t.Helper()
	if out := h.openssl("verify", "-CAfile", cafile, "-untrusted", untrusted, cert); !strings.Contains(out, ": OK") {
		h.t.Fatalf("openssl verify: %s", out)
	}
}

func TestBYOCARootPFX(t *testing.T) {
	h := newADCSHierarchy(t)
	for _, form := range []string{"legacy", "aes"} {
		t.Run(form, func(t *testing.T) {
			c := initCA(t, "--root-pfx", h.path("root-"+form+".pfx"), "--pfx-password-file", h.path("pfx-password"))
			if _, err := os.Stat(filepath.Join(c.Dir, "secrets", "root_ca_key")); !os.IsNotExist(err) {
				t.Fatalf("the brought root key must not be written into the installation: %v", err)
			}
			root := readCert(t, c.Root)
			if !root.Equal(readCert(t, h.path("root.crt"))) {
				t.Fatalf("certs/root_ca.crt is %s, not the brought root", root.Subject)
			}
			inter := filepath.Join(c.Dir, "certs", "intermediate_ca.crt")
			leaf := issueLeaf(t, c)
			h.verify(h.path("root.crt"), inter, leaf)
			if got := readCert(t, leaf).Issuer.CommonName; got != "Stepfort Intermediate CA" {
				t.Errorf("leaf issued by %q, want stepfort's new intermediate", got)
			}
		})
	}
}

func TestBYOCAIssuerPFX(t *testing.T) {
	h := newADCSHierarchy(t)
	c := initCA(t, "--issuer-pfx", h.path("issuing-legacy.pfx"), "--pfx-password-file", h.path("pfx-password"))
	if !readCert(t, c.Root).Equal(readCert(t, h.path("root.crt"))) {
		t.Fatal("certs/root_ca.crt is not the root found in the PFX chain")
	}
	leafFile := issueLeaf(t, c)
	issuing := readCert(t, h.path("issuing.crt"))
	leaf := readCert(t, leafFile)
	if err := leaf.CheckSignatureFrom(issuing); err != nil {
		t.Fatalf("leaf not signed by the brought issuing CA: %v", err)
	}
	h.verify(h.path("root.crt"), h.path("issuing.crt"), leafFile)
	// The CRL is signed with the brought key too.
	eventually(t, 20*time.Second, func() error {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/1.0/crl", c.HTTPPort))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		der, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return err
		}
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			return fmt.Errorf("status %d: %w", resp.StatusCode, err)
		}
		return crl.CheckSignatureFrom(issuing)
	})
}

// TestBYOCABadInput: bad CA input through the real binary exits non-zero,
// names the problem and the file, and writes no ca.json.
func TestBYOCABadInput(t *testing.T) {
	h := newADCSHierarchy(t)
	pfx, err := os.ReadFile(h.path("issuing-aes.pfx"))
	if err != nil {
		t.Fatal(err)
	}
	h.write("truncated.pfx", string(pfx[:len(pfx)*2/3]))
	pw := h.path("pfx-password")
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"wrong PFX password", []string{"--root-pfx", h.path("root-legacy.pfx"), "--pfx-password-file", h.path("wrong-password")},
			[]string{"PFX password is wrong", "root-legacy.pfx"}},
		{"truncated PFX", []string{"--issuer-pfx", h.path("truncated.pfx"), "--pfx-password-file", pw},
			[]string{"truncated or corrupt", "truncated.pfx"}},
		{"mismatched key", []string{"--issuer-cert", h.path("issuing.crt"), "--issuer-key", h.path("other.key"), "--root-cert", h.path("root.crt")},
			[]string{"other.key", "does not match", "issuing.crt"}},
		{"not a CA", []string{"--issuer-cert", h.path("leaf.crt"), "--issuer-key", h.path("leaf.key"), "--root-cert", h.path("root.crt")},
			[]string{"web.corp.example", "not a CA", "basicConstraints CA:TRUE", "keyCertSign"}},
		{"root and issuer", []string{"--root-pfx", h.path("root-aes.pfx"), "--issuer-pfx", h.path("issuing-aes.pfx"), "--pfx-password-file", pw},
			[]string{"--root-pfx", "--issuer-pfx", "exclude each other"}},
		{"issuer without its root", []string{"--issuer-cert", h.path("issuing.crt"), "--issuer-key", h.path("issuing.key")},
			[]string{"Corp Issuing CA 1", "--root-cert"}},
		{"PFX without password file", []string{"--root-pfx", h.path("root-aes.pfx")}, []string{"--pfx-password-file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ca")
			args := append([]string{"init", "--dir", dir, "--address", "127.0.0.1:1", "--insecure-address", "127.0.0.1:2"}, tt.args...)
			out, err := exec.Command(stepfortBin, args...).CombinedOutput()
			if err == nil {
				t.Fatalf("stepfort init succeeded:\n%s", out)
			}
			t.Logf("%s", out)
			for _, w := range tt.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output does not mention %q:\n%s", w, out)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, "config", "ca.json")); !os.IsNotExist(err) {
				t.Errorf("ca.json written despite the error: %v", err)
			}
		})
	}
}

// TestBYOCADeltaCRLFlag: init --delta-crl writes a configuration the
// daemon starts with.
func TestBYOCADeltaCRLFlag(t *testing.T) {
	c := initCA(t, "--delta-crl")
	b, err := os.ReadFile(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"deltaPeriod": "24h"`) {
		t.Fatalf("ca.json has no delta block:\n%s", b)
	}
	serve(t, c.Config, c.Password, c.Port)
}
