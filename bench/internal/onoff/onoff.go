// Package onoff is the issuance harness of the plugin benchmarks (certindex,
// billing, audit): it runs the real daemon with one ca.json setting off and
// on, alternating, under the /1.0/sign load of bench/sign, and prints the
// throughput of each run and the on/off ratio of the medians. How long the
// plugin takes to catch up after the last response is measured by a Drain
// the benchmark supplies.
package onoff

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/stepfort/stepfort/bench/internal/benchproc"
	"github.com/stepfort/stepfort/bench/internal/signload"
	"github.com/stepfort/stepfort/internal/testenv"
)

// Options are the settings of the load every on/off benchmark takes.
type Options struct {
	N, Warmup, Workers, Rounds int
	// Stepfort is the stepfort binary; empty builds ./cmd/stepfort.
	Stepfort string
}

// Flags registers -n, -warmup, -c, -rounds and -stepfort (and their
// environment variables) for o on the command line.
func (o *Options) Flags() {
	flag.IntVar(&o.N, "n", benchproc.EnvInt("BENCH_N", 2000), "timed sign requests per run (env BENCH_N)")
	flag.IntVar(&o.Warmup, "warmup", benchproc.EnvInt("BENCH_WARMUP", 200), "unmeasured sign requests per run (env BENCH_WARMUP)")
	flag.IntVar(&o.Workers, "c", benchproc.EnvInt("BENCH_CONCURRENCY", 16), "concurrent workers (env BENCH_CONCURRENCY)")
	flag.IntVar(&o.Rounds, "rounds", benchproc.EnvInt("BENCH_ROUNDS", 2), "runs of each setting, alternating (env BENCH_ROUNDS)")
	flag.StringVar(&o.Stepfort, "stepfort", os.Getenv("BENCH_STEPFORT"), "stepfort binary; empty builds ./cmd/stepfort (env BENCH_STEPFORT)")
}

// Bench describes one on/off comparison.
type Bench struct {
	Options
	// Title names the setting in the section header ("billing").
	Title string
	// Label names it in each row and in errors ("index").
	Label string
	// Drained ends the drain note of a row: ", all N certificates
	// <Drained> X s after the last response".
	Drained string
	// Set edits the parsed ca.json of a fresh CA: the only difference
	// between the two settings.
	Set func(cfg map[string]any, on bool)
	// Drain, when set, waits in the on runs until the plugin has caught up
	// with want certificates.
	Drain func(ctx context.Context, t *Target, want int) error
}

// Target is a running daemon, for a Drain.
type Target struct {
	URL   string
	Roots *x509.CertPool
	Token string // the admin API token
}

// Get sends an authenticated GET of url+path with hc.
func (t *Target) Get(ctx context.Context, hc *http.Client, path string) (*http.Response, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, t.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+t.Token)
	return hc.Do(req)
}

// Client is an HTTP client trusting t's roots with the given timeout.
func (t *Target) Client(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: t.Roots}}}
}

// WaitCount calls count every 100 ms until it reports at least want, for at
// most 2 minutes; then the error is stuck formatted with the last count and
// want.
func WaitCount(want int, stuck string, count func() (int, error)) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		n, err := count()
		if err != nil {
			return err
		}
		if n >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf(stuck, n, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stepfort returns bin, or when it is empty builds ./cmd/stepfort into dir.
func Stepfort(ctx context.Context, bin, dir string) (string, error) {
	if bin != "" {
		return bin, nil
	}
	root, err := testenv.RepoRoot()
	if err != nil {
		return "", err
	}
	bin = filepath.Join(dir, "stepfort")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./cmd/stepfort")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build stepfort: %w\n%s", err, out)
	}
	return bin, nil
}

// Run runs b's rounds with stepfort bin (from Stepfort) on database dbType ("bbolt" or
// "postgresql"), each CA in a directory under dir, signing csrs (Warmup + N
// of them).
func (b *Bench) Run(ctx context.Context, bin, dir, dbType string, csrs []signload.CSR) error {
	var pg *testenv.Postgres
	if dbType == "postgresql" {
		var err error
		if pg, err = testenv.NewPostgres(""); err != nil {
			return fmt.Errorf("start PostgreSQL: %w", err)
		}
		defer pg.Close()
	}
	fmt.Printf("== Issuance throughput, %s on vs off (%s, %d timed + %d warm-up /1.0/sign, %d workers, %d rounds) ==\n",
		b.Title, dbType, b.N, b.Warmup, b.Workers, b.Rounds)
	rates := map[bool][]float64{}
	for round := range b.Rounds {
		order := []bool{false, true}
		if round%2 == 1 {
			order = []bool{true, false}
		}
		for _, on := range order {
			r, err := b.run(ctx, bin, filepath.Join(dir, fmt.Sprintf("%s-r%d-%v", dbType, round, on)), on, csrs, pg)
			if err != nil {
				return fmt.Errorf("round %d %s=%v: %w", round+1, b.Label, on, err)
			}
			rates[on] = append(rates[on], r.rate)
			drain := ""
			if on && b.Drain != nil {
				drain = fmt.Sprintf(", all %d certificates %s %.2f s after the last response", b.Warmup+b.N, b.Drained, r.drain.Seconds())
			}
			fmt.Printf("round %d %s %-3s %7.1f certificates/s, p50 %.1f ms, p99 %.1f ms%s\n", round+1, b.Label, onOff(on), r.rate, ms(r.p50), ms(r.p99), drain)
		}
	}
	off, on := median(rates[false]), median(rates[true])
	fmt.Printf("median: %s off %.1f/s, %s on %.1f/s: ratio on/off %.3f (target >= 0.95)\n", b.Label, off, b.Label, on, on/off)
	return nil
}

type result struct {
	rate     float64
	p50, p99 time.Duration
	drain    time.Duration
}

// run initialises a CA in dir, applies Set, serves it and times the load.
func (b *Bench) run(ctx context.Context, bin, dir string, on bool, csrs []signload.CSR, pg *testenv.Postgres) (*result, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	httpPort, err := freePort()
	if err != nil {
		return nil, err
	}
	args := []string{"init", "--dir", dir, "--address", fmt.Sprintf("127.0.0.1:%d", port), "--insecure-address", fmt.Sprintf("127.0.0.1:%d", httpPort)}
	if pg != nil {
		args = append(args, "--db", "postgresql", "--db-dsn", pg.DSN(), "--db-name", "bench_"+strings.NewReplacer("-", "_").Replace(filepath.Base(dir)))
	}
	if out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("stepfort init: %w\n%s", err, out)
	}
	cfgPath := filepath.Join(dir, "config", "ca.json")
	cfg, err := b.configure(cfgPath, on)
	if err != nil {
		return nil, err
	}
	pw, err := os.ReadFile(filepath.Join(dir, "secrets", "password"))
	if err != nil {
		return nil, err
	}
	rootPEM, err := os.ReadFile(filepath.Join(dir, "certs", "root_ca.crt"))
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)
	proc, err := testenv.NewProcess(filepath.Join(dir, "server.log"), bin,
		[]string{"serve", cfgPath, "--password-file", filepath.Join(dir, "secrets", "password")}, []string{"STEPPATH=" + filepath.Join(dir, "steppath")})
	if err != nil {
		return nil, err
	}
	defer func() {
		_ = proc.Signal(syscall.SIGTERM)
		if err := proc.Wait(15 * time.Second); errors.Is(err, testenv.ErrTimeout) {
			_ = proc.Kill9()
		}
	}()
	url := fmt.Sprintf("https://127.0.0.1:%d", port)
	if err := waitHealthy(ctx, url, roots, proc); err != nil {
		return nil, err
	}
	sig, err := signload.NewSigner(cfg, "admin", strings.TrimSpace(string(pw)))
	if err != nil {
		return nil, err
	}
	client := signload.NewClient(roots, b.Workers)
	bodies, err := sig.Bodies(url+"/1.0/sign", csrs)
	if err != nil {
		return nil, err
	}
	if w := signload.SendAll(ctx, client, url, bodies[:b.Warmup], csrs[:b.Warmup], b.Workers); w.Failed > 0 {
		return nil, fmt.Errorf("warm-up: %d failed: %v", w.Failed, w.Errs)
	}
	res := signload.SendAll(ctx, client, url, bodies[b.Warmup:], csrs[b.Warmup:], b.Workers)
	if res.Failed > 0 {
		return nil, fmt.Errorf("%d requests failed: %v", res.Failed, res.Errs)
	}
	end := time.Now()
	out := &result{rate: res.PerSecond(), p50: res.Percentile(50), p99: res.Percentile(99)}
	if on && b.Drain != nil {
		tok, err := os.ReadFile(filepath.Join(dir, "secrets", "admin-token"))
		if err != nil {
			return nil, err
		}
		if err := b.Drain(ctx, &Target{URL: url, Roots: roots, Token: strings.TrimSpace(string(tok))}, b.Warmup+b.N); err != nil {
			return nil, err
		}
		out.drain = time.Since(end)
	}
	return out, nil
}

// configure rewrites ca.json at path with Set applied and returns it.
func (b *Bench) configure(path string, on bool) (map[string]any, error) {
	var cfg map[string]any
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, err
	}
	b.Set(cfg, on)
	if raw, err = json.MarshalIndent(cfg, "", "\t"); err != nil {
		return nil, err
	}
	return cfg, os.WriteFile(path, raw, 0o600)
}

func waitHealthy(ctx context.Context, url string, roots *x509.CertPool, p *testenv.Process) error {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, DisableKeepAlives: true}}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := hc.Get(url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		switch {
		case p.Exited():
			return fmt.Errorf("stepfort exited during start-up:\n%s", p.Log())
		case time.Now().After(deadline):
			return fmt.Errorf("stepfort not healthy after 60s; log %s", p.LogPath())
		case ctx.Err() != nil:
			return ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Prepare makes a scratch directory named after prefix, the stepfort
// binary (o.Stepfort or a build in it) and o.Warmup + o.N CSRs. Call done
// when the benchmark ends: it removes the directory.
func Prepare(ctx context.Context, prefix string, o Options) (bin, dir string, csrs []signload.CSR, done func(), err error) {
	if dir, err = os.MkdirTemp("", prefix); err != nil {
		return "", "", nil, nil, err
	}
	done = func() { os.RemoveAll(dir) }
	if bin, err = Stepfort(ctx, o.Stepfort, dir); err == nil {
		csrs, err = signload.MakeCSRs(o.Warmup + o.N)
	}
	if err != nil {
		done()
		return "", "", nil, nil, err
	}
	return bin, dir, csrs, done, nil
}

// RunEach is Run on each database type of dbs in turn; an error names it.
func (b *Bench) RunEach(ctx context.Context, bin, dir string, dbs []string, csrs []signload.CSR) error {
	for _, dbType := range dbs {
		if err := b.Run(ctx, bin, dir, dbType, csrs); err != nil {
			return fmt.Errorf("%s: %w", dbType, err)
		}
	}
	return nil
}
