// Command ha benchmarks stepfort's active revocation and HA set-up (issue
// 6, Performance), on one machine, in one run:
//
//  1. OCSP: responses/s and p99 of stepfort's responder (/ocsp on the plain
//     HTTP listener, revocation plugin as `stepfort init` configures it, on
//     PostgreSQL) for an even mix of good, revoked and unknown serials, GET
//     and POST, from an in-process load generator (keep-alive workers,
//     pre-built SHA-1 CertID requests); the same load against
//     `openssl ocsp -index` serving the same certificates (an index.txt built
//     from the issued certificates, signing with the intermediate key).
//     OCSP with two issuers vs one (part ocsp-issuers, bench/ha/issuers.go):
//     one daemon with stepfort's issuer, one with a legacy issuer too, the
//     same load (own requests, then a 50/50 own/legacy mix), ratios printed.
//  2. Propagation: two stepfort replicas on one PostgreSQL; revoke on A
//     through /1.0/revoke, poll OCSP on B until it answers revoked.
//  3. CRL: 1,000,000 rows in revoked_x509_certs (bbolt, batched Update
//     transactions) and one ha.Publisher.Publish(), in a child process:
//     time, CRL size and RSS (VmHWM reset before publishing), broken down
//     (scan and encode, sign, store; the table scan alone), then a second
//     Publish at the same size (steady state) and another replica's first
//     read of the new CRL.
//  4. Issuance on PostgreSQL: POST /1.0/sign on one stepfort replica, on two
//     replicas (requests alternate between them), and on upstream step-ca
//     v0.30.2, each on a fresh copy of the same initialised database.
//
// It reports, it does not assert: a missed target is printed. Any failed
// request, wrong OCSP status, crashed server or set-up error exits non-zero.
// Every process it starts is stopped on exit.
//
// Usage (from the repository root; bench/run.sh runs it after bench/sign):
//
//	CGO_ENABLED=0 go run ./bench/ha [-parts ocsp,ocsp-issuers,propagation,crl,issuance]
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/stepfort/stepfort/bench/internal/benchproc"
)

type options struct {
	parts       map[string]bool
	issueN      int
	warmup      int
	workers     int
	ocspCerts   int
	ocspWorkers int
	ocspDur     time.Duration
	opensslDur  time.Duration
	propN       int
	ocspBbolt   bool
	crlSizes    []int
	stepfort    string
	stepCA      string
	workdir     string
	keep        bool

	// child mode
	crlChild bool
	// fixedServer: serve a fixed answer on this address (the ceiling)
	fixedServer string
	fixedSize   int
	caConfig    string
	pwFile      string
	crlDB       string
}

func parseFlags() (*options, error) {
	o := &options{}
	parts := flag.String("parts", benchproc.EnvStr("BENCH_HA_PARTS", "ocsp,ocsp-issuers,propagation,crl,issuance"), "comma-separated parts to run: ocsp, ocsp-issuers, propagation, crl, issuance (env BENCH_HA_PARTS)")
	flag.IntVar(&o.issueN, "n", benchproc.EnvInt("BENCH_HA_N", 1500), "timed /1.0/sign requests per issuance run (env BENCH_HA_N)")
	flag.IntVar(&o.warmup, "warmup", benchproc.EnvInt("BENCH_HA_WARMUP", 100), "warm-up sign requests per issuance run (env BENCH_HA_WARMUP)")
	flag.IntVar(&o.workers, "c", benchproc.EnvInt("BENCH_HA_CONCURRENCY", 16), "concurrent sign workers (env BENCH_HA_CONCURRENCY)")
	flag.IntVar(&o.ocspCerts, "ocsp-certs", benchproc.EnvInt("BENCH_HA_OCSP_CERTS", 300), "certificates issued for the OCSP mix; a third is revoked, plus half as many unknown serials (env BENCH_HA_OCSP_CERTS)")
	flag.IntVar(&o.ocspWorkers, "ocsp-c", benchproc.EnvInt("BENCH_HA_OCSP_CONCURRENCY", 32), "concurrent OCSP workers (env BENCH_HA_OCSP_CONCURRENCY)")
	flag.DurationVar(&o.ocspDur, "ocsp-duration", benchproc.EnvDur("BENCH_HA_OCSP_DURATION", 10*time.Second), "timed OCSP load on stepfort (env BENCH_HA_OCSP_DURATION)")
	flag.DurationVar(&o.opensslDur, "openssl-duration", benchproc.EnvDur("BENCH_HA_OPENSSL_DURATION", 5*time.Second), "timed OCSP load on openssl ocsp (env BENCH_HA_OPENSSL_DURATION)")
	flag.BoolVar(&o.ocspBbolt, "ocsp-bbolt", os.Getenv("BENCH_HA_OCSP_BBOLT") != "0", "also measure OCSP on a single stepfort on bbolt (env BENCH_HA_OCSP_BBOLT=0 skips)")
	flag.IntVar(&o.propN, "prop-n", benchproc.EnvInt("BENCH_HA_PROP_N", 50), "revocations timed for propagation (env BENCH_HA_PROP_N)")
	crl := flag.String("crl-sizes", benchproc.EnvStr("BENCH_HA_CRL_SIZES", "100000,1000000"), "table sizes at which a CRL is published (env BENCH_HA_CRL_SIZES)")
	flag.StringVar(&o.stepfort, "stepfort", benchproc.EnvStr("BENCH_STEPFORT", ""), "stepfort binary; empty builds ./cmd/stepfort (env BENCH_STEPFORT)")
	flag.StringVar(&o.stepCA, "step-ca", benchproc.EnvStr("BENCH_STEP_CA", ""), "upstream step-ca v0.30.2; empty uses .tools/bin/step-ca (env BENCH_STEP_CA)")
	flag.StringVar(&o.workdir, "workdir", benchproc.EnvStr("BENCH_WORKDIR_HA", ""), "scratch directory (env BENCH_WORKDIR_HA)")
	flag.BoolVar(&o.keep, "keep", os.Getenv("BENCH_KEEP") != "", "keep the scratch directory (env BENCH_KEEP)")
	flag.BoolVar(&o.crlChild, "crl-child", false, "internal: run the CRL measurement")
	flag.StringVar(&o.fixedServer, "fixed-server", "", "internal: serve a fixed OCSP-sized answer on this address (the ceiling measurement)")
	flag.IntVar(&o.fixedSize, "fixed-size", 776, "internal: body size for -fixed-server")
	flag.StringVar(&o.caConfig, "ca-config", "", "internal: ca.json for -crl-child")
	flag.StringVar(&o.pwFile, "password-file", "", "internal: password file for -crl-child")
	flag.StringVar(&o.crlDB, "crl-db", "", "internal: bbolt file for -crl-child")
	flag.Parse()
	if flag.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %v", flag.Args())
	}
	o.parts = map[string]bool{}
	for _, p := range benchproc.SplitList(*parts) {
		switch p {
		case "ocsp", "ocsp-issuers", "propagation", "crl", "issuance":
			o.parts[p] = true
		default:
			return nil, fmt.Errorf("-parts: unknown part %q", p)
		}
	}
	for _, s := range benchproc.SplitList(*crl) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || (len(o.crlSizes) > 0 && n <= o.crlSizes[len(o.crlSizes)-1]) {
			return nil, fmt.Errorf("-crl-sizes: want increasing positive integers, got %q", *crl)
		}
		o.crlSizes = append(o.crlSizes, n)
	}
	if o.issueN < 1 || o.warmup < 0 || o.workers < 1 || o.ocspCerts < 3 || o.ocspWorkers < 1 || o.propN < 1 {
		return nil, fmt.Errorf("counts must be positive")
	}
	return o, nil
}

func main() {
	o, err := parseFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/ha:", err)
		os.Exit(2)
	}
	if o.fixedServer != "" {
		if err := serveFixed(o.fixedServer, o.fixedSize); err != nil {
			fmt.Fprintln(os.Stderr, "fixed server:", err)
			os.Exit(1)
		}
		return
	}
	if o.crlChild {
		pw, err := os.ReadFile(o.pwFile)
		if err == nil {
			err = crlChild(o.caConfig, strings.TrimSpace(string(pw)), o.crlDB, o.crlSizes)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "crl child:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	start := time.Now()
	err = run(ctx, o)
	stop()
	fmt.Printf("total time %s\n", time.Since(start).Round(time.Second))
	if err != nil {
		fmt.Fprintf(os.Stderr, "\n*** HA BENCHMARK FAILED: %v\n", err)
		os.Exit(1)
	}
}

// runCRL runs the CRL measurement in a child process and returns its steps.
func runCRL(ctx context.Context, o *options, c *ca, dir string) ([]crlStep, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	sizes := make([]string, len(o.crlSizes))
	for i, n := range o.crlSizes {
		sizes[i] = strconv.Itoa(n)
	}
	cfg, err := c.runConfig(filepath.Join(dir, "crl"), "unused", 1, 2)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, self, "-crl-child", "-ca-config", cfg, "-password-file", c.pwFile,
		"-crl-db", filepath.Join(dir, "crl", "crl.db"), "-crl-sizes", strings.Join(sizes, ","))
	cmd.Env = append(os.Environ(), "STEPPATH="+filepath.Join(dir, "crl", "steppath"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	var steps []crlStep
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "CRLSTEP ")
		if !ok {
			continue
		}
		var st crlStep
		if err := json.Unmarshal([]byte(line), &st); err != nil {
			return nil, err
		}
		fmt.Printf("  %s\n", st)
		steps = append(steps, st)
	}
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("CRL child: %w\n%s", err, benchproc.Tail(stderr.String(), 3000))
	}
	return steps, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
