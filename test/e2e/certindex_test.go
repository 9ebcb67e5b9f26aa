package e2e

import (
	"context"
	"crypto/x509"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/provisioners/certindex"
)

// enableCertIndex turns the certIndex plugin on in a ca.json (stepfort
// init will write it; see docs/certificates.md).
func enableCertIndex(t *testing.T, config string) {
	t.Helper()
	editConfig(t, config, func(m map[string]any) {
		sf, _ := m["stepfort"].(map[string]any)
		if sf == nil {
			sf = map[string]any{}
			m["stepfort"] = sf
		}
		sf["events"] = map[string]any{"retryInterval": "200ms"}
		pl, _ := sf["plugins"].(map[string]any)
		if pl == nil {
			pl = map[string]any{}
			sf["plugins"] = pl
		}
		pl["certIndex"] = map[string]any{}
	})
}

// indexAPI reads the index through the admin API.
type indexAPI struct {
	t          *testing.T
	c          *ca
	url, token string
}

func (a *indexAPI) show(serial string) (certindex.View, int) {
	a.t.Helper()
	var v certindex.View
	status, body := call(a.t, apiClient(a.t, a.c), "GET", a.url+"/api/v1/certificates/"+url.PathEscape(serial), a.token, nil)
	if status == 200 {
		b, _ := json.Marshal(body)
		_ = json.Unmarshal(b, &v)
	}
	return v, status
}

// expect waits until the certificate in file is indexed with the given
// provisioner and status, and checks names and dates against the file.
func (a *indexAPI) expect(file, provisioner, status string) certindex.View {
	a.t.Helper()
	cert := readCert(a.t, file)
	var v certindex.View
	eventually(a.t, 20*time.Second, func() error {
		var code int
		v, code = a.show(cert.SerialNumber.String())
		if code != 200 {
			return fmt.Errorf("%s (%s): HTTP %d", file, cert.SerialNumber, code)
		}
		if v.Status != status {
			return fmt.Errorf("%s: status %s, want %s", file, v.Status, status)
		}
		return nil
	})
	if err := sameCertificate(&v.Record, cert); err != nil {
		a.t.Fatalf("%s: %v\nrecord %+v", file, err, v.Record)
	}
	if v.Provisioner.Name != provisioner {
		a.t.Fatalf("%s: provisioner %+v, want %s", file, v.Provisioner, provisioner)
	}
	if !strings.Contains(v.PEM, "BEGIN CERTIFICATE") {
		a.t.Fatalf("%s: no PEM", file)
	}
	return v
}

// sameCertificate compares an index record with the certificate itself.
func sameCertificate(r *certindex.Record, c *x509.Certificate) error {
	var ips, uris []string
	for _, ip := range c.IPAddresses {
		ips = append(ips, ip.String())
	}
	for _, u := range c.URIs {
		uris = append(uris, u.String())
	}
	switch {
	case r.Serial != c.SerialNumber.String():
		return fmt.Errorf("serial %s", r.Serial)
	case r.CommonName != c.Subject.CommonName:
		return fmt.Errorf("CN %q, want %q", r.CommonName, c.Subject.CommonName)
	case !slices.Equal(r.DNSNames, c.DNSNames) || !slices.Equal(r.IPAddresses, ips) || !slices.Equal(r.URIs, uris) ||
		!slices.Equal(r.EmailAddresses, c.EmailAddresses):
		return fmt.Errorf("SANs %v %v %v %v", r.DNSNames, r.IPAddresses, r.URIs, r.EmailAddresses)
	case !r.NotBefore.Equal(c.NotBefore) || !r.NotAfter.Equal(c.NotAfter):
		return fmt.Errorf("validity %s..%s, want %s..%s", r.NotBefore, r.NotAfter, c.NotBefore, c.NotAfter)
	case r.Issuer != c.Issuer.String():
		return fmt.Errorf("issuer %q", r.Issuer)
	}
	return nil
}

// certbotFlow gets a certificate for name with certbot (standalone
// http-01 on port), then revokes it through ACME. It returns the PEM path.
func certbotFlow(t *testing.T, c *ca, name string, port int) string {
	t.Helper()
	dir := t.TempDir()
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, testenv.MustTool(t, "certbot"), append(args,
			"--server", c.URL+"/acme/acme/directory", "--non-interactive", "--agree-tos",
			"--register-unsafely-without-email", "--config-dir", filepath.Join(dir, "config"),
			"--work-dir", filepath.Join(dir, "work"), "--logs-dir", filepath.Join(dir, "logs"))...)
		cmd.Env = append(os.Environ(), "REQUESTS_CA_BUNDLE="+c.Root)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("certbot %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	run("certonly", "--standalone", "--http-01-address", "127.0.0.1", "--http-01-port", fmt.Sprint(port),
		"-d", name, "--key-type", "ecdsa", "--cert-name", "idx")
	live := filepath.Join(dir, "config", "live", "idx")
	crt := filepath.Join(dir, "cert.pem")
	copyFile(t, filepath.Join(live, "cert.pem"), crt)
	run("revoke", "--cert-path", filepath.Join(live, "cert.pem"), "--reason", "keycompromise", "--no-delete-after-revoke")
	return crt
}

// TestCertIndexEveryClient: certificates from the step CLI (JWK, renew,
// revoke), lego and certbot (ACME http-01, revoked through ACME) and the
// device-attest flow (ACME device-attest-01, X5C account certificate) are
// indexed with their names, dates, provisioner and status; the CLI
// filters, exports and revokes by filter.
func TestCertIndexEveryClient(t *testing.T) {
	sw := startSWTPM(t)
	c := initCA(t)
	enableCertIndex(t, c.Config)
	dns := startLoopbackDNS(t)
	acmePort := freePort(t)
	serve(t, c.Config, c.Password, c.Port, "--insecure", "--acme-http-port", fmt.Sprint(acmePort), "--resolver", dns)
	api := &indexAPI{t: t, c: c, url: c.URL, token: readToken(t, c)}
	step := newStepCLI(t)
	step.bootstrap(c, c.URL)
	dir := t.TempDir()
	file := func(n string) string { return filepath.Join(dir, n) }
	jwk := []string{"--provisioner", "admin", "--provisioner-password-file", c.Password}

	// step CLI: JWK, renew over mTLS, revoke with a reason.
	step.must(append([]string{"ca", "certificate", "web-1.example", file("web.crt"), file("web.key"), "--san", "web-1.example", "--san", "10.0.0.9"}, jwk...)...)
	copyFile(t, file("web.crt"), file("web-first.crt"))
	step.must("ca", "renew", "--force", file("web.crt"), file("web.key"))
	step.must("ca", "revoke", "--cert", file("web.crt"), "--key", file("web.key"), "--reasonCode", "4", "--reason", "rotated")
	first := api.expect(file("web-first.crt"), "admin", certindex.StatusActive)
	renewed := api.expect(file("web.crt"), "admin", certindex.StatusRevoked)
	if renewed.Revocation.ReasonCode != 4 || renewed.Revocation.Reason != "rotated" || renewed.ParentSerial != first.Serial ||
		renewed.Endpoint == "" || renewed.Endpoint != first.Endpoint {
		t.Fatalf("renewed record %+v (first %+v)", renewed.Record, first.Record)
	}

	// lego and certbot: ACME http-01, then revoked through ACME.
	api.expect(legoRun(t, c, acmePort, nil), "acme", certindex.StatusRevoked)
	cb := certbotFlow(t, c, "certbot.example", acmePort)
	if v := api.expect(cb, "acme", certindex.StatusRevoked); v.Revocation.ReasonCode != 1 {
		t.Fatalf("certbot revocation %+v", v.Revocation)
	}

	// device-attest-01 (provisioner agents) and the X5C account certificate.
	withKMSPlugin(t)
	ek := preferredEK(t, sw.open(t))
	urn := ekURN(t, ek)
	if out, err := stepfortCLI(t, c, "devices", "add", "--ek-pub", writeEKPub(t, ek, true), "--name", "idx-laptop"); err != nil {
		t.Fatalf("devices add: %v\n%s", err, out)
	}
	agent := newDeviceAgent(t, sw, c, c.URL)
	devCrt := filepath.Join(agent.dir, "device.crt")
	if out, err := agent.deviceCert(urn, "devkey1", devCrt); err != nil {
		t.Fatalf("device-attest-01: %v\n%s", err, out)
	}
	if v := api.expect(devCrt, "agents", certindex.StatusActive); v.Device == "" || !strings.Contains(urn, v.Device) {
		t.Fatalf("device certificate device %q, want %s", v.Device, urn)
	}
	// The AK certificate the Attestation CA issued on the way (the step CLI
	// keeps it in the TPM KMS, so it is found through the index itself).
	var aks certindex.Page
	eventually(t, 20*time.Second, func() error {
		cliJSON(t, c, c.URL, &aks, "certificates", "list", "--provisioner", "attestationCA", "--all")
		if len(aks.Certificates) != 1 {
			return fmt.Errorf("AK certificates in the index: %d, want 1", len(aks.Certificates))
		}
		return nil
	})
	if ak := aks.Certificates[0]; ak.Provisioner.Type != plugins.ProvisionerTypeAttestationCA || ak.Device != urn ||
		!slices.Contains(ak.URIs, urn) || ak.Endpoint != "" || ak.Status != certindex.StatusActive || ak.Issuer == "" {
		t.Fatalf("AK certificate record %+v", ak.Record)
	}
	acct := filepath.Join(agent.dir, "account.crt")
	if out, err := agent.accountCert("alice@example.com", devCrt, "devkey1", acct, filepath.Join(agent.dir, "account.key")); err != nil {
		t.Fatalf("account certificate: %v\n%s", err, out)
	}
	api.expect(acct, "accounts", certindex.StatusActive)

	// CLI: filters, paging, export.
	var page certindex.Page
	cliJSON(t, c, c.URL, &page, "certificates", "list", "--q", "WEB-1", "--all", "--limit", "1")
	if len(page.Certificates) != 2 {
		t.Fatalf("list --q WEB-1: %d certificates", len(page.Certificates))
	}
	cliJSON(t, c, c.URL, &page, "certificates", "list", "--status", "revoked", "--provisioner", "acme", "--all")
	if len(page.Certificates) != 2 {
		t.Fatalf("revoked ACME certificates: %d", len(page.Certificates))
	}
	var count certindex.CountResult
	cliJSON(t, c, c.URL, &count, "certificates", "count", "--status", "revoked", "--provisioner", "acme")
	if count.Count != 2 {
		t.Fatalf("count of revoked ACME certificates: %+v", count)
	}
	since := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	cliJSON(t, c, c.URL, &count, "certificates", "count", "--revoked-since", since, "--provisioner", "acme")
	if count.Count != 2 {
		t.Fatalf("count revoked in the last hour: %+v", count)
	}
	if out, err := stepfortCLI(t, c, "certificates", "count", "--revoked-since", "yesterday"); err == nil || !strings.Contains(string(out), "revokedSince") {
		t.Fatalf("count with a bad time: %v\n%s", err, out)
	}
	csvFile := file("all.csv")
	if out, err := stepfortCLI(t, c, "certificates", "export", "--format", "csv", "--out", csvFile); err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	f, _ := os.Open(csvFile)
	rows, err := csv.NewReader(f).ReadAll()
	f.Close()
	if err != nil || len(rows) != 8 || rows[0][0] != "serial" { // header, 6 subscriber certificates, the AK certificate
		t.Fatalf("export: %d rows, %v", len(rows), err)
	}

	// Revoke by filter: dry run first, then for real; the CA's own
	// revocation path records it (upstream refuses a renewal after it).
	for i := range 3 {
		step.must(append([]string{"ca", "certificate", fmt.Sprintf("b%d.lab.example", i), file(fmt.Sprintf("b%d.crt", i)), file(fmt.Sprintf("b%d.key", i))}, jwk...)...)
	}
	for i := range 3 {
		api.expect(file(fmt.Sprintf("b%d.crt", i)), "admin", certindex.StatusActive)
	}
	var res certindex.RevokeResult
	cliJSON(t, c, c.URL, &res, "certificates", "revoke", "--q", ".lab.example", "--dry-run")
	if res.Matched != 3 || res.Revoked != 0 || len(res.Serials) != 3 {
		t.Fatalf("dry run %+v", res)
	}
	cliJSON(t, c, c.URL, &res, "certificates", "revoke", "--q", ".lab.example", "--reason-code", "5", "--reason", "lab closed", "--yes")
	if res.Revoked != 3 || res.Remaining != 0 {
		t.Fatalf("revoke %+v", res)
	}
	for i := range 3 {
		api.expect(file(fmt.Sprintf("b%d.crt", i)), "admin", certindex.StatusRevoked)
	}
	if out, err := step.run("ca", "renew", "--force", file("b0.crt"), file("b0.key")); err == nil {
		t.Fatalf("renewal of a certificate revoked by filter succeeded: %s", out)
	}
}

// legoRun gets an ACME certificate (http-01) with lego, hands a copy of
// it to onIssued (if set), then revokes it with lego; it returns the copy
// (lego revoke moves its own away).
func legoRun(t *testing.T, c *ca, acmePort int, onIssued func(crt string)) string {
	t.Helper()
	dir := t.TempDir()
	lego := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, testenv.MustTool(t, "lego"), append([]string{
			"--server", c.URL + "/acme/acme/directory", "--email", "lego@example.com", "--accept-tos",
			"--domains", "localhost", "--path", dir}, args...)...)
		cmd.Env = append(os.Environ(), "LEGO_CA_CERTIFICATES="+c.Root)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("lego %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	lego("--http", "--http.port", fmt.Sprintf("127.0.0.1:%d", acmePort), "--key-type", "ec256", "run")
	crt := filepath.Join(t.TempDir(), "lego.crt")
	copyFile(t, filepath.Join(dir, "certificates", "localhost.crt"), crt)
	if onIssued != nil {
		onIssued(crt)
	}
	if out := lego("revoke"); !strings.Contains(out, "Certificate was revoked") {
		t.Fatalf("lego revoke:\n%s", out)
	}
	return crt
}

// TestCertIndexReindexUpstream: a CA made and run by upstream step-ca
// v0.30.2 (its own ca.json and badger database), then run by stepfort with
// the index: reindex indexes what step-ca issued, and a reindex from
// scratch of the whole database yields the live index's rows.
func TestCertIndexReindexUpstream(t *testing.T) {
	step := newStepCLI(t)
	dir := t.TempDir()
	pw := filepath.Join(dir, "password")
	if err := os.WriteFile(pw, []byte("upstream-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port, acmePort := freePort(t), freePort(t)
	step.must("ca", "init", "--name", "Upstream Index", "--dns", "localhost", "--address", fmt.Sprintf("127.0.0.1:%d", port),
		"--provisioner", "ops@example.com", "--password-file", pw, "--deployment-type", "standalone", "--acme")
	config := filepath.Join(step.path, "config", "ca.json")
	c := &ca{Root: filepath.Join(step.path, "certs", "root_ca.crt"), URL: fmt.Sprintf("https://localhost:%d", port), Port: port}
	c.Fingerprint = strings.TrimSpace(step.must("certificate", "fingerprint", c.Root))

	// Upstream step-ca issues, renews, revokes.
	up := testenv.StartProcess(t, testenv.MustTool(t, "step-ca"), []string{config, "--password-file", pw}, nil)
	waitHealthy(t, up, port)
	upIssued, upRenewed := stepCLIFlows(t, c, c.URL, "ops@example.com", pw)
	stop(t, up)

	// stepfort with the index issues more.
	tokenFile := filepath.Join(dir, "token")
	if out, err := exec.Command(stepfortBin, "tokens", "bootstrap", config, "--name", "ops", "--out", tokenFile).CombinedOutput(); err != nil {
		t.Fatalf("tokens bootstrap: %v\n%s", err, out)
	}
	c.AdminToken = tokenFile
	enableCertIndex(t, config)
	sf := startDropIn(t, []string{config, "--password-file", pw, "--insecure", "--acme-http-port", fmt.Sprint(acmePort)})
	waitHealthy(t, sf, port)
	liveIssued, liveRenewed := stepCLIFlows(t, c, c.URL, "ops@example.com", pw)
	acme := newStepCLI(t)
	acme.bootstrap(c, c.URL)
	acmeCrt := filepath.Join(dir, "acme.crt")
	acme.must("ca", "certificate", "localhost", acmeCrt, filepath.Join(dir, "acme.key"), "--provisioner", "acme",
		"--http-listen", fmt.Sprintf("127.0.0.1:%d", acmePort))
	acmeSerial := certSerial(t, acmeCrt)
	api := &indexAPI{t: t, c: c, url: c.URL, token: readToken(t, c)}
	eventually(t, 20*time.Second, func() error {
		for _, sn := range []string{liveIssued, liveRenewed, acmeSerial} {
			if _, code := api.show(sn); code != 200 {
				return fmt.Errorf("%s not indexed (HTTP %d)", sn, code)
			}
		}
		return nil
	})
	if _, code := api.show(upIssued); code != 404 {
		t.Fatalf("a certificate step-ca issued is indexed before reindex: HTTP %d", code)
	}
	stop(t, sf)

	// A copy of the database without the index, reindexed from scratch.
	var cfg struct {
		DB struct {
			Type       string `json:"type"`
			DataSource string `json:"dataSource"`
		} `json:"db"`
	}
	b, _ := os.ReadFile(config)
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	scratchDB := filepath.Join(dir, "scratch-db")
	if out, err := exec.Command("cp", "-a", cfg.DB.DataSource, scratchDB).CombinedOutput(); err != nil {
		t.Fatalf("copy database: %v %s", err, out)
	}
	scratch := filepath.Join(dir, "scratch.json")
	copyFile(t, config, scratch)
	editConfig(t, scratch, func(m map[string]any) { m["db"].(map[string]any)["dataSource"] = scratchDB })
	withDB(t, cfg.DB.Type, scratchDB, func(d nosql.DB) {
		if err := d.DeleteTable([]byte(certindex.Table)); err != nil {
			t.Fatal(err)
		}
	})
	for _, cf := range []string{config, scratch} {
		out, err := exec.Command(stepfortBin, "certificates", "reindex", "--config", cf, "--json").CombinedOutput()
		if err != nil {
			t.Fatalf("reindex %s: %v\n%s", cf, err, out)
		}
	}

	live, rebuilt := indexRows(t, cfg.DB.Type, cfg.DB.DataSource), indexRows(t, cfg.DB.Type, scratchDB)
	if len(live) != 5 || len(rebuilt) != len(live) {
		t.Fatalf("live index %d rows, rebuilt %d; want 5 (2+2 step CLI, 1 ACME)", len(live), len(rebuilt))
	}
	for sn, l := range live {
		r, ok := rebuilt[sn]
		if !ok {
			t.Fatalf("%s missing from the rebuilt index", sn)
		}
		// What upstream's tables cannot hold: the renewal link and, for
		// renewal-enabled provisioners, the lineage Endpoint.
		l.ParentSerial, l.Device = "", ""
		if l.Provisioner.Type != "ACME" {
			l.Endpoint = ""
		}
		if lj, rj := mustJSON(t, l), mustJSON(t, r); lj != rj {
			t.Fatalf("%s:\n live    %s\n rebuilt %s", sn, lj, rj)
		}
	}
	for sn, want := range map[string]string{upIssued: certindex.StatusActive, upRenewed: certindex.StatusRevoked,
		liveIssued: certindex.StatusActive, liveRenewed: certindex.StatusRevoked} {
		r := live[sn]
		if r == nil || r.Provisioner.Name != "ops@example.com" || r.CommonName != "device-1.example" || r.Status(time.Now()) != want ||
			len(r.IPAddresses) != 1 {
			t.Fatalf("%s: %+v, want status %s", sn, r, want)
		}
	}
	if r := live[upRenewed]; r.Revocation.Reason != "decommissioned" {
		t.Fatalf("upstream revocation %+v", r.Revocation)
	}
}

func stop(t *testing.T, p *testenv.Process) {
	t.Helper()
	_ = p.Signal(os.Interrupt)
	if err := p.Wait(30 * time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
}

func withDB(t *testing.T, typ, path string, fn func(nosql.DB)) {
	t.Helper()
	d, err := nosql.New(typ, path)
	if err != nil {
		t.Fatalf("open %s %s: %v", typ, path, err)
	}
	defer d.Close()
	fn(d)
}

// indexRows reads the index table of a stopped CA's database.
func indexRows(t *testing.T, typ, path string) map[string]*certindex.Record {
	t.Helper()
	out := map[string]*certindex.Record{}
	withDB(t, typ, path, func(d nosql.DB) {
		rows, err := d.List([]byte(certindex.Table))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range rows {
			var r certindex.Record
			if err := json.Unmarshal(e.Value, &r); err != nil {
				t.Fatal(err)
			}
			out[r.Serial] = &r
		}
	})
	return out
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
