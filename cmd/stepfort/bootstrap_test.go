package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smallstep/nosql"
	"github.com/urfave/cli"

	"github.com/stepfort/stepfort/internal/admin"
	"github.com/stepfort/stepfort/internal/setup"
)

// runTokens runs `stepfort tokens <args>` in-process.
func runTokens(t *testing.T, args ...string) error {
	t.Helper()
	app := cli.NewApp()
	app.Writer, app.ErrWriter = os.Stderr, os.Stderr
	app.Commands = []cli.Command{tokensCommand()}
	return app.Run(append([]string{"stepfort", "tokens"}, args...))
}

// newInstall writes a bbolt installation and returns its ca.json.
func newInstall(t *testing.T) string {
	t.Helper()
	res, err := setup.Init(setup.Options{Dir: filepath.Join(t.TempDir(), "ca"), Address: "127.0.0.1:9443", InsecureAddress: "127.0.0.1:9480"})
	if err != nil {
		t.Fatal(err)
	}
	return res.ConfigFile
}

// `tokens bootstrap --out` onto an existing world-readable file must not
// leave a "*" token world-readable (issue 11, finding 8), and must not
// write through a symlink.
func TestBootstrapOutIsPrivate(t *testing.T) {
	cfg := newInstall(t)
	dir := t.TempDir()

	out := filepath.Join(dir, "token")
	if err := os.WriteFile(out, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(out, 0o644); err != nil { // regardless of umask
		t.Fatal(err)
	}
	if err := runTokens(t, "bootstrap", cfg, "--out", out); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(out)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != 0o600 {
		t.Errorf("--out onto an existing 0644 file left mode %v, want -rw-------", fi.Mode())
	}
	if b, _ := os.ReadFile(out); !strings.HasPrefix(string(b), "sft_") {
		t.Errorf("--out holds %q, want the new secret", b)
	}

	// A symlink is refused, and its target keeps its content.
	target := filepath.Join(dir, "public")
	if err := os.WriteFile(target, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	err = runTokens(t, "bootstrap", cfg, "--out", link)
	if err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("--out onto a symlink = %v, want a refusal naming the symlink", err)
	}
	if b, _ := os.ReadFile(target); len(b) != 0 {
		t.Errorf("the secret was written through the symlink into %s", target)
	}
	// The refusal came before a token was made: init's and the first one.
	if n := countTokens(t, cfg); n != 2 {
		t.Errorf("%d tokens in the database, want 2 (a refused --out must not leave a token behind)", n)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, "*tmp*")); len(leftovers) > 0 {
		t.Errorf("temporary files left behind: %v", leftovers)
	}
}

// countTokens counts the tokens in the bbolt database of an installation.
func countTokens(t *testing.T, cfg string) int {
	t.Helper()
	db, err := nosql.New("bbolt", filepath.Join(filepath.Dir(filepath.Dir(cfg)), "db", "stepfort.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	store, err := admin.NewTokenStore(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	list, err := store.List()
	if err != nil {
		t.Fatal(err)
	}
	return len(list)
}
