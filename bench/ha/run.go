package main

import (
	"context"
	"crypto"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/stepfort/stepfort/bench/internal/benchproc"
	"github.com/stepfort/stepfort/bench/internal/signload"
	"github.com/stepfort/stepfort/internal/testenv"
)

type bench struct {
	o        *options
	workdir  string
	stepfort string
	stepCA   string
	c        *ca
	sig      *signload.Signer
	summary  []string
}

func (b *bench) sum(format string, args ...any) {
	b.summary = append(b.summary, fmt.Sprintf(format, args...))
}

func run(ctx context.Context, o *options) (err error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return err
	}
	b := &bench{o: o}
	var done func(error)
	if b.workdir, done, err = benchproc.Workdir(o.workdir, "stepfort-bench-ha-", o.keep); err != nil {
		return err
	}
	defer func() { done(err) }()
	// The postgres user must reach the PostgreSQL directory below.
	if err := os.Chmod(b.workdir, 0o755); err != nil {
		return err
	}
	if o.parts["issuance"] {
		if b.stepCA, err = benchproc.FindStepCA(o.stepCA); err != nil {
			return err
		}
	}
	if b.stepfort = o.stepfort; b.stepfort == "" {
		fmt.Println("building stepfort (CGO_ENABLED=0) ...")
		b.stepfort = filepath.Join(b.workdir, "stepfort")
		if err := benchproc.BuildStepfort(ctx, root, b.stepfort); err != nil {
			return err
		}
	}
	fmt.Printf("stepfort HA/revocation benchmark: %s, %d CPUs, PostgreSQL via internal/testenv, plugins as `stepfort init` writes them\n", runtime.Version(), runtime.NumCPU())
	pg, err := testenv.NewPostgres(filepath.Join(b.workdir, "pg"))
	if err != nil {
		return err
	}
	defer pg.Close()
	if b.c, err = initCA(ctx, b.stepfort, filepath.Join(b.workdir, "init"), pg); err != nil {
		return err
	}
	if b.sig, err = signload.NewSigner(b.c.cfg, provisionerName, b.c.password); err != nil {
		return err
	}

	if o.parts["ocsp"] || o.parts["propagation"] {
		if err := b.runRevocation(ctx); err != nil {
			return err
		}
	}
	if o.parts["ocsp-issuers"] {
		fmt.Printf("\nOCSP with two issuers vs one (stepfort's own and a legacy issuer)\n")
		if err := b.runOCSPIssuers(ctx); err != nil {
			return err
		}
	}
	if o.parts["ocsp"] && o.ocspBbolt {
		if err := b.runOCSPBbolt(ctx); err != nil {
			return err
		}
	}
	if o.parts["crl"] {
		fmt.Printf("\nCRL: ha.Publisher.Publish() over revoked_x509_certs in bbolt (child process)\n")
		steps, err := runCRL(ctx, o, b.c, b.workdir)
		if err != nil {
			return err
		}
		for i, st := range steps {
			verdict := "scaling point"
			switch {
			case st.Entries >= 1_000_000 && st.PublishSec <= 10:
				verdict = "target <= 10s: met"
			case st.Entries >= 1_000_000:
				verdict = "target <= 10s: TARGET MISSED"
			}
			b.sum("CRL %d entries: published in %.2fs (%s), %.1f MiB DER, RSS %.0f MiB before -> peak %.0f MiB during Publish",
				st.Entries, st.PublishSec, verdict, float64(st.CRLBytes)/(1<<20), st.RSSBefore, st.PeakDuring)
			if i > 0 {
				prev := steps[i-1]
				per := (st.PeakDuring - st.RSSBefore - (prev.PeakDuring - prev.RSSBefore)) * (1 << 20) / float64(st.Entries-prev.Entries)
				der := float64(st.CRLBytes-prev.CRLBytes) / float64(st.Entries-prev.Entries)
				b.sum("CRL memory grows with the CRL: %.0f bytes of extra peak RSS per revoked entry between %d and %d entries, %.1fx the %.0f DER bytes an entry adds (the table is streamed; the publisher holds the new CRL, its stored JSON row and the previous one)",
					per, prev.Entries, st.Entries, per/der, der)
			}
		}
	}
	if o.parts["issuance"] {
		if err := b.runIssuance(ctx); err != nil {
			return err
		}
	}
	fmt.Printf("\n=== summary ===\n")
	for _, s := range b.summary {
		fmt.Println("  " + s)
	}
	return nil
}

// revocationDB is the database the two replicas share.
const revocationDB = "ha_revocation"

// runRevocation issues and revokes certificates on two replicas sharing a
// PostgreSQL database, then measures OCSP (stepfort vs openssl) and
// propagation.
func (b *bench) runRevocation(ctx context.Context) error {
	o, c := b.o, b.c
	dbName := revocationDB
	if err := c.cloneDB(ctx, dbName); err != nil {
		return err
	}
	a, err := c.startServer(ctx, "replica-a", b.stepfort, true, filepath.Join(b.workdir, "rev-a"), dbName)
	if err != nil {
		return err
	}
	defer a.Stop()
	rb, err := c.startServer(ctx, "replica-b", b.stepfort, true, filepath.Join(b.workdir, "rev-b"), dbName)
	if err != nil {
		return err
	}
	defer rb.Stop()
	client := signload.NewClient(c.roots, o.workers)
	defer client.CloseIdleConnections()

	m, err := b.prepareMix(ctx, c, a, client, o.propN, "2 stepfort replicas on one PostgreSQL")
	if err != nil {
		return err
	}
	reqs, targets, certs := m.reqs, m.targets, m.certs
	good, revoked, unknown := m.good, m.revoked, m.unknown

	if o.parts["ocsp"] {
		if err := b.runOCSP(ctx, a, rb, reqs, targets, good, revoked, unknown); err != nil {
			return err
		}
	}
	if o.parts["propagation"] {
		if err := b.runPropagation(ctx, client, a, rb, certs[o.ocspCerts:]); err != nil {
			return err
		}
	}
	for _, s := range []*server{a, rb} {
		if err := s.Check(); err != nil {
			return err
		}
	}
	return nil
}

// ocspMix is the OCSP request mix and the certificates behind it.
type ocspMix struct {
	reqs                   []ocspReq
	targets                []ocspTarget
	certs                  []*x509Cert // issued; those after ocspCerts are extra
	good, revoked, unknown int
}

// prepareMix issues ocspCerts+extra certificates through a, revokes every
// third of the first ocspCerts (keyCompromise), adds ocspCerts/2 serials
// never issued, and builds the requests.
func (b *bench) prepareMix(ctx context.Context, c *ca, a *server, client *http.Client, extra int, setup string) (*ocspMix, error) {
	o := b.o
	sig, err := signload.NewSigner(c.cfg, provisionerName, c.password)
	if err != nil {
		return nil, err
	}
	// Certificates: ocspCerts for the OCSP mix, propN for propagation.
	n := o.ocspCerts + extra
	csrs, err := signload.MakeNamedCSRs("ocsp", n)
	if err != nil {
		return nil, err
	}
	urls := make([]string, n)
	bodies := make([][]byte, n)
	for i := range csrs {
		urls[i] = a.URL
		if bodies[i], err = sig.SignBody(a.URL, csrs[i]); err != nil {
			return nil, err
		}
	}
	res, certs := signload.Send(ctx, client, urls, bodies, csrs, o.workers)
	if res.Failed > 0 {
		return nil, fmt.Errorf("issuing OCSP certificates: %d failed, e.g. %s", res.Failed, strings.Join(res.Errs, " | "))
	}
	fmt.Printf("\nrevocation set-up: %s; %d certificates issued on %s in %.1fs\n", setup, n, a.Name, res.Elapsed.Seconds())

	// Revoke every third OCSP certificate through A (keyCompromise).
	var targets []ocspTarget
	t0 := time.Now()
	for i, crt := range certs[:o.ocspCerts] {
		t := ocspTarget{cert: crt, want: ocsp.Good}
		if i%3 == 0 {
			if err := revoke(ctx, client, sig, a.URL, crt.SerialNumber.String(), ocsp.KeyCompromise); err != nil {
				return nil, err
			}
			t.want, t.revokedAt, t.reason = ocsp.Revoked, time.Now(), ocsp.KeyCompromise
		}
		targets = append(targets, t)
	}
	revoked := (o.ocspCerts + 2) / 3
	fmt.Printf("  %d revoked through %s's /1.0/revoke in %.1fs\n", revoked, a.Name, time.Since(t0).Seconds())
	for i := range o.ocspCerts / 2 {
		targets = append(targets, ocspTarget{cert: &x509Cert{SerialNumber: randomSerial(i)}, want: ocsp.Unknown})
	}
	good, unknown := o.ocspCerts-revoked, o.ocspCerts/2
	reqs, err := buildOCSPRequests(targets, c.inter)
	if err != nil {
		return nil, err
	}

	return &ocspMix{reqs: reqs, targets: targets, certs: certs, good: good, revoked: revoked, unknown: unknown}, nil
}

func (b *bench) runOCSP(ctx context.Context, a, rb *server, reqs []ocspReq, targets []ocspTarget, good, revoked, unknown int) error {
	o, c := b.o, b.c
	mix := fmt.Sprintf("%d good / %d revoked / %d unknown serials, each by POST and GET (%d distinct requests, SHA-1 CertIDs)", good, revoked, unknown, len(reqs))
	fmt.Printf("\nOCSP: %s, %d workers in-process, each on its own HTTP/1.1 connection (bench/ha/rawload.go; openssl gets a new connection per request)\n", mix, o.ocspWorkers)
	client := ocspClient(o.ocspWorkers, true)
	defer client.CloseIdleConnections()
	for _, s := range []*server{a, rb} {
		if err := checkOCSP(ctx, client, s.httpURL+"/ocsp", reqs, targets, c.inter); err != nil {
			return fmt.Errorf("stepfort %s OCSP answers: %w", s.Name, err)
		}
	}
	fmt.Printf("  every answer from both replicas checked (signature, serial, status, reason)\n")
	base := a.httpURL + "/ocsp"
	if _, err := rawLoad(ctx, base, reqs, o.ocspWorkers, time.Second, true); err != nil { // warm-up
		return err
	}
	sess0, err := c.pgSessions(ctx, revocationDB)
	if err != nil {
		return err
	}
	cpu0, _ := benchproc.CPUTime(a.Proc.Pid())
	sf, err := rawLoad(ctx, base, reqs, o.ocspWorkers, o.ocspDur, true)
	if err != nil {
		return err
	}
	cpu1, _ := benchproc.CPUTime(a.Proc.Pid())
	sess1, err := c.pgSessions(ctx, revocationDB)
	if err != nil {
		return err
	}
	if sf.Failed > 0 {
		return fmt.Errorf("stepfort OCSP: %d of %d requests failed, e.g. %s", sf.Failed, sf.Failed+sf.OK, strings.Join(sf.Errs, " | "))
	}
	if err := a.Check(); err != nil {
		return err
	}
	fmt.Printf("  stepfort (replica A)  %8.0f responses/s  p50 %6.2f ms  p99 %6.2f ms  %d responses in %.1fs, server CPU %.1f us/response, %d PostgreSQL sessions opened (and closed) during the load\n",
		sf.PerSecond(), ms(sf.Percentile(50)), ms(sf.Percentile(99)), sf.OK, sf.Elapsed.Seconds(), float64(cpu1-cpu0)/float64(time.Microsecond)/float64(sf.OK), sess1-sess0)
	loadSessions := sess1 - sess0
	// Diagnostic: the same load from net/http's client, which costs about
	// as much CPU per request as the server's answer.
	if nh := ocspLoad(ctx, client, base, reqs, o.ocspWorkers, 3*time.Second); nh.Failed == 0 {
		fmt.Printf("  stepfort, net/http client %5.0f responses/s  p50 %6.2f ms  p99 %6.2f ms  (diagnostic: Go's HTTP client as the load generator)\n",
			nh.PerSecond(), ms(nh.Percentile(50)), ms(nh.Percentile(99)))
	}
	diag := ""
	// Diagnostic: 2 workers, no more than database/sql's default of two
	// idle connections, so the pool does not churn.
	if o.ocspWorkers > 2 {
		sess0, _ = c.pgSessions(ctx, revocationDB)
		d2, err := rawLoad(ctx, base, reqs, 2, 3*time.Second, true)
		if err != nil {
			return err
		}
		sess1, _ = c.pgSessions(ctx, revocationDB)
		if d2.Failed > 0 {
			return fmt.Errorf("stepfort OCSP (2 workers): %d failed, e.g. %s", d2.Failed, strings.Join(d2.Errs, " | "))
		}
		fmt.Printf("  stepfort, 2 workers   %8.0f responses/s  p50 %6.2f ms  p99 %6.2f ms  (diagnostic), %d PostgreSQL sessions opened during it\n",
			d2.PerSecond(), ms(d2.Percentile(50)), ms(d2.Percentile(99)), sess1-sess0)
		diag = fmt.Sprintf("; with 2 workers (no pool churn) %.0f/s, p99 %.2f ms, %d sessions", d2.PerSecond(), ms(d2.Percentile(99)), sess1-sess0)
	}

	// The machine's ceiling for any net/http responder, same load.
	sampleBody, err := doOCSP(ctx, client, base, &reqs[0])
	if err != nil {
		return err
	}
	ceil, err := ceilingLoad(ctx, b.workdir, reqs, o.ocspWorkers, 5*time.Second, len(sampleBody))
	if err != nil {
		return err
	}
	if ceil.Failed > 0 {
		return fmt.Errorf("ceiling server: %d failed, e.g. %s", ceil.Failed, strings.Join(ceil.Errs, " | "))
	}
	fmt.Printf("  net/http fixed answer %8.0f responses/s  p50 %6.2f ms  p99 %6.2f ms  (ceiling: a net/http server process writing %d fixed bytes, no OCSP work)\n",
		ceil.PerSecond(), ms(ceil.Percentile(50)), ms(ceil.Percentile(99)), len(sampleBody))

	// openssl ocsp -index with the same certificates.
	dir := filepath.Join(b.workdir, "openssl")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	index, key, crt := filepath.Join(dir, "index.txt"), filepath.Join(dir, "intermediate.key"), filepath.Join(c.dir, "certs", "intermediate_ca.crt")
	if err := opensslIndex(index, targets); err != nil {
		return err
	}
	if err := plainKey(filepath.Join(c.dir, "secrets", "intermediate_ca_key"), c.password, key); err != nil {
		return err
	}
	var osslRate float64
	var osslP99 time.Duration
	for _, multi := range []int{1} {
		p, url, err := startOpenSSLResponder(dir, index, crt, key, multi, &reqs[0])
		if err != nil {
			return err
		}
		err = func() error {
			defer func() { _ = p.Kill9() }()
			// openssl's responder serves one connection at a time; with
			// keep-alive the other workers would wait behind the first
			// connection until it closes, so it gets one connection per
			// request (what it handles best).
			oc := ocspClient(o.ocspWorkers, false)
			defer oc.CloseIdleConnections()
			if err := checkOCSP(ctx, oc, url, reqs, targets, c.inter); err != nil {
				return fmt.Errorf("openssl ocsp answers: %w\n%s", err, benchproc.Tail(p.Log(), 2000))
			}
			if _, err := rawLoad(ctx, url, reqs, o.ocspWorkers, 500*time.Millisecond, false); err != nil {
				return err
			}
			cpu0, _ := benchproc.CPUTime(p.Pid())
			ol, err := rawLoad(ctx, url, reqs, o.ocspWorkers, o.opensslDur, false)
			if err != nil {
				return err
			}
			cpu1, _ := benchproc.CPUTime(p.Pid())
			if ol.Failed > 0 {
				return fmt.Errorf("openssl ocsp: %d of %d requests failed, e.g. %s", ol.Failed, ol.Failed+ol.OK, strings.Join(ol.Errs, " | "))
			}
			fmt.Printf("  openssl ocsp -index   %8.0f responses/s  p50 %6.2f ms  p99 %6.2f ms  %d responses in %.1fs, server CPU %.1f us/response (single process, new connection per request)\n",
				ol.PerSecond(), ms(ol.Percentile(50)), ms(ol.Percentile(99)), ol.OK, ol.Elapsed.Seconds(), float64(cpu1-cpu0)/float64(time.Microsecond)/float64(max(ol.OK, 1)))
			osslRate, osslP99 = ol.PerSecond(), ol.Percentile(99)
			return nil
		}()
		if err != nil {
			return err
		}
	}
	verdict := func(ok bool) string {
		if ok {
			return "target met"
		}
		return "TARGET MISSED"
	}
	b.sum("OCSP stepfort: %.0f responses/s, p99 %.2f ms (target >= 10,000/s: %s); %s", sf.PerSecond(), ms(sf.Percentile(99)), verdict(sf.PerSecond() >= 10000), mix)
	b.sum("OCSP stepfort: %d PostgreSQL sessions opened during the %d-worker load (%.2f per response: database/sql keeps 2 idle connections by default)%s",
		loadSessions, o.ocspWorkers, float64(loadSessions)/float64(sf.OK), diag)
	b.sum("OCSP openssl ocsp -index: %.0f responses/s, p99 %.2f ms; stepfort/openssl = %.1fx (target >= 10x: %s)",
		osslRate, ms(osslP99), sf.PerSecond()/osslRate, verdict(sf.PerSecond() >= 10*osslRate))
	b.sum("OCSP ceiling: a net/http handler writing a fixed body answers %.0f/s under the same load; stepfort reaches %.0f%% of it; 10x openssl (%.0f/s) is %.1fx that ceiling",
		ceil.PerSecond(), 100*sf.PerSecond()/ceil.PerSecond(), 10*osslRate, 10*osslRate/ceil.PerSecond())
	return nil
}

// runPropagation revokes each cert on A and polls B's OCSP responder until
// it answers revoked. Latency is from the revoke response (acknowledged) to
// the first revoked answer from B.
func (b *bench) runPropagation(ctx context.Context, client *http.Client, a, rb *server, certs []*x509Cert) error {
	o, c := b.o, b.c
	oc := ocspClient(1, true)
	defer oc.CloseIdleConnections()
	var fromAck, fromStart []time.Duration
	polls := 0
	for _, crt := range certs[:o.propN] {
		der, err := ocsp.CreateRequest(crt, c.inter, &ocsp.RequestOptions{Hash: crypto.SHA1})
		if err != nil {
			return err
		}
		r := &ocspReq{der: der}
		status := func() (int, error) {
			body, err := doOCSP(ctx, oc, rb.httpURL+"/ocsp", r)
			if err != nil {
				return 0, err
			}
			resp, err := ocsp.ParseResponseForCert(body, crt, c.inter)
			if err != nil {
				return 0, err
			}
			return resp.Status, nil
		}
		if st, err := status(); err != nil || st != ocsp.Good {
			return fmt.Errorf("propagation: B answers %d (%v) before the revocation, want good", st, err)
		}
		t0 := time.Now()
		if err := revoke(ctx, client, b.sig, a.URL, crt.SerialNumber.String(), ocsp.Superseded); err != nil {
			return err
		}
		ack := time.Now()
		for {
			polls++
			st, err := status()
			if err != nil {
				return fmt.Errorf("propagation: OCSP on B: %w", err)
			}
			if st == ocsp.Revoked {
				now := time.Now()
				fromAck, fromStart = append(fromAck, now.Sub(ack)), append(fromStart, now.Sub(t0))
				break
			}
			if time.Since(ack) > 10*time.Second {
				return fmt.Errorf("propagation: B still answers %d 10s after the revocation of %s on A", st, crt.SerialNumber)
			}
			time.Sleep(time.Millisecond)
		}
	}
	sort.Slice(fromAck, func(i, j int) bool { return fromAck[i] < fromAck[j] })
	sort.Slice(fromStart, func(i, j int) bool { return fromStart[i] < fromStart[j] })
	fmt.Printf("\npropagation: %d revocations on A (/1.0/revoke), OCSP POST on B polled every ~1 ms (%d polls)\n", len(fromAck), polls)
	fmt.Printf("  revoke acknowledged -> B answers revoked: p50 %6.2f ms  p99 %6.2f ms  max %6.2f ms\n", ms(signload.Percentile(fromAck, 50)), ms(signload.Percentile(fromAck, 99)), ms(fromAck[len(fromAck)-1]))
	fmt.Printf("  revoke sent         -> B answers revoked: p50 %6.2f ms  p99 %6.2f ms  max %6.2f ms\n", ms(signload.Percentile(fromStart, 50)), ms(signload.Percentile(fromStart, 99)), ms(fromStart[len(fromStart)-1]))
	v := "target met"
	if signload.Percentile(fromStart, 99) > time.Second {
		v = "TARGET MISSED"
	}
	b.sum("propagation A->B: p50 %.2f ms, p99 %.2f ms from sending the revoke (p99 %.2f ms from its acknowledgement); target p99 <= 1s: %s",
		ms(signload.Percentile(fromStart, 50)), ms(signload.Percentile(fromStart, 99)), ms(signload.Percentile(fromAck, 99)), v)
	return nil
}

// issuanceRun is one server set-up under the sign load.
type issuanceRun struct {
	name     string
	bin      string
	stepfort bool
	replicas int
}

func (b *bench) runIssuance(ctx context.Context) error {
	o, c := b.o, b.c
	csrs, err := signload.MakeNamedCSRs("iss", o.warmup+o.issueN)
	if err != nil {
		return err
	}
	fmt.Printf("\nissuance on PostgreSQL: POST /1.0/sign, JWK tokens, P-256 CSRs, %d timed + %d warm-up, %d workers (HTTP/1.1 keep-alive), fresh copy of the database per run\n",
		o.issueN, o.warmup, o.workers)
	runs := []issuanceRun{
		{"upstream step-ca " + benchproc.UpstreamVersion, b.stepCA, false, 1},
		{"stepfort 1 replica", b.stepfort, true, 1},
		{"stepfort 2 replicas", b.stepfort, true, 2},
	}
	rates := map[string]float64{}
	for i, r := range runs {
		dbName := fmt.Sprintf("ha_issue_%d", i)
		if err := c.cloneDB(ctx, dbName); err != nil {
			return err
		}
		var servers []*server
		err := func() error {
			defer func() {
				for _, s := range servers {
					s.Stop()
				}
			}()
			for k := range r.replicas {
				s, err := c.startServer(ctx, fmt.Sprintf("%s-%d", strings.ReplaceAll(r.name, " ", "-"), k), r.bin, r.stepfort,
					filepath.Join(b.workdir, fmt.Sprintf("issue-%d-%d", i, k)), dbName)
				if err != nil {
					return err
				}
				servers = append(servers, s)
			}
			urls := make([]string, len(csrs))
			bodies := make([][]byte, len(csrs))
			for j := range csrs {
				urls[j] = servers[j%len(servers)].URL
				var err error
				if bodies[j], err = b.sig.SignBody(urls[j], csrs[j]); err != nil {
					return err
				}
			}
			client := signload.NewClient(c.roots, o.workers)
			defer client.CloseIdleConnections()
			w := o.warmup
			if warm, _ := signload.Send(ctx, client, urls[:w], bodies[:w], csrs[:w], o.workers); warm.Failed > 0 {
				return fmt.Errorf("%s: %d warm-up requests failed, e.g. %s", r.name, warm.Failed, strings.Join(warm.Errs, " | "))
			}
			var cpu0 time.Duration
			for _, s := range servers {
				t, _ := benchproc.CPUTime(s.Proc.Pid())
				cpu0 += t
			}
			res, _ := signload.Send(ctx, client, urls[w:], bodies[w:], csrs[w:], o.workers)
			var cpu1 time.Duration
			for _, s := range servers {
				t, _ := benchproc.CPUTime(s.Proc.Pid())
				cpu1 += t
				if err := s.Check(); err != nil {
					return err
				}
			}
			if res.Failed > 0 {
				return fmt.Errorf("%s: %d of %d requests failed, e.g. %s", r.name, res.Failed, res.Failed+res.OK, strings.Join(res.Errs, " | "))
			}
			fmt.Printf("  %-24s %7.1f certs/s  p50 %6.1f ms  p99 %6.1f ms  server CPU %.2f ms/cert  %d certs in %.1fs\n",
				r.name, res.PerSecond(), ms(res.Percentile(50)), ms(res.Percentile(99)), ms((cpu1-cpu0)/time.Duration(res.OK)), res.OK, res.Elapsed.Seconds())
			rates[r.name] = res.PerSecond()
			return nil
		}()
		if err != nil {
			return err
		}
	}
	up := rates[runs[0].name]
	b.sum("issuance on PostgreSQL: upstream %.0f/s, stepfort 1 replica %.0f/s (%.2fx upstream), 2 replicas %.0f/s (%.2fx upstream, %.2fx one replica; both replicas and PostgreSQL share this machine's %d CPUs)",
		up, rates[runs[1].name], rates[runs[1].name]/up, rates[runs[2].name], rates[runs[2].name]/up, rates[runs[2].name]/rates[runs[1].name], runtime.NumCPU())
	return nil
}

// runOCSPBbolt measures the responder of a single stepfort on bbolt (no
// PostgreSQL round trips), with the same mix and load, for comparison.
func (b *bench) runOCSPBbolt(ctx context.Context) error {
	o := b.o
	c, err := initCA(ctx, b.stepfort, filepath.Join(b.workdir, "init-bbolt"), nil)
	if err != nil {
		return err
	}
	s, err := c.startServer(ctx, "bbolt", b.stepfort, true, filepath.Join(b.workdir, "ocsp-bbolt"), "")
	if err != nil {
		return err
	}
	defer s.Stop()
	client := signload.NewClient(c.roots, o.workers)
	defer client.CloseIdleConnections()
	m, err := b.prepareMix(ctx, c, s, client, 0, "1 stepfort on bbolt")
	if err != nil {
		return err
	}
	oc := ocspClient(o.ocspWorkers, true)
	defer oc.CloseIdleConnections()
	base := s.httpURL + "/ocsp"
	if err := checkOCSP(ctx, oc, base, m.reqs, m.targets, c.inter); err != nil {
		return fmt.Errorf("stepfort on bbolt OCSP answers: %w", err)
	}
	if _, err := rawLoad(ctx, base, m.reqs, o.ocspWorkers, time.Second, true); err != nil {
		return err
	}
	cpu0, _ := benchproc.CPUTime(s.Proc.Pid())
	r, err := rawLoad(ctx, base, m.reqs, o.ocspWorkers, o.ocspDur/2, true)
	if err != nil {
		return err
	}
	cpu1, _ := benchproc.CPUTime(s.Proc.Pid())
	if r.Failed > 0 {
		return fmt.Errorf("stepfort on bbolt OCSP: %d of %d requests failed, e.g. %s", r.Failed, r.Failed+r.OK, strings.Join(r.Errs, " | "))
	}
	if err := s.Check(); err != nil {
		return err
	}
	fmt.Printf("  stepfort (bbolt)      %8.0f responses/s  p50 %6.2f ms  p99 %6.2f ms  %d responses in %.1fs, server CPU %.1f us/response, same mix, %d workers\n",
		r.PerSecond(), ms(r.Percentile(50)), ms(r.Percentile(99)), r.OK, r.Elapsed.Seconds(), float64(cpu1-cpu0)/float64(time.Microsecond)/float64(r.OK), o.ocspWorkers)
	b.sum("OCSP stepfort single node on bbolt (same mix, %d workers): %.0f responses/s, p99 %.2f ms", o.ocspWorkers, r.PerSecond(), ms(r.Percentile(99)))
	return nil
}
