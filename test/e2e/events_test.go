package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/testenv"
)

type auditLine struct {
	ID           string `json:"id"`
	Kind         string `json:"kind"`
	Serial       string `json:"serial"`
	ParentSerial string `json:"parentSerial"`
	Provisioner  *struct {
		Name, Type string
	} `json:"provisioner"`
	Revocation *struct {
		ReasonCode int    `json:"reasonCode"`
		Reason     string `json:"reason"`
		MTLS       bool   `json:"mtls"`
	} `json:"revocation"`
	Subject string `json:"subject"`
}

func readAudit(path string) ([]auditLine, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []auditLine
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l auditLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return nil, fmt.Errorf("bad audit line %q: %w", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out, sc.Err()
}

// TestEventsSurviveKill9 issues, renews and revokes while the observer
// (the auditLog plugin, mounted through the plugin contract) cannot write,
// kills the daemon with SIGKILL, repairs the observer and restarts: every
// event arrives exactly once with the right data.
func TestEventsSurviveKill9(t *testing.T) {
	for _, backend := range []string{"bbolt", "postgresql"} {
		t.Run(backend, func(t *testing.T) {
			var extra []string
			if backend == "postgresql" {
				pg := testenv.StartPostgres(t)
				extra = []string{"--db", "postgresql", "--db-dsn", pg.DSN(), "--db-name", "events"}
			}
			c := initCA(t, extra...)
			auditDir := filepath.Join(t.TempDir(), "audit")
			auditFile := filepath.Join(auditDir, "certificates.jsonl")
			editConfig(t, c.Config, func(m map[string]any) {
				sf := m["stepfort"].(map[string]any)
				sf["events"] = map[string]any{"retryInterval": "200ms"}
				sf["plugins"].(map[string]any)["auditLog"] = map[string]any{"path": auditFile}
			})
			daemon := serve(t, c.Config, c.Password, c.Port)

			step := newStepCLI(t)
			step.bootstrap(c, c.URL)
			dir := t.TempDir()
			crt, key := filepath.Join(dir, "e.crt"), filepath.Join(dir, "e.key")
			step.must("ca", "certificate", "events.example", crt, key, "--provisioner", "admin", "--provisioner-password-file", c.Password)
			issued := certSerial(t, crt)
			step.must("ca", "renew", "--force", crt, key)
			renewed := certSerial(t, crt)
			step.must("ca", "revoke", "--cert", crt, "--key", key, "--reason", "retired", "--reasonCode", "5")

			// The observer has failed at least once, so the events are only in
			// the database when the daemon dies.
			eventually(t, 10*time.Second, func() error {
				if !strings.Contains(daemon.Log(), "certificate event delivery failed") {
					return fmt.Errorf("no delivery failure logged yet")
				}
				return nil
			})
			if _, err := os.Stat(auditFile); !os.IsNotExist(err) {
				t.Fatalf("audit file exists before the repair: %v", err)
			}
			if err := daemon.Kill9(); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(auditDir, 0o700); err != nil {
				t.Fatal(err)
			}
			serve(t, c.Config, c.Password, c.Port)

			var lines []auditLine
			eventually(t, 30*time.Second, func() error {
				var err error
				if lines, err = readAudit(auditFile); err != nil {
					return err
				}
				if len(lines) < 3 {
					return fmt.Errorf("%d of 3 events delivered", len(lines))
				}
				return nil
			})
			time.Sleep(time.Second) // a duplicate would show up now
			lines, _ = readAudit(auditFile)
			if len(lines) != 3 {
				t.Fatalf("want exactly 3 events, got %d: %+v", len(lines), lines)
			}
			byKind := map[string]auditLine{}
			for _, l := range lines {
				byKind[l.Kind] = l
				if l.Provisioner == nil || l.Provisioner.Name != "admin" || l.Provisioner.Type != "JWK" {
					t.Errorf("%s event provisioner = %+v", l.Kind, l.Provisioner)
				}
			}
			if l := byKind["issued"]; l.Serial != issued || l.Subject != "CN=events.example" {
				t.Errorf("issued event = %+v, want serial %s", l, issued)
			}
			if l := byKind["renewed"]; l.Serial != renewed || l.ParentSerial != issued {
				t.Errorf("renewed event = %+v, want serial %s parent %s", l, renewed, issued)
			}
			if l := byKind["revoked"]; l.Serial != renewed || l.Revocation == nil || l.Revocation.ReasonCode != 5 || l.Revocation.Reason != "retired" || !l.Revocation.MTLS {
				t.Errorf("revoked event = %+v", l)
			}
		})
	}
}
