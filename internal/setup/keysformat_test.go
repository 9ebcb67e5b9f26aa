package setup

import (
	"crypto/ed25519"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.step.sm/crypto/pemutil"

	"github.com/stepfort/stepfort/internal/audit"
)

// TestInitKeysArePKCS8 checks that the CA keys are encrypted PKCS #8
// (PBES2), not the legacy PEM encryption whose MD5 key derivation
// fips140=only refuses, and that they decrypt with the password file.
func TestInitKeysArePKCS8(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	res := initInto(t, dir, false)
	password := strings.TrimSpace(string(mustRead(t, res.PasswordFile)))
	for _, key := range []string{"root_ca_key", "intermediate_ca_key", "attestation_root_ca_key", "attestation_intermediate_ca_key"} {
		data := mustRead(t, filepath.Join(dir, "secrets", key))
		block, _ := pem.Decode(data)
		if block == nil || block.Type != "ENCRYPTED PRIVATE KEY" || len(block.Headers) != 0 {
			t.Errorf("%s: want an ENCRYPTED PRIVATE KEY block without legacy headers, got %q", key, firstLine(data))
			continue
		}
		if _, err := pemutil.Read(filepath.Join(dir, "secrets", key), pemutil.WithPassword([]byte(password))); err != nil {
			t.Errorf("%s does not decrypt with the password file: %v", key, err)
		}
	}
	// OpenSSL reads it too, and sees PBES2 with PBKDF2-HMAC-SHA-256 and
	// AES-256-CBC.
	key := filepath.Join(dir, "secrets", "intermediate_ca_key")
	if out, err := exec.Command("openssl", "pkey", "-in", key, "-passin", "file:"+res.PasswordFile, "-noout").CombinedOutput(); err != nil {
		t.Fatalf("openssl pkey: %v\n%s", err, out)
	}
	out, err := exec.Command("openssl", "asn1parse", "-in", key).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl asn1parse: %v\n%s", err, out)
	}
	for _, want := range []string{":PBES2", ":PBKDF2", ":hmacWithSHA256", ":aes-256-cbc"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("openssl asn1parse of %s lacks %s:\n%s", key, want, out)
		}
	}
}

func firstLine(b []byte) string {
	line, _, _ := strings.Cut(string(b), "\n")
	return line
}

// TestInitWritesAuditKey: init makes the audit trail's key, which the
// auditLog plugin then loads (ca.json's default key path), and reports
// its key id; a --force re-init keeps it.
func TestInitWritesAuditKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	res := initInto(t, dir, false)
	if res.AuditKeyFile != filepath.Join(dir, "secrets", "audit_key") {
		t.Fatalf("AuditKeyFile %q", res.AuditKeyFile)
	}
	if fi, err := os.Stat(res.AuditKeyFile); err != nil || fi.Mode() != 0o600 {
		t.Fatalf("audit key: %v %v", fi, err)
	}
	pub, err := audit.ParsePublicPEM(mustRead(t, res.AuditKeyFile+".pub"))
	if err != nil {
		t.Fatalf("audit public key: %v", err)
	}
	if res.AuditKeyID == "" || res.AuditKeyID != audit.KeyID(pub) {
		t.Fatalf("AuditKeyID %q, public key's id %q", res.AuditKeyID, audit.KeyID(pub))
	}
	// The plugin's default key path for init's log path is this file.
	c := audit.DefaultConfig()
	c.Path = filepath.Join(dir, "logs", "certificates.jsonl")
	if err := c.Validate(); err != nil || c.Key != res.AuditKeyFile {
		t.Fatalf("auditLog default key %q (%v), init wrote %q", c.Key, err, res.AuditKeyFile)
	}
	key, err := audit.LoadOrCreateKey(c.Key)
	if err != nil || !key.Public().(ed25519.PublicKey).Equal(pub) {
		t.Fatalf("the plugin loads another key: %v", err)
	}
	if again := initInto(t, dir, true); again.AuditKeyID != res.AuditKeyID {
		t.Fatalf("--force re-init replaced the audit key: %s, was %s", again.AuditKeyID, res.AuditKeyID)
	}
}

// TestInitCleansUpOnFailure: an init that fails (here: PostgreSQL is
// unreachable when the admin token is stored, the last step before
// ca.json) leaves nothing it created, so the next init needs no --force;
// what was in the directory before stays.
func TestInitCleansUpOnFailure(t *testing.T) {
	fail := func(dir string, force bool) error {
		_, err := Init(Options{Dir: dir, Address: "127.0.0.1:9443", InsecureAddress: "127.0.0.1:9480", Force: force,
			DB: "postgresql", DBDSN: "postgresql://stepfort:x@127.0.0.1:1/?connect_timeout=5"})
		if err == nil {
			t.Fatal("init with an unreachable database succeeded")
		}
		return err
	}

	t.Run("new directory", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "ca")
		err := fail(dir, false)
		if _, serr := os.Stat(dir); !errors.Is(serr, os.ErrNotExist) {
			t.Fatalf("failed init (%v) left %s: %v", err, dir, tree(t, dir))
		}
		initInto(t, dir, false) // no --force needed
	})

	t.Run("empty directory", func(t *testing.T) {
		dir := t.TempDir()
		fail(dir, false)
		if got := tree(t, dir); len(got) != 0 {
			t.Fatalf("failed init left %v", got)
		}
	})

	t.Run("force keeps what was there", func(t *testing.T) {
		dir := t.TempDir()
		for _, f := range []string{"notes.txt", "secrets/hsm-pin", "logs/old.log"} {
			if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, f)), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, f), []byte("keep"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		fail(dir, true)
		if got, want := tree(t, dir), []string{"logs", "logs/old.log", "notes.txt", "secrets", "secrets/hsm-pin"}; !slices.Equal(got, want) {
			t.Fatalf("after a failed --force init: %v, want %v", got, want)
		}
	})
}

// tree lists the paths under dir, relative and sorted.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	_ = filepath.WalkDir(dir, func(p string, _ os.DirEntry, err error) error {
		if err == nil && p != dir {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	slices.Sort(out)
	return out
}

// TestInitUnderFIPS140Only runs Init in a child with GODEBUG=fips140=only
// (fixed at start-up): the CA keys (PKCS #8), the JWK provisioner's JWE,
// the admin token and the audit key use approved algorithms only.
func TestInitUnderFIPS140Only(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperInitFIPS140Only$", "-test.v")
	cmd.Env = append(os.Environ(), "GODEBUG=fips140=only", "STEPFORT_FIPS_HELPER="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestHelperInitFIPS140Only") {
		t.Fatalf("child with fips140=only: %v\n%s", err, out)
	}
	// Back in mode off: the installation is complete and its keys open.
	password := strings.TrimSpace(string(mustRead(t, filepath.Join(dir, "secrets", "password"))))
	if _, err := pemutil.Read(filepath.Join(dir, "secrets", "intermediate_ca_key"), pemutil.WithPassword([]byte(password))); err != nil {
		t.Fatalf("key written under fips140=only: %v", err)
	}
}

func TestHelperInitFIPS140Only(t *testing.T) {
	dir := os.Getenv("STEPFORT_FIPS_HELPER")
	if dir == "" {
		t.Skip("run by TestInitUnderFIPS140Only")
	}
	res, err := Init(Options{Dir: dir, Address: "127.0.0.1:9443", InsecureAddress: "127.0.0.1:9480"})
	if err != nil {
		t.Fatalf("Init under fips140=only: %v", err)
	}
	if _, err := os.Stat(res.ConfigFile); err != nil {
		t.Fatal(err)
	}
}
