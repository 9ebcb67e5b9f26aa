package storage

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/internal/testenv"
)

// TestFindsTheHandles fails if an upgrade of nosql (or bbolt) moves the
// fields ForEach reaches by reflection; it would otherwise silently fall
// back to List.
func TestFindsTheHandles(t *testing.T) {
	pg := testenv.StartPostgres(t)
	p, err := nosql.New("postgresql", pg.DSN(), nosql.WithDatabase("scanhandles"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if s, _ := sqlHandle(p); s == nil {
		t.Fatal("the *sql.DB inside smallstep/nosql's postgresql.DB was not found")
	}
	b := openBolt(t)
	h := boltHandle(b)
	if h == nil {
		t.Fatal("the *bbolt.DB inside smallstep/nosql's bolt.DB was not found")
	}
	if len(field[[]byte](h, "dataref")) == 0 {
		t.Fatal("bbolt's memory map (DB.dataref) was not found")
	}
	// Upstream's db.DB, which authority hosts hand out, embeds the store.
	if boltHandle(Unwrap(&db.DB{DB: b})) != h {
		t.Fatal("the store inside upstream's db.DB was not found")
	}
}

func openBolt(t *testing.T) nosql.DB {
	t.Helper()
	b, err := nosql.New("bbolt", filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func TestBolt(t *testing.T) {
	b := openBolt(t)
	// Nested buckets are rows of nothing: nosql lists their names with
	// empty values, ForEach skips them.
	if err := b.CreateTable([]byte("t/nested")); err != nil {
		t.Fatal(err)
	}
	checkStore(t, b, []byte("t"))
	checkStore(t, &db.DB{DB: b}, []byte("wrapped"))
	checkStore(t, b, []byte("t/nested"))
}

func TestPostgres(t *testing.T) {
	pg := testenv.StartPostgres(t)
	p, err := nosql.New("postgresql", pg.DSN(), nosql.WithDatabase("scantest"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	checkStore(t, p, []byte("revoked_x509_certs"))
	checkStore(t, p, []byte("Mixed Case"))
}

func TestListFallback(t *testing.T) {
	b, err := nosql.New("badgerv2", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if boltHandle(b) != nil {
		t.Fatal("badger taken for bbolt")
	}
	if s, _ := sqlHandle(b); s != nil {
		t.Fatal("badger taken for SQL")
	}
	checkStore(t, b, []byte("t"))
}

// checkStore fills table and compares ForEach with List; it also scans a
// table that does not exist and stops a scan with an error.
func checkStore(t *testing.T, store nosql.DB, table []byte) {
	t.Helper()
	missing := append(slices.Clone(table), "_missing"...)
	if err := ForEach(store, missing, func(k, _ []byte) error { return fmt.Errorf("row %q in a missing table", k) }); err != nil {
		t.Fatalf("missing table: %v", err)
	}
	if err := store.CreateTable(table); err != nil {
		t.Fatal(err)
	}
	if n := count(t, store, table); n != 0 {
		t.Fatalf("empty table: %d rows", n)
	}
	const n = 3000
	want := map[string]string{}
	for i := range n {
		k := fmt.Sprintf("%039d", i*7919)
		v := bytes.Repeat([]byte{byte(i)}, i%700) // 0 to 699 bytes, some empty
		want[k] = string(v)
		if err := store.Set(table, []byte(k), v); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]string{}
	err := ForEach(store, table, func(k, v []byte) error {
		got[string(k)] = string(v) // copies, as the contract asks
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("ForEach saw %d rows, want %d", len(got), len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("row %s: %d bytes, want %d", k, len(got[k]), len(v))
		}
	}
	listed, err := store.List(table)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range listed {
		if len(e.Value) > 0 || want[string(e.Key)] == "" {
			if got[string(e.Key)] != string(e.Value) {
				t.Fatalf("List and ForEach differ on %s", e.Key)
			}
		}
	}
	stop := errors.New("stop")
	seen := 0
	err = ForEach(store, table, func(_, _ []byte) error {
		if seen++; seen == 10 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || seen != 10 {
		t.Fatalf("stopping: err=%v after %d rows", err, seen)
	}
}

func count(t *testing.T, store nosql.DB, table []byte) int {
	t.Helper()
	n := 0
	if err := ForEach(store, table, func(_, _ []byte) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}
