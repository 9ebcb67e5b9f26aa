package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBadInputFailsClearly checks that each configuration or start-up
// mistake exits non-zero, before serving, with one line naming the problem.
func TestBadInputFailsClearly(t *testing.T) {
	c := initCA(t)
	dir := t.TempDir()
	variant := func(name string, fn func(m map[string]any)) string {
		p := filepath.Join(dir, name+".json")
		copyFile(t, c.Config, p)
		editConfig(t, p, fn)
		return p
	}
	malformed := filepath.Join(dir, "malformed.json")
	if err := os.WriteFile(malformed, []byte("{\n  \"root\": \"x\",\n  \"crt\" \"y\"\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	wrongPassword := filepath.Join(dir, "wrong-password")
	if err := os.WriteFile(wrongPassword, []byte("not the password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyAddr := busy.Addr().String()

	tests := []struct {
		name     string
		config   string
		password string
		want     string
	}{
		{"malformed JSON", malformed, c.Password, "invalid JSON at line 3, column"},
		{"unknown key in stepfort", variant("unknown-key", func(m map[string]any) {
			m["stepfort"].(map[string]any)["admin"] = map[string]any{"enabeld": true}
		}), c.Password, "stepfort.admin.enabeld: unknown key"},
		{"bad duration", variant("bad-duration", func(m map[string]any) {
			m["stepfort"].(map[string]any)["events"] = map[string]any{"retryInterval": "ten seconds"}
		}), c.Password, `stepfort.events.retryInterval: invalid duration "ten seconds"`},
		{"wrong type", variant("wrong-type", func(m map[string]any) {
			m["stepfort"].(map[string]any)["events"] = map[string]any{"claimTTL": 30}
		}), c.Password, "stepfort.events.claimTTL: must be a duration string"},
		{"unknown plugin", variant("unknown-plugin", func(m map[string]any) {
			m["stepfort"].(map[string]any)["plugins"] = map[string]any{"billing2": map[string]any{}}
		}), c.Password, "stepfort.plugins.billing2: unknown plugin"},
		{"invalid plugin value", variant("plugin-value", func(m map[string]any) {
			m["stepfort"].(map[string]any)["plugins"] = map[string]any{"auditLog": map[string]any{"path": "relative.jsonl"}}
		}), c.Password, "stepfort.plugins.auditLog.path: must be absolute"},
		{"wrong key password", c.Config, wrongPassword, "decryption password incorrect"},
		{"port in use", variant("port-in-use", func(m map[string]any) {
			m["address"] = busyAddr
		}), c.Password, fmt.Sprintf("HTTPS listener on %s: address already in use", busyAddr)},
		{"missing config", filepath.Join(dir, "nope.json"), c.Password, "no such file or directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(stepfortBin, "serve", tt.config, "--password-file", tt.password)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			done := make(chan error, 1)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("exit status 0, want non-zero")
				}
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				t.Fatalf("still running after 30s; stderr:\n%s", stderr.String())
			}
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			last := lines[len(lines)-1]
			if !strings.HasPrefix(last, "stepfort: ") || !strings.Contains(last, tt.want) {
				t.Fatalf("last stderr line %q, want one line containing %q; all:\n%s", last, tt.want, stderr.String())
			}
			// config check reports configuration errors the same way.
			if tt.password == c.Password && !strings.Contains(tt.name, "port") {
				out, err := exec.Command(stepfortBin, "config", "check", tt.config).CombinedOutput()
				if err == nil || !strings.Contains(string(out), tt.want) {
					t.Fatalf("config check: err=%v out=%s", err, out)
				}
			}
		})
	}
	// The one-line rule: nothing but the error for config mistakes.
	out, _ := exec.Command(stepfortBin, "config", "check", malformed).CombinedOutput()
	if n := strings.Count(strings.TrimSpace(string(out)), "\n"); n != 0 {
		t.Fatalf("config check printed %d extra lines:\n%s", n, out)
	}
}

// TestInitRefusesNonEmptyDir checks --force is needed to overwrite.
func TestInitRefusesNonEmptyDir(t *testing.T) {
	c := initCA(t)
	out, err := exec.Command(stepfortBin, "init", "--dir", c.Dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not empty (use --force") {
		t.Fatalf("init on a non-empty dir: err=%v\n%s", err, out)
	}
	before, _ := os.ReadFile(c.Config)
	out, err = exec.Command(stepfortBin, "init", "--dir", c.Dir, "--force").CombinedOutput()
	if err != nil {
		t.Fatalf("init --force: %v\n%s", err, out)
	}
	after, _ := os.ReadFile(c.Config)
	if string(before) == string(after) {
		t.Fatal("init --force did not rewrite ca.json")
	}
	if fi, err := os.Stat(c.AdminToken); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin token file mode: %v %v", fi.Mode(), err)
	}
	if out, err := exec.Command(stepfortBin, "init", "--dir", t.TempDir(), "--db", "mysql").CombinedOutput(); err == nil || !strings.Contains(string(out), "--db: must be bbolt or postgresql") {
		t.Fatalf("bad --db accepted: %v %s", err, out)
	}
}
