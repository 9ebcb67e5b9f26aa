package audit

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

// newFromFactory builds the plugin the way the daemon does, through the
// registered factory.
func newFromFactory(t *testing.T, path string) (plugins.Plugin, error) {
	t.Helper()
	f, ok := plugins.Lookup(Name)
	if !ok {
		t.Fatalf("%s is not registered", Name)
	}
	cfg := f.NewConfig().(*Config)
	cfg.Path = path
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return f.New(cfg, plugintest.NewHost(t))
}

func observer(t *testing.T, path string) plugins.CertificateObserver {
	t.Helper()
	p, err := newFromFactory(t, path)
	if err != nil {
		t.Fatal(err)
	}
	o, ok := p.(plugins.CertificateObserver)
	if !ok {
		t.Fatalf("%T is not a CertificateObserver", p)
	}
	return o
}

func issuedEvent(t *testing.T, id string) plugins.CertificateEvent {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(4242),
		Subject:      pkix.Name{CommonName: "host.example"},
		NotBefore:    time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return plugins.CertificateEvent{
		ID: id, Kind: plugins.EventIssued, Serial: "4242", OccurredAt: time.Date(2026, 3, 1, 10, 0, 1, 0, time.UTC),
		Provisioner: &plugins.ProvisionerRef{Name: "acme", Type: "ACME"}, CertificateDER: der,
	}
}

func readLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q is not JSON: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func TestWritesOneLinePerEvent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "certificates.jsonl")
	o := observer(t, path)
	ctx := context.Background()
	if err := o.ObserveCertificate(ctx, issuedEvent(t, "ev-1")); err != nil {
		t.Fatal(err)
	}
	revoked := plugins.CertificateEvent{ID: "ev-2", Kind: plugins.EventRevoked, Serial: "4242",
		Revocation: &plugins.Revocation{ReasonCode: 1, Reason: "key compromise", RevokedAt: time.Date(2026, 3, 1, 11, 0, 0, 0, time.UTC)}}
	if err := o.ObserveCertificate(ctx, revoked); err != nil {
		t.Fatal(err)
	}

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", fi.Mode().Perm())
	}
	lines := readLines(t, path)
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2", len(lines))
	}
	want := map[string]any{
		"id": "ev-1", "kind": "issued", "serial": "4242", "subject": "CN=host.example",
		"notBefore": "2026-03-01T10:00:00Z", "notAfter": "2026-03-02T10:00:00Z",
	}
	for k, v := range want {
		if lines[0][k] != v {
			t.Errorf("line 1 %s = %v, want %v", k, lines[0][k], v)
		}
	}
	if _, ok := lines[0]["certificate"]; ok {
		t.Error("line 1 carries the certificate DER; the serial identifies it")
	}
	if p, _ := lines[0]["provisioner"].(map[string]any); p["name"] != "acme" {
		t.Errorf("line 1 provisioner = %v", lines[0]["provisioner"])
	}
	if lines[1]["kind"] != "revoked" || lines[1]["revocation"].(map[string]any)["reason"] != "key compromise" {
		t.Errorf("line 2 = %v", lines[1])
	}
	if _, ok := lines[1]["subject"]; ok {
		t.Error("a revocation without a certificate has no subject")
	}
}

// Delivery is at least once: a retried event, before or after a restart,
// must not be written twice.
func TestRedeliveryIsWrittenOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "certificates.jsonl")
	ctx := context.Background()
	ev := issuedEvent(t, "ev-1")
	o := observer(t, path)
	for range 2 {
		if err := o.ObserveCertificate(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(readLines(t, path)); n != 1 {
		t.Fatalf("%d lines after a retry, want 1", n)
	}

	restarted := observer(t, path) // a new daemon reads the IDs back
	if err := restarted.ObserveCertificate(ctx, ev); err != nil {
		t.Fatal(err)
	}
	if err := restarted.ObserveCertificate(ctx, issuedEvent(t, "ev-2")); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path)
	if len(lines) != 2 || lines[0]["id"] != "ev-1" || lines[1]["id"] != "ev-2" {
		t.Fatalf("after restart: %v, want ev-1 once then ev-2", lines)
	}
}

// A torn line (a crash mid-write) must not keep the daemon from starting.
func TestUnparsableLinesAreSkipped(t *testing.T) {
	path := filepath.Join(t.TempDir(), "certificates.jsonl")
	if err := os.WriteFile(path, []byte(`{"id":"ev-1","kind":"issued"}`+"\n"+`{"id":"ev-2","ki`), 0o600); err != nil {
		t.Fatal(err)
	}
	o := observer(t, path)
	if err := o.ObserveCertificate(context.Background(), issuedEvent(t, "ev-1")); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if strings.Count(string(b), `"ev-1"`) != 1 {
		t.Errorf("ev-1 written again after restart:\n%s", b)
	}
}

// While the directory is missing, delivery fails with an error naming the
// file (so the daemon retries it); once the directory exists it succeeds.
func TestMissingDirectoryFailsUntilCreated(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "logs")
	path := filepath.Join(dir, "certificates.jsonl")
	o := observer(t, path)
	err := o.ObserveCertificate(context.Background(), issuedEvent(t, "ev-1"))
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), path) {
		t.Fatalf("ObserveCertificate with no directory = %v, want a not-exist error naming %s", err, path)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := o.ObserveCertificate(context.Background(), issuedEvent(t, "ev-1")); err != nil {
		t.Fatalf("retry after the directory exists: %v", err)
	}
	if n := len(readLines(t, path)); n != 1 {
		t.Fatalf("%d lines, want 1", n)
	}
}

// A path that exists but cannot be read as the log stops the plugin from
// being built, with an error naming the path.
func TestUnreadablePathFailsNew(t *testing.T) {
	dir := t.TempDir() // a directory where the file should be
	_, err := newFromFactory(t, dir)
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("New on a directory = %v, want an error naming %s", err, dir)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		path    string
		wantErr bool
	}{
		{"/var/log/stepfort/certificates.jsonl", false},
		{"", true},
		{"logs/certificates.jsonl", true},
	}
	for _, tt := range tests {
		c := DefaultConfig()
		c.Path = tt.path
		err := c.Validate()
		if (err != nil) != tt.wantErr {
			t.Errorf("Validate(%q) = %v, wantErr %v", tt.path, err, tt.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), "path") {
			t.Errorf("Validate(%q) = %v, want it to name the path field", tt.path, err)
		}
	}
}
