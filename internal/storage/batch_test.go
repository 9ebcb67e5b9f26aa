package storage

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/stepfort/stepfort/internal/testenv"
)

// TestMain stops the PostgreSQL server testenv.OpenStore starts.
func TestMain(m *testing.M) { testenv.RunMain(m) }

// WriteBatch and GetMany on both backends, below and above the size where
// PostgreSQL switches to COPY: sets, overwrites, a key set twice (the last
// wins), deletes, absent keys and empty values.
func TestWriteBatchGetMany(t *testing.T) {
	for _, backend := range testenv.Backends {
		for _, n := range []int{10, pgCopyMin + 5} {
			t.Run(fmt.Sprintf("%s/%d", backend, n), func(t *testing.T) {
				db := testenv.OpenStore(t, backend)
				a, b := []byte("batch_a"), []byte("batch_b")
				for _, tb := range [][]byte{a, b} {
					if err := db.CreateTable(tb); err != nil {
						t.Fatal(err)
					}
				}
				var w []Write
				var keys [][]byte
				for i := range n {
					k := fmt.Appendf(nil, "k/%d", i)
					keys = append(keys, k)
					w = append(w, Write{Table: a, Key: k, Value: fmt.Appendf(nil, "v%d", i)}, Write{Table: b, Key: k, Value: []byte("x")})
				}
				w = append(w, Write{Table: a, Key: keys[0], Value: []byte("last")}, Write{Table: a, Key: keys[1], Value: nil})
				if err := WriteBatch(db, w); err != nil {
					t.Fatal(err)
				}
				if err := WriteBatch(db, []Write{{Table: b, Key: keys[2], Delete: true}, {Table: b, Key: []byte("absent"), Delete: true}}); err != nil {
					t.Fatal(err)
				}
				got, err := GetMany(db, a, append(keys, []byte("absent")))
				if err != nil {
					t.Fatal(err)
				}
				if string(got[0]) != "last" || got[1] == nil || len(got[1]) != 0 || string(got[n-1]) != fmt.Sprintf("v%d", n-1) || got[n] != nil {
					t.Fatalf("values: %q %q %q %q", got[0], got[1], got[n-1], got[n])
				}
				gb, err := GetMany(db, b, keys[:4])
				if err != nil {
					t.Fatal(err)
				}
				if gb[2] != nil || !bytes.Equal(gb[3], []byte("x")) {
					t.Fatalf("after delete: %q", gb)
				}
			})
		}
	}
}
