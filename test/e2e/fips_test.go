package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/testenv"
)

// fipsModule is the frozen Go Cryptographic Module `make build-fips`
// links; the binary reports it with its unique suffix (v1.0.0-c2097c7c).
const fipsModule = "v1.0.0"

// buildFIPS builds stepfort as `make build-fips` does: GOFIPS140, static.
func buildFIPS(t *testing.T) string {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "stepfort-fips")
	build := exec.Command("go", "build", "-o", bin, "./cmd/stepfort")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFIPS140="+fipsModule)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("GOFIPS140=%s go build: %v\n%s", fipsModule, err, out)
	}
	return bin
}

// fipsOnly is the environment of a run under Go's strict mode; a run
// without it uses the FIPS build's default, fips140=on.
var fipsOnly = []string{"GODEBUG=fips140=only"}

// runFIPS runs the FIPS binary to completion (bounded) with env added.
func runFIPS(t *testing.T, bin string, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("stepfort %v did not finish within 30s:\n%s", args, out)
	}
	return string(out), err
}

// mustRefuseAlgorithm checks a documented refusal (docs/fips.md): the
// command failed with one line that names the non-approved algorithm, not
// a Go stack trace.
func mustRefuseAlgorithm(t *testing.T, what, out string, err error, alg *regexp.Regexp) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s under fips140=only succeeded, want a refusal naming %s:\n%s", what, alg, out)
	}
	if !strings.Contains(out, "FIPS 140-3: non-approved algorithm refused:") || !alg.MatchString(out) {
		t.Fatalf("%s under fips140=only: want a refusal naming %s:\n%s", what, alg, out)
	}
	if strings.Contains(out, "goroutine ") {
		t.Fatalf("%s under fips140=only: a stack trace, not a one-line refusal:\n%s", what, out)
	}
}

// TestFIPS builds the FIPS variant once, checks that it reports its mode
// and module, makes the CA under GODEBUG=fips140=only (init works there),
// asserts the documented refusals under only (a legacy PFX, serve), and
// runs the main flows in FIPS 140-3 mode (fips140=on, the variant's
// default) against that CA: step CLI issue/renew/revoke, OCSP (SHA-256 and SHA-1
// CertIDs), the CRL with openssl verify -crl_check, ACME with lego and
// device-attest-01 with swtpm. docs/fips.md has the table this follows.
func TestFIPS(t *testing.T) {
	bin := buildFIPS(t)
	// The shared helpers (initCA, serve, stepfortCLI) run stepfortBin.
	saved := stepfortBin
	stepfortBin = bin
	t.Cleanup(func() { stepfortBin = saved })

	out, err := runFIPS(t, bin, nil, "--version")
	if err != nil || !strings.Contains(out, "FIPS 140-3 mode on, Go Cryptographic Module "+fipsModule+"-") {
		t.Fatalf("--version of the FIPS build: %v\n%s", err, out)
	}
	if out, _ := runFIPS(t, bin, fipsOnly, "--version"); !strings.Contains(out, "FIPS 140-3 mode only") {
		t.Fatalf("--version under fips140=only:\n%s", out)
	}

	// init works under only (docs/fips.md): the flows in mode on then run
	// against this CA, so the step CLI and the daemon read the keys and the
	// JWK provisioner's JWE that init wrote under only.
	c := initCAUnder(t, "fips140=only")
	t.Run("only", func(t *testing.T) { fipsOnlyFlows(t, bin, c) })
	t.Run("on flows", func(t *testing.T) { fipsOnFlows(t, c) })
}

// initCAUnder runs initCA with GODEBUG=godebug for the stepfort child.
// The test binary's own mode is fixed at its start, so this changes only
// the child's.
func initCAUnder(t *testing.T, godebug string) *ca {
	t.Helper()
	old, had := os.LookupEnv("GODEBUG")
	os.Setenv("GODEBUG", godebug)
	defer func() {
		if had {
			os.Setenv("GODEBUG", old)
		} else {
			os.Unsetenv("GODEBUG")
		}
	}()
	return initCA(t)
}

// fipsOnlyFlows: under fips140=only, init works (c was made so), a legacy PFX
// is refused with its algorithms named, and serve stops at upstream
// step-ca's SHA-1 (docs/fips.md, "fips140=only").
func fipsOnlyFlows(t *testing.T, bin string, c *ca) {
	// The CA keys are PKCS #8 (PBES2, AES-256-CBC), not the legacy PEM
	// encryption (MD5), and the audit key exists.
	for _, f := range []string{"intermediate_ca_key", "root_ca_key", "attestation_intermediate_ca_key"} {
		b, err := os.ReadFile(filepath.Join(c.Dir, "secrets", f))
		if err != nil || !strings.HasPrefix(string(b), "-----BEGIN ENCRYPTED PRIVATE KEY-----") {
			t.Fatalf("%s written under fips140=only is not encrypted PKCS#8: %v\n%.80s", f, err, b)
		}
	}
	if _, err := os.Stat(filepath.Join(c.Dir, "secrets", "audit_key.pub")); err != nil {
		t.Fatalf("init under fips140=only: no audit key: %v", err)
	}

	// A PFX in Windows' legacy format (3DES, RC2-40, SHA-1 MAC): one line
	// naming them and how to re-export. Nothing is left behind.
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty-password")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runFIPS(t, bin, fipsOnly, "init", "--dir", filepath.Join(dir, "pfx"),
		"--address", "127.0.0.1:0", "--insecure-address", "127.0.0.1:0",
		"--issuer-pfx", filepath.Join(root, "internal", "cakeys", "testdata", "windows-azure-tools-3des.pfx"), "--pfx-password-file", empty)
	mustRefuseAlgorithm(t, "stepfort init --issuer-pfx (3DES)", out, err,
		regexp.MustCompile(`--issuer-pfx .*use of SHA-1 is not allowed.*3DES .*re-export it as AES-256/SHA-256`))
	if _, err := os.Stat(filepath.Join(dir, "pfx")); err == nil {
		t.Fatal("the refused init left its directory behind")
	}

	// serve: step-ca v0.30.2 hashes provisioner IDs with SHA-1 for its
	// ordering (authority/provisioner/collection.go, provisionerSum; not a
	// security use, refused all the same). No MD5: the keys are PKCS #8.
	out, err = runFIPS(t, bin, fipsOnly, "serve", c.Config, "--password-file", c.Password)
	mustRefuseAlgorithm(t, "stepfort serve", out, err,
		regexp.MustCompile(`start the CA: FIPS 140-3: non-approved algorithm refused: crypto/sha1: use of SHA-1 is not allowed in FIPS 140-only mode`))
}

// fipsOnFlows runs the main flows against the FIPS build in its default
// mode, fips140=on, with the CA c.
func fipsOnFlows(t *testing.T, c *ca) {
	acmePort := freePort(t)
	proc := serve(t, c.Config, c.Password, c.Port, "--insecure", "--acme-http-port", fmt.Sprint(acmePort))

	// /health and the start-up log say which mode and module.
	resp, err := apiClient(t, c).Get(c.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	var health struct {
		Status string `json:"status"`
		FIPS   struct{ Mode, Module string }
	}
	if err := json.Unmarshal(body, &health); err != nil || health.Status != "ok" || health.FIPS.Mode != "on" ||
		!strings.HasPrefix(health.FIPS.Module, fipsModule+"-") {
		t.Fatalf("/health of the FIPS build: %v %s", err, body)
	}
	if log := proc.Log(); !strings.Contains(log, "FIPS 140-3 mode on, Go Cryptographic Module "+health.FIPS.Module) {
		t.Fatalf("no FIPS line in the start-up log:\n%s", log)
	}

	// step CLI: JWK certificate, renew over mTLS (TLS with the approved
	// suites only), revoke.
	stepCLIFlows(t, c, c.URL, "admin", c.Password)

	// OCSP with both CertID hashes, and the CRL, on a good and a revoked
	// certificate.
	step := newStepCLI(t)
	step.bootstrap(c, c.URL)
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good.crt"), filepath.Join(dir, "bad.crt")
	for _, crt := range []string{good, bad} {
		step.must("ca", "certificate", strings.TrimSuffix(filepath.Base(crt), ".crt")+".example", crt, crt+".key",
			"--provisioner", "admin", "--provisioner-password-file", c.Password)
	}
	step.must("ca", "revoke", "--cert", bad, "--key", bad+".key", "--reason", "fips test")
	ocspURL := fmt.Sprintf("http://localhost:%d/ocsp", c.HTTPPort)
	for _, digest := range []string{"-sha256", "-sha1"} {
		if out := ocspStatus(t, c, ocspURL, digest, "-cert", good); !strings.Contains(out, good+": good") {
			t.Fatalf("OCSP %s for a good certificate:\n%s", digest, out)
		}
		if out := ocspStatus(t, c, ocspURL, digest, "-cert", bad); !strings.Contains(out, bad+": revoked") {
			t.Fatalf("OCSP %s for a revoked certificate:\n%s", digest, out)
		}
	}
	waitRevoked(t, c, c.HTTPPort, bad)
	if revoked, out := crlRevoked(t, c, c.HTTPPort, good); revoked {
		t.Fatalf("good certificate in the CRL:\n%s", out)
	}

	legoFlow(t, c, acmePort)
	fipsDeviceAttest(t, c)
}

// legoFlow gets an ACME certificate (http-01) with lego, checks it, then
// revokes it.
func legoFlow(t *testing.T, c *ca, acmePort int) {
	t.Helper()
	legoRun(t, c, acmePort, func(crt string) {
		if cert := readCert(t, crt); len(cert.DNSNames) != 1 || cert.DNSNames[0] != "localhost" {
			t.Fatalf("lego certificate SANs %v", cert.DNSNames)
		}
		checkIssued(t, c, crt, "localhost")
	})
}

// fipsDeviceAttest: a registered swtpm gets a device certificate through
// the Attestation CA and device-attest-01 (the step CLI, not in FIPS mode,
// is the client).
func fipsDeviceAttest(t *testing.T, c *ca) {
	t.Helper()
	withKMSPlugin(t)
	sw := startSWTPM(t)
	ek := preferredEK(t, sw.open(t))
	urn := ekURN(t, ek)
	if out, err := stepfortCLI(t, c, "devices", "add", "--ek-pub", writeEKPub(t, ek, true), "--name", "fips-laptop"); err != nil {
		t.Fatalf("devices add: %v\n%s", err, out)
	}
	agent := newDeviceAgent(t, sw, c, c.URL)
	crt := filepath.Join(agent.dir, "device.crt")
	if out, err := agent.deviceCert(urn, "devkey1", crt); err != nil {
		t.Fatalf("device-attest-01: %v\n%s", err, out)
	}
	if leaf := readCert(t, crt); len(leaf.URIs) != 1 || leaf.URIs[0].String() != urn {
		t.Fatalf("device certificate URI SANs %v, want %s", leaf.URIs, urn)
	}
}
