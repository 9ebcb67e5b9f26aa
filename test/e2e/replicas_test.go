package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stepfort/stepfort/internal/testenv"
)

// replicaConfig copies a ca.json for a second replica on other ports. In
// production every replica has the same ca.json behind a load balancer; on
// one machine only the listen addresses differ.
func replicaConfig(t *testing.T, c *ca, name string) (config string, port int) {
	t.Helper()
	config, port, _ = replicaConfigPorts(t, c, name)
	return config, port
}

// replicaConfigPorts is replicaConfig that also returns the HTTP port.
func replicaConfigPorts(t *testing.T, c *ca, name string) (config string, port, httpPort int) {
	t.Helper()
	port = freePort(t)
	httpPort = freePort(t)
	config = filepath.Join(c.Dir, "config", name+".json")
	copyFile(t, c.Config, config)
	editConfig(t, config, func(m map[string]any) {
		m["address"] = fmt.Sprintf("127.0.0.1:%d", port)
		m["insecureAddress"] = fmt.Sprintf("127.0.0.1:%d", httpPort)
	})
	return config, port, httpPort
}

// TestPostgresReplicas runs two stepfort replicas on one PostgreSQL: a
// certificate issued on A renews on B, a one-time token used on A is refused
// on B, and revocation on B blocks renewal on A.
func TestPostgresReplicas(t *testing.T) {
	pg := testenv.StartPostgres(t)
	c := initCA(t, "--db", "postgresql", "--db-dsn", pg.DSN(), "--db-name", "replicas")
	configB, portB := replicaConfig(t, c, "replica-b")
	serve(t, c.Config, c.Password, c.Port)
	replicaB := serve(t, configB, c.Password, portB)
	urlA, urlB := c.URL, fmt.Sprintf("https://localhost:%d", portB)

	a, b := newStepCLI(t), newStepCLI(t)
	a.bootstrap(c, urlA)
	b.bootstrap(c, urlB)
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "d.crt"), filepath.Join(dir, "d.key")

	a.must("ca", "certificate", "replicated.example", crt, key, "--provisioner", "admin", "--provisioner-password-file", c.Password)
	first := certSerial(t, crt)
	b.must("ca", "renew", "--force", crt, key)
	if certSerial(t, crt) == first {
		t.Fatal("renew on replica B returned the same certificate")
	}

	// One-time token: used on A, replayed on B.
	tok := a.stdout("ca", "token", "ott.example", "--provisioner", "admin", "--provisioner-password-file", c.Password)
	a.must("ca", "certificate", "ott.example", filepath.Join(dir, "o1.crt"), filepath.Join(dir, "o1.key"), "--token", tok)
	out, err := b.run("ca", "certificate", "ott.example", filepath.Join(dir, "o2.crt"), filepath.Join(dir, "o2.key"), "--token", tok)
	if err == nil {
		t.Fatalf("replayed token accepted by replica B:\n%s", out)
	}
	// The CLI prints a generic 401; the reason is in replica B's log.
	if !strings.Contains(out, "lacked necessary authorization") || !strings.Contains(replicaB.Log(), "token already used") {
		t.Fatalf("replay refused for another reason:\n%s", out)
	}

	// Revocation through B is seen by A at renewal time.
	b.must("ca", "revoke", "--cert", crt, "--key", key)
	if out, err := a.run("ca", "renew", "--force", crt, key); err == nil {
		t.Fatalf("replica A renewed a certificate revoked on B:\n%s", out)
	}
}
