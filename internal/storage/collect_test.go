package storage

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"testing"

	"github.com/stepfort/stepfort/internal/testenv"
)

// CollectPage pages through what keep accepts, in key order, on both
// backends: no item twice, none missed, a next key only when more follow,
// even when keep skips most rows (more reads than one).
func TestCollectPage(t *testing.T) {
	for _, backend := range []string{"bbolt", "postgresql"} {
		t.Run(backend, func(t *testing.T) {
			db := testenv.OpenStore(t, backend)
			table := []byte("stepfort_collecttest")
			if err := db.CreateTable(table); err != nil {
				t.Fatal(err)
			}
			for i := range 500 {
				if err := db.Set(table, []byte(fmt.Sprintf("k%04d", i)), []byte(strconv.Itoa(i))); err != nil {
					t.Fatal(err)
				}
			}
			for _, every := range []int{1, 7, 97, 1000} {
				keep := func(_, v []byte) (int, bool, error) {
					n, err := strconv.Atoi(string(v))
					return n, err == nil && n%every == 0, err
				}
				var want []int
				for i := 0; i < 500; i += every {
					want = append(want, i)
				}
				for _, limit := range []int{1, 3, 50} {
					var got []int
					var after []byte
					for pages := 0; ; pages++ {
						items, next, err := CollectPage(db, table, after, limit, Match{}, keep)
						if err != nil || len(items) > limit || next != nil && len(items) != limit {
							t.Fatalf("every %d limit %d: %d items, next %q, %v", every, limit, len(items), next, err)
						}
						got = append(got, items...)
						if next == nil {
							break
						}
						if pages > 600 {
							t.Fatal("no end")
						}
						after = next
					}
					if !slices.Equal(got, want) {
						t.Fatalf("every %d limit %d: got %v, want %v", every, limit, got, want)
					}
				}
			}
		})
	}
}

// A walk over an indexed table samples the table for its plan once, not
// once per chunk: here keep drops nine matches in ten, so the page takes
// several reads.
func TestCollectPageSamplesOnce(t *testing.T) {
	db := testenv.OpenStore(t, "postgresql")
	table := []byte("stepfort_collectsample")
	if err := db.CreateTable(table); err != nil {
		t.Fatal(err)
	}
	for i := range 3000 {
		if err := db.Set(table, []byte(fmt.Sprintf("k%05d", i)), []byte(fmt.Sprintf(`{"name":"laptop-%05d","n":%d}`, i, i))); err != nil {
			t.Fatal(err)
		}
	}
	if ok, err := EnsureMatchIndex(db, table); err != nil || !ok {
		t.Fatalf("EnsureMatchIndex = %v, %v", ok, err)
	}
	if err := AnalyzeTable(db, table); err != nil {
		t.Fatal(err)
	}
	keep := func(_, v []byte) (string, bool, error) {
		return string(v), bytes.Contains(v, []byte(`0","n"`)), nil
	}
	before := sampleQueries.Load()
	items, _, err := CollectPage(db, table, nil, 50, Match{Folded: []byte("laptop"), Indexed: true}, keep)
	if err != nil || len(items) != 50 {
		t.Fatalf("%d items, %v", len(items), err)
	}
	if n := sampleQueries.Load() - before; n != 1 {
		t.Fatalf("%d samples for one walk, want 1", n)
	}
}
