package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/stepfort/stepfort/bench/internal/benchproc"
	"github.com/stepfort/stepfort/bench/internal/signload"
	"github.com/stepfort/stepfort/internal/testenv"
)

// provisionerName is the JWK provisioner `stepfort init` creates.
const provisionerName = "admin"

// bench holds what every run needs.
type bench struct {
	o        *options
	workdir  string
	stepfort string
	stepCA   string
	csrs     []signload.CSR // warm-up requests first, then the timed ones
}

func run(ctx context.Context, o *options) (err error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return err
	}
	b := &bench{o: o}
	var done func(error)
	if b.workdir, done, err = benchproc.Workdir(o.workdir, "stepfort-bench-", o.keep); err != nil {
		return err
	}
	defer func() { done(err) }()
	if b.stepCA, err = benchproc.FindStepCA(o.stepCA); err != nil {
		return err
	}
	if b.stepfort = o.stepfort; b.stepfort == "" {
		fmt.Println("building stepfort (CGO_ENABLED=0) ...")
		b.stepfort = filepath.Join(b.workdir, "stepfort")
		if err := benchproc.BuildStepfort(ctx, root, b.stepfort); err != nil {
			return err
		}
	}
	fmt.Printf("stepfort vs upstream step-ca %s: POST /1.0/sign, JWK tokens, P-256 CSRs, %d timed + %d warm-up requests per run, %d workers (HTTP/1.1 keep-alive), %d rounds, %s, %d CPUs\n",
		benchproc.UpstreamVersion, o.n, o.warmup, o.workers, o.rounds, runtime.Version(), runtime.NumCPU())
	fmt.Printf("  upstream: %s\n  stepfort: %s (plugins %s)\n", b.stepCA, b.stepfort, o.plugins)
	if b.csrs, err = signload.MakeCSRs(o.warmup + o.n); err != nil {
		return err
	}

	var failures []string
	for _, dbType := range o.dbs {
		results, err := b.runDB(ctx, dbType)
		if err != nil {
			return fmt.Errorf("%s: %w", dbType, err)
		}
		printTable(dbType, o, results)
		for _, r := range results {
			if r.failed > 0 {
				failures = append(failures, fmt.Sprintf("%s %s round %d: %d of %d requests failed (server log %s), e.g. %s",
					dbType, r.server, r.round, r.failed, r.failed+r.ok, r.log, strings.Join(r.errs, " | ")))
			}
		}
	}
	if len(failures) > 0 {
		return errors.New("requests failed; the numbers above are not valid:\n  " + strings.Join(failures, "\n  "))
	}
	return nil
}

// runDB initialises a CA for dbType and runs every server o.rounds times,
// alternating.
func (b *bench) runDB(ctx context.Context, dbType string) ([]*runResult, error) {
	var pg *testenv.Postgres
	if dbType == "postgresql" {
		// Under the scratch directory, so that its log is kept with the
		// others; the postgres user must be able to reach it.
		if err := os.MkdirAll(filepath.Join(b.workdir, dbType), 0o755); err != nil {
			return nil, err
		}
		if err := os.Chmod(b.workdir, 0o755); err != nil {
			return nil, err
		}
		var err error
		if pg, err = testenv.NewPostgres(filepath.Join(b.workdir, dbType, "pg")); err != nil {
			return nil, err
		}
		defer pg.Close()
	}
	c, err := initCA(ctx, b.stepfort, filepath.Join(b.workdir, dbType, "init"), dbType, pg)
	if err != nil {
		return nil, err
	}
	sig, err := signload.NewSigner(c.cfg, provisionerName, c.password)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(c.rootPEM) {
		return nil, errors.New("cannot parse root_ca.crt")
	}
	fmt.Printf("\n%s:\n", dbType)
	var results []*runResult
	for round := 1; round <= b.o.rounds; round++ {
		// Every other round runs the servers in reverse order (A B, B A,
		// A B, ...) so that a drift in machine load favours neither.
		order := slices.Clone(b.o.servers)
		if round%2 == 0 {
			slices.Reverse(order)
		}
		for _, name := range order {
			r, err := b.runOne(ctx, c, sig, roots, name, round)
			if err != nil {
				return nil, fmt.Errorf("%s round %d: %w", name, round, err)
			}
			fmt.Println("  " + r.String())
			results = append(results, r)
		}
	}
	return results, nil
}

// runResult is the outcome of one server run.
type runResult struct {
	server      string
	round       int
	certsPerSec float64
	p50, p99    time.Duration
	startRSS    float64 // MiB after start-up settled
	idleRSS     float64 // MiB after the warm-up settled
	peakRSS     float64 // MiB, high-water mark at the end
	ok, failed  int
	errs        []string
	elapsed     time.Duration
	pgSessions  int64         // PostgreSQL connections opened (warm-up included)
	cpuPerCert  time.Duration // server CPU (user+system) per timed certificate
	load        float64       // 1-minute load average at the end of the run
	log         string        // the server's output
}

func (r *runResult) String() string {
	s := fmt.Sprintf("round %d %-16s %7.1f certs/s  p50 %6.1f ms  p99 %6.1f ms  CPU %4.2f ms/cert  RSS start %5.1f / idle %5.1f / peak %5.1f MiB  %d certs in %.1fs, load %.1f",
		r.round, r.server, r.certsPerSec, ms(r.p50), ms(r.p99), ms(r.cpuPerCert), r.startRSS, r.idleRSS, r.peakRSS, r.ok, r.elapsed.Seconds(), r.load)
	if r.pgSessions > 0 {
		s += fmt.Sprintf("  %d pg sessions", r.pgSessions)
	}
	if r.failed > 0 {
		s += fmt.Sprintf("  *** %d FAILED: %s", r.failed, r.errs[0])
	}
	return s
}

// runOne starts one server on a fresh copy of the database, warms it up,
// measures it and stops it.
func (b *bench) runOne(ctx context.Context, c *ca, sig *signload.Signer, roots *x509.CertPool, name string, round int) (*runResult, error) {
	kind := serverKinds[name]
	idle := kind.idlePlugins && b.o.plugins == "idle"
	bin := b.stepCA
	if kind.stepfort {
		bin = b.stepfort
	}
	dir := filepath.Join(b.workdir, c.dbType, fmt.Sprintf("%d-%s", round, name))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	port, insecurePort, err := benchproc.TwoPorts()
	if err != nil {
		return nil, err
	}
	runName := fmt.Sprintf("%d_%s", round, name)
	cfgFile, err := c.runConfig(ctx, dir, runName, port, insecurePort, idle)
	if err != nil {
		return nil, err
	}
	var env []string
	profAddr := ""
	if b.o.profile > 0 {
		p, err := testenv.FreePort()
		if err != nil {
			return nil, err
		}
		profAddr = fmt.Sprintf("127.0.0.1:%d", p)
		env = append(env, "STEP_PROF_ADDR="+profAddr)
	}
	srv, err := startServer(ctx, name, bin, kind.stepfort, cfgFile, filepath.Join(c.dir, "secrets", "password"), dir, port, roots, env)
	if err != nil {
		return nil, err
	}
	defer srv.Stop()
	r := &runResult{server: name, round: round, log: srv.Proc.LogPath()}
	if err := sleep(ctx, b.o.settle); err != nil {
		return nil, err
	}
	if r.startRSS, _, err = srv.Memory(); err != nil {
		return nil, err
	}

	bodies, err := sig.Bodies(srv.URL+"/1.0/sign", b.csrs)
	if err != nil {
		return nil, err
	}
	client := signload.NewClient(roots, b.o.workers)
	defer client.CloseIdleConnections()
	w := b.o.warmup
	if warm := signload.SendAll(ctx, client, srv.URL, bodies[:w], b.csrs[:w], b.o.workers); warm.Failed > 0 {
		return nil, fmt.Errorf("%d of %d warm-up requests failed, e.g. %s", warm.Failed, w, strings.Join(warm.Errs, " | "))
	}
	if err := sleep(ctx, b.o.settle); err != nil {
		return nil, err
	}
	if r.idleRSS, _, err = srv.Memory(); err != nil {
		return nil, err
	}

	var profErr chan error
	if profAddr != "" {
		profErr = make(chan error, 1)
		go func() { profErr <- cpuProfile(ctx, profAddr, b.o.profile, filepath.Join(dir, "cpu.pprof")) }()
	}
	cpu0, err := srv.CPUTime()
	if err != nil {
		return nil, err
	}
	res := signload.SendAll(ctx, client, srv.URL, bodies[w:], b.csrs[w:], b.o.workers)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cpu1, err := srv.CPUTime()
	if err != nil {
		return nil, err
	}
	if res.OK > 0 {
		r.cpuPerCert = (cpu1 - cpu0) / time.Duration(res.OK)
	}
	if profErr != nil {
		if err := <-profErr; err != nil {
			return nil, err
		}
	}
	if err := srv.Check(); err != nil {
		return nil, err
	}
	if _, r.peakRSS, err = srv.Memory(); err != nil {
		return nil, err
	}
	r.certsPerSec, r.p50, r.p99 = res.PerSecond(), res.Percentile(50), res.Percentile(99)
	r.ok, r.failed, r.errs, r.elapsed = res.OK, res.Failed, res.Errs, res.Elapsed
	r.load = loadAverage()
	if c.pg != nil {
		srv.Stop() // sessions are counted when they end
		if r.pgSessions, err = c.pgSessions(ctx, runName); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// cpuProfile saves a CPU profile of length d from the pprof listener at
// addr into file.
func cpuProfile(ctx context.Context, addr string, d time.Duration, file string) error {
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, max(1, int(d.Seconds())))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("cpu profile: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("cpu profile from %s: %s %v", url, resp.Status, err)
	}
	return os.WriteFile(file, b, 0o644)
}

// loadAverage returns the machine's 1-minute load average, or 0.
func loadAverage() float64 {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
