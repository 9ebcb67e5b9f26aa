package storage

import (
	"fmt"
	"slices"
	"testing"

	"github.com/stepfort/stepfort/internal/testenv"
)

// Pages walk every row once, in key order, on both backends, and a write
// between pages is allowed.
func TestForEachPage(t *testing.T) {
	for _, backend := range []string{"bbolt", "postgresql"} {
		t.Run(backend, func(t *testing.T) {
			db := testenv.OpenStore(t, backend)
			table := []byte("stepfort_pagetest")
			if next, err := ForEachPage(db, table, nil, 10, func(_, _ []byte) error { return nil }); err != nil || next != nil {
				t.Fatalf("missing table: %v %v", next, err)
			}
			if err := db.CreateTable(table); err != nil {
				t.Fatal(err)
			}
			var want []string
			for i := range 25 {
				k := fmt.Sprintf("k%03d", i)
				want = append(want, k)
				if err := db.Set(table, []byte(k), []byte("v"+k)); err != nil {
					t.Fatal(err)
				}
			}
			var got []string
			var after []byte
			for pages := 0; ; pages++ {
				next, err := ForEachPage(db, table, after, 7, func(k, v []byte) error {
					if string(v) != "v"+string(k) {
						t.Fatalf("row %s = %s", k, v)
					}
					got = append(got, string(k))
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				if next == nil {
					break
				}
				if pages > 10 {
					t.Fatal("no end")
				}
				// A write between pages (bbolt forbids it inside ForEach).
				if err := db.Set(table, []byte("a-before"), []byte("va-before")); err != nil {
					t.Fatal(err)
				}
				after = next
			}
			if !slices.Equal(got, want) {
				t.Fatalf("got %v, want %v", got, want)
			}
		})
	}
}
