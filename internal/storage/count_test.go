package storage

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/stepfort/stepfort/internal/testenv"
)

// CountMatch counts what a walk over the values would, on both backends:
// sure rows on the byte tests, unsure ones (every row without a marker)
// as check says (here: an unsure row counts only if it holds
// "n":<multiple of 2>); a missing table is empty.
func TestCountMatch(t *testing.T) {
	for _, backend := range []string{"bbolt", "postgresql"} {
		t.Run(backend, func(t *testing.T) {
			db := testenv.OpenStore(t, backend)
			table := []byte("stepfort_counttest")
			check := func(_, v []byte) (bool, error) { return bytes.Contains(v, []byte(`"n":`)) && even(v), nil }
			if n, err := CountMatch(db, table, Match{}, nil, check); err != nil || n != 0 {
				t.Fatalf("missing table: %d %v", n, err)
			}
			if err := db.CreateTable(table); err != nil {
				t.Fatal(err)
			}
			var values [][]byte
			for i := range 12007 { // more than two walking chunks
				v := []byte(fmt.Sprintf(`{"n":%d,"status":%q}`, i, []string{"active", "disabled", "active"}[i%3]))
				if i%11 == 0 {
					v = append(v[:len(v)-1], []byte(`,"metadata":{"k":"v"}}`)...)
				}
				values = append(values, v)
				if err := db.Set(table, []byte(fmt.Sprintf("k%06d", i)), v); err != nil {
					t.Fatal(err)
				}
			}
			active, meta := []byte(`"status":"active"`), []byte(`"metadata":`)
			for _, c := range []struct {
				contains [][]byte
				unsure   []byte
			}{{nil, nil}, {[][]byte{active}, nil}, {[][]byte{active}, meta}, {nil, meta}, {[][]byte{active, meta}, nil}, {[][]byte{[]byte("absent")}, meta}} {
				want := 0
				for _, v := range values {
					ok := true
					for _, s := range c.contains {
						ok = ok && bytes.Contains(v, s)
					}
					if ok && (c.unsure == nil || bytes.Contains(v, c.unsure)) {
						ok, _ = check(nil, v)
					}
					if ok {
						want++
					}
				}
				if n, err := CountMatch(db, table, Match{Contains: c.contains}, c.unsure, check); err != nil || n != want {
					t.Errorf("%q unsure %q: %d %v, want %d", c.contains, c.unsure, n, err, want)
				}
			}
		})
	}
}

// even reports whether the row's "n" is even (its digits end in 0-8 even).
func even(v []byte) bool {
	i := bytes.Index(v, []byte(`"n":`)) + 4
	j := i
	for j < len(v) && v[j] >= '0' && v[j] <= '9' {
		j++
	}
	return j > i && (v[j-1]-'0')%2 == 0
}
