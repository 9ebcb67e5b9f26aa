package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/smallstep/nosql"
	"golang.org/x/crypto/ocsp"

	"github.com/stepfort/stepfort/bench/internal/benchproc"
	"github.com/stepfort/stepfort/bench/internal/signload"
	"github.com/stepfort/stepfort/internal/legacy"
)

// The "ocsp-issuers" part (issue 13, Performance: OCSP throughput with
// two issuers within 5 % of one issuer). Two stepfort daemons share one
// PostgreSQL database: "one issuer" runs the configuration `stepfort init`
// wrote; "two issuers" adds a legacy issuer (an ADCS-like RSA issuing CA
// made here, its certificates imported into the legacy tables). The same
// load runs against each, alternating, in rounds: stepfort's own requests
// on both, then a 50/50 mix of own and legacy requests on "two issuers".
// Ratios are per round (both loads a few seconds apart), the median
// printed.

const (
	issuersDB         = "ha_issuers"
	benchLegacyIssuer = "bench-legacy"
)

// legacyBenchCA is the legacy issuer's certificate and the files the
// configuration names.
type legacyBenchCA struct {
	cert              *x509.Certificate
	key               *rsa.PrivateKey
	certFile, keyFile string
}

// newLegacyBenchCA makes a self-signed RSA issuing CA (an ADCS CA's key
// type) and writes its certificate and unencrypted key into dir.
func newLegacyBenchCA(dir string) (*legacyBenchCA, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Bench Legacy Issuing CA", Organization: []string{"Corp"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(5 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	c := &legacyBenchCA{cert: cert, key: key, certFile: filepath.Join(dir, "legacy.crt"), keyFile: filepath.Join(dir, "legacy.key")}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(c.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	return c, os.WriteFile(c.keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600)
}

// addLegacyIssuer adds the legacy issuer to the ca.json at cfgFile: with
// `stepfort migrate adcs issuer add` (the runbook's command, from a PFX)
// when this stepfort has it, else by writing the documented
// legacyIssuers entry. It returns how.
func addLegacyIssuer(ctx context.Context, stepfort, cfgFile, caPasswordFile string, c *legacyBenchCA) (string, error) {
	crlURL := "http://127.0.0.1/CertEnroll/Bench%20Legacy%20Issuing%20CA.crl"
	// An older stepfort reads "migrate" as a ca.json and its help has no
	// --crl-url.
	if help, _ := exec.CommandContext(ctx, stepfort, "migrate", "adcs", "issuer", "add", "--help").CombinedOutput(); strings.Contains(string(help), "--crl-url") {
		dir := filepath.Dir(c.certFile)
		pfx, pw := filepath.Join(dir, "legacy.pfx"), filepath.Join(dir, "pfx-password")
		if err := os.WriteFile(pw, []byte("bench\n"), 0o600); err != nil {
			return "", err
		}
		if out, err := exec.CommandContext(ctx, "openssl", "pkcs12", "-export", "-in", c.certFile, "-inkey", c.keyFile,
			"-out", pfx, "-passout", "file:"+pw).CombinedOutput(); err != nil {
			return "", fmt.Errorf("openssl pkcs12 -export: %w\n%s", err, out)
		}
		if out, err := exec.CommandContext(ctx, stepfort, "migrate", "adcs", "issuer", "add", "--config", cfgFile,
			"--name", benchLegacyIssuer, "--pfx", pfx, "--password-file", pw, "--ca-password-file", caPasswordFile, "--crl-url", crlURL).CombinedOutput(); err != nil {
			return "", fmt.Errorf("stepfort migrate adcs issuer add: %w\n%s", err, out)
		}
		return "stepfort migrate adcs issuer add", nil
	}
	b, err := os.ReadFile(cfgFile)
	if err != nil {
		return "", err
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		return "", err
	}
	rev, ok := dig(cfg, "stepfort", "plugins", "revocation")
	if !ok {
		return "", fmt.Errorf("%s: no stepfort.plugins.revocation block", cfgFile)
	}
	rev["legacyIssuers"] = []any{map[string]any{"name": benchLegacyIssuer, "certificate": c.certFile, "key": c.keyFile, "crlURL": crlURL}}
	out, err := json.MarshalIndent(cfg, "", "\t")
	if err != nil {
		return "", err
	}
	return "legacyIssuers entry written into ca.json (no `stepfort migrate adcs issuer add` in this binary)", os.WriteFile(cfgFile, out, 0o600)
}

// dig returns the object at path in a decoded JSON document.
func dig(m map[string]any, path ...string) (map[string]any, bool) {
	for _, k := range path {
		next, ok := m[k].(map[string]any)
		if !ok {
			return nil, false
		}
		m = next
	}
	return m, true
}

// importLegacy writes n legacy certificates (every third revoked,
// keyCompromise) into the legacy tables of PostgreSQL database dbName
// through legacy.Store, and returns OCSP targets for them plus n/2 serials
// never imported.
func importLegacy(dsn, dbName string, c *legacyBenchCA, n int) ([]ocspTarget, error) {
	db, err := nosql.New("postgresql", dsn, nosql.WithDatabase(dbName))
	if err != nil {
		return nil, err
	}
	defer db.Close()
	store, err := legacy.OpenStore(db)
	if err != nil {
		return nil, err
	}
	revokedAt := time.Now().Add(-24 * time.Hour).Truncate(time.Second)
	var targets []ocspTarget
	for i := range n {
		serial := new(big.Int).SetBytes([]byte{0x61, 0x00, byte(i >> 8), byte(i), 0x00, 0x2a}) // ADCS-like
		t := ocspTarget{cert: &x509Cert{SerialNumber: serial}, want: ocsp.Good}
		if i%3 == 0 {
			if err := store.Revoke(benchLegacyIssuer, serial, ocsp.KeyCompromise, revokedAt, legacy.AllowUnknown()); err != nil {
				return nil, err
			}
			t.want, t.revokedAt, t.reason = ocsp.Revoked, revokedAt, ocsp.KeyCompromise
		} else {
			// Imported as issued: a hold released (the store's API
			// until the importer is used here).
			if err := store.Revoke(benchLegacyIssuer, serial, legacy.ReasonCertificateHold, revokedAt, legacy.AllowUnknown()); err != nil {
				return nil, err
			}
			if err := store.Revoke(benchLegacyIssuer, serial, legacy.ReasonRemoveFromCRL, revokedAt); err != nil {
				return nil, err
			}
		}
		targets = append(targets, t)
	}
	for i := range n / 2 {
		targets = append(targets, ocspTarget{cert: &x509Cert{SerialNumber: randomSerial(100000 + i)}, want: ocsp.Unknown})
	}
	return targets, nil
}

// runOCSPIssuers is the "ocsp-issuers" part.
func (b *bench) runOCSPIssuers(ctx context.Context) error {
	o, c := b.o, b.c
	if err := c.cloneDB(ctx, issuersDB); err != nil {
		return err
	}
	one, err := c.startServer(ctx, "one-issuer", b.stepfort, true, filepath.Join(b.workdir, "issuers-one"), issuersDB)
	if err != nil {
		return err
	}
	defer one.Stop()
	client := signload.NewClient(c.roots, o.workers)
	defer client.CloseIdleConnections()
	m, err := b.prepareMix(ctx, c, one, client, 0, "OCSP with two issuers vs one, 2 stepfort daemons on one PostgreSQL")
	if err != nil {
		return err
	}
	lca, err := newLegacyBenchCA(filepath.Join(b.workdir, "legacy"))
	if err != nil {
		return err
	}
	legacyTargets, err := importLegacy(c.pg.DSN(), issuersDB, lca, o.ocspCerts)
	if err != nil {
		return fmt.Errorf("import legacy certificates: %w", err)
	}
	legacyReqs, err := buildOCSPRequests(legacyTargets, lca.cert)
	if err != nil {
		return err
	}
	port, httpPort, err := benchproc.TwoPorts()
	if err != nil {
		return err
	}
	// An installation's layout (config/, certs/, secrets/): the issuer
	// add command writes the legacy certificate and key next to ca.json's.
	twoDir := filepath.Join(b.workdir, "issuers-two")
	for _, d := range []string{"certs", "secrets"} {
		if err := os.MkdirAll(filepath.Join(twoDir, d), 0o700); err != nil {
			return err
		}
	}
	cfgFile, err := c.runConfig(filepath.Join(twoDir, "config"), issuersDB, port, httpPort)
	if err != nil {
		return err
	}
	how, err := addLegacyIssuer(ctx, b.stepfort, cfgFile, c.pwFile, lca)
	if err != nil {
		return err
	}
	two, err := c.startServerWith(ctx, "two-issuers", b.stepfort, twoDir, cfgFile, port, httpPort)
	if err != nil {
		return err
	}
	defer two.Stop()
	fmt.Printf("  legacy issuer %q: %d certificates in the legacy tables (every third revoked) and %d never imported; added by %s\n",
		benchLegacyIssuer, o.ocspCerts, o.ocspCerts/2, how)

	oc := ocspClient(o.ocspWorkers, true)
	defer oc.CloseIdleConnections()
	oneBase, twoBase := one.httpURL+"/ocsp", two.httpURL+"/ocsp"
	for _, chk := range []struct {
		base    string
		reqs    []ocspReq
		targets []ocspTarget
		issuer  *x509.Certificate
		what    string
	}{
		{oneBase, m.reqs, m.targets, c.inter, "one issuer, own"},
		{twoBase, m.reqs, m.targets, c.inter, "two issuers, own"},
		{twoBase, legacyReqs, legacyTargets, lca.cert, "two issuers, legacy (is the legacy issuer wired into the responder?)"},
	} {
		if err := checkOCSP(ctx, oc, chk.base, chk.reqs, chk.targets, chk.issuer); err != nil {
			return fmt.Errorf("OCSP answers, %s: %w", chk.what, err)
		}
	}
	mixed := interleave(m.reqs, legacyReqs)
	fmt.Printf("  every answer checked on both daemons (signature, serial, status, reason; legacy answers by its delegated responder)\n")

	// Short alternating rounds, the order rotated each round, so a busy
	// moment on this shared machine hits every load alike; the server's
	// CPU time per response is the steadier comparison.
	rounds, d := max(1, benchproc.EnvInt("BENCH_HA_ISSUERS_ROUNDS", 5)), max(2*time.Second, o.ocspDur/5)
	loads := []struct {
		name string
		s    *server
		reqs []ocspReq
	}{{"one issuer", one, m.reqs}, {"two issuers, own requests", two, m.reqs}, {"two issuers, 50/50 own/legacy", two, mixed}}
	var rateRatio, cpuRatio [3][]float64
	var rates, cpus [3][]float64
	for round := range rounds {
		var rate, cpu [3]float64
		for k := range loads {
			i := (k + round) % len(loads)
			l := loads[i]
			base := l.s.httpURL + "/ocsp"
			if _, err := rawLoad(ctx, base, l.reqs, o.ocspWorkers, 300*time.Millisecond, true); err != nil { // warm-up
				return err
			}
			cpu0, _ := benchproc.CPUTime(l.s.Proc.Pid())
			r, err := rawLoad(ctx, base, l.reqs, o.ocspWorkers, d, true)
			if err != nil {
				return err
			}
			cpu1, _ := benchproc.CPUTime(l.s.Proc.Pid())
			if r.Failed > 0 {
				return fmt.Errorf("OCSP issuers, round %d, %s: %d of %d requests failed, e.g. %s", round+1, l.name, r.Failed, r.Failed+r.OK, strings.Join(r.Errs, " | "))
			}
			rate[i], cpu[i] = r.PerSecond(), float64(cpu1-cpu0)/float64(time.Microsecond)/float64(max(r.OK, 1))
			rates[i], cpus[i] = append(rates[i], rate[i]), append(cpus[i], cpu[i])
		}
		line := fmt.Sprintf("  round %d:", round+1)
		for i, l := range loads {
			rateRatio[i], cpuRatio[i] = append(rateRatio[i], rate[i]/rate[0]), append(cpuRatio[i], cpu[0]/cpu[i])
			line += fmt.Sprintf(" | %s %6.0f/s %5.1f us CPU", l.name, rate[i], cpu[i])
		}
		fmt.Println(line)
	}
	for _, s := range []*server{one, two} {
		if err := s.Check(); err != nil {
			return err
		}
	}
	verdict := func(r float64) string {
		if r >= 0.95 {
			return "within 5%: target met"
		}
		return "TARGET MISSED (more than 5% slower)"
	}
	for i, l := range loads[1:] {
		i++
		rr, cr := median(rateRatio[i]), median(cpuRatio[i])
		b.sum("OCSP %s vs one issuer (median of %d alternating rounds of %s, %d workers, one PostgreSQL): %.0f/s vs %.0f/s, throughput ratio %.3f (%s); server CPU %.1f vs %.1f us/response, ratio %.3f",
			l.name, rounds, d, o.ocspWorkers, median(rates[i]), median(rates[0]), rr, verdict(rr), median(cpus[i]), median(cpus[0]), cr)
	}
	return nil
}

// startServerWith starts `stepfort serve` on the configuration cfgFile
// (written by runConfig for port and httpPort, then changed).
func (c *ca) startServerWith(ctx context.Context, name, bin, dir, cfgFile string, port, httpPort int) (*server, error) {
	bs, err := benchproc.Start(ctx, name, bin, []string{"serve", cfgFile, "--password-file", c.pwFile}, nil, dir, port, c.roots)
	if err != nil {
		return nil, err
	}
	return &server{Server: bs, httpURL: fmt.Sprintf("http://127.0.0.1:%d", httpPort), httpPort: httpPort}, nil
}

// interleave alternates a and b (the shorter repeated), so a load is an
// even mix.
func interleave(a, b []ocspReq) []ocspReq {
	n := max(len(a), len(b))
	out := make([]ocspReq, 0, 2*n)
	for i := range n {
		out = append(out, a[i%len(a)], b[i%len(b)])
	}
	return out
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}
