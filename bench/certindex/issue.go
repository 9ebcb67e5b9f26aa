package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
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

	"github.com/stepfort/stepfort/bench/internal/signload"
	"github.com/stepfort/stepfort/internal/testenv"
)

// issuance runs the daemon with the index off and on, alternating, and
// prints the sign throughput of each run and the on/off ratio of the
// medians.
func issuance(ctx context.Context, o *options) error {
	dir, err := os.MkdirTemp("", "stepfort-bench-certindex")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := o.stepfort
	if bin == "" {
		root, err := testenv.RepoRoot()
		if err != nil {
			return err
		}
		bin = filepath.Join(dir, "stepfort")
		build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./cmd/stepfort")
		build.Dir = root
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("build stepfort: %w\n%s", err, out)
		}
	}
	csrs, err := signload.MakeCSRs(o.warmup + o.n)
	if err != nil {
		return err
	}
	return issuanceDB(ctx, o, bin, dir, "bbolt", csrs)
}

func issuanceDB(ctx context.Context, o *options, bin, dir, dbType string, csrs []signload.CSR) error {
	var pg *testenv.Postgres
	if dbType == "postgresql" {
		var err error
		if pg, err = testenv.NewPostgres(""); err != nil {
			return fmt.Errorf("start PostgreSQL: %w", err)
		}
		defer pg.Close()
	}
	fmt.Printf("== Issuance throughput, certificate index on vs off (%s, %d timed + %d warm-up /1.0/sign, %d workers, %d rounds) ==\n",
		dbType, o.n, o.warmup, o.workers, o.rounds)
	rates := map[bool][]float64{}
	for round := range o.rounds {
		order := []bool{false, true}
		if round%2 == 1 {
			order = []bool{true, false}
		}
		for _, on := range order {
			r, err := issueRun(ctx, o, bin, filepath.Join(dir, fmt.Sprintf("%s-r%d-%v", dbType, round, on)), on, csrs, pg)
			if err != nil {
				return fmt.Errorf("round %d index=%v: %w", round+1, on, err)
			}
			rates[on] = append(rates[on], r.rate)
			drain := ""
			if on {
				drain = fmt.Sprintf(", all %d certificates indexed %.2f s after the last response", o.warmup+o.n, r.drain.Seconds())
			}
			fmt.Printf("round %d index %-3s %7.1f certificates/s, p50 %.1f ms, p99 %.1f ms%s\n", round+1, onOff(on), r.rate, ms(r.p50), ms(r.p99), drain)
		}
	}
	off, on := median(rates[false]), median(rates[true])
	fmt.Printf("median: index off %.1f/s, index on %.1f/s: ratio on/off %.3f (target >= 0.95)\n", off, on, on/off)
	return nil
}

type issueResult struct {
	rate     float64
	p50, p99 time.Duration
	drain    time.Duration
}

func issueRun(ctx context.Context, o *options, bin, dir string, indexOn bool, csrs []signload.CSR, pg *testenv.Postgres) (*issueResult, error) {
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
	var cfg map[string]any
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, err
	}
	// The only difference between the two settings.
	cfg["stepfort"].(map[string]any)["plugins"].(map[string]any)["certIndex"] = map[string]any{"enabled": indexOn}
	if b, err = json.MarshalIndent(cfg, "", "\t"); err != nil {
		return nil, err
	}
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
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
	client := signload.NewClient(roots, o.workers)
	bodies, err := sig.Bodies(url+"/1.0/sign", csrs)
	if err != nil {
		return nil, err
	}
	if w := signload.SendAll(ctx, client, url, bodies[:o.warmup], csrs[:o.warmup], o.workers); w.Failed > 0 {
		return nil, fmt.Errorf("warm-up: %d failed: %v", w.Failed, w.Errs)
	}
	res := signload.SendAll(ctx, client, url, bodies[o.warmup:], csrs[o.warmup:], o.workers)
	if res.Failed > 0 {
		return nil, fmt.Errorf("%d requests failed: %v", res.Failed, res.Errs)
	}
	end := time.Now()
	out := &issueResult{rate: res.PerSecond(), p50: res.Percentile(50), p99: res.Percentile(99)}
	if indexOn {
		tok, err := os.ReadFile(filepath.Join(dir, "secrets", "admin-token"))
		if err != nil {
			return nil, err
		}
		if err := waitIndexed(ctx, url, roots, strings.TrimSpace(string(tok)), o.warmup+o.n); err != nil {
			return nil, err
		}
		out.drain = time.Since(end)
	}
	return out, nil
}

// waitIndexed counts the rows of a JSON-lines export until the index holds
// want certificates.
func waitIndexed(ctx context.Context, url string, roots *x509.CertPool, token string, want int) error {
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/api/v1/certificates/export?format=jsonl", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		n := 0
		dec := json.NewDecoder(resp.Body)
		for {
			var v map[string]any
			if err := dec.Decode(&v); err != nil {
				break
			}
			n++
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("export: HTTP %d", resp.StatusCode)
		}
		if n >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the index holds %d of %d certificates after 2 minutes", n, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
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
