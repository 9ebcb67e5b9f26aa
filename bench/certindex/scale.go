package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"sync/atomic"
	"time"

	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/bench/internal/signload"
	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/provisioners/certindex"
)

// scale fills an index with o.rows synthetic certificates and measures
// name-substring queries and exports on one backend.
func scale(ctx context.Context, o *options, backend string) error {
	dir, err := os.MkdirTemp("", "stepfort-bench-certindex")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var db nosql.DB
	switch backend {
	case "bbolt":
		db, err = nosql.New("bbolt", filepath.Join(dir, "db"))
	case "postgresql":
		pg, perr := testenv.NewPostgres("")
		if perr != nil {
			return fmt.Errorf("start PostgreSQL: %w", perr)
		}
		defer pg.Close()
		if err := sizePostgres(pg); err != nil {
			return err
		}
		db, err = nosql.New("postgresql", pg.DSN(), nosql.WithDatabase("certindex"))
	}
	if err != nil {
		return err
	}
	defer db.Close()
	store, err := certindex.Open(db, backend)
	if err != nil {
		return err
	}
	fmt.Printf("== Certificate index at %d certificates (%s) ==\n", o.rows, backend)
	start := time.Now()
	if err := fill(ctx, store, o.rows); err != nil {
		return err
	}
	// As reindex does after its bulk load.
	if a, ok := store.(certindex.Analyzer); ok {
		if err := a.Analyze(); err != nil {
			return err
		}
	}
	fmt.Printf("filled in %.1f s\n", time.Since(start).Seconds())
	if backend == "postgresql" {
		if err := prewarm(db); err != nil {
			return err
		}
	}
	if backend == "bbolt" {
		// The daemon's start: load the in-memory query index from the table.
		store = nil
		runtime.GC()
		before := heapInuse()
		start = time.Now()
		if store, err = certindex.Open(db, backend); err != nil {
			return err
		}
		took := time.Since(start)
		runtime.GC()
		grew := float64(heapInuse()) - float64(before)
		fmt.Printf("bbolt: in-memory query index loaded in %.1f s, %.0f MB live heap (%.0f bytes per certificate)\n",
			took.Seconds(), grew/1e6, grew/float64(o.rows))
	}
	if err := queries(store, o); err != nil {
		return err
	}
	for _, format := range []string{"jsonl", "csv"} {
		if err := export(store, format, o.rows); err != nil {
			return err
		}
	}
	return nil
}

// sizePostgres gives the test server (tuned for tests: shared_buffers
// 32MB) the memory a server holding a million-certificate index would be
// given: shared_buffers of 2GB, so the table and its indexes (about 1.3GB
// at 1,000,000 certificates, printed below) fit in PostgreSQL's cache.
func sizePostgres(pg *testenv.Postgres) error {
	c, err := sql.Open("pgx", pg.DSN())
	if err != nil {
		return err
	}
	_, err = c.Exec(`ALTER SYSTEM SET shared_buffers = '2GB'`)
	c.Close()
	if err != nil {
		return fmt.Errorf("size PostgreSQL: %w", err)
	}
	if err := pg.Restart(); err != nil {
		return fmt.Errorf("restart PostgreSQL: %w", err)
	}
	fmt.Println("PostgreSQL: shared_buffers = 2GB")
	return nil
}

// prewarm loads the table and its indexes into shared_buffers (pg_prewarm,
// contrib), as they are on a server that has been answering queries: the
// latencies measured are those of the steady state, not of the first
// reads from disk after a bulk load.
func prewarm(db nosql.DB) error {
	c := storage.SQLPool(storage.Unwrap(db))
	if _, err := c.Exec(`CREATE EXTENSION IF NOT EXISTS pg_prewarm`); err != nil {
		return fmt.Errorf("pg_prewarm: %w", err)
	}
	var table, indexes int64
	err := c.QueryRow(`SELECT pg_table_size('stepfort_certindex'), pg_indexes_size('stepfort_certindex')`).Scan(&table, &indexes)
	if err != nil {
		return err
	}
	_, err = c.Exec(`SELECT pg_prewarm(oid) FROM pg_class WHERE relname = 'stepfort_certindex'
		OR oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'stepfort_certindex'::regclass)`)
	if err != nil {
		return fmt.Errorf("pg_prewarm: %w", err)
	}
	fmt.Printf("PostgreSQL: table %.0f MB, indexes %.0f MB, prewarmed into shared_buffers\n", float64(table)/1e6, float64(indexes)/1e6)
	return nil
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// record is synthetic certificate i: a unique host name in one of 50
// departments, a mix of SAN types, three provisioners, lifetimes from a
// day to a year, one in twenty revoked.
func record(i int) *certindex.Record {
	sn := new(big.Int).Lsh(big.NewInt(int64(i)+1), 70)
	sn.Add(sn, big.NewInt(int64(i)*7919))
	r := &certindex.Record{Serial: sn.String(), SerialHex: fmt.Sprintf("%x", sn),
		CommonName:  fmt.Sprintf("host%07d.dept%02d.example.com", i, i%50),
		DNSNames:    []string{fmt.Sprintf("host%07d.dept%02d.example.com", i, i%50), fmt.Sprintf("svc%d.internal", i%997)},
		Provisioner: plugins.ProvisionerRef{Name: []string{"admin", "acme", "agents"}[i%3], Type: []string{"JWK", "ACME", "ACME"}[i%3]},
		NotBefore:   t0.Add(time.Duration(i) * time.Second), Issuer: "CN=Bench Intermediate", AuthorityKeyID: "0102030405060708"}
	r.NotAfter = r.NotBefore.Add(time.Duration(1+i%365) * 24 * time.Hour)
	if i%4 == 0 {
		r.IPAddresses = []string{fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)}
	}
	if i%20 == 0 {
		r.Revocation = &certindex.Revocation{ReasonCode: 1, RevokedAt: r.NotBefore.Add(time.Hour)}
	}
	return r
}

func fill(ctx context.Context, store certindex.Store, n int) error {
	const batch = 5000
	for i := 0; i < n; i += batch {
		if err := ctx.Err(); err != nil {
			return err
		}
		recs := make([]*certindex.Record, 0, batch)
		for j := i; j < min(i+batch, n); j++ {
			recs = append(recs, record(j))
		}
		if err := store.Put(recs); err != nil {
			return fmt.Errorf("fill at %d: %w", i, err)
		}
	}
	return nil
}

// queries runs name-substring queries as an operator types them: a host
// number prefix (a few to hundreds of matches), a department, a service
// name, an IP prefix, and a name that matches nothing (the full scan);
// sorted by notAfter, first page of 100.
func queries(store certindex.Store, o *options) error {
	rnd := rand.New(rand.NewPCG(1, 2))
	now := t0.Add(200 * 24 * time.Hour)
	kinds := []func() string{
		func() string { return fmt.Sprintf("host%05d", rnd.IntN(o.rows/100+1)) },
		func() string { return fmt.Sprintf("dept%02d.", rnd.IntN(50)) },
		func() string { return fmt.Sprintf("svc%d.int", rnd.IntN(997)) },
		func() string { return fmt.Sprintf("10.%d.%d.", rnd.IntN(16), rnd.IntN(256)) },
		func() string { return fmt.Sprintf("absent%d.example", rnd.IntN(1000)) },
	}
	// Warm-up: the first queries read the indexes into the caches.
	for i := range 50 {
		q := &certindex.Query{Filter: certindex.Filter{Q: kinds[i%len(kinds)]()}, Sort: certindex.SortNotAfter, Limit: 100, Now: now}
		if _, _, err := store.List(q); err != nil {
			return err
		}
	}
	var lat []time.Duration
	byKind := make([][]time.Duration, len(kinds))
	var matched int
	for i := range o.queries {
		q := &certindex.Query{Filter: certindex.Filter{Q: kinds[i%len(kinds)]()}, Sort: certindex.SortNotAfter, Limit: 100, Now: now}
		start := time.Now()
		recs, _, err := store.List(q)
		if err != nil {
			return err
		}
		lat = append(lat, time.Since(start))
		byKind[i%len(kinds)] = append(byKind[i%len(kinds)], time.Since(start))
		matched += len(recs)
	}
	names := []string{"host prefix", "department", "service", "IP prefix", "no match"}
	for k, l := range byKind {
		sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
		fmt.Printf("  %-12s p50 %6.1f ms  p99 %6.1f ms\n", names[k], ms(signload.Percentile(l, 50)), ms(signload.Percentile(l, 99)))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	fmt.Printf("name-substring query (q=..., first page of 100, %d queries, %.1f rows on average): p50 %.1f ms, p99 %.1f ms, max %.1f ms (target p99 <= 50 ms)\n",
		len(lat), float64(matched)/float64(len(lat)), ms(signload.Percentile(lat, 50)), ms(signload.Percentile(lat, 99)), ms(lat[len(lat)-1]))
	return nil
}

// export writes every row to a discarding writer and samples the heap.
func export(store certindex.Store, format string, rows int) error {
	// A tighter GC target than the default, so the heap measured follows
	// what the export holds rather than garbage awaiting collection.
	defer debug.SetGCPercent(debug.SetGCPercent(20))
	runtime.GC()
	base := heapInuse()
	var peak atomic.Uint64
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
				if h := heapInuse(); h > peak.Load() {
					peak.Store(h)
				}
			}
		}
	}()
	now := t0.Add(200 * 24 * time.Hour)
	start := time.Now()
	n, err := certindex.WriteExport(io.Discard, store, &certindex.Query{Sort: certindex.SortNotAfter, Now: now}, format)
	took := time.Since(start)
	close(done)
	if err != nil {
		return err
	}
	if n != rows {
		return fmt.Errorf("export %s: %d rows, want %d", format, n, rows)
	}
	growth := int64(peak.Load()) - int64(base)
	fmt.Printf("export %s of %d rows: %.1f s (target <= 10 s), peak heap growth %.0f MB (GOGC=20)\n",
		format, n, took.Seconds(), float64(growth)/1e6)
	return nil
}

func heapInuse() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
