// Command scep benchmarks SCEP enrollment with stepfort's one-time
// challenges (the dynamicScep plugin) against upstream step-ca v0.30.2
// with its static challenge, and challenge creation through the admin API.
//
// It writes one CA with `stepfort init` (bbolt; the SCEP provisioner "scep"
// with an RSA RA and dynamicScep attached), then runs the servers one
// after the other, alternating (upstream stepfort, stepfort upstream, ...;
// with three servers the order rotates each round), each on a fresh copy of the database and the same ca.json: stepfort with
// every plugin as init configured it ("stepfort-all"), and/or stepfort with
// only the dynamicScep plugin block ("stepfort-scep", -plugins=scep or
// both): the other plugins' certificate-event observers (audit log,
// billing, inventory, revocation, ...) each write per certificate, so this
// run isolates the challenge mechanism (validation, consume and the
// in-process webhook). Upstream runs without the "stepfort" block, so its
// provisioner checks the static "challenge" init wrote. The default,
// -plugins=both, runs all three and prints both ratios.
//
// Every run gets the same load: GetCACert once to find the RA (the
// certificate with keyEncipherment), then W unmeasured and N timed PKCSReq
// enrollments over POST PKIOperation on the HTTP listener from C workers
// with keep-alive connections. Each request is a CSR with a
// challengePassword, encrypted to the RA and signed with a self-signed
// certificate of the client's RSA-2048 key, as micromdm scepclient makes
// it; every answer must be a signed CertRep with pkiStatus SUCCESS whose
// certificate, decrypted with the client key, has the CN asked for. The
// keys are generated once and the messages built before the clock starts.
//
// On stepfort the challenges are created ahead of the timed enrollments,
// through POST /api/v1/scep/challenges with the admin token of
// secrets/admin-token, M of them from C keep-alive workers; that creation
// is timed too and is the challenge-creation benchmark (challenges/s on
// bbolt). The first W+N of them are used by the enrollments.
//
// It prints per run enrollments/s, p50/p99 latency, server CPU per
// enrollment and memory, then the medians, the stepfort/upstream ratio of
// each stepfort plugin set (target ≥ 0.9) and challenges/s (target ≥
// 2,000/s).
//
// Last, one more stepfort run (stepfort-scep unless -plugins=all) has the
// plugin's "intune" block pointed at intunemock.Mock (token, Graph
// discovery and ScepActions on a loopback TLS server inside this program):
// it prints the cost of the Intune round trip (enrollments one at a time
// with an API challenge, then with Intune challenges, p50 difference) and
// Intune enrollments/s under the same concurrency. Benchmarks report,
// they do not assert: a missed target is printed, not fatal; any failed
// request, server crash or set-up error makes the exit status non-zero.
// Every process it starts is stopped on exit.
//
// Usage (from the repository root):
//
//	CGO_ENABLED=0 go run ./bench/scep [-n 1000] [-warmup 100] [-c 16] [-rounds 3] [-challenges 5000] [-plugins both|all|scep] [-intune=false]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/stepfort/stepfort/bench/internal/benchproc"
)

// options are the command-line settings; each flag also has an environment
// variable so that `make bench` can be tuned without editing the Makefile.
type options struct {
	n          int           // timed enrollments per run
	warmup     int           // unmeasured enrollments per run
	workers    int           // concurrent clients
	rounds     int           // runs per server, alternating
	challenges int           // challenges created (timed) per stepfort run
	stepfort   string        // stepfort binary ("" builds one)
	stepCA     string        // upstream step-ca binary ("" finds .tools/bin/step-ca)
	workdir    string        // scratch directory ("" makes a temporary one)
	keep       bool          // keep the scratch directory
	settle     time.Duration // pause after the warm-up
	intune     bool          // measure the Intune round trip against the mock
	plugins    string        // stepfort plugin sets: "all", "scep" or "both"
}

func parseFlags() (*options, error) {
	o := &options{}
	flag.IntVar(&o.n, "n", benchproc.EnvInt("BENCH_SCEP_N", 1000), "timed enrollments per run (env BENCH_SCEP_N)")
	flag.IntVar(&o.warmup, "warmup", benchproc.EnvInt("BENCH_SCEP_WARMUP", 100), "unmeasured enrollments per run (env BENCH_SCEP_WARMUP)")
	flag.IntVar(&o.workers, "c", benchproc.EnvInt("BENCH_SCEP_CONCURRENCY", 16), "concurrent clients, for enrollments and challenge creation (env BENCH_SCEP_CONCURRENCY)")
	flag.IntVar(&o.rounds, "rounds", benchproc.EnvInt("BENCH_SCEP_ROUNDS", 3), "runs of each server, alternating (env BENCH_SCEP_ROUNDS)")
	flag.IntVar(&o.challenges, "challenges", benchproc.EnvInt("BENCH_SCEP_CHALLENGES", 5000), "challenges created through the API per stepfort run, timed; at least warmup+n (env BENCH_SCEP_CHALLENGES)")
	flag.StringVar(&o.stepfort, "stepfort", benchproc.EnvStr("BENCH_STEPFORT", ""), "stepfort binary; empty builds ./cmd/stepfort with CGO_ENABLED=0 (env BENCH_STEPFORT)")
	flag.StringVar(&o.stepCA, "step-ca", benchproc.EnvStr("BENCH_STEP_CA", ""), "upstream step-ca v0.30.2 binary; empty uses .tools/bin/step-ca (env BENCH_STEP_CA)")
	flag.StringVar(&o.workdir, "workdir", benchproc.EnvStr("BENCH_WORKDIR", ""), "scratch directory; empty makes a temporary one (env BENCH_WORKDIR)")
	flag.BoolVar(&o.keep, "keep", os.Getenv("BENCH_KEEP") != "", "keep the scratch directory (logs, configs) (env BENCH_KEEP)")
	flag.DurationVar(&o.settle, "settle", time.Second, "pause after the warm-up")
	flag.BoolVar(&o.intune, "intune", os.Getenv("BENCH_SCEP_INTUNE") != "0", "measure the Intune round trip against intunemock.Mock (env BENCH_SCEP_INTUNE=0 skips it)")
	flag.StringVar(&o.plugins, "plugins", benchproc.EnvStr("BENCH_SCEP_PLUGINS", "both"), "stepfort plugins: all (every plugin init enables), scep (only dynamicScep, isolating the one-time challenge) or both (env BENCH_SCEP_PLUGINS)")
	flag.Parse()
	switch {
	case o.plugins != "all" && o.plugins != "scep" && o.plugins != "both":
		return nil, fmt.Errorf("-plugins must be all, scep or both, not %q", o.plugins)
	case flag.NArg() > 0:
		return nil, fmt.Errorf("unexpected arguments %v", flag.Args())
	case o.n < 1 || o.warmup < 0 || o.workers < 1 || o.rounds < 1:
		return nil, fmt.Errorf("-n, -c and -rounds must be positive and -warmup not negative")
	}
	o.challenges = max(o.challenges, o.warmup+o.n)
	return o, nil
}

func main() {
	o, err := parseFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/scep:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	start := time.Now()
	err = run(ctx, o) // its deferred clean-ups stop every process it started
	stop()
	fmt.Printf("total time %s\n", time.Since(start).Round(time.Second))
	if err != nil {
		fmt.Fprintf(os.Stderr, "\n*** BENCHMARK FAILED: %v\n", err)
		os.Exit(1)
	}
}
