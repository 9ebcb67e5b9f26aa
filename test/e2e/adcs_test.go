package e2e

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/adcs"
	"github.com/stepfort/stepfort/internal/adcs/adcstest"
	"github.com/stepfort/stepfort/internal/testenv"
)

// adcsCA is an "ADCS-like" issuing CA run with `openssl ca`: a root, an
// issuing CA "Corp Issuing CA 1" whose leaves carry ADCS-style CDP, AIA
// and Freshest CRL URLs with %20 in them (pointing at stepfort's HTTP
// listener, as after the DNS switch), revocations, a base CRL number N and
// a delta on it.
type adcsCA struct {
	t        *testing.T
	dir      string
	crlURL   string // the CDP, byte for byte
	deltaURL string // the Freshest CRL URL
}

const adcsBaseNumber = 0x29 // N = 41: the last base CRL ADCS published

func newADCSCA(t *testing.T, httpPort int) *adcsCA {
	t.Helper()
	a := &adcsCA{t: t, dir: t.TempDir()}
	base := fmt.Sprintf("http://127.0.0.1:%d/CertEnroll/", httpPort)
	a.crlURL, a.deltaURL = base+"Corp%20Issuing%20CA%201.crl", base+"Corp%20Issuing%20CA%201+.crl"
	for _, d := range []string{"db", "newcerts"} {
		if err := os.MkdirAll(filepath.Join(a.dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	a.write("db/index.txt", "")
	a.write("db/serial", "4400000002b742b5daba3d4deb000000000002\n") // 19 octets, ADCS-like
	a.write("db/crlnumber", fmt.Sprintf("%X\n", adcsBaseNumber))
	a.write("pfx-password", "Sup3r secret PFX\n")
	a.write("ca.cnf", `[ca]
default_ca = issuing
[issuing]
dir = `+a.dir+`
database = $dir/db/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/db/serial
crlnumber = $dir/db/crlnumber
certificate = $dir/issuing.crt
private_key = $dir/issuing.key
default_md = sha256
default_days = 365
default_crl_days = 7
policy = anything
unique_subject = no
copy_extensions = none
crl_extensions = crl_ext
[anything]
commonName = supplied
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
crlDistributionPoints = URI:`+a.crlURL+`
freshestCRL = URI:`+a.deltaURL+`
authorityInfoAccess = caIssuers;URI:`+base+`Corp%20Issuing%20CA%201.crt
[crl_ext]
authorityKeyIdentifier = keyid
[issuing_ext]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,digitalSignature,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
`)
	a.openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "root.key", "-out", "root.crt", "-days", "3650",
		"-subj", "/DC=example/DC=corp/CN=Corp Root CA", "-addext", "basicConstraints=critical,CA:TRUE",
		"-addext", "keyUsage=critical,keyCertSign,cRLSign")
	a.openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "issuing.key", "-out", "issuing.csr",
		"-subj", "/DC=example/DC=corp/CN=Corp Issuing CA 1")
	a.openssl("x509", "-req", "-in", "issuing.csr", "-CA", "root.crt", "-CAkey", "root.key", "-set_serial", "0x1a2b",
		"-out", "issuing.crt", "-days", "1825", "-sha256", "-extfile", "ca.cnf", "-extensions", "issuing_ext")
	pass := "file:" + a.path("pfx-password")
	a.openssl("pkcs12", "-export", "-legacy", "-inkey", "issuing.key", "-in", "issuing.crt", "-certfile", "root.crt",
		"-name", "Corp Issuing CA 1", "-out", "issuing-legacy.pfx", "-passout", pass)
	a.openssl("pkcs12", "-export", "-inkey", "issuing.key", "-in", "issuing.crt", "-certfile", "root.crt",
		"-name", "Corp Issuing CA 1", "-CSP", "Microsoft Software Key Storage Provider", "-out", "issuing-aes.pfx", "-passout", pass)
	return a
}

func (a *adcsCA) path(name string) string { return filepath.Join(a.dir, name) }

func (a *adcsCA) write(name, content string) {
	a.t.Helper()
	if err := os.WriteFile(a.path(name), []byte(content), 0o600); err != nil {
		a.t.Fatal(err)
	}
}

func (a *adcsCA) openssl(args ...string) string {
	a.t.Helper()
	cmd := exec.Command(testenv.MustTool(a.t, "openssl"), args...)
	cmd.Dir = a.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		a.t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// issue makes leaf name with `openssl ca` and returns its certificate.
func (a *adcsCA) issue(name string) *x509.Certificate {
	a.t.Helper()
	a.openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", name+".key", "-out", name+".csr", "-subj", "/CN="+name+".corp.example")
	a.openssl("ca", "-batch", "-config", "ca.cnf", "-extensions", "leaf", "-in", name+".csr", "-out", name+".crt", "-notext")
	return readCert(a.t, a.path(name+".crt"))
}

func (a *adcsCA) revoke(name, reason string) {
	a.t.Helper()
	a.openssl("ca", "-config", "ca.cnf", "-revoke", name+".crt", "-crl_reason", reason)
}

// gencrl writes the next full CRL (DER) to out.
func (a *adcsCA) gencrl(out string) {
	a.t.Helper()
	a.openssl("ca", "-config", "ca.cnf", "-gencrl", "-out", out+".pem")
	a.openssl("crl", "-in", out+".pem", "-outform", "DER", "-out", out)
}

// rootCRL is a CRL of the root: another issuer than the legacy one.
func (a *adcsCA) rootCRL() []byte {
	a.t.Helper()
	b, err := os.ReadFile(a.path("root.key"))
	if err != nil {
		a.t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	key, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		a.t.Fatal(err)
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(7),
		ThisUpdate: time.Now().Add(-time.Hour), NextUpdate: time.Now().Add(time.Hour)}, readCert(a.t, a.path("root.crt")), key.(crypto.Signer))
	if err != nil {
		a.t.Fatal(err)
	}
	return der
}

// exportRow is the certutil row of a leaf (dates to the minute, as
// certutil prints them); revokedAt zero for an issued one.
func exportRow(id int64, c *x509.Certificate, revokedAt time.Time, reason int) adcs.Row {
	r := adcs.Row{RequestID: id, Serial: c.SerialNumber, Disposition: adcs.DispositionIssued,
		NotBefore: c.NotBefore.Truncate(time.Minute), NotAfter: c.NotAfter.Truncate(time.Minute), Reason: -1,
		CommonName: c.Subject.CommonName, Template: "WebServer", Certificate: c.Raw}
	if !revokedAt.IsZero() {
		r.Disposition, r.RevokedAt, r.Reason = adcs.DispositionRevoked, revokedAt.Truncate(time.Minute), reason
	}
	return r
}

func runStepfort(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(stepfortBin, args...).CombinedOutput()
	return string(out), err
}

func getBytes(url string) ([]byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s %s", url, resp.Status, b)
	}
	return b, nil
}

// TestADCSMigration is issue 13's acceptance test for the ADCS side: a
// legacy issuer brought in from a PFX, its database imported from a
// UTF-16LE certutil export with Spanish headers and its last CRLs, then
// OCSP and CRLs served for it by stepfort, and a revocation after
// cut-over seen through the delta CRL.
func TestADCSMigration(t *testing.T) {
	c := initCA(t)
	a := newADCSCA(t, c.HTTPPort)
	good, revoked, late, stillGood := a.issue("good"), a.issue("revoked"), a.issue("late"), a.issue("post")
	revokedAt := time.Now().UTC()
	a.revoke("revoked", "keyCompromise")
	a.gencrl("base.crl") // number N
	time.Sleep(1100 * time.Millisecond)
	a.revoke("late", "superseded")
	a.gencrl("full42.crl") // N+1, from which the delta is cut
	// -in is the older CRL, -gendelta the newer (apps/crl.c: X509_CRL_diff(in, newer)).
	a.openssl("crl", "-in", "base.crl", "-inform", "DER", "-gendelta", "full42.crl", "-key", "issuing.key",
		"-out", "delta.crl", "-outform", "DER")

	// certutil -view text export with RawCertificate, UTF-16LE + BOM,
	// Spanish headers; "late" is still issued in the export (revoked after
	// it was made: the delta tells), plus a pending request.
	rows := []adcs.Row{
		exportRow(2, good, time.Time{}, -1),
		exportRow(3, revoked, revokedAt, 1),
		exportRow(4, late, time.Time{}, -1),
		exportRow(5, stillGood, time.Time{}, -1),
		{RequestID: 6, Disposition: 9, Reason: -1, CommonName: "pending.corp.example"},
	}
	var buf bytes.Buffer
	if err := adcstest.WriteText(&buf, slices.Values(rows), adcstest.Opts{UTF16: true, BOM: true, Headers: "es"}); err != nil {
		t.Fatal(err)
	}
	export := a.path("certutil-view.txt")
	a.write("certutil-view.txt", buf.String())

	// Bad input first: a wrong PFX password, a CRL of another issuer.
	if out, err := runStepfort(t, "migrate", "adcs", "issuer", "add", "--config", c.Config, "--name", "corp-issuing-1",
		"--pfx", a.path("issuing-legacy.pfx"), "--password-file", c.Password, "--crl-url", a.crlURL); err == nil ||
		!strings.Contains(out, "password") {
		t.Fatalf("issuer add with a wrong PFX password: %v\n%s", err, out)
	}
	out, err := runStepfort(t, "migrate", "adcs", "issuer", "add", "--config", c.Config, "--name", "corp-issuing-1",
		"--pfx", a.path("issuing-aes.pfx"), "--password-file", a.path("pfx-password"),
		"--crl-url", a.crlURL, "--delta-crl-url", a.deltaURL)
	if err != nil {
		t.Fatalf("issuer add: %v\n%s", err, out)
	}
	out, err = runStepfort(t, "migrate", "adcs", "issuer", "list", "--config", c.Config)
	if err != nil || !strings.Contains(out, "corp-issuing-1") || !strings.Contains(out, "Corp Issuing CA 1") {
		t.Fatalf("issuer list: %v\n%s", err, out)
	}
	importArgs := []string{"migrate", "adcs", "import", "--config", c.Config, "--issuer", "corp-issuing-1", "--verbose"}
	// A CRL of another issuer (the root's).
	a.write("foreign.crl", string(a.rootCRL()))
	if out, err := runStepfort(t, append(importArgs, export, a.path("foreign.crl"))...); err == nil || !strings.Contains(out, "nothing was imported") {
		t.Fatalf("import with a CRL of another issuer: %v\n%s", err, out)
	}
	if out, err := runStepfort(t, append(importArgs, "--dry-run", export, a.path("base.crl"), a.path("delta.crl"))...); err != nil ||
		!strings.Contains(out, "Dry run") || !strings.Contains(out, "4 new") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	out, err = runStepfort(t, append(importArgs, export, a.path("base.crl"), a.path("delta.crl"))...)
	if err != nil {
		t.Fatalf("import: %v\n%s", err, out)
	}
	// Every row is reported.
	for _, cert := range []*x509.Certificate{good, revoked, late, stillGood} {
		if !strings.Contains(out, fmt.Sprintf("serial %X: new", cert.SerialNumber)) {
			t.Errorf("import report lacks serial %X:\n%s", cert.SerialNumber, out)
		}
	}
	if !strings.Contains(out, "skipped: disposition 9 (pending)") || !strings.Contains(out, "5 rows: 4 imported, 1 skipped, 0 refused") ||
		!strings.Contains(out, fmt.Sprintf("-> %d", adcsBaseNumber+1)) {
		t.Errorf("import summary:\n%s", out)
	}
	if out, err := runStepfort(t, "migrate", "adcs", "check", "--config", c.Config, "--issuer", "corp-issuing-1",
		a.path("base.crl"), a.path("delta.crl")); err != nil || !strings.Contains(out, "0 differences") {
		t.Errorf("check: %v\n%s", err, out)
	}

	serve(t, c.Config, c.Password, c.Port)
	if out, err := runStepfort(t, append(importArgs, export)...); err == nil || !strings.Contains(out, "stop the daemon first: bbolt allows one process") {
		t.Errorf("import beside the running daemon on bbolt: %v\n%s", err, out)
	}
	// The import ran as a command, yet left its record in the audit trail.
	if code, body := call(t, apiClient(t, c), "GET", c.URL+"/api/v1/audit?action=legacy.import", readToken(t, c), nil); code != 200 {
		t.Errorf("GET /api/v1/audit: %d %v", code, body)
	} else if recs, _ := body["records"].([]any); len(recs) == 0 {
		t.Errorf("no legacy.import record in the audit trail: %v", body)
	}

	// OCSP for the old issuer (routed by its name and key hash).
	ocspURL := fmt.Sprintf("http://127.0.0.1:%d/ocsp", c.HTTPPort)
	ocsp := func(target ...string) string {
		t.Helper()
		args := append([]string{"ocsp", "-issuer", a.path("issuing.crt"), "-url", ocspURL, "-CAfile", a.path("root.crt"),
			"-verify_other", a.path("issuing.crt"), "-no_nonce"}, target...)
		out, err := openssl(t, args...)
		if err != nil || !strings.Contains(out, "Response verify OK") {
			t.Errorf("openssl ocsp %v (waits on ha: OCSP routing to legacy issuers): %v\n%s", target, err, out)
		}
		return out
	}
	if out := ocsp("-cert", a.path("good.crt")); !strings.Contains(out, ": good") {
		t.Errorf("good certificate:\n%s", out)
	}
	if out := ocsp("-cert", a.path("revoked.crt")); !strings.Contains(out, ": revoked") || !strings.Contains(out, "Reason: keyCompromise") ||
		!strings.Contains(out, "Revocation Time: ") {
		t.Errorf("revoked certificate:\n%s", out)
	}
	if out := ocsp("-cert", a.path("late.crt")); !strings.Contains(out, "Reason: superseded") {
		t.Errorf("certificate revoked on the delta:\n%s", out)
	}
	if out := ocsp("-serial", "0x4400000099b742b5daba3d4deb000000000099"); !strings.Contains(out, ": unknown") {
		t.Errorf("never issued serial:\n%s", out)
	}

	// The old CDP URL serves a base CRL numbered above everything ADCS
	// published, that OpenSSL and NSS accept.
	baseDER, err := waitGet(a.crlURL, 30*time.Second)
	if err != nil {
		t.Fatalf("old CDP URL (waits on ha: legacy CRL series served at the CDP path): %v", err)
	}
	base, err := x509.ParseRevocationList(baseDER)
	if err != nil {
		t.Fatal(err)
	}
	if base.Number.Cmp(big.NewInt(adcsBaseNumber+1)) <= 0 {
		t.Errorf("base CRL number %s, want > %d (the delta's)", base.Number, adcsBaseNumber+1)
	}
	if err := base.CheckSignatureFrom(readCert(t, a.path("issuing.crt"))); err != nil {
		t.Errorf("base CRL not signed by the legacy key: %v", err)
	}
	crlPEM := a.path("served-base.pem")
	a.write("served-base.pem", string(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: baseDER})))
	a.write("served-base.der", string(baseDER))
	verify := func(leaf string, extra ...string) (string, error) {
		args := append([]string{"verify", "-crl_check", "-CAfile", a.path("root.crt"), "-untrusted", a.path("issuing.crt")}, extra...)
		return openssl(t, append(args, a.path(leaf))...)
	}
	if out, err := verify("good.crt", "-CRLfile", crlPEM); err != nil || !strings.Contains(out, ": OK") {
		t.Errorf("openssl verify -crl_check good: %v\n%s", err, out)
	}
	if out, _ := verify("revoked.crt", "-CRLfile", crlPEM); !strings.Contains(out, "certificate revoked") {
		t.Errorf("openssl verify -crl_check revoked:\n%s", out)
	}
	nssAccepts(t, a, a.path("served-base.der"))

	// A revocation after cut-over, through the admin API: the delta at the
	// Freshest CRL URL lists it and -use_deltas sees it.
	out, err = runStepfort(t, "migrate", "adcs", "revoke", "--ca-url", c.URL, "--root", c.Root, "--token-file", c.AdminToken,
		"--issuer", "corp-issuing-1", "--serial", fmt.Sprintf("%X", stillGood.SerialNumber), "--reason", "keyCompromise")
	if err != nil {
		t.Fatalf("migrate adcs revoke (waits on ha: mounting legacyRevokeRoute): %v\n%s", err, out)
	}
	if out := ocsp("-cert", a.path("post.crt")); !strings.Contains(out, ": revoked") {
		t.Errorf("OCSP after the revocation:\n%s", out)
	}
	var deltaDER []byte
	deadline := time.Now().Add(30 * time.Second)
	for {
		deltaDER, err = getBytes(a.deltaURL)
		if err == nil {
			if d, perr := x509.ParseRevocationList(deltaDER); perr == nil && crlLists(d, stillGood.SerialNumber) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no delta CRL listing serial %X at %s (waits on ha: legacy delta CRLs): %v", stillGood.SerialNumber, a.deltaURL, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	a.write("served-delta.pem", string(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: deltaDER})))
	if out, err := verify("post.crt", "-CRLfile", crlPEM); err != nil || !strings.Contains(out, ": OK") {
		t.Errorf("the base alone must not list the new revocation: %v\n%s", err, out)
	}
	if out, _ := verify("post.crt", "-use_deltas", "-CRLfile", crlPEM, "-CRLfile", a.path("served-delta.pem")); !strings.Contains(out, "certificate revoked") {
		t.Errorf("openssl verify -crl_check -use_deltas after the revocation:\n%s", out)
	}
}

func waitGet(url string, timeout time.Duration) ([]byte, error) {
	deadline := time.Now().Add(timeout)
	for {
		b, err := getBytes(url)
		if err == nil || time.Now().After(deadline) {
			return b, err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// nssAccepts imports the CRL into an NSS database with crlutil and checks
// with vfychain that the good leaf verifies and the revoked one is refused
// as revoked.
func nssAccepts(t *testing.T, a *adcsCA, crlDER string) {
	t.Helper()
	db := "sql:" + filepath.Join(a.dir, "nssdb")
	if err := os.MkdirAll(filepath.Join(a.dir, "nssdb"), 0o700); err != nil {
		t.Fatal(err)
	}
	nss := func(tool string, args ...string) (string, error) {
		out, err := exec.Command(testenv.MustTool(t, tool), args...).CombinedOutput()
		return string(out), err
	}
	if out, err := nss("certutil", "-N", "-d", db, "--empty-password"); err != nil {
		t.Fatalf("certutil -N: %v\n%s", err, out)
	}
	for _, c := range []struct{ nick, file, trust string }{{"Corp Root CA", "root.crt", "CT,C,C"}, {"Corp Issuing CA 1", "issuing.crt", ",,"}} {
		if out, err := nss("certutil", "-A", "-d", db, "-n", c.nick, "-t", c.trust, "-a", "-i", a.path(c.file)); err != nil {
			t.Fatalf("certutil -A %s: %v\n%s", c.file, err, out)
		}
	}
	if out, err := nss("crlutil", "-I", "-d", db, "-t", "1", "-i", crlDER); err != nil {
		t.Fatalf("crlutil -I refused the served CRL: %v\n%s", err, out)
	}
	vfy := func(leaf string) (string, error) {
		return nss("vfychain", "-d", db, "-pp", "-u", "1", "-g", "leaf", "-h", "testLocalInfoFirst", "-m", "crl", "-s", "forbidFetching",
			"-a", a.path(leaf))
	}
	if out, err := vfy("good.crt"); err != nil || !strings.Contains(out, "Chain is good!") {
		t.Errorf("vfychain good: %v\n%s", err, out)
	}
	if out, _ := vfy("revoked.crt"); !strings.Contains(out, "-8180") { // SEC_ERROR_REVOKED_CERTIFICATE
		t.Errorf("vfychain revoked:\n%s", out)
	}
}
