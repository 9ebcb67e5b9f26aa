package main

import (
	"os"
	"strings"
	"testing"

	"github.com/urfave/cli"
)

// runMigrate runs `stepfort migrate adcs <args>` in-process.
func runMigrate(t *testing.T, args ...string) error {
	t.Helper()
	app := cli.NewApp()
	app.Writer, app.ErrWriter = os.Stderr, os.Stderr
	app.Commands = []cli.Command{migrateCommand()}
	return app.Run(append([]string{"stepfort", "migrate", "adcs"}, args...))
}

// Flag errors name the flag; a missing issuer names ca.json; bbolt's lock
// is explained.
func TestMigrateFlags(t *testing.T) {
	cfg := newInstall(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"import", "--issuer", "x", "f"}, "--config: required"},
		{[]string{"import", "--config", cfg, "f"}, "--issuer: required"},
		{[]string{"import", "--config", cfg, "--issuer", "x"}, "expected one or more FILEs"},
		{[]string{"import", "--config", cfg, "--issuer", "x", "--timezone", "Mars/Olympus", "f"}, "--timezone"},
		{[]string{"import", "--config", cfg, "--issuer", "nope", "f"}, `no legacy issuer named "nope"`},
		{[]string{"check", "--config", cfg, "--issuer", "x"}, "expected one or more CRL files"},
		{[]string{"issuer", "add", "--config", cfg, "--name", "x", "--crl-url", "http://a/b.crl"}, "give --pfx and --password-file, or --cert and --key"},
		{[]string{"issuer", "add", "--config", cfg, "--name", "x", "--crl-url", "http://a/b.crl", "--pfx", "p"}, "--password-file: required with --pfx"},
		{[]string{"issuer", "add", "--config", cfg, "--name", "x", "--crl-url", "http://a/b.crl", "--pfx", "p", "--cert", "c"}, "not both"},
		{[]string{"issuer", "add", "--config", cfg, "--crl-url", "http://a/b.crl"}, "--name: required"},
		{[]string{"revoke", "--issuer", "x", "--serial", "zz", "--reason", "1"}, "--serial: not a hexadecimal number"},
		{[]string{"revoke", "--issuer", "x", "--serial", "1a", "--reason", "7"}, "--reason"},
		{[]string{"revoke", "--issuer", "a/b", "--serial", "1a", "--reason", "1"}, "--issuer"},
	} {
		err := runMigrate(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want %q", tc.args, err, tc.want)
		}
	}
	out, err := os.ReadFile(cfg)
	if err != nil || strings.Contains(string(out), "legacyIssuers") {
		t.Errorf("a failed command changed ca.json: %v", err)
	}
}
