package storage

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/internal/testenv"
)

// An indexed match keeps exactly the rows the unindexed one keeps (case,
// KELVIN SIGN and dotted capital I, LIKE wildcards in the needle, short
// needles the index cannot narrow), and PostgreSQL can answer it from the
// index.
func TestEnsureMatchIndex(t *testing.T) {
	for _, backend := range []string{"bbolt", "postgresql"} {
		t.Run(backend, func(t *testing.T) {
			db := testenv.OpenStore(t, backend)
			table := []byte("stepfort_matchidx")
			if err := db.CreateTable(table); err != nil {
				t.Fatal(err)
			}
			values := map[string]string{}
			for i := range 300 {
				status := []string{"active", "disabled", "Active"}[i%3]
				name := []string{"Laptop-%03d", "\u212aiosk-%03d", "L\u0130NUX_%03d", "abc%%def-%03d", "caf\u00e9 \\u003c%03d"}[i%5]
				v := fmt.Sprintf(`{"name":%q,"status":%q}`, fmt.Sprintf(name, i), status)
				values[fmt.Sprintf("k%04d", i)] = v
				if err := db.Set(table, []byte(fmt.Sprintf("k%04d", i)), []byte(v)); err != nil {
					t.Fatal(err)
				}
			}
			for range 2 { // idempotent
				ok, err := EnsureMatchIndex(db, table)
				if err != nil || ok != (backend == "postgresql") {
					t.Fatalf("EnsureMatchIndex = %v, %v", ok, err)
				}
			}
			if err := AnalyzeTable(db, table); err != nil {
				t.Fatal(err)
			}
			collect := func(m Match, max int) []string {
				var keys []string
				var after []byte
				for {
					next, err := ForEachPageMatch(db, table, after, max, m, func(k, _ []byte) error {
						keys = append(keys, string(k))
						return nil
					})
					if err != nil {
						t.Fatalf("%+v: %v", m, err)
					}
					if next == nil {
						return keys
					}
					after = next
				}
			}
			for _, m := range []Match{
				{Folded: []byte("kiosk-01")}, {Folded: []byte("linux_01")}, {Folded: []byte("c%def-1")}, {Folded: []byte("bc_def")}, {Folded: []byte("a_b")},
				{Folded: []byte("laptop")}, {Folded: []byte("-00")}, {Folded: []byte("u003c1")}, {Folded: []byte("absent")},
				{Contains: [][]byte{[]byte(`"status":"active"`)}}, {Contains: [][]byte{[]byte(`"status":"Active"`)}, Folded: []byte("kiosk")},
			} {
				plain := collect(m, 7)
				// The index narrows to exactly strings.ToLower's matches;
				// a needle it cannot narrow, or bbolt, keeps the unindexed prefilter.
				want := plain
				if _, ok := indexedLike(m.Folded); backend == "postgresql" && (ok || m.Folded == nil) {
					want = nil
					for _, k := range plain {
						if v := values[k]; m.Folded == nil || strings.Contains(strings.ToLower(v), string(m.Folded)) {
							want = append(want, k)
						}
					}
				}
				m.Indexed = true
				// The sample's choice of plan, then each plan forced: a
				// walk in key order, and the trigram index.
				for _, walkRows := range []int{10000, 1 << 30, 0} {
					matchWalkRows = walkRows
					if got := collect(m, 7); !slices.Equal(got, want) {
						t.Errorf("%q %q (walk rows %d): indexed %v, want %v", m.Contains, m.Folded, walkRows, got, want)
					}
				}
				matchWalkRows = 10000
				if len(plain) == 0 && !slices.Contains([]string{"absent", "bc_def", "a_b"}, string(m.Folded)) {
					t.Errorf("%q %q: no rows", m.Contains, m.Folded)
				}
			}
			if backend == "postgresql" {
				explainUsesIndex(t, db, table)
			}
		})
	}
}

// explainUsesIndex checks the indexed query's plan reads the trigram
// index when a sequential scan is ruled out: the query's expression is
// the index's.
func explainUsesIndex(t *testing.T, db nosql.DB, table []byte) {
	t.Helper()
	pool := SQLPool(Unwrap(db))
	conn, err := pool.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(t.Context(), "SET enable_seqscan = off"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(t.Context(), "SET enable_indexscan = off"); err != nil {
		t.Fatal(err)
	}
	rows, err := conn.QueryContext(t.Context(), "EXPLAIN SELECT nkey FROM "+string(table)+" WHERE stepfort_match_text(nvalue) LIKE $1", "%kiosk-01%")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, line)
	}
	if p := strings.Join(plan, "\n"); !strings.Contains(p, matchIndexName(table)) {
		t.Fatalf("the plan does not read the index:\n%s", p)
	}
}
