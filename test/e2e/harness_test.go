// Package e2e drives the real stepfort binary with real clients: the step
// CLI v0.30.2, OpenSSL, curl, and PostgreSQL 15. Tools come from
// scripts/install-tools.sh (make tools); a missing tool fails the test.
package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/testenv"
)

// stepfortBin is the daemon built once for the whole package.
var stepfortBin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	root, err := testenv.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dir, err := os.MkdirTemp("", "stepfort-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	stepfortBin = filepath.Join(dir, "stepfort")
	build := exec.Command("go", "build", "-o", stepfortBin, "./cmd/stepfort")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build stepfort: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

func freePort(t *testing.T) int {
	t.Helper()
	p, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// ca is one installation made by `stepfort init`.
type ca struct {
	Dir, Config, Password, Root, AdminToken string
	Port, HTTPPort                          int
	URL                                     string
	Fingerprint                             string
}

// initCA runs `stepfort init` with free loopback ports and extra flags.
func initCA(t *testing.T, extra ...string) *ca {
	t.Helper()
	c := &ca{Dir: filepath.Join(t.TempDir(), "ca"), Port: freePort(t), HTTPPort: freePort(t)}
	args := append([]string{"init", "--dir", c.Dir,
		"--address", fmt.Sprintf("127.0.0.1:%d", c.Port),
		"--insecure-address", fmt.Sprintf("127.0.0.1:%d", c.HTTPPort)}, extra...)
	out, err := exec.Command(stepfortBin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("stepfort init: %v\n%s", err, out)
	}
	c.Config = filepath.Join(c.Dir, "config", "ca.json")
	c.Password = filepath.Join(c.Dir, "secrets", "password")
	c.Root = filepath.Join(c.Dir, "certs", "root_ca.crt")
	c.AdminToken = filepath.Join(c.Dir, "secrets", "admin-token")
	c.URL = fmt.Sprintf("https://localhost:%d", c.Port)
	for _, line := range strings.Split(string(out), "\n") {
		if f, ok := strings.CutPrefix(strings.TrimSpace(line), "Root fingerprint: "); ok {
			c.Fingerprint = strings.TrimSpace(f)
		}
	}
	if len(c.Fingerprint) != 64 {
		t.Fatalf("no fingerprint in init output:\n%s", out)
	}
	return c
}

// editConfig rewrites ca.json through fn.
func editConfig(t *testing.T, path string, fn func(m map[string]any)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	fn(m)
	b, _ = json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// serve starts `stepfort serve` on a config and waits for /health.
func serve(t *testing.T, config, password string, port int, extra ...string) *testenv.Process {
	t.Helper()
	args := append([]string{"serve", config, "--password-file", password}, extra...)
	p := testenv.StartProcess(t, stepfortBin, args, nil)
	waitHealthy(t, p, port)
	return p
}

func waitHealthy(t *testing.T, p *testenv.Process, port int) {
	t.Helper()
	if err := testenv.WaitHTTPS(fmt.Sprintf("https://127.0.0.1:%d/health", port), 60*time.Second); err != nil {
		t.Fatalf("daemon not healthy: %v\n%s", err, p.Log())
	}
}

// stepCLI runs the real step CLI with its own STEPPATH.
type stepCLI struct {
	t    *testing.T
	bin  string
	path string
}

func newStepCLI(t *testing.T) *stepCLI {
	return &stepCLI{t: t, bin: testenv.MustTool(t, "step"), path: filepath.Join(t.TempDir(), "steppath")}
}

// run runs step and returns combined output and the error.
func (s *stepCLI) run(args ...string) (string, error) {
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(os.Environ(), "STEPPATH="+s.path, "STEP_CONSOLE=true", "NO_COLOR=1")
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// must runs step and fails the test on error.
func (s *stepCLI) must(args ...string) string {
	s.t.Helper()
	out, err := s.run(args...)
	if err != nil {
		s.t.Fatalf("step %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// bootstrap points the CLI at a CA.
func (s *stepCLI) bootstrap(c *ca, url string) {
	s.t.Helper()
	s.must("ca", "bootstrap", "--ca-url", url, "--fingerprint", c.Fingerprint, "--force")
}

// inspect returns the serial (decimal) and issuer of a PEM certificate.
func certSerial(t *testing.T, path string) string {
	t.Helper()
	return readCert(t, path).SerialNumber.String()
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := parsePEMCerts(b)
	if err != nil || len(certs) == 0 {
		t.Fatalf("parse %s: %v", path, err)
	}
	return certs[0]
}

// apiClient calls a CA's HTTPS endpoints trusting its root.
func apiClient(t *testing.T, c *ca) *http.Client {
	t.Helper()
	b, err := os.ReadFile(c.Root)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b)
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// call sends an admin API request and returns status and body.
func call(t *testing.T, hc *http.Client, method, url, token string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	data, _ := io.ReadAll(resp.Body)
	if len(data) > 0 {
		if err := json.Unmarshal(data, &out); err != nil {
			t.Fatalf("%s %s: non-JSON body %q", method, url, data)
		}
	}
	return resp.StatusCode, out
}

func readToken(t *testing.T, c *ca) string {
	t.Helper()
	b, err := os.ReadFile(c.AdminToken)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// eventually retries fn until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startDropIn runs `stepfort <args...>` (no verb), the step-ca drop-in form.
func startDropIn(t *testing.T, args []string) *testenv.Process {
	t.Helper()
	return testenv.StartProcess(t, stepfortBin, args, nil)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// stdout runs step and returns only its standard output.
func (s *stepCLI) stdout(args ...string) string {
	s.t.Helper()
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(os.Environ(), "STEPPATH="+s.path, "STEP_CONSOLE=true", "NO_COLOR=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		s.t.Fatalf("step %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}
