// Command adcsimport benchmarks `stepfort migrate adcs import`: it writes a
// certutil -view CSV export of n synthetic rows (UTF-16LE with a BOM,
// internal/adcs/adcstest; every tenth row revoked) and imports it into a
// fresh bbolt store and then a fresh PostgreSQL database, through the same
// legacy.Store.Import the command runs, then imports it again (the
// idempotent re-import: every row unchanged). It prints rows per second
// and the peak RSS of each import (the peak is reset before each).
//
// Target: 1,000,000 rows in at most 60 s with bounded memory.
// Benchmarks report, they do not assert; any error exits non-zero.
//
// Usage (from the repository root):
//
//	CGO_ENABLED=0 go run ./bench/adcsimport [-n 1000000] [-db bbolt,postgresql] [-batch 10000]
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/bench/internal/benchproc"
	"github.com/stepfort/stepfort/internal/adcs/adcstest"
	"github.com/stepfort/stepfort/internal/legacy"
	"github.com/stepfort/stepfort/internal/testenv"
)

func main() {
	n := flag.Int("n", 1_000_000, "rows")
	dbs := flag.String("db", "bbolt,postgresql", "backends")
	batch := flag.Int("batch", legacy.DefaultBatchSize, "rows per write transaction")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the imports to this file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "adcsimport:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(*n, strings.Split(*dbs, ","), *batch); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "adcsimport:", err)
		os.Exit(1)
	}
}

func run(n int, backends []string, batch int) error {
	dir, err := os.MkdirTemp("", "adcsimport")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	export := filepath.Join(dir, "export.csv")
	start := time.Now()
	if err := writeExport(export, n); err != nil {
		return err
	}
	fi, _ := os.Stat(export)
	fmt.Printf("export: %d rows, %.0f MiB (UTF-16LE CSV), written in %s\n", n, float64(fi.Size())/(1<<20), time.Since(start).Round(time.Millisecond))
	issuer, err := issuerCert()
	if err != nil {
		return err
	}
	fmt.Printf("%-11s %-9s %10s %10s %9s %s\n", "backend", "import", "seconds", "rows/s", "peak MiB", "result")
	for _, b := range backends {
		db, closeDB, err := open(b, dir)
		if err != nil {
			return err
		}
		store, err := legacy.OpenStore(db)
		if err != nil {
			closeDB()
			return err
		}
		for _, pass := range []string{"first", "re-import"} {
			if err := measure(b, pass, store, export, issuer, batch, n); err != nil {
				closeDB()
				return err
			}
		}
		closeDB()
	}
	return nil
}

func measure(backend, pass string, store *legacy.Store, export string, issuer *x509.Certificate, batch, n int) error {
	resetPeak()
	start := time.Now()
	rep, err := store.Import([]string{export}, legacy.ImportOptions{Issuer: "bench", IssuerCert: issuer, BatchSize: batch})
	if err != nil {
		return fmt.Errorf("%s %s: %w", backend, pass, err)
	}
	d := time.Since(start)
	_, peak, _ := benchproc.ProcMemory("self")
	fmt.Printf("%-11s %-9s %10.1f %10.0f %9.0f %d new, %d unchanged, %d revoked, version %d\n",
		backend, pass, d.Seconds(), float64(n)/d.Seconds(), peak, rep.New, rep.Unchanged, rep.RevocationsAdded, rep.Version)
	return nil
}

func writeExport(path string, n int) error {
	rows, err := adcstest.Synthetic(n, nil)
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := adcstest.WriteCSV(f, rows, adcstest.Opts{UTF16: true, BOM: true}); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// issuerCert is a CA certificate to import under (CSV rows carry no
// certificates, so only its identity matters).
func issuerCert() (*x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Bench Issuing CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(1, 0, 0),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func open(backend, dir string) (nosql.DB, func(), error) {
	switch backend {
	case "bbolt":
		db, err := nosql.New("bbolt", filepath.Join(dir, "bolt.db"))
		if err != nil {
			return nil, nil, err
		}
		return db, func() { _ = db.Close() }, nil
	case "postgresql":
		pg, err := testenv.NewPostgres("")
		if err != nil {
			return nil, nil, err
		}
		db, err := nosql.New("postgresql", pg.DSN(), nosql.WithDatabase("adcsimport"))
		if err != nil {
			_ = pg.Close()
			return nil, nil, err
		}
		return db, func() { _ = db.Close(); _ = pg.Close() }, nil
	}
	return nil, nil, fmt.Errorf("unknown backend %q", backend)
}

// resetPeak resets VmHWM (Linux: writing 5 to clear_refs), so each import
// reports its own peak.
func resetPeak() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }
