// Command billing benchmarks the Endpoint billing plugin:
//
//  1. Issuance throughput of the real daemon with billing on versus the same
//     daemon (same build, same ca.json apart from "enabled": false on the
//     billing block) with billing off, alternating in one run, on bbolt (and
//     with -db bbolt,postgresql also on PostgreSQL, which adds about two
//     minutes), under the same /1.0/sign load as bench/sign. It prints certificates
//     per second, the median per setting and the on/off ratio (target
//     ≥ 0.95), and how long billing took to record every certificate.
//  2. The cost of recording an event at 1,000 and at 100,000 existing
//     Endpoints (the same probe workload), in memory and on bbolt: equal
//     costs show that no step scans.
//  3. A month's report over 100,000 Endpoints generated through the
//     plugin's own Store.Record, on bbolt (target ≤ 2 s).
//
// Benchmarks report, they do not assert; any error exits non-zero.
//
// Usage (from the repository root):
//
//	CGO_ENABLED=0 go run ./bench/billing [-n 2000] [-rounds 2] [-endpoints 100000] [-db bbolt,postgresql]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/stepfort/stepfort/bench/internal/benchproc"
	"github.com/stepfort/stepfort/bench/internal/onoff"
)

type options struct {
	onoff.Options
	endpoints            int
	skipIssue, skipScale bool
	drain                bool
	dbs                  []string
}

func main() {
	o := &options{}
	o.Flags()
	flag.IntVar(&o.endpoints, "endpoints", benchproc.EnvInt("BENCH_ENDPOINTS", 100_000), "Endpoints to generate for the scale part (env BENCH_ENDPOINTS)")
	flag.BoolVar(&o.skipIssue, "skip-issue", false, "skip the daemon throughput part")
	flag.BoolVar(&o.skipScale, "skip-scale", false, "skip the event cost and report part")
	dbs := flag.String("db", benchproc.EnvStr("BENCH_DB", "bbolt"), "database types for the issuance part: bbolt, postgresql (env BENCH_DB)")
	flag.BoolVar(&o.drain, "drain", true, "with billing on, wait until billing has recorded every certificate and print how long that took")
	flag.Parse()
	for _, d := range strings.Split(*dbs, ",") {
		if d = strings.TrimSpace(d); d != "bbolt" && d != "postgresql" {
			fmt.Fprintf(os.Stderr, "billing bench: -db: unknown database type %q\n", d)
			os.Exit(2)
		}
		o.dbs = append(o.dbs, strings.TrimSpace(d))
	}
	if o.N < 1 || o.Workers < 1 || o.Rounds < 1 || o.endpoints < 2000 || o.Warmup < 0 {
		fmt.Fprintln(os.Stderr, "billing bench: -n, -c, -rounds must be positive, -endpoints at least 2000")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if !o.skipIssue {
		if err := issuance(ctx, o); err != nil {
			fmt.Fprintln(os.Stderr, "billing bench: issuance:", err)
			os.Exit(1)
		}
	}
	if !o.skipScale {
		if err := scale(ctx, o); err != nil {
			fmt.Fprintln(os.Stderr, "billing bench: scale:", err)
			os.Exit(1)
		}
	}
}
