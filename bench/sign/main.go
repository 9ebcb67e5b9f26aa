// Command sign compares the /1.0/sign throughput of stepfort with upstream
// step-ca v0.30.2 on the same ca.json and database type.
//
// For each database type (bbolt, then PostgreSQL) it writes one CA with
// `stepfort init`, then runs the servers one after the other, alternating
// (upstream stepfort, stepfort upstream, upstream stepfort, ...), each on a
// fresh copy of the database made right after init. Every run gets the same
// warm-up and the same timed load: N JWK one-time tokens and P-256 CSRs,
// prepared before the clock starts and sent by C concurrent workers over
// HTTP/1.1 keep-alive connections. It prints certificates per second,
// p50/p99 latency, server CPU per certificate and resident memory per run,
// then per database type the median over rounds and the stepfort/upstream
// throughput ratio.
//
// Benchmarks report, they do not assert: a ratio below the target is
// printed, not fatal. Any failed request, server crash or set-up error makes
// the program exit non-zero. Every process it starts is killed on exit.
//
// Usage (from the repository root; bench/run.sh builds stepfort first):
//
//	CGO_ENABLED=0 go run ./bench/sign [-n 3000] [-warmup 200] [-c 16] [-rounds 3] [-db bbolt,postgresql]
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
	n        int           // timed requests per run
	warmup   int           // unmeasured requests per run
	workers  int           // concurrent clients
	rounds   int           // runs per server and database type
	dbs      []string      // database types, in order
	servers  []string      // server kinds, in order within a round
	plugins  string        // "idle" or "config"
	stepfort string        // stepfort binary ("" builds one)
	stepCA   string        // upstream step-ca binary ("" finds .tools/bin/step-ca)
	workdir  string        // scratch directory ("" makes a temporary one)
	keep     bool          // keep the scratch directory
	settle   time.Duration // pause before reading idle RSS
	profile  time.Duration // CPU profile per run during the timed load (0: none)
}

func parseFlags() (*options, error) {
	o := &options{}
	flag.IntVar(&o.n, "n", benchproc.EnvInt("BENCH_N", 3000), "timed sign requests per run (env BENCH_N)")
	flag.IntVar(&o.warmup, "warmup", benchproc.EnvInt("BENCH_WARMUP", 200), "unmeasured warm-up requests per run (env BENCH_WARMUP)")
	flag.IntVar(&o.workers, "c", benchproc.EnvInt("BENCH_CONCURRENCY", 16), "concurrent workers (env BENCH_CONCURRENCY)")
	flag.IntVar(&o.rounds, "rounds", benchproc.EnvInt("BENCH_ROUNDS", 3), "runs of each server per database type, alternating (env BENCH_ROUNDS)")
	dbs := flag.String("db", benchproc.EnvStr("BENCH_DB", "bbolt,postgresql"), "comma-separated database types: bbolt, postgresql (env BENCH_DB)")
	servers := flag.String("servers", benchproc.EnvStr("BENCH_SERVERS", "upstream,stepfort"), "comma-separated servers run in each round: upstream, stepfort, stepfort-plugins (env BENCH_SERVERS)")
	flag.StringVar(&o.plugins, "plugins", benchproc.EnvStr("BENCH_PLUGINS", "idle"), `stepfort plugins for "stepfort": idle (every plugin block disabled) or config (as stepfort init wrote them) (env BENCH_PLUGINS)`)
	flag.StringVar(&o.stepfort, "stepfort", benchproc.EnvStr("BENCH_STEPFORT", ""), "stepfort binary; empty builds ./cmd/stepfort with CGO_ENABLED=0 (env BENCH_STEPFORT)")
	flag.StringVar(&o.stepCA, "step-ca", benchproc.EnvStr("BENCH_STEP_CA", ""), "upstream step-ca v0.30.2 binary; empty uses .tools/bin/step-ca (env BENCH_STEP_CA)")
	flag.StringVar(&o.workdir, "workdir", benchproc.EnvStr("BENCH_WORKDIR", ""), "scratch directory; empty makes a temporary one (env BENCH_WORKDIR)")
	flag.BoolVar(&o.keep, "keep", os.Getenv("BENCH_KEEP") != "", "keep the scratch directory (logs, configs) (env BENCH_KEEP)")
	flag.DurationVar(&o.settle, "settle", 2*time.Second, "pause after start-up and after warm-up before reading RSS")
	flag.DurationVar(&o.profile, "cpuprofile", 0, "if > 0, take a CPU profile of this length of each server during the timed load (via STEP_PROF_ADDR, which stepfort honours like step-ca) and keep the profiles in the scratch directory")
	flag.Parse()
	if flag.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %v", flag.Args())
	}
	o.dbs, o.servers = benchproc.SplitList(*dbs), benchproc.SplitList(*servers)
	switch {
	case o.n < 1 || o.warmup < 0 || o.workers < 1 || o.rounds < 1:
		return nil, fmt.Errorf("-n, -c and -rounds must be positive and -warmup not negative")
	case o.plugins != "idle" && o.plugins != "config":
		return nil, fmt.Errorf("-plugins: must be idle or config, got %q", o.plugins)
	}
	for _, db := range o.dbs {
		if db != "bbolt" && db != "postgresql" {
			return nil, fmt.Errorf("-db: unknown database type %q", db)
		}
	}
	for _, s := range o.servers {
		if _, ok := serverKinds[s]; !ok {
			return nil, fmt.Errorf("-servers: unknown server %q", s)
		}
	}
	if len(o.dbs) == 0 || len(o.servers) == 0 {
		return nil, fmt.Errorf("-db and -servers must not be empty")
	}
	if o.profile > 0 {
		o.keep = true
	}
	return o, nil
}

func main() {
	o, err := parseFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
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
