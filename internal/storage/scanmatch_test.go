package storage

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/stepfort/stepfort/internal/testenv"
)

// The prefilter keeps the same rows on both backends, pages by key, and
// never narrows a strings.ToLower comparison.
func TestForEachPageMatch(t *testing.T) {
	for _, backend := range []string{"bbolt", "postgresql"} {
		t.Run(backend, func(t *testing.T) {
			db := testenv.OpenStore(t, backend)
			table := []byte("stepfort_matchtest")
			if next, err := ForEachPageMatch(db, table, nil, 10, Match{}, func(_, _ []byte) error { return nil }); err != nil || next != nil {
				t.Fatalf("missing table: %v %v", next, err)
			}
			if err := db.CreateTable(table); err != nil {
				t.Fatal(err)
			}
			rows := map[string]string{}
			for i := range 40 {
				status := "active"
				if i%3 == 0 {
					status = "disabled"
				}
				rows[fmt.Sprintf("k%03d", i)] = fmt.Sprintf(`{"name":"Laptop-%03d","status":%q}`, i, status)
			}
			rows["k900"] = "{\"name\":\"\u212aiosk\",\"status\":\"active\"}" // KELVIN SIGN lower-cases to k
			rows["k901"] = "{\"name\":\"caf\xc3\xa9 \\u003c\",\"status\":\"active\"}"
			rows["k902"] = "\xff\x00binary LAPTOP"
			for k, v := range rows {
				if err := db.Set(table, []byte(k), []byte(v)); err != nil {
					t.Fatal(err)
				}
			}
			collect := func(m Match, max int) []string {
				t.Helper()
				var got []string
				var after []byte
				for pages := 0; ; pages++ {
					next, err := ForEachPageMatch(db, table, after, max, m, func(k, v []byte) error {
						if string(v) != rows[string(k)] {
							t.Fatalf("row %s = %q", k, v)
						}
						got = append(got, string(k))
						return nil
					})
					if err != nil {
						t.Fatal(err)
					}
					if next == nil {
						return got
					}
					if pages > 50 {
						t.Fatal("no end")
					}
					after = next
				}
			}
			want := func(keep func(k, v string) bool) []string {
				var out []string
				for k, v := range rows {
					if keep(k, v) {
						out = append(out, k)
					}
				}
				slices.Sort(out)
				return out
			}
			all := want(func(string, string) bool { return true })
			if got := collect(Match{}, 7); !slices.Equal(got, all) {
				t.Fatalf("no filter: got %v, want %v", got, all)
			}
			disabled := want(func(_, v string) bool { return strings.Contains(v, `"status":"disabled"`) })
			if got := collect(Match{Contains: [][]byte{[]byte(`"status":"disabled"`)}}, 4); !slices.Equal(got, disabled) {
				t.Fatalf("contains: got %v, want %v", got, disabled)
			}
			// "laptop-01" folded: k010..k019 ("-01" is in every match as it
			// is, so the KELVIN SIGN row does not pass).
			if got, w := collect(Match{Folded: []byte("laptop-01")}, 3), []string{"k010", "k011", "k012", "k013", "k014", "k015", "k016", "k017", "k018", "k019"}; !slices.Equal(got, w) {
				t.Fatalf("folded: got %v, want %v", got, w)
			}
			if got := collect(Match{Folded: []byte("kiosk")}, 5); !slices.Equal(got, []string{"k900"}) {
				t.Fatalf("kelvin: got %v", got)
			}
			// Not UTF-8 (k902): PostgreSQL's query fails, Go filters the
			// rest; a KELVIN SIGN row always passes a needle of letters.
			if got := collect(Match{Folded: []byte("binary laptop")}, 5); !slices.Equal(got, []string{"k900", "k902"}) {
				t.Fatalf("binary value: got %v", got)
			}
			both := Match{Contains: [][]byte{[]byte(`"status":"disabled"`)}, Folded: []byte("laptop-01")}
			if got := collect(both, 100); !slices.Equal(got, []string{"k012", "k015", "k018"}) {
				t.Fatalf("both: got %v", got)
			}
			if _, err := ForEachPageMatch(db, table, nil, 5, Match{Folded: []byte("Upper")}, func(_, _ []byte) error { return nil }); err == nil {
				t.Fatal("an upper-case Folded needle was accepted")
			}
		})
	}
}

func TestFoldableNeedle(t *testing.T) {
	for s, want := range map[string]bool{"laptop-01": true, "": false, "a\"b": false, "a<b": false, "caf\u00e9": false, "Abc": false, "a b.c:d": true} {
		if got := FoldableNeedle(s); got != want {
			t.Errorf("FoldableNeedle(%q) = %v", s, got)
		}
	}
}
