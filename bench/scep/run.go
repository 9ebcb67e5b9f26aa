package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"time"

	"github.com/stepfort/stepfort/bench/internal/benchproc"
	"github.com/stepfort/stepfort/bench/internal/signload"
	"github.com/stepfort/stepfort/internal/testenv"
)

// intunePlaceholder is printed when the Intune round trip is skipped
// (-intune=false).
const intunePlaceholder = "Intune round trip: not measured (-intune=false)"

// runResult is one server run.
type runResult struct {
	name       string
	enroll     *signload.Result
	cpuPer     time.Duration // server CPU per timed enrollment
	rss, peak  float64       // MiB after the load
	challenges *signload.Result
	chCPUPer   time.Duration // server CPU per challenge created
}

func run(ctx context.Context, o *options) (err error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return err
	}
	work, done, err := benchproc.Workdir(o.workdir, "scepbench", o.keep)
	if err != nil {
		return err
	}
	defer func() { done(err) }()
	stepCA, err := benchproc.FindStepCA(o.stepCA)
	if err != nil {
		return err
	}
	stepfort := o.stepfort
	if stepfort == "" {
		stepfort = filepath.Join(work, "stepfort")
		if err := benchproc.BuildStepfort(ctx, root, stepfort); err != nil {
			return err
		}
	}
	c, err := initCA(ctx, stepfort, filepath.Join(work, "init"))
	if err != nil {
		return err
	}
	t0 := time.Now()
	es, err := makeEnrollees(o.warmup + o.n)
	if err != nil {
		return err
	}
	fmt.Printf("scep: %d RSA-%d client keys in %s; %d CPUs; %d timed + %d warm-up enrollments per run, %d workers, %d rounds, bbolt\n",
		len(es), clientKeyBits, time.Since(t0).Round(time.Millisecond), runtime.NumCPU(), o.n, o.warmup, o.workers, o.rounds)
	fmt.Printf("scep: stepfort-all (every plugin init enables) and/or stepfort-scep (only dynamicScep) with one-time challenges created through the API before the timed part; upstream step-ca %s with the static challenge, same ca.json minus the stepfort block\n", benchproc.UpstreamVersion)
	vs := variants(o.plugins)
	var results []*runResult
	for r := range o.rounds {
		for i := range vs {
			v := vs[(i+r)%len(vs)] // rotate the order each round
			bin := stepCA
			if !v.upstream {
				bin = stepfort
			}
			res, err := runOnce(ctx, o, c, v, bin, filepath.Join(work, fmt.Sprintf("%s-%d", v.name, r+1)), es)
			if err != nil {
				return fmt.Errorf("%s round %d: %w", v.name, r+1, err)
			}
			res.print(r + 1)
			results = append(results, res)
		}
	}
	iv := vs[len(vs)-1] // the Intune run uses stepfort-scep when measured, else stepfort-all
	rate := report(results, vs, iv, o.workers)
	if !o.intune {
		fmt.Println(intunePlaceholder)
		return nil
	}
	ir, err := measureIntune(ctx, o, c, iv, stepfort, filepath.Join(work, "stepfort-intune"), es)
	if err != nil {
		return fmt.Errorf("Intune round trip: %w", err)
	}
	ir.print(o.workers, rate)
	return nil
}

// runOnce starts one server on a fresh database, creates the challenges
// (stepfort), builds the requests, warms up, and times the enrollments.
func runOnce(ctx context.Context, o *options, c *ca, v variant, bin, dir string, es []enrollee) (*runResult, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	port, httpPort, err := benchproc.TwoPorts()
	if err != nil {
		return nil, err
	}
	isStepfort := !v.upstream
	cfg, err := c.runConfig(dir, v, port, httpPort)
	if err != nil {
		return nil, err
	}
	s, err := c.start(ctx, v.name, bin, isStepfort, cfg, dir, port)
	if err != nil {
		return nil, err
	}
	defer s.Stop()
	hc := newClient(c.roots, o.workers)
	defer hc.Transport.(*http.Transport).CloseIdleConnections()
	scepURL := fmt.Sprintf("http://127.0.0.1:%d/scep/%s", httpPort, scepProvisioner)
	ra, err := getRA(ctx, hc, scepURL)
	if err != nil {
		return nil, err
	}
	res := &runResult{name: v.name}
	challenges := []string{c.static}
	if isStepfort {
		cpu0, err := s.CPUTime()
		if err != nil {
			return nil, err
		}
		if res.challenges, challenges, err = createChallenges(ctx, hc, s.URL, c.adminToken, o.challenges, o.workers); err != nil {
			return nil, err
		}
		cpu1, err := s.CPUTime()
		if err != nil {
			return nil, err
		}
		res.chCPUPer = (cpu1 - cpu0) / time.Duration(res.challenges.OK)
	}
	reqs, err := buildRequests(es, challenges, ra)
	if err != nil {
		return nil, err
	}
	if w := sendAll(ctx, hc, scepURL, reqs[:o.warmup], o.workers); w.Failed > 0 {
		return nil, fmt.Errorf("%d of %d warm-up enrollments failed: %v", w.Failed, o.warmup, w.Errs)
	}
	time.Sleep(o.settle)
	cpu0, err := s.CPUTime()
	if err != nil {
		return nil, err
	}
	res.enroll = sendAll(ctx, hc, scepURL, reqs[o.warmup:], o.workers)
	cpu1, err := s.CPUTime()
	if err != nil {
		return nil, err
	}
	if res.enroll.Failed > 0 {
		return nil, fmt.Errorf("%d of %d enrollments failed: %v", res.enroll.Failed, o.n, res.enroll.Errs)
	}
	if err := s.Check(); err != nil {
		return nil, err
	}
	res.cpuPer = (cpu1 - cpu0) / time.Duration(res.enroll.OK)
	res.rss, res.peak, _ = s.Memory()
	return res, nil
}

// createChallenges makes n challenges from workers keep-alive clients and
// returns the timing and the challenges in order.
func createChallenges(ctx context.Context, hc *http.Client, url, token string, n, workers int) (*signload.Result, []string, error) {
	out := make([]string, n)
	res := signload.Load(ctx, n, workers, func(i int) error {
		ch, err := createChallenge(ctx, hc, url, token)
		out[i] = ch
		return err
	})
	if res.Failed > 0 {
		return nil, nil, fmt.Errorf("%d of %d challenge creations failed: %v", res.Failed, n, res.Errs)
	}
	return res, out, nil
}

// sendAll enrolls every request from workers clients.
func sendAll(ctx context.Context, hc *http.Client, url string, reqs []request, workers int) *signload.Result {
	return signload.Load(ctx, len(reqs), workers, func(i int) error { return enroll(ctx, hc, url, &reqs[i]) })
}

// newClient is an HTTP/1.1 client trusting roots that keeps one connection
// per worker alive, for both the HTTP (SCEP) and HTTPS (admin) listeners.
func newClient(roots *x509.CertPool, workers int) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		MaxIdleConns:        2 * workers,
		MaxIdleConnsPerHost: workers,
		IdleConnTimeout:     time.Minute,
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{}, // no HTTP/2
	}
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

func (r *runResult) print(round int) {
	e := r.enroll
	fmt.Printf("  round %d %-13s %7.1f enrollments/s  p50 %6.1fms  p99 %6.1fms  CPU %5.2f ms/enrollment  RSS %.0f MiB (peak %.0f)",
		round, r.name, e.PerSecond(), ms(e.Percentile(50)), ms(e.Percentile(99)), ms(r.cpuPer), r.rss, r.peak)
	if ch := r.challenges; ch != nil {
		fmt.Printf("  | %d challenges created at %.0f/s, p99 %.1fms, CPU %.2f ms/challenge", ch.OK, ch.PerSecond(), ms(ch.Percentile(99)), ms(r.chCPUPer))
	}
	fmt.Println()
}

// report prints the medians over rounds and the ratio of each stepfort
// variant to upstream, and returns the median enrollments/s of iv.
func report(results []*runResult, vs []variant, iv variant, workers int) float64 {
	by := map[string][]*runResult{}
	for _, r := range results {
		by[r.name] = append(by[r.name], r)
	}
	rate := func(r *runResult) float64 { return r.enroll.PerSecond() }
	p99 := func(r *runResult) float64 { return ms(r.enroll.Percentile(99)) }
	cpu := func(r *runResult) float64 { return ms(r.cpuPer) }
	up := by[upstreamVariant.name]
	fmt.Println("\nscep enrollment (PKCSReq, medians over rounds):")
	for _, v := range vs {
		rs := by[v.name]
		fmt.Printf("  %-13s %7.1f enrollments/s  p99 %6.1fms  CPU %5.2f ms/enrollment\n", v.name, median(rs, rate), median(rs, p99), median(rs, cpu))
	}
	for _, v := range vs {
		if v.upstream {
			continue
		}
		sf := by[v.name]
		fmt.Printf("  ratio stepfort (%s) / upstream: throughput %.2fx (target >= 0.90x), p99 %.2fx (%.1fms vs %.1fms), CPU per enrollment %.2fx\n",
			pluginsLabel(v), median(sf, rate)/median(up, rate), median(sf, p99)/median(up, p99), median(sf, p99), median(up, p99), median(sf, cpu)/median(up, cpu))
	}
	chRate := func(r *runResult) float64 { return r.challenges.PerSecond() }
	chP99 := func(r *runResult) float64 { return ms(r.challenges.Percentile(99)) }
	chCPU := func(r *runResult) float64 { return ms(r.chCPUPer) }
	for _, v := range vs {
		if v.upstream {
			continue
		}
		sf := by[v.name]
		fmt.Printf("scep challenge creation, %s (POST /api/v1/scep/challenges, bbolt, %d keep-alive workers): %.0f challenges/s median (target >= 2000/s), p99 %.1fms, server CPU %.2f ms/challenge\n",
			v.name, workers, median(sf, chRate), median(sf, chP99), median(sf, chCPU))
	}
	return median(by[iv.name], rate)
}

// pluginsLabel names the plugin set of a stepfort variant for the report.
func pluginsLabel(v variant) string {
	if v.scepOnly {
		return "dynamicScep only"
	}
	return "all init plugins"
}

// median is the median of f over rs.
func median(rs []*runResult, f func(*runResult) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	sort.Float64s(v)
	return v[len(v)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
