package storage

import (
	"bytes"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/postgresql"
	bbolt "go.etcd.io/bbolt"
)

// Match selects rows by their raw stored value, before any decoding. It is
// a prefilter: a cheap test that keeps every row a caller's exact filter
// would keep (and maybe more), so the caller decodes and checks only the
// rows that pass. The zero Match passes every row.
type Match struct {
	// Contains: the value holds each of these byte strings as they are.
	Contains [][]byte
	// Folded, when set, is lower-case printable ASCII (no backslash): the
	// value, with ASCII letters lower-cased, holds it — or the value holds
	// its longest run without letters as it is and a character whose
	// Unicode lower case is ASCII (KELVIN SIGN, LATIN CAPITAL LETTER I
	// WITH DOT ABOVE), so a strings.ToLower comparison made by the caller
	// is never narrowed.
	Folded []byte
	// Indexed says the table has the trigram index EnsureMatchIndex
	// creates: on PostgreSQL the query then filters on the indexed
	// expression, so a search that matches few rows reads few. Other
	// stores ignore it.
	Indexed bool
	// sample, when set, carries the plan sample of a walk's first call to
	// its later calls (CollectPage, CountMatch): the table is sampled once
	// per walk, not once per chunk.
	sample *planSample
}

// planSample is what sampleSaysWalk read: of seen sampled rows, hits
// passed the match.
type planSample struct {
	done       bool
	hits, seen int
}

// sampleQueries counts the sample queries made (tests).
var sampleQueries atomic.Int64

// Unicode characters strings.ToLower maps into ASCII: a row holding one
// always passes a Folded match.
var foldIntoASCII = [][]byte{[]byte("\u212a"), []byte("\u0130")}

// FoldableNeedle reports whether a lower-cased search string can be a
// Match.Folded for JSON values json.Marshal wrote: printable ASCII without
// the characters it escapes (quote, backslash, <, >, &), so the string
// appears in the value byte for byte wherever it appears in a decoded
// field.
func FoldableNeedle(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' || ('A' <= c && c <= 'Z') {
			return false
		}
	}
	return s != ""
}

// validate refuses a Folded needle the SQL and Go paths would treat
// differently.
func (m *Match) validate() error {
	if m.Folded != nil && !FoldableNeedle(string(m.Folded)) {
		return fmt.Errorf("storage: Match.Folded %q is not lower-case printable ASCII without \\ \" < > &", m.Folded)
	}
	return nil
}

// matcher tests values in Go (bbolt and the fallback), reusing a buffer.
type matcher struct {
	m   *Match
	buf []byte
	// anchor is Folded's longest run without letters, [lo, hi): it is the
	// same in every case, so an exact (vectorised) search finds where a
	// match can start.
	lo, hi int
}

func newMatcher(m *Match) *matcher {
	x := &matcher{m: m}
	for i := 0; i < len(m.Folded); {
		j := i
		for j < len(m.Folded) && !isLetter(m.Folded[j]) {
			j++
		}
		if j-i > x.hi-x.lo {
			x.lo, x.hi = i, j
		}
		i = j + 1
	}
	return x
}

func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

func (x *matcher) ok(v []byte) bool {
	for _, c := range x.m.Contains {
		if !bytes.Contains(v, c) {
			return false
		}
	}
	if x.m.Folded == nil {
		return true
	}
	if x.hi-x.lo >= 2 && !bytes.Contains(v, x.m.Folded[x.lo:x.hi]) {
		return false // the run without letters is in every match as it is
	}
	if x.containsFold(v) {
		return true
	}
	for _, f := range foldIntoASCII {
		if bytes.Contains(v, f) {
			return true
		}
	}
	return false
}

// containsFold reports whether v, ASCII letters lower-cased, holds Folded.
func (x *matcher) containsFold(v []byte) bool {
	n := x.m.Folded
	if x.hi-x.lo >= 2 {
		anchor := n[x.lo:x.hi]
		for off := 0; ; {
			i := bytes.Index(v[off:], anchor)
			if i < 0 {
				return false
			}
			if start := off + i - x.lo; start >= 0 && start+len(n) <= len(v) && bytes.EqualFold(v[start:start+len(n)], n) {
				return true
			}
			off += i + 1
		}
	}
	x.buf = append(x.buf[:0], v...)
	for i, c := range x.buf {
		if 'A' <= c && c <= 'Z' {
			x.buf[i] = c + ('a' - 'A')
		}
	}
	return bytes.Contains(x.buf, n)
}

// ForEachPageMatch calls fn, in key order, for at most max rows of table
// whose keys sort after after (nil: from the first) and whose values pass
// m, and returns the key of the last row it passed when max were passed
// (there may be more), nil at the end. Rows that do not pass are skipped
// where they are stored: on bbolt in the cursor walk (no copy, no
// decoding), on PostgreSQL in the query's WHERE clause, so a search that
// matches few rows reads few. Other stores filter in Go.
//
// key and value are only valid during the call, as for ForEach. On bbolt
// the walk is one read transaction: fn must not write.
func ForEachPageMatch(store nosql.DB, table, after []byte, max int, m Match, fn func(key, value []byte) error) ([]byte, error) {
	if max < 1 {
		return nil, fmt.Errorf("ForEachPageMatch: max must be positive, got %d", max)
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	store = Unwrap(store)
	if b := boltHandle(store); b != nil {
		return matchBolt(b, table, after, max, newMatcher(&m), fn)
	}
	if _, ok := store.(*postgresql.DB); ok {
		if s, quote := sqlHandle(store); s != nil {
			// Remember what was passed: a value that is not UTF-8 fails
			// the query mid-way, and Go filters the rest.
			n, last := 0, after
			next, err := matchPostgres(s, quote(string(table)), after, max, &m, func(k, v []byte) error {
				n, last = n+1, append(last[:0:0], k...)
				return fn(k, v)
			})
			if err != nil && m.Folded != nil && strings.Contains(err.Error(), "SQLSTATE 22021") {
				if n == max {
					return last, nil
				}
				return matchPaged(store, table, last, max-n, newMatcher(&m), fn)
			}
			return next, err
		}
	}
	return matchPaged(store, table, after, max, newMatcher(&m), fn)
}

func matchBolt(db *bbolt.DB, table, after []byte, max int, x *matcher, fn func(key, value []byte) error) ([]byte, error) {
	return walkBolt(db, table, after, max, x.ok, fn)
}

// matchPostgres pushes m into the query. Folded needs values in UTF-8;
// a table holding others is filtered in Go instead (matchPaged).
func matchPostgres(db *sql.DB, quoted string, after []byte, max int, m *Match, fn func(key, value []byte) error) ([]byte, error) {
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	where, indexed := matchConds(m, arg)
	if after != nil {
		where = append(where, "nkey > "+arg(after))
	}
	q := "SELECT nkey, nvalue FROM " + quoted
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY nkey LIMIT " + arg(max)
	if !indexed {
		return pageRows(db, quoted, q, args, max, fn)
	}
	walk, err := sampleSaysWalk(db, quoted, m, max)
	if err != nil {
		return nil, err
	}
	tx, err := db.Begin()
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", quoted, err)
	}
	defer tx.Rollback() //nolint:errcheck // read-only
	// A rare needle: the trigram index's bitmap, then a sort; a common
	// one: the key order, filtering as it goes.
	plan := "SET LOCAL enable_indexscan = off"
	if walk {
		plan = "SET LOCAL enable_bitmapscan = off"
	}
	for _, set := range []string{plan, "SET LOCAL enable_seqscan = off"} {
		if _, err := tx.Exec(set); err != nil {
			return nil, fmt.Errorf("scan %s: %w", quoted, err)
		}
	}
	return pageRows(tx, quoted, q, args, max, fn)
}

// matchConds is m as SQL conditions; indexed reports whether one of them
// can be answered from the trigram index.
func matchConds(m *Match, arg func(any) string) (where []string, indexed bool) {
	for _, c := range m.Contains {
		if p, ok := indexedLike(c); ok && m.Indexed {
			where = append(where, "stepfort_match_text(nvalue) LIKE "+arg(p))
			indexed = true
		}
		where = append(where, "position("+arg(c)+"::bytea in nvalue) > 0")
	}
	if p, ok := indexedLike(m.Folded); ok && m.Indexed {
		// The indexed text is the value lower-cased as the fallback
		// below tests it, with the characters foldIntoASCII lists
		// folded: the same rows pass, found through the index.
		where = append(where, "stepfort_match_text(nvalue) LIKE "+arg(p))
		indexed = true
	} else if m.Folded != nil {
		// The needle's longest run without letters is in the value as it
		// is: a cheap exact test first (PostgreSQL runs cheaper quals
		// first), then ASCII-only lower() (COLLATE "C": no locale folds
		// 'I' to a dotless i).
		if x := newMatcher(m); x.hi-x.lo >= 2 {
			where = append(where, "position("+arg(m.Folded[x.lo:x.hi])+"::bytea in nvalue) > 0")
		}
		or := []string{"strpos(lower(convert_from(nvalue, 'UTF8') COLLATE \"C\"), " + arg(string(m.Folded)) + ") > 0"}
		for _, f := range foldIntoASCII {
			or = append(or, "position("+arg(f)+"::bytea in nvalue) > 0")
		}
		where = append(where, "("+strings.Join(or, " OR ")+")")
	}
	return where, indexed
}

// matchSampleRows is about how many rows the plan's sample reads, and
// matchWalkRows how many rows a walk in key order may expect to read to
// fill its page (variables for tests).
var matchSampleRows, matchWalkRows = 1000, 10000

// sampleSaysWalk chooses the plan of an indexed match, which the planner
// gets wrong for some needles (pg_trgm's estimates of digit-heavy
// patterns): a sample of the table's pages (TABLESAMPLE SYSTEM,
// REPEATABLE so a table keeps its plan) gives the share of rows that
// match. A common needle fills the page within matchWalkRows rows walked
// in key order; a rare one is cheaper found through the trigram index and
// sorted (its matches are few). A sample that saw no row walks (the table
// is empty or tiny).
func sampleSaysWalk(db *sql.DB, quoted string, m *Match, page int) (bool, error) {
	var ps planSample
	if m.sample != nil && m.sample.done {
		ps = *m.sample
	} else {
		var err error
		if ps, err = samplePlan(db, quoted, m); err != nil {
			return false, err
		}
		if m.sample != nil {
			*m.sample = ps
		}
	}
	return ps.seen == 0 || page*ps.seen <= ps.hits*matchWalkRows, nil
}

// samplePlan samples about matchSampleRows of the table's rows and counts
// those passing m.
func samplePlan(db *sql.DB, quoted string, m *Match) (planSample, error) {
	sampleQueries.Add(1)
	var rows float64
	if err := db.QueryRow(`SELECT reltuples FROM pg_class WHERE oid = $1::regclass`, quoted).Scan(&rows); err != nil {
		if missingTable(err) {
			return planSample{done: true}, nil
		}
		return planSample{}, fmt.Errorf("sample %s: %w", quoted, err)
	}
	pct := 100.0
	if rows > 0 {
		pct = min(100, max(0.0001, 100*float64(matchSampleRows)/rows))
	}
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	where, _ := matchConds(m, arg)
	ps := planSample{done: true}
	q := "SELECT count(*) FILTER (WHERE " + strings.Join(where, " AND ") + "), count(*) FROM " + quoted +
		" TABLESAMPLE SYSTEM (" + arg(pct) + ") REPEATABLE (0)"
	if err := db.QueryRow(q, args...).Scan(&ps.hits, &ps.seen); err != nil {
		return planSample{}, fmt.Errorf("sample %s: %w", quoted, err)
	}
	return ps, nil
}

// matchPaged filters ForEachPage's pages in Go (MySQL, badger).
func matchPaged(store nosql.DB, table, after []byte, max int, x *matcher, fn func(key, value []byte) error) ([]byte, error) {
	const chunk = 1000
	n := 0
	var hit []byte
	for {
		next, err := ForEachPage(store, table, after, chunk, func(k, v []byte) error {
			if n == max || !x.ok(v) {
				return nil
			}
			n++
			if n == max {
				hit = append([]byte(nil), k...)
			}
			return fn(k, v)
		})
		if err != nil || n == max {
			return hit, err
		}
		if next == nil {
			return nil, nil
		}
		after = next
	}
}
