package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/testenv"
)

// The SCEP end-to-end tests drive the "scep" provisioner that init writes,
// with the dynamicScep plugin attached, with real SCEP clients: micromdm
// scepclient v2.3.0 (PKCSReq and RenewalReq over POST) and certmonger
// (GET PKIOperation). See docs/scep.md.

// scepURL is the SCEP endpoint of init's provisioner on a CA's HTTP port.
func scepURL(httpPort int) string {
	return fmt.Sprintf("http://127.0.0.1:%d/scep/scep", httpPort)
}

// newSCEPChallenge creates a challenge through the admin API and returns
// its id and the challenge.
func newSCEPChallenge(t *testing.T, hc *http.Client, c *ca, caURL string, body map[string]any) (id, challenge string) {
	t.Helper()
	code, m := call(t, hc, "POST", caURL+"/api/v1/scep/challenges", readToken(t, c), body)
	if code != http.StatusCreated {
		t.Fatalf("create challenge %v: %d %v", body, code, m)
	}
	id, _ = m["id"].(string)
	challenge, _ = m["challenge"].(string)
	if id == "" || challenge == "" || m["expiresAt"] == nil {
		t.Fatalf("create challenge answer lacks id, challenge or expiresAt: %v", m)
	}
	return id, challenge
}

// scepEnroll runs micromdm scepclient in dir (created if missing): a
// fresh dir makes a new key and a PKCSReq, a dir with cert.pem a
// RenewalReq signed by that certificate. The CA chain is ECDSA, so the
// client must pick the RSA RA by key usage (-key-encipherment-selector,
// what micromdm documents for NDES); without it scepclient tries to
// encrypt to every certificate of GetCACert and fails on the EC ones.
func scepEnroll(t *testing.T, httpPort int, dir, challenge, cn string, extra ...string) (string, error) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := append([]string{"-server-url", scepURL(httpPort), "-challenge", challenge, "-cn", cn,
		"-private-key", filepath.Join(dir, "key.pem"), "-certificate", filepath.Join(dir, "cert.pem"),
		"-key-encipherment-selector", "-debug"}, extra...)
	cmd := exec.CommandContext(ctx, testenv.MustTool(t, "scepclient"), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mustEnroll enrolls and checks the certificate: issued by the CA's
// intermediate, with the CN asked for.
func mustEnroll(t *testing.T, c *ca, httpPort int, dir, challenge, cn string) string {
	t.Helper()
	out, err := scepEnroll(t, httpPort, dir, challenge, cn)
	if err != nil {
		t.Fatalf("scepclient %s: %v\n%s", cn, err, out)
	}
	certFile := filepath.Join(dir, "cert.pem")
	checkIssued(t, c, certFile, cn)
	return certFile
}

// checkIssued checks that certFile was issued by the CA's intermediate
// for cn.
func checkIssued(t *testing.T, c *ca, certFile, cn string) {
	t.Helper()
	cert := readCert(t, certFile)
	inter := readCert(t, filepath.Join(c.Dir, "certs", "intermediate_ca.crt"))
	if err := cert.CheckSignatureFrom(inter); err != nil {
		t.Fatalf("%s not issued by our intermediate: %v", certFile, err)
	}
	if cert.Subject.CommonName != cn {
		t.Fatalf("%s has CN %q, want %q", certFile, cert.Subject.CommonName, cn)
	}
}

// mustRefuse checks that scepclient failed with SCEP failInfo badRequest.
func mustRefuse(t *testing.T, what, out string, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: enrolled, want failInfo badRequest\n%s", what, out)
	}
	if !strings.Contains(out, "failInfo: badRequest") {
		t.Fatalf("%s: failed for another reason than failInfo badRequest: %v\n%s", what, err, out)
	}
}

// TestSCEPChallengeLifecycle: with a challenge from the admin API,
// scepclient enrolls once; the same challenge again, an expired one and a
// CSR for another CN than the challenge is bound to are refused with
// failInfo badRequest; a renewal (RenewalReq signed by the issued
// certificate) needs a fresh challenge (docs/scep.md). The CLI creates,
// lists (without the secret) and withdraws challenges.
func TestSCEPChallengeLifecycle(t *testing.T) {
	c := initCA(t)
	serve(t, c.Config, c.Password, c.Port)
	hc := apiClient(t, c)
	base := t.TempDir()

	_, ch := newSCEPChallenge(t, hc, c, c.URL, map[string]any{})
	first := filepath.Join(base, "first")
	certFile := mustEnroll(t, c, c.HTTPPort, first, ch, "scep-dev-1")
	firstSerial := certSerial(t, certFile)

	out, err := scepEnroll(t, c.HTTPPort, filepath.Join(base, "replay"), ch, "scep-dev-2")
	mustRefuse(t, "the same challenge a second time", out, err)

	_, short := newSCEPChallenge(t, hc, c, c.URL, map[string]any{"ttl": "1s"})
	time.Sleep(2 * time.Second)
	out, err = scepEnroll(t, c.HTTPPort, filepath.Join(base, "expired"), short, "scep-dev-3")
	mustRefuse(t, "an expired challenge", out, err)

	_, bound := newSCEPChallenge(t, hc, c, c.URL, map[string]any{"commonName": "cn-a"})
	out, err = scepEnroll(t, c.HTTPPort, filepath.Join(base, "cn-b"), bound, "cn-b")
	mustRefuse(t, "a challenge bound to cn-a with a CSR for cn-b", out, err)
	// A mismatch does not consume the challenge: the right CSR still gets
	// its certificate.
	mustEnroll(t, c, c.HTTPPort, filepath.Join(base, "cn-a"), bound, "cn-a")

	// Renewal: scepclient in the same directory sends a RenewalReq signed
	// by the certificate it holds. The consumed challenge is refused; a
	// fresh one renews. scepclient reuses csr.pem, which carries the
	// challenge, so it goes before the fresh challenge is used.
	out, err = scepEnroll(t, c.HTTPPort, first, ch, "scep-dev-1")
	mustRefuse(t, "a renewal with the consumed challenge", out, err)
	if err := os.Remove(filepath.Join(first, "csr.pem")); err != nil {
		t.Fatal(err)
	}
	_, fresh := newSCEPChallenge(t, hc, c, c.URL, map[string]any{})
	out, err = scepEnroll(t, c.HTTPPort, first, fresh, "scep-dev-1")
	if err != nil {
		t.Fatalf("renewal with a fresh challenge: %v\n%s", err, out)
	}
	if !strings.Contains(out, "signer_cn=scep-dev-1") {
		t.Fatalf("scepclient did not sign with the issued certificate (no RenewalReq):\n%s", out)
	}
	checkIssued(t, c, certFile, "scep-dev-1")
	if certSerial(t, certFile) == firstSerial {
		t.Fatal("renewal returned the old certificate")
	}

	testSCEPChallengeCLI(t, c)
}

// testSCEPChallengeCLI: `stepfort scep challenge create` prints the
// challenge once, `list` shows the challenge's id and bindings but never
// the challenge, `delete` withdraws it, and a withdrawn challenge enrolls
// nothing.
func testSCEPChallengeCLI(t *testing.T, c *ca) {
	out, err := stepfortCLIStdout(t, c, "scep", "challenge", "create", "--cn", "cli-dev", "--ttl", "10m")
	if err != nil {
		t.Fatalf("scep challenge create: %v\n%s", err, out)
	}
	secret := strings.TrimSpace(out)
	if secret == "" || strings.ContainsAny(secret, " \n") {
		t.Fatalf("create printed %q, want the challenge alone on stdout", out)
	}
	list, err := stepfortCLI(t, c, "scep", "challenge", "list", "--json")
	if err != nil || !strings.Contains(list, `"commonName": "cli-dev"`) || strings.Contains(list, secret) {
		t.Fatalf("scep challenge list: %v\n%s", err, list)
	}
	id := jsonField(t, list, "cli-dev")
	if out, err := stepfortCLI(t, c, "scep", "challenge", "delete", id); err != nil || !strings.Contains(out, id) {
		t.Fatalf("scep challenge delete %s: %v\n%s", id, err, out)
	}
	if out, err := stepfortCLI(t, c, "scep", "challenge", "delete", id); err == nil {
		t.Fatalf("deleting a withdrawn challenge succeeded:\n%s", out)
	}
	out, err = scepEnroll(t, c.HTTPPort, filepath.Join(t.TempDir(), "withdrawn"), secret, "cli-dev")
	mustRefuse(t, "a withdrawn challenge", out, err)
}

// stepfortCLIStdout runs the stepfort CLI against c and returns stdout
// only (create prints the challenge there, its notice on stderr).
func stepfortCLIStdout(t *testing.T, c *ca, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(stepfortBin, args...)
	cmd.Env = append(os.Environ(), "STEPFORT_CA_URL="+c.URL, "STEPFORT_ROOT="+c.Root, "STEPFORT_TOKEN_FILE="+c.AdminToken)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out) + stderr.String(), err
	}
	return string(out), nil
}

// jsonField returns the "id" of the challenge in a `list --json` output
// whose entry mentions marker.
func jsonField(t *testing.T, list, marker string) string {
	t.Helper()
	for _, entry := range strings.Split(list, "},") {
		if !strings.Contains(entry, marker) {
			continue
		}
		_, rest, ok := strings.Cut(entry, `"id": "`)
		if id, _, ok2 := strings.Cut(rest, `"`); ok && ok2 {
			return id
		}
	}
	t.Fatalf("no challenge mentioning %q in:\n%s", marker, list)
	return ""
}

// TestSCEPCertmonger: certmonger (its scep-submit helper sends
// PKIOperation as GET) enrolls with a challenge from the admin API.
func TestSCEPCertmonger(t *testing.T) {
	c := initCA(t)
	serve(t, c.Config, c.Password, c.Port)
	_, ch := newSCEPChallenge(t, apiClient(t, c), c, c.URL, map[string]any{"commonName": "device-cm", "dnsNames": []string{"device-cm.example.test"}})
	certFile := certmongerEnroll(t, c, scepURL(c.HTTPPort), ch, "device-cm")
	checkIssued(t, c, certFile, "device-cm")
}

// certmongerEnroll has certmonger enroll CN cn (and DNS name
// cn.example.test) at the SCEP URL with a challenge, on a private D-Bus
// session with its state in a test directory; it returns the
// certificate's file. -I gets the intermediate and the root: certmonger
// verifies the CertRep's signer (the RA) against it.
func certmongerEnroll(t *testing.T, c *ca, url, challenge, cn string) string {
	t.Helper()
	dir := t.TempDir()
	chain := filepath.Join(dir, "chain.pem")
	inter, _ := os.ReadFile(filepath.Join(c.Dir, "certs", "intermediate_ca.crt"))
	root, _ := os.ReadFile(c.Root)
	if err := os.WriteFile(chain, append(inter, root...), 0o644); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	script := filepath.Join(dir, "cm.sh")
	getcert := testenv.MustTool(t, "getcert")
	body := fmt.Sprintf(`set -e
%[1]s add-scep-ca -s -c stepfortE2E -u %[2]s -I %[3]s
%[1]s request -s -c stepfortE2E -f %[4]s -k %[5]s -L %[6]s -N CN=%[7]s -D %[7]s.example.test -w -v
%[1]s list -s
`, getcert, url, chain, certFile, keyFile, challenge, cn)
	if err := os.WriteFile(script, []byte(body), 0o700); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	env := []string{"CERTMONGER_TMPDIR=" + filepath.Join(state, "tmp"), "CERTMONGER_SYSTEM_LOCK_FILE=" + filepath.Join(state, "lock")}
	for name, sub := range map[string]string{"CERTMONGER_REQUESTS_DIR": "requests", "CERTMONGER_CAS_DIR": "cas", "CERTMONGER_LOCAL_CA_DIR": "local"} {
		env = append(env, name+"="+filepath.Join(state, sub))
	}
	for _, sub := range []string{"requests", "cas", "local", "tmp"} {
		if err := os.MkdirAll(filepath.Join(state, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testenv.MustTool(t, "dbus-run-session"), "--", testenv.MustTool(t, "certmonger"),
		"-s", "-n", "-B", "-c", "sh "+script)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "status: MONITORING") {
		t.Fatalf("certmonger at %s: %v\n%s", url, err, out)
	}
	return certFile
}

// TestSCEPDeviceBoundRevokedOnDisable: a certificate enrolled with a
// challenge bound to an inventory device is revoked when the device is
// disabled, and OCSP says so within seconds.
func TestSCEPDeviceBoundRevokedOnDisable(t *testing.T) {
	c := initCA(t)
	serve(t, c.Config, c.Password, c.Port)
	hc := apiClient(t, c)
	token := readToken(t, c)
	code, dev := call(t, hc, "POST", c.URL+"/api/v1/devices", token, map[string]any{"identifiers": []string{"SCEP-SERIAL-1"}, "name": "scep-mac"})
	if code != http.StatusCreated && code != http.StatusOK {
		t.Fatalf("add device: %d %v", code, dev)
	}
	devID, _ := dev["id"].(string)
	_, ch := newSCEPChallenge(t, hc, c, c.URL, map[string]any{"device": devID, "commonName": "scep-mac"})
	certFile := mustEnroll(t, c, c.HTTPPort, filepath.Join(t.TempDir(), "dev"), ch, "scep-mac")

	ocspURL := fmt.Sprintf("http://127.0.0.1:%d/ocsp", c.HTTPPort)
	if out := ocspStatus(t, c, ocspURL, "-cert", certFile); !strings.Contains(out, certFile+": good") {
		t.Fatalf("before disabling the device:\n%s", out)
	}
	if code, m := call(t, hc, "PATCH", c.URL+"/api/v1/devices/"+url.PathEscape(devID), token, map[string]any{"status": "disabled"}); code != http.StatusOK {
		t.Fatalf("disable device: %d %v", code, m)
	}
	eventually(t, 10*time.Second, func() error {
		if out := ocspStatus(t, c, ocspURL, "-cert", certFile); !strings.Contains(out, certFile+": revoked") {
			return fmt.Errorf("OCSP after disabling the device:\n%s", out)
		}
		return nil
	})
}

// TestSCEPReplicas: two replicas on one PostgreSQL. A challenge created on
// A is consumed on B; one challenge sent to A and B at the same moment is
// accepted exactly once, over several rounds.
func TestSCEPReplicas(t *testing.T) {
	pg := testenv.StartPostgres(t)
	c := initCA(t, "--db", "postgresql", "--db-dsn", pg.DSN(), "--db-name", "scepreplicas")
	configB, portB, httpB := replicaConfigPorts(t, c, "replica-b")
	serve(t, c.Config, c.Password, c.Port)
	serve(t, configB, c.Password, portB)
	hc := apiClient(t, c)
	base := t.TempDir()

	_, ch := newSCEPChallenge(t, hc, c, c.URL, map[string]any{})
	mustEnroll(t, c, httpB, filepath.Join(base, "on-b"), ch, "replica-dev")
	out, err := scepEnroll(t, c.HTTPPort, filepath.Join(base, "replay-on-a"), ch, "replica-dev")
	mustRefuse(t, "a challenge consumed on B, replayed on A", out, err)

	for round := range 3 {
		_, ch := newSCEPChallenge(t, hc, c, c.URL, map[string]any{})
		var wg sync.WaitGroup
		outs, errs := make([]string, 2), make([]error, 2)
		start := make(chan struct{})
		for i, port := range []int{c.HTTPPort, httpB} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				outs[i], errs[i] = scepEnroll(t, port, filepath.Join(base, fmt.Sprintf("race-%d-%d", round, i)), ch, "race-dev")
			}()
		}
		close(start)
		wg.Wait()
		accepted := 0
		for i := range errs {
			if errs[i] == nil {
				accepted++
			} else if !strings.Contains(outs[i], "failInfo: badRequest") {
				t.Fatalf("round %d, replica %d failed for another reason: %v\n%s", round, i, errs[i], outs[i])
			}
		}
		if accepted != 1 {
			t.Fatalf("round %d: one challenge accepted %d times on two replicas\nA: %s\nB: %s", round, accepted, outs[0], outs[1])
		}
	}
}

// TestSCEPBadInput: garbage, a truncated PKCS#7, a PKCS#7 that is no SCEP
// message, an oversized body, bad base64 in a GET message and an unknown
// operation get HTTP errors, not a crash; afterwards /health is ok and a
// real client still enrolls.
func TestSCEPBadInput(t *testing.T) {
	c := initCA(t)
	p := serve(t, c.Config, c.Password, c.Port)
	hc := &http.Client{Timeout: 30 * time.Second}
	endpoint := scepURL(c.HTTPPort)

	resp, err := hc.Get(endpoint + "?operation=GetCACert")
	if err != nil {
		t.Fatal(err)
	}
	caCerts, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-x509-ca-ra-cert" || len(caCerts) < 100 {
		t.Fatalf("GetCACert: %d %q, %d bytes", resp.StatusCode, resp.Header.Get("Content-Type"), len(caCerts))
	}

	post := func(body []byte) (int, string) {
		t.Helper()
		resp, err := hc.Post(endpoint+"?operation=PKIOperation", "application/x-pki-message", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("POST %d bytes: %v", len(body), err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return resp.StatusCode, string(b)
	}
	get := func(query string) (int, string) {
		t.Helper()
		resp, err := hc.Get(endpoint + "?" + query)
		if err != nil {
			t.Fatalf("GET %s: %v", query, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return resp.StatusCode, string(b)
	}
	cases := []struct {
		name string
		do   func() (int, string)
		want int // 0: any error status
	}{
		{"garbage", func() (int, string) { return post([]byte("this is not a PKCS#7 message")) }, 0},
		{"truncated PKCS#7", func() (int, string) { return post(caCerts[:len(caCerts)/2]) }, 0},
		{"PKCS#7 that is no SCEP message", func() (int, string) { return post(caCerts) }, 0},
		{"empty body", func() (int, string) { return post(nil) }, 0},
		{"oversized body", func() (int, string) { return post(bytes.Repeat([]byte{0x30}, 3<<20)) }, http.StatusRequestEntityTooLarge},
		{"bad base64 in GET message", func() (int, string) {
			return get("operation=PKIOperation&message=" + url.QueryEscape("%%%not base64!!!"))
		}, 0},
		{"truncated PKCS#7 in GET message", func() (int, string) {
			return get("operation=PKIOperation&message=" + url.QueryEscape(base64.StdEncoding.EncodeToString(caCerts[:40])))
		}, 0},
		{"unknown operation", func() (int, string) { return get("operation=GetNextCACert&message=x") }, 0},
		{"no operation", func() (int, string) { return get("") }, 0},
	}
	for _, tc := range cases {
		code, body := tc.do()
		t.Logf("%s: HTTP %d %q", tc.name, code, firstLine(body))
		if tc.want != 0 && code != tc.want {
			t.Errorf("%s: HTTP %d, want %d", tc.name, code, tc.want)
		}
		if code < 400 {
			t.Errorf("%s: HTTP %d, want an error status", tc.name, code)
		}
		if strings.Contains(body, "goroutine ") || strings.Contains(body, "panic") {
			t.Errorf("%s: answer shows a crash: %s", tc.name, body)
		}
	}
	if err := testenv.WaitHTTPS(fmt.Sprintf("https://127.0.0.1:%d/health", c.Port), 5*time.Second); err != nil {
		t.Fatalf("daemon unhealthy after bad input: %v\n%s", err, p.Log())
	}
	if strings.Contains(p.Log(), "goroutine ") {
		t.Fatalf("daemon log shows a panic:\n%s", p.Log())
	}
	_, ch := newSCEPChallenge(t, apiClient(t, c), c, c.URL, map[string]any{})
	mustEnroll(t, c, c.HTTPPort, filepath.Join(t.TempDir(), "after"), ch, "after-bad-input")
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	if len(line) > 120 {
		line = line[:120]
	}
	return line
}

// TestSCEPClosedWithoutPlugin: with the dynamicScep block removed from
// init's ca.json, the "scep" provisioner refuses an enrollment with an
// empty challenge (upstream would accept it on a provisioner with neither
// a static challenge nor a SCEPCHALLENGE webhook).
func TestSCEPClosedWithoutPlugin(t *testing.T) {
	c := initCA(t)
	editConfig(t, c.Config, func(m map[string]any) {
		delete(m["stepfort"].(map[string]any)["plugins"].(map[string]any), "dynamicScep")
	})
	serve(t, c.Config, c.Password, c.Port)
	out, err := scepEnroll(t, c.HTTPPort, filepath.Join(t.TempDir(), "empty"), "", "no-challenge")
	mustRefuse(t, "an empty challenge without the plugin", out, err)
}
