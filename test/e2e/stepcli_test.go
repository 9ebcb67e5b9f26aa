package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// stepCLIFlows runs the step CLI commands a user runs daily against url:
// bootstrap, health, certificate (JWK), renew over mTLS, revoke, and an
// ACME http-01 certificate when acmeProvisioner is set. It returns the
// serials issued, renewed and revoked.
func stepCLIFlows(t *testing.T, c *ca, url, jwkProvisioner, jwkPassword string) (issued, renewed string) {
	t.Helper()
	step := newStepCLI(t)
	step.bootstrap(c, url)
	if out := step.must("ca", "health"); !strings.Contains(out, "ok") {
		t.Fatalf("step ca health: %q", out)
	}
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "dev.crt"), filepath.Join(dir, "dev.key")
	step.must("ca", "certificate", "device-1.example", crt, key, "--provisioner", jwkProvisioner,
		"--provisioner-password-file", jwkPassword, "--san", "device-1.example", "--san", "10.0.0.7")
	issued = certSerial(t, crt)
	cert := readCert(t, crt)
	if cert.Subject.CommonName != "device-1.example" || len(cert.IPAddresses) != 1 {
		t.Fatalf("issued certificate subject %v ips %v", cert.Subject, cert.IPAddresses)
	}
	step.must("ca", "renew", "--force", crt, key) // mTLS with the current certificate
	renewed = certSerial(t, crt)
	if renewed == issued {
		t.Fatal("renew returned the same serial")
	}
	out := step.must("ca", "revoke", "--cert", crt, "--key", key, "--reason", "decommissioned")
	if !strings.Contains(out, "has been revoked") {
		t.Fatalf("revoke output: %q", out)
	}
	// Renewing a revoked certificate is refused.
	if out, err := step.run("ca", "renew", "--force", crt, key); err == nil {
		t.Fatalf("renew of a revoked certificate succeeded: %s", out)
	}
	return issued, renewed
}

func TestStepCLIAgainstStepfortInit(t *testing.T) {
	c := initCA(t)
	acmePort := freePort(t)
	// --insecure --acme-http-port are upstream step-ca flags; they make the
	// http-01 validation connect to the step CLI's --http-listen port.
	serve(t, c.Config, c.Password, c.Port, "--insecure", "--acme-http-port", fmt.Sprint(acmePort))
	step := newStepCLI(t)
	step.bootstrap(c, c.URL)
	// The ACME http-01 flow needs the CLI to listen where the CA connects.
	dir := t.TempDir()
	acmeCrt, acmeKey := filepath.Join(dir, "acme.crt"), filepath.Join(dir, "acme.key")
	step.must("ca", "certificate", "localhost", acmeCrt, acmeKey, "--provisioner", "acme",
		"--http-listen", fmt.Sprintf("127.0.0.1:%d", acmePort))
	if got := readCert(t, acmeCrt); len(got.DNSNames) != 1 || got.DNSNames[0] != "localhost" {
		t.Fatalf("ACME certificate SANs %v", got.DNSNames)
	}
	stepCLIFlows(t, c, c.URL, "admin", c.Password)
}

// TestUpstreamStepCAInitConfigRunsUnchanged makes a CA with upstream's
// `step ca init` and serves it with `stepfort <ca.json>`, the drop-in form.
func TestUpstreamStepCAInitConfigRunsUnchanged(t *testing.T) {
	step := newStepCLI(t)
	dir := t.TempDir()
	pw := filepath.Join(dir, "password")
	if err := os.WriteFile(pw, []byte("upstream-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	step.must("ca", "init", "--name", "Upstream Test", "--dns", "localhost", "--address", fmt.Sprintf("127.0.0.1:%d", port),
		"--provisioner", "ops@example.com", "--password-file", pw, "--deployment-type", "standalone", "--acme")
	config := filepath.Join(step.path, "config", "ca.json")
	before, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	acmePort := freePort(t)
	p := startDropIn(t, []string{config, "--password-file", pw, "--insecure", "--acme-http-port", fmt.Sprint(acmePort)})
	waitHealthy(t, p, port)

	fp := strings.TrimSpace(step.must("certificate", "fingerprint", filepath.Join(step.path, "certs", "root_ca.crt")))
	c := &ca{Fingerprint: fp, Root: filepath.Join(step.path, "certs", "root_ca.crt")}
	url := fmt.Sprintf("https://localhost:%d", port)
	stepCLIFlows(t, c, url, "ops@example.com", pw)

	client := newStepCLI(t)
	client.bootstrap(c, url)
	acmeCrt, acmeKey := filepath.Join(dir, "acme.crt"), filepath.Join(dir, "acme.key")
	client.must("ca", "certificate", "localhost", acmeCrt, acmeKey, "--provisioner", "acme",
		"--http-listen", fmt.Sprintf("127.0.0.1:%d", acmePort))

	// The first admin token of a CA not made by stepfort init.
	p.Signal(os.Interrupt)
	if err := p.Wait(30 * time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	out, err := exec.Command(stepfortBin, "tokens", "bootstrap", config, "--name", "ops", "--out", filepath.Join(dir, "token")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Created token") {
		t.Fatalf("tokens bootstrap: %v\n%s", err, out)
	}
	p = startDropIn(t, []string{config, "--password-file", pw})
	waitHealthy(t, p, port)
	tokenBytes, _ := os.ReadFile(filepath.Join(dir, "token"))
	listOut, err := exec.Command(stepfortBin, "tokens", "list", "--ca-url", url, "--root", c.Root, "--token", strings.TrimSpace(string(tokenBytes))).CombinedOutput()
	if err != nil || !strings.Contains(string(listOut), "ops") {
		t.Fatalf("tokens list with the bootstrapped token: %v\n%s", err, listOut)
	}

	after, _ := os.ReadFile(config)
	if string(before) != string(after) {
		t.Fatal("stepfort modified the upstream ca.json")
	}
	out, err = exec.Command(stepfortBin, "config", "check", config).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "OK") {
		t.Fatalf("config check of an upstream config: %v %s", err, out)
	}
}
