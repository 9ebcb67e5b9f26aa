package e2e

import (
	"encoding/base64"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/testenv"
)

// openssl runs OpenSSL and returns combined output.
func openssl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(testenv.MustTool(t, "openssl"), args...).CombinedOutput()
	return string(out), err
}

// ocspStatus asks the responder at url about cert with openssl (POST) and
// returns the status line openssl prints ("good", "revoked", "unknown").
func ocspStatus(t *testing.T, c *ca, ocspURL string, target ...string) string {
	t.Helper()
	inter := filepath.Join(c.Dir, "certs", "intermediate_ca.crt")
	args := append([]string{"ocsp", "-issuer", inter, "-url", ocspURL, "-CAfile", c.Root, "-verify_other", inter, "-no_nonce"}, target...)
	out, err := openssl(t, args...)
	if err != nil || !strings.Contains(out, "Response verify OK") {
		t.Fatalf("openssl ocsp %v: %v\n%s", target, err, out)
	}
	return out
}

// ocspGET asks about cert with a GET (the request openssl -reqout builds,
// base64 and URL-encoded in the path, fetched with curl) and returns what
// openssl prints for the response, and curl's response headers.
func ocspGET(t *testing.T, c *ca, httpPort int, cert string) (status, headers string) {
	t.Helper()
	inter := filepath.Join(c.Dir, "certs", "intermediate_ca.crt")
	dir := t.TempDir()
	reqFile, respFile := filepath.Join(dir, "req.der"), filepath.Join(dir, "resp.der")
	if out, err := openssl(t, "ocsp", "-issuer", inter, "-cert", cert, "-reqout", reqFile, "-no_nonce"); err != nil {
		t.Fatalf("reqout: %v\n%s", err, out)
	}
	der, _ := os.ReadFile(reqFile)
	getURL := fmt.Sprintf("http://127.0.0.1:%d/ocsp/%s", httpPort, url.PathEscape(base64.StdEncoding.EncodeToString(der)))
	hdr, err := exec.Command(testenv.MustTool(t, "curl"), "-sS", "-D", "-", "-o", respFile, getURL).CombinedOutput()
	if err != nil {
		t.Fatalf("curl GET: %v\n%s", err, hdr)
	}
	out, err := openssl(t, "ocsp", "-respin", respFile, "-issuer", inter, "-cert", cert, "-CAfile", c.Root, "-verify_other", inter, "-no_nonce")
	if err != nil || !strings.Contains(out, "Response verify OK") {
		t.Fatalf("GET response: %v\n%s", err, out)
	}
	return out, string(hdr)
}

// TestOCSPAndCRLSingleNode: certificates from a fresh init carry the OCSP
// URL and CRL distribution point; OpenSSL sees good, then revoked (with the
// reason) over POST and GET; a serial never issued is unknown; the CRL
// verifies the good certificate and rejects the revoked one (error 23).
func TestOCSPAndCRLSingleNode(t *testing.T) {
	c := initCA(t)
	serve(t, c.Config, c.Password, c.Port)
	step := newStepCLI(t)
	step.bootstrap(c, c.URL)
	dir := t.TempDir()
	good, goodKey := filepath.Join(dir, "good.crt"), filepath.Join(dir, "good.key")
	bad, badKey := filepath.Join(dir, "bad.crt"), filepath.Join(dir, "bad.key")
	for _, p := range [][2]string{{good, goodKey}, {bad, badKey}} {
		step.must("ca", "certificate", filepath.Base(p[0]), p[0], p[1], "--provisioner", "admin", "--provisioner-password-file", c.Password)
	}
	ocspURL := fmt.Sprintf("http://localhost:%d/ocsp", c.HTTPPort)
	crlURL := fmt.Sprintf("http://localhost:%d/1.0/crl", c.HTTPPort)
	cert := readCert(t, bad)
	if len(cert.OCSPServer) != 1 || cert.OCSPServer[0] != ocspURL || len(cert.CRLDistributionPoints) != 1 || cert.CRLDistributionPoints[0] != crlURL {
		t.Fatalf("certificate AIA %v CDP %v", cert.OCSPServer, cert.CRLDistributionPoints)
	}

	if out := ocspStatus(t, c, ocspURL, "-cert", bad); !strings.Contains(out, bad+": good") {
		t.Fatalf("before revocation:\n%s", out)
	}
	step.must("ca", "revoke", "--cert", bad, "--key", badKey, "--reasonCode", "1", "--reason", "key leaked")
	out := ocspStatus(t, c, ocspURL, "-cert", bad)
	if !strings.Contains(out, bad+": revoked") || !strings.Contains(out, "Reason: keyCompromise") {
		t.Fatalf("after revocation:\n%s", out)
	}
	if out := ocspStatus(t, c, ocspURL, "-serial", "0x1234567890abcdef"); !strings.Contains(out, ": unknown") {
		t.Fatalf("never-issued serial:\n%s", out)
	}
	if out := ocspStatus(t, c, ocspURL, "-cert", good); !strings.Contains(out, good+": good") {
		t.Fatalf("good certificate:\n%s", out)
	}

	// GET: the request built by openssl, base64 and URL-encoded in the path.
	out, hdr := ocspGET(t, c, c.HTTPPort, bad)
	for _, want := range []string{"Content-Type: application/ocsp-response", "Cache-Control: max-age=", "Expires:", "Last-Modified:", "Etag:"} {
		if !strings.Contains(strings.ToLower(hdr), strings.ToLower(want)) {
			t.Errorf("GET response lacks header %q:\n%s", want, hdr)
		}
	}
	if !strings.Contains(out, bad+": revoked") {
		t.Fatalf("GET response:\n%s", out)
	}
	curl := testenv.MustTool(t, "curl")
	inter := filepath.Join(c.Dir, "certs", "intermediate_ca.crt")
	respFile := filepath.Join(dir, "resp.der")
	// Garbage gets malformedRequest, not a crash.
	out2, err := exec.Command(curl, "-sS", "-o", respFile, "--data-binary", "not ocsp", "-H", "Content-Type: application/ocsp-request", ocspURL).CombinedOutput()
	if err != nil {
		t.Fatalf("curl POST garbage: %v %s", err, out2)
	}
	if out, _ := openssl(t, "ocsp", "-respin", respFile, "-resp_text", "-noverify"); !strings.Contains(out, "malformedrequest") {
		t.Fatalf("garbage request answered:\n%s", out)
	}

	// CRL: fetched over HTTP once the publisher has included the revocation
	// (within crl.publishDelay); good verifies, revoked is error 23.
	crlFile := filepath.Join(dir, "ca.crl")
	badSerial := readCert(t, bad).SerialNumber
	eventually(t, 10*time.Second, func() error {
		crl, der, err := fetchCRL(c.HTTPPort)
		if err != nil {
			return err
		}
		if !crlLists(crl, badSerial) {
			return fmt.Errorf("CRL %d does not list the revoked serial yet", crl.Number)
		}
		return os.WriteFile(crlFile, der, 0o644)
	})
	chain := filepath.Join(dir, "chain.pem")
	rootPEM, _ := os.ReadFile(c.Root)
	interPEM, _ := os.ReadFile(inter)
	if err := os.WriteFile(chain, append(rootPEM, interPEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := openssl(t, "verify", "-crl_check", "-CAfile", chain, "-CRLfile", crlFile, good); err != nil || !strings.Contains(out, "OK") {
		t.Fatalf("verify good certificate with CRL: %v\n%s", err, out)
	}
	out, err = openssl(t, "verify", "-crl_check", "-CAfile", chain, "-CRLfile", crlFile, bad)
	if err == nil || !strings.Contains(out, "error 23") {
		t.Fatalf("verify revoked certificate with CRL: %v\n%s", err, out)
	}
	// The same CRL over HTTPS, and as PEM with ?pem like upstream.
	hc := apiClient(t, c)
	pemCRL, err := httpGetWith(hc, c.URL+"/1.0/crl?pem")
	if err != nil || !strings.Contains(pemCRL, "BEGIN X509 CRL") {
		t.Fatalf("CRL over HTTPS as PEM: %v %.80q", err, pemCRL)
	}
}

// TestOCSPPropagatesAcrossReplicas: three replicas on one PostgreSQL. A
// certificate issued on A is good on every replica; after `step ca revoke`
// through B, A (POST with openssl) and C (GET with curl) answer revoked with
// the reason within 1 s; a serial never issued is unknown on C.
func TestOCSPPropagatesAcrossReplicas(t *testing.T) {
	pg := testenv.StartPostgres(t)
	c := initCA(t, "--db", "postgresql", "--db-dsn", pg.DSN(), "--db-name", "ocsp")
	configB, portB := replicaConfig(t, c, "replica-b")
	configC, portC, httpC := replicaConfigPorts(t, c, "replica-c")
	pa := serve(t, c.Config, c.Password, c.Port)
	pb := serve(t, configB, c.Password, portB)
	pc := serve(t, configC, c.Password, portC)
	defer func() {
		if t.Failed() {
			t.Logf("A:\n%s\nB:\n%s\nC:\n%s", pa.Log(), pb.Log(), pc.Log())
		}
	}()
	a, b := newStepCLI(t), newStepCLI(t)
	a.bootstrap(c, c.URL)
	b.bootstrap(c, fmt.Sprintf("https://localhost:%d", portB))
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "r.crt"), filepath.Join(dir, "r.key")
	a.must("ca", "certificate", "replicated.example", crt, key, "--provisioner", "admin", "--provisioner-password-file", c.Password)
	ocspA := fmt.Sprintf("http://127.0.0.1:%d/ocsp", c.HTTPPort)
	if out := ocspStatus(t, c, ocspA, "-cert", crt); !strings.Contains(out, ": good") {
		t.Fatalf("A before revocation:\n%s", out)
	}
	if out, _ := ocspGET(t, c, httpC, crt); !strings.Contains(out, ": good") {
		t.Fatalf("C before revocation:\n%s", out)
	}
	b.must("ca", "revoke", "--cert", crt, "--key", key, "--reasonCode", "4", "--reason", "superseded by a new key")
	start := time.Now()
	eventually(t, time.Second, func() error {
		if out := ocspStatus(t, c, ocspA, "-cert", crt); !strings.Contains(out, ": revoked") || !strings.Contains(out, "Reason: superseded") {
			return fmt.Errorf("replica A answers: %s", out)
		}
		if out, _ := ocspGET(t, c, httpC, crt); !strings.Contains(out, ": revoked") || !strings.Contains(out, "Reason: superseded") {
			return fmt.Errorf("replica C answers: %s", out)
		}
		return nil
	})
	t.Logf("replicas A and C answered revoked %v after the revoke on B returned", time.Since(start))
	ocspC := fmt.Sprintf("http://127.0.0.1:%d/ocsp", httpC)
	if out := ocspStatus(t, c, ocspC, "-serial", "0x7e57ab1e0000c0ffee"); !strings.Contains(out, ": unknown") {
		t.Fatalf("never-issued serial on C:\n%s", out)
	}
}
