// Command audit benchmarks the audit trail:
//
//  1. Issuance throughput of the real daemon with the trail on versus the
//     same daemon with "trail": false on the auditLog block (the
//     certificate event file is written in both), alternating in one run,
//     under the same /1.0/sign load as bench/sign. It prints certificates
//     per second, the medians and the on/off ratio (target ≥ 0.95), and how
//     long the trail took to record every certificate.
//  2. `stepfort audit verify` of an export of 1,000,000 records (target
//     ≤ 10 s), with the file's size.
//
// Benchmarks report, they do not assert; any error exits non-zero.
//
// Usage (from the repository root):
//
//	CGO_ENABLED=0 go run ./bench/audit [-n 2000] [-rounds 2] [-records 1000000] [-db bbolt,postgresql]
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/stepfort/stepfort/bench/internal/benchproc"
	"github.com/stepfort/stepfort/bench/internal/onoff"
	"github.com/stepfort/stepfort/internal/audit"
)

type options struct {
	onoff.Options
	records               int64
	skipIssue, skipVerify bool
	dbs                   []string
}

func main() {
	o := &options{}
	o.Flags()
	flag.Int64Var(&o.records, "records", int64(benchproc.EnvInt("BENCH_AUDIT_RECORDS", 1_000_000)), "records in the verified export (env BENCH_AUDIT_RECORDS)")
	flag.BoolVar(&o.skipIssue, "skip-issue", false, "skip the issuance part")
	flag.BoolVar(&o.skipVerify, "skip-verify", false, "skip the verify part")
	dbs := flag.String("db", benchproc.EnvStr("BENCH_DB", "bbolt"), "database types for the issuance part: bbolt, postgresql (env BENCH_DB)")
	flag.Parse()
	for _, d := range strings.Split(*dbs, ",") {
		if d = strings.TrimSpace(d); d != "bbolt" && d != "postgresql" {
			fmt.Fprintf(os.Stderr, "audit bench: -db: unknown database type %q\n", d)
			os.Exit(2)
		}
		o.dbs = append(o.dbs, strings.TrimSpace(d))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "audit bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o *options) error {
	dir, err := os.MkdirTemp("", "stepfort-bench-audit")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := onoff.Stepfort(ctx, o.Stepfort, dir)
	if err != nil {
		return err
	}
	if !o.skipIssue {
		if err := issuance(ctx, o, bin, dir); err != nil {
			return err
		}
	}
	if !o.skipVerify {
		return verify(ctx, o, bin, dir)
	}
	return nil
}

// verify times `stepfort audit verify` of a generated export.
func verify(ctx context.Context, o *options, bin, dir string) error {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	file, keyFile := filepath.Join(dir, "export.jsonl"), filepath.Join(dir, "audit_key.pub")
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := audit.WriteSyntheticExport(f, o.records, key, time.Now()); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	gen := time.Since(start)
	if err := os.WriteFile(keyFile, audit.PublicPEM(pub), 0o644); err != nil {
		return err
	}
	fi, _ := os.Stat(file)
	start = time.Now()
	out, err := exec.CommandContext(ctx, bin, "audit", "verify", file, "--key", keyFile).CombinedOutput()
	took := time.Since(start)
	if err != nil {
		return fmt.Errorf("audit verify: %w\n%s", err, out)
	}
	fmt.Printf("== audit verify ==\n%d records (%.0f MB, generated in %.1f s): stepfort audit verify took %.2f s (target <= 10 s)\n%s",
		o.records, float64(fi.Size())/1e6, gen.Seconds(), took.Seconds(), out)
	return nil
}
