package setup

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A re-run of init must not write secrets through a file planted at a
// predictable temporary name, and fixes the mode of an existing secrets
// directory (issue 11, finding 8).
func TestInitSecretsResistPlantedFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	initInto(t, dir, false)
	secrets := filepath.Join(dir, "secrets")
	if err := os.Chmod(secrets, 0o755); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "public")
	if err := os.WriteFile(outside, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"password.tmp", "admin-token.tmp", "root_ca_key.tmp"} {
		if err := os.Symlink(outside, filepath.Join(secrets, name)); err != nil {
			t.Fatal(err)
		}
	}
	_, err := Init(Options{Dir: dir, Address: "127.0.0.1:9443", InsecureAddress: "127.0.0.1:9480", Force: true})
	if b, _ := os.ReadFile(outside); len(b) != 0 {
		t.Fatalf("init wrote a secret through a planted symlink: %q", b)
	}
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	if fi, err := os.Stat(secrets); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("secrets dir mode = %v (err %v), want 0700", fi.Mode(), err)
	}
}

func TestWriteSecretFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "s")
	if err := os.WriteFile(p, []byte("old"), 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := WriteSecretFile(p, []byte("new\n")); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(p); fi.Mode() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode())
	}
	if b, _ := os.ReadFile(p); string(b) != "new\n" {
		t.Errorf("content %q", b)
	}
	for name, mk := range map[string]func(string) error{
		"symlink":   func(p string) error { return os.Symlink(filepath.Join(dir, "s"), p) },
		"directory": func(p string) error { return os.Mkdir(p, 0o700) },
	} {
		p := filepath.Join(dir, name)
		if err := mk(p); err != nil {
			t.Fatal(err)
		}
		if err := WriteSecretFile(p, []byte("x")); err == nil || !strings.Contains(err.Error(), "is a "+name) {
			t.Errorf("WriteSecretFile onto a %s = %v, want a refusal naming it", name, err)
		}
	}
	if b, _ := os.ReadFile(p); string(b) != "new\n" {
		t.Errorf("symlink target changed to %q", b)
	}
	if err := WriteSecretFile(filepath.Join(dir, "missing", "s"), []byte("x")); err == nil {
		t.Error("write into a missing directory succeeded")
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), "tmp") {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}
}
