// Command certindex benchmarks the certificate index (certIndex plugin):
//
//  1. Issuance throughput of the real daemon with the index on versus off
//     (same build, same ca.json apart from the plugin's "enabled"),
//     alternating, on bbolt, under the /1.0/sign load of bench/sign; the
//     on/off ratio of the medians (target >= 0.95) and how long the index
//     took to hold every certificate.
//  2. Name-substring queries (GET /certificates?q=...) over 1,000,000
//     indexed certificates, through the plugin's Store, on bbolt and on
//     PostgreSQL: p50 and p99 (target p99 <= 50 ms).
//  3. Export of the 1,000,000 rows as JSON lines and as CSV: time (target
//     <= 10 s) and the heap growth while it runs (bounded memory).
//
// Benchmarks report, they do not assert; any error exits non-zero.
//
// Usage (from the repository root):
//
//	CGO_ENABLED=0 go run ./bench/certindex [-n 2000] [-rounds 2] [-rows 1000000] [-db bbolt,postgresql]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/stepfort/stepfort/bench/internal/benchproc"
	"github.com/stepfort/stepfort/bench/internal/onoff"
)

type options struct {
	onoff.Options
	rows, queries        int
	skipIssue, skipScale bool
	dbs                  []string
}

func main() {
	o := &options{}
	o.Flags()
	flag.IntVar(&o.rows, "rows", benchproc.EnvInt("BENCH_INDEX_ROWS", 1_000_000), "certificates in the index for the query and export parts (env BENCH_INDEX_ROWS)")
	flag.IntVar(&o.queries, "queries", benchproc.EnvInt("BENCH_INDEX_QUERIES", 300), "name-substring queries per backend (env BENCH_INDEX_QUERIES)")
	flag.BoolVar(&o.skipIssue, "skip-issue", false, "skip the daemon throughput part")
	flag.BoolVar(&o.skipScale, "skip-scale", false, "skip the query and export part")
	dbs := flag.String("db", benchproc.EnvStr("BENCH_INDEX_DB", "bbolt,postgresql"), "backends of the query and export part (env BENCH_INDEX_DB)")
	flag.Parse()
	for _, d := range benchproc.SplitList(*dbs) {
		if d != "bbolt" && d != "postgresql" {
			fmt.Fprintf(os.Stderr, "certindex bench: -db: unknown database type %q\n", d)
			os.Exit(2)
		}
		o.dbs = append(o.dbs, d)
	}
	if o.N < 1 || o.Workers < 1 || o.Rounds < 1 || o.rows < 1000 || o.queries < 10 || o.Warmup < 0 {
		fmt.Fprintln(os.Stderr, "certindex bench: -n, -c, -rounds must be positive, -rows at least 1000, -queries at least 10")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if !o.skipIssue {
		if err := issuance(ctx, o); err != nil {
			fmt.Fprintln(os.Stderr, "certindex bench: issuance:", err)
			os.Exit(1)
		}
	}
	if !o.skipScale {
		for _, d := range o.dbs {
			if err := scale(ctx, o, d); err != nil {
				fmt.Fprintf(os.Stderr, "certindex bench: %s: %v\n", d, err)
				os.Exit(1)
			}
		}
	}
}
