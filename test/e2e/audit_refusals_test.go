package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// auditRecords lists records through `stepfort audit list` (the admin API).
func auditRecords(t *testing.T, c *ca, filters ...string) []map[string]any {
	t.Helper()
	out, err := stepfortCmd(c, append([]string{"audit", "list", "--limit", "1000"}, filters...)...)
	if err != nil {
		t.Fatalf("audit list %v: %v\n%s", filters, err, out)
	}
	var page struct {
		Records []map[string]any `json:"records"`
	}
	if err := json.Unmarshal([]byte(out), &page); err != nil {
		t.Fatalf("audit list output: %v\n%s", err, out)
	}
	return page.Records
}

// waitRecord waits for a record of action matching fn and returns it.
func waitRecord(t *testing.T, c *ca, what, action string, fn func(r map[string]any) bool) map[string]any {
	t.Helper()
	var found map[string]any
	eventually(t, 15*time.Second, func() error {
		for _, r := range auditRecords(t, c, "--action", action) {
			if fn(r) {
				found = r
				return nil
			}
		}
		return fmt.Errorf("no %s record (%s)", action, what)
	})
	b, _ := json.Marshal(found)
	t.Logf("%s: %s", what, b)
	return found
}

func field(r map[string]any, path ...string) string {
	var cur any = r
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return ""
		}
		cur = m[p]
	}
	s, _ := cur.(string)
	return s
}

// TestAuditRefusals: every refusal path leaves a record with its reason,
// read back through `stepfort audit list`, and nothing secret reaches the
// trail:
//   - the step CLI with a wrong provisioner password fails before it
//     reaches the CA (the JWK key is decrypted client-side), so the
//     server-side equivalent is tested: a token signed by a key that is
//     not the provisioner's (unknown provisioner);
//   - a one-time token used twice, and a garbled token on /1.0/sign;
//   - the renewal of a revoked certificate (mTLS);
//   - a SCEP enrollment with a consumed challenge;
//   - an ACME revoke-cert that is not a valid JWS;
//   - CRL publication (a success record with number and dates).
func TestAuditRefusals(t *testing.T) {
	c := initCA(t)
	serve(t, c.Config, c.Password, c.Port)
	step := newStepCLI(t)
	step.bootstrap(c, c.URL)
	hc := apiClient(t, c)
	dir := t.TempDir()
	var secrets []string
	keep := func(s string) string { secrets = append(secrets, strings.TrimSpace(s)); return strings.TrimSpace(s) }
	pw, _ := os.ReadFile(c.Password)
	keep(string(pw))
	root := keep(readToken(t, c))
	keep(strings.SplitN(root, "_", 3)[2])

	// A wrong password: refused by the CLI itself, nothing is sent.
	wrong := filepath.Join(dir, "wrong-password")
	_ = os.WriteFile(wrong, []byte(keep("not-the-password-4711")), 0o600)
	if out, err := step.run("ca", "certificate", "wrongpw.example", filepath.Join(dir, "w.crt"), filepath.Join(dir, "w.key"),
		"--provisioner", "admin", "--provisioner-password-file", wrong); err == nil {
		t.Fatalf("a wrong provisioner password was accepted:\n%s", out)
	}

	// A token signed with another key, claiming provisioner "admin".
	step.must("crypto", "jwk", "create", filepath.Join(dir, "other.pub"), filepath.Join(dir, "other.key"), "--no-password", "--insecure", "--force")
	otherKey, _ := os.ReadFile(filepath.Join(dir, "other.key"))
	var jwk struct {
		D string `json:"d"`
	}
	_ = json.Unmarshal(otherKey, &jwk)
	keep(jwk.D)
	forged := keep(stepStdout(t, step, "ca", "token", "forged.example", "--key", filepath.Join(dir, "other.key"), "--issuer", "admin"))
	if out, err := step.run("ca", "certificate", "forged.example", filepath.Join(dir, "f.crt"), filepath.Join(dir, "f.key"), "--token", forged); err == nil {
		t.Fatalf("a forged token was accepted:\n%s", out)
	}

	// A token used twice.
	tok := keep(stepStdout(t, step, "ca", "token", "used.example", "--provisioner", "admin", "--provisioner-password-file", c.Password))
	step.must("ca", "certificate", "used.example", filepath.Join(dir, "u1.crt"), filepath.Join(dir, "u1.key"), "--token", tok)
	if out, err := step.run("ca", "certificate", "used.example", filepath.Join(dir, "u2.crt"), filepath.Join(dir, "u2.key"), "--token", tok); err == nil {
		t.Fatalf("a used token was accepted again:\n%s", out)
	}

	// A garbled token on /1.0/sign.
	garbled := keep("eyJhbGciOiJFUzI1NiIsImtpZCI6ImdhcmJsZWQifQ.eyJpc3MiOiJhZG1pbiIsInN1YiI6ImdhcmJsZWQuZXhhbXBsZSJ9.Z2FyYmxlZGdhcmJsZWQ")
	if code := postSign(t, hc, c, garbled); code != http.StatusUnauthorized {
		t.Fatalf("garbled token: %d, want 401", code)
	}

	// Renewal of a revoked certificate.
	rvCrt, rvKey := filepath.Join(dir, "rv.crt"), filepath.Join(dir, "rv.key")
	step.must("ca", "certificate", "revoked.example", rvCrt, rvKey, "--provisioner", "admin", "--provisioner-password-file", c.Password)
	rvSerial := certSerial(t, rvCrt)
	step.must("ca", "revoke", "--cert", rvCrt, "--key", rvKey, "--reason", "audit test")
	if out, err := step.run("ca", "renew", rvCrt, rvKey, "--force"); err == nil {
		t.Fatalf("a revoked certificate was renewed:\n%s", out)
	}

	// SCEP: a consumed challenge.
	chID, ch := newSCEPChallenge(t, hc, c, c.URL, map[string]any{})
	keep(ch)
	mustEnroll(t, c, c.HTTPPort, filepath.Join(dir, "scep1"), ch, "scep-audit-1")
	out, err := scepEnroll(t, c.HTTPPort, filepath.Join(dir, "scep2"), ch, "scep-audit-2")
	mustRefuse(t, "a consumed challenge", out, err)

	// ACME revoke-cert with a body that is not a JWS.
	req, _ := http.NewRequest("POST", c.URL+"/acme/acme/revoke-cert", strings.NewReader(`{"protected":"e30","payload":"","signature":""}`))
	req.Header.Set("Content-Type", "application/jose+json")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode < 400 {
		t.Fatalf("ACME revoke-cert without a JWS: %d", resp.StatusCode)
	}

	// The records.
	denied := func(kind string, reason ...string) func(map[string]any) bool {
		return func(r map[string]any) bool {
			if r["outcome"] != "denied" || field(r, "details", "endpoint") != kind {
				return false
			}
			for _, s := range reason {
				if !strings.Contains(strings.ToLower(field(r, "reason")), s) {
					return false
				}
			}
			return true
		}
	}
	r := waitRecord(t, c, "forged token", "certificate.sign", func(r map[string]any) bool {
		return denied("sign")(r) && field(r, "object", "subject") == "forged.example"
	})
	if field(r, "actor", "kind") != "provisioner" || field(r, "actor", "name") != "admin" || field(r, "details", "actor") != "claimed" ||
		field(r, "details", "stage") != "auth" || field(r, "actor", "remoteAddr") == "" || field(r, "reason") == "" {
		t.Errorf("forged token record: %v", r)
	}
	waitRecord(t, c, "token used twice", "certificate.sign", denied("sign", "token already used"))
	r = waitRecord(t, c, "garbled token", "certificate.sign", func(r map[string]any) bool {
		return denied("sign")(r) && field(r, "object", "subject") == "garbled.example"
	})
	if field(r, "details", "status") != "401" {
		t.Errorf("garbled token record: %v", r)
	}
	r = waitRecord(t, c, "revoked renewal", "certificate.renew", denied("renew", "revoked"))
	if field(r, "actor", "kind") != "mtls" || !strings.Contains(field(r, "actor", "subject"), "revoked.example") || field(r, "object", "serial") != rvSerial {
		t.Errorf("renewal record: %v", r)
	}
	r = waitRecord(t, c, "consumed SCEP challenge", "scep.challenge.consume", func(r map[string]any) bool {
		return r["outcome"] == "denied" && field(r, "details", "challenge") == chID
	})
	if field(r, "details", "result") != "refused_consumed" || !strings.Contains(field(r, "reason"), "already used") || field(r, "object", "subject") != "scep-audit-2" {
		t.Errorf("SCEP record: %v", r)
	}
	r = waitRecord(t, c, "ACME revoke-cert", "certificate.revoke", denied("acmeRevoke"))
	if field(r, "object", "provisioner") != "acme" || field(r, "reason") == "" {
		t.Errorf("ACME record: %v", r)
	}
	r = waitRecord(t, c, "CRL", "crl.publish", func(r map[string]any) bool { return r["outcome"] == "success" })
	for _, k := range []string{"number", "thisUpdate", "nextUpdate", "delta"} {
		if field(r, "details", k) == "" {
			t.Errorf("crl.publish record lacks %s: %v", k, r)
		}
	}
	if creates := auditRecords(t, c, "--action", "scep.challenge.create"); len(creates) == 0 {
		t.Error("no scep.challenge.create record")
	}

	// Nothing secret in the exported trail.
	text, lines := auditExport(t, c)
	if out, err := verifyFile(c, lines); err != nil {
		t.Fatalf("the export does not verify: %v\n%s", err, out)
	}
	for i, s := range secrets {
		if s == "" {
			t.Fatalf("secret %d is empty", i)
		}
		if strings.Contains(text, s) {
			t.Errorf("the trail holds secret %d (%d chars)", i, len(s))
		}
	}
	for _, tok := range []string{forged, tok} {
		if parts := strings.Split(tok, "."); len(parts) == 3 && strings.Contains(text, parts[2]) {
			t.Error("the trail holds a token's signature")
		}
	}
}

// stepStdout runs step and returns its standard output only (a token;
// the CLI writes its notes to standard error).
func stepStdout(t *testing.T, s *stepCLI, args ...string) string {
	t.Helper()
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(os.Environ(), "STEPPATH="+s.path, "STEP_CONSOLE=true", "NO_COLOR=1")
	cmd.Stdin = strings.NewReader("")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("step %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// postSign sends /1.0/sign with a fresh CSR and ott; it returns the status.
func postSign(t *testing.T, hc *http.Client, c *ca, ott string) int {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "garbled.example"}, DNSNames: []string{"garbled.example"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]string{"csr": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), "ott": ott})
	resp, err := hc.Post(c.URL+"/1.0/sign", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestAuditRefusalsDeviceAttest: with swtpm and the real step CLI, an
// unregistered device is refused (Attestation CA or the inventory gate),
// a disabled device's device-attest-01 and the renewal of its
// certificate are refused by the inventory gate: each leaves a denied
// record naming the device.
func TestAuditRefusalsDeviceAttest(t *testing.T) {
	sw := startSWTPM(t)
	c := initCA(t)
	serve(t, c.Config, c.Password, c.Port)
	withKMSPlugin(t)
	tp := sw.open(t)
	ek := preferredEK(t, tp)
	urn := ekURN(t, ek)
	agent := newDeviceAgent(t, sw, c, c.URL)

	out, err := agent.deviceCert(urn, "devkey0", filepath.Join(agent.dir, "device0.crt"))
	// The Attestation CA refuses the EK; the CLI shows only the status.
	mustFailWith(t, "an unregistered device", out, err, "403")
	r := waitRecord(t, c, "unregistered device", "certificate.sign", func(r map[string]any) bool {
		return r["outcome"] == "denied" && strings.Contains(field(r, "reason"), "not registered")
	})
	if st := field(r, "details", "stage"); st != "attestation" && st != "inventory" {
		t.Errorf("unregistered device record: %v", r)
	}

	if out, err := stepfortCLI(t, c, "devices", "add", "--ek-pub", writeEKPub(t, ek, true), "--name", "laptop-audit"); err != nil {
		t.Fatalf("devices add: %v\n%s", err, out)
	}
	devCrt := filepath.Join(agent.dir, "device.crt")
	if out, err := agent.deviceCert(urn, "devkey1", devCrt); err != nil {
		t.Fatalf("device certificate: %v\n%s", err, out)
	}
	if out, err := stepfortCLI(t, c, "devices", "update", urn, "--status", "disabled"); err != nil {
		t.Fatalf("devices update: %v\n%s", err, out)
	}
	out, err = agent.deviceCert(urn, "devkey2", filepath.Join(agent.dir, "device2.crt"))
	mustFailWith(t, "a disabled device", out, err, "is disabled")
	r = waitRecord(t, c, "disabled device", "certificate.sign", func(r map[string]any) bool {
		return r["outcome"] == "denied" && strings.Contains(field(r, "reason"), "is disabled")
	})
	if st := field(r, "details", "stage"); st != "inventory" && st != "attestation" || field(r, "object", "device") == "" {
		t.Errorf("disabled device record: %v", r)
	}
	if out, err := agent.renew(devCrt, "devkey1"); err == nil {
		t.Fatalf("renewal of a disabled device's certificate succeeded:\n%s", out)
	}
	// Disabling the device also revokes its certificates (on the event
	// goroutine): the renewal is refused by the gate (stage inventory) or,
	// once the revocation is in, by upstream's revocation check.
	serial := certSerial(t, devCrt)
	r = waitRecord(t, c, "disabled device renewal", "certificate.renew", func(r map[string]any) bool {
		return r["outcome"] == "denied" && field(r, "object", "serial") == serial
	})
	gate := field(r, "details", "stage") == "inventory" && field(r, "details", "plugin") == "deviceAttest" && strings.Contains(field(r, "reason"), "disabled")
	revoked := field(r, "details", "stage") == "auth" && strings.Contains(field(r, "reason"), "revoked")
	if !gate && !revoked || field(r, "actor", "kind") != "mtls" {
		t.Errorf("renewal record: %v", r)
	}
}
