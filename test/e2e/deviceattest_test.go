package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.step.sm/crypto/x509util"

	"github.com/stepfort/stepfort/internal/testenv"
)

// deviceAgent is one device's step CLI with its TPM key store; the AK and
// its certificate persist in the store, so later runs reuse the AK (as an
// enrolled agent does) and reach the device-attest-01 challenge directly.
type deviceAgent struct {
	t       *testing.T
	step    *stepCLI
	sw      *swtpm
	c       *ca
	url     string
	dir     string
	storage string
}

// withKMSPlugin puts a stand-in step-kms-plugin (tpmkms key and sign only;
// the real one is not on the Go module proxy) on PATH, so the step CLI can
// sign an x5c token with the device's TPM key.
func withKMSPlugin(t *testing.T) {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "step-kms-plugin"), "./provisioners/deviceattest/testdata/step-kms-plugin")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build step-kms-plugin: %v\n%s", err, out)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

func newDeviceAgent(t *testing.T, sw *swtpm, c *ca, url string) *deviceAgent {
	step := newStepCLI(t)
	step.bootstrap(c, url)
	dir := t.TempDir()
	return &deviceAgent{t: t, step: step, sw: sw, c: c, url: url, dir: dir, storage: filepath.Join(dir, "tpmstore")}
}

func (a *deviceAgent) keyURI(name string) string {
	return "tpmkms:name=" + name + ";device=" + a.sw.Sock
}
func (a *deviceAgent) kms() string {
	return "tpmkms:device=" + a.sw.Sock + ";storage-directory=" + a.storage
}

// deviceCert runs device-attest-01 with the real step CLI.
func (a *deviceAgent) deviceCert(urn, key, crt string) (string, error) {
	return a.step.run("ca", "certificate", urn, crt, "--provisioner", "agents", "--force",
		"--ca-url", a.url,
		"--attestation-uri", a.keyURI(key),
		"--attestation-ca-url", a.c.URL+"/attestation",
		"--attestation-ca-root", a.c.Root,
		"--tpm-storage-directory", a.storage)
}

// accountCert buys an account certificate with the device certificate and
// its TPM key through the X5C provisioner.
func (a *deviceAgent) accountCert(subject, deviceCrt, deviceKey, crt, key string) (string, error) {
	return a.step.run("ca", "certificate", subject, crt, key, "--provisioner", "accounts", "--force",
		"--ca-url", a.url,
		"--x5c-cert", deviceCrt, "--x5c-key", a.keyURI(deviceKey), "--kms", a.kms())
}

// renew renews a device certificate over mTLS with its TPM key.
func (a *deviceAgent) renew(crt, key string) (string, error) {
	return a.step.run("ca", "renew", crt, a.keyURI(key), "--kms", a.kms(), "--force", "--ca-url", a.url)
}

// crlRevoked reports whether openssl, with the CRL stepfort serves on
// httpPort, says cert is revoked (error 23) or good.
func crlRevoked(t *testing.T, c *ca, httpPort int, cert string) (bool, string) {
	t.Helper()
	_, der, err := fetchCRL(httpPort)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	crlFile, chain := filepath.Join(dir, "crl.der"), filepath.Join(dir, "chain.pem")
	if err := os.WriteFile(crlFile, der, 0o644); err != nil {
		t.Fatal(err)
	}
	pemCRL, err := openssl(t, "crl", "-inform", "DER", "-in", crlFile)
	if err != nil {
		t.Fatal(pemCRL)
	}
	if err := os.WriteFile(crlFile, []byte(pemCRL), 0o644); err != nil {
		t.Fatal(err)
	}
	rootPEM, _ := os.ReadFile(c.Root)
	interPEM, _ := os.ReadFile(filepath.Join(c.Dir, "certs", "intermediate_ca.crt"))
	_ = os.WriteFile(chain, append(rootPEM, interPEM...), 0o644)
	out, err := openssl(t, "verify", "-crl_check", "-CAfile", chain, "-CRLfile", crlFile, cert)
	if err == nil && strings.Contains(out, "OK") {
		return false, out
	}
	if strings.Contains(out, "error 23") {
		return true, out
	}
	t.Fatalf("openssl verify %s: %v\n%s", cert, err, out)
	return false, out
}

func waitRevoked(t *testing.T, c *ca, httpPort int, certs ...string) {
	t.Helper()
	for _, crt := range certs {
		eventually(t, 20*time.Second, func() error {
			if revoked, out := crlRevoked(t, c, httpPort, crt); !revoked {
				return fmt.Errorf("%s not revoked in the CRL:\n%s", crt, out)
			}
			return nil
		})
	}
}

func mustFailWith(t *testing.T, what, out string, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s succeeded, want failure with %q:\n%s", what, want, out)
	}
	if !strings.Contains(out, want) {
		t.Fatalf("%s failed without %q:\n%s", what, want, out)
	}
}

// deviceAttestFlow is the acceptance flow on one installation; urlA is
// where admin changes go, urlB where clients go afterwards (the same URL
// on one node).
func deviceAttestFlow(t *testing.T, sw *swtpm, c *ca, urlB string, httpPort int) {
	withKMSPlugin(t)
	tp := sw.open(t)
	ek := preferredEK(t, tp)
	urn := ekURN(t, ek)
	if out, err := stepfortCLI(t, c, "collections", "create", "engineering-laptops", "--device-type", "laptop"); err != nil {
		t.Fatalf("collections create: %v\n%s", err, out)
	}
	if out, err := stepfortCLI(t, c, "devices", "add", "--ek-pub", writeEKPub(t, ek, true), "--name", "laptop-1", "--collection", "engineering-laptops"); err != nil {
		t.Fatalf("devices add: %v\n%s", err, out)
	}
	agent := newDeviceAgent(t, sw, c, c.URL)
	devCrt := filepath.Join(agent.dir, "device.crt")
	if out, err := agent.deviceCert(urn, "devkey1", devCrt); err != nil {
		t.Fatalf("device certificate: %v\n%s", err, out)
	}
	leaf := readCert(t, devCrt)
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != urn {
		t.Fatalf("device certificate URI SANs %v, want %s (default template)", leaf.URIs, urn)
	}
	if sans, err := x509util.ParseSubjectAlternativeNames(leaf); err != nil || len(sans.PermanentIdentifiers) != 1 {
		t.Fatalf("device certificate permanent identifier: %+v %v", sans, err)
	}
	// Inventory data reaches the template: the default puts the collection
	// in the subject's organizational unit.
	if ou := leaf.Subject.OrganizationalUnit; len(ou) != 1 || ou[0] != "engineering-laptops" {
		t.Fatalf("device certificate subject %v, want OU engineering-laptops from the inventory", leaf.Subject)
	}

	// The device certificate buys a short-lived account certificate.
	acctCrt, acctKey := filepath.Join(agent.dir, "account.crt"), filepath.Join(agent.dir, "account.key")
	if out, err := agent.accountCert("alice@example.com", devCrt, "devkey1", acctCrt, acctKey); err != nil {
		t.Fatalf("account certificate: %v\n%s", err, out)
	}
	acct := readCert(t, acctCrt)
	if life := acct.NotAfter.Sub(acct.NotBefore); life > 25*time.Hour || life < 23*time.Hour {
		t.Fatalf("account certificate lifetime %s, want 24h", life)
	}
	if revoked, out := crlRevoked(t, c, httpPort, acctCrt); revoked {
		t.Fatalf("account certificate revoked before removal:\n%s", out)
	}

	// Removal (through replica A) revokes both; the challenge on replica B
	// then fails with the documented error.
	if out, err := stepfortCLI(t, c, "devices", "remove", urn); err != nil {
		t.Fatalf("devices remove: %v\n%s", err, out)
	}
	waitRevoked(t, c, httpPort, devCrt, acctCrt)
	agentB := newDeviceAgent(t, sw, c, urlB)
	agentB.storage = agent.storage // same device, same enrolled AK
	out, err := agentB.deviceCert(urn, "devkey2", filepath.Join(agent.dir, "device2.crt"))
	mustFailWith(t, "device-attest-01 of a removed device", out, err, "device "+urn+" is not registered")

	// Registered again: certificates again; disabled: the challenge fails
	// and renewal of its certificate is refused.
	if out, err := stepfortCLI(t, c, "devices", "add", "--ek-pub", writeEKPub(t, ek, true), "--name", "laptop-1"); err != nil {
		t.Fatalf("devices add again: %v\n%s", err, out)
	}
	dev3 := filepath.Join(agent.dir, "device3.crt")
	if out, err := agentB.deviceCert(urn, "devkey3", dev3); err != nil {
		t.Fatalf("device certificate after re-registration: %v\n%s", err, out)
	}
	if out, err := stepfortCLI(t, c, "devices", "update", urn, "--status", "disabled"); err != nil {
		t.Fatalf("devices update: %v\n%s", err, out)
	}
	out, err = agentB.deviceCert(urn, "devkey4", filepath.Join(agent.dir, "device4.crt"))
	mustFailWith(t, "device-attest-01 of a disabled device", out, err, "device "+urn+" is disabled")
	out, err = agentB.renew(dev3, "devkey3")
	if err == nil {
		t.Fatalf("renew of a disabled device's certificate succeeded:\n%s", out)
	}
	waitRevoked(t, c, httpPort, dev3)
}

// TestDeviceAttestEndToEnd: swtpm + the real step CLI on one node (bbolt).
func TestDeviceAttestEndToEnd(t *testing.T) {
	sw := startSWTPM(t)
	c := initCA(t)
	proc := serve(t, c.Config, c.Password, c.Port)
	deviceAttestFlow(t, sw, c, c.URL, c.HTTPPort)
	log := proc.Log()
	for _, ev := range []string{"deviceattest.device_removed", "deviceattest.device_disabled", "deviceattest.revoked", "deviceattest.denied"} {
		if !strings.Contains(log, `"event":"`+ev+`"`) {
			t.Errorf("no audit event %s", ev)
		}
	}
}

// TestDeviceAttestPostgresReplicas: the same flow with two replicas on one
// PostgreSQL; inventory changes go through replica A, the clients that
// must be refused talk to replica B.
func TestDeviceAttestPostgresReplicas(t *testing.T) {
	sw := startSWTPM(t)
	pg := testenv.StartPostgres(t)
	c := initCA(t, "--db", "postgresql", "--db-dsn", pg.DSN(), "--db-name", "deviceattest")
	configB, portB, _ := replicaConfigPorts(t, c, "replica-b")
	serve(t, c.Config, c.Password, c.Port)
	serve(t, configB, c.Password, portB)
	deviceAttestFlow(t, sw, c, fmt.Sprintf("https://localhost:%d", portB), c.HTTPPort)
}
