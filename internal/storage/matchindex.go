package storage

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/postgresql"
)

// matchText is the SQL function a trigram index over a table's values is
// built on, and the expression indexed queries filter on: the value as
// text, ASCII letters lower-cased (COLLATE "C": no locale folds), and the
// two characters strings.ToLower maps into ASCII (KELVIN SIGN, LATIN
// CAPITAL LETTER I WITH DOT ABOVE) mapped as Go maps them, so the text
// holds a Match.Folded needle whenever a strings.ToLower comparison of a
// decoded field does. convert_from is only STABLE (it fails on values
// that are not UTF-8), hence the IMMUTABLE wrapper: EnsureMatchIndex is
// for tables whose values are always JSON (UTF-8).
const matchText = `CREATE OR REPLACE FUNCTION stepfort_match_text(v bytea) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT translate(lower(convert_from(v, 'UTF8') COLLATE "C"), U&'\212A\0130', 'ki') $$`

// matchIndexLock is the pg_advisory_xact_lock key of EnsureMatchIndex's
// DDL, so replicas starting together do not race on it.
const matchIndexLock = 0x7374666d // "stfm"

// EnsureMatchIndex creates, on PostgreSQL, a trigram (pg_trgm GIN) index
// over table's values as text, if absent, and reports whether it did or
// found one; then a Match with Indexed set is answered from that index
// (see ForEachPageMatch). On other stores it does nothing and returns
// false. Only for tables whose values are JSON: a value that is not UTF-8
// (or holds NUL) cannot be written to the table once the index exists.
//
// It fails closed when PostgreSQL cannot create the extension or the index
// (pg_trgm is a trusted extension since PostgreSQL 13: the database owner
// may create it).
func EnsureMatchIndex(store nosql.DB, table []byte) (bool, error) {
	store = Unwrap(store)
	if _, ok := store.(*postgresql.DB); !ok {
		return false, nil
	}
	db, quote := sqlHandle(store)
	if db == nil {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("match index of %s: %w", table, err)
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	stmts := []string{
		`SELECT pg_advisory_xact_lock(` + fmt.Sprint(matchIndexLock) + `)`,
		`CREATE EXTENSION IF NOT EXISTS pg_trgm`,
		matchText,
		`CREATE INDEX IF NOT EXISTS ` + quote(matchIndexName(table)) + ` ON ` + quote(string(table)) +
			` USING gin (stepfort_match_text(nvalue) gin_trgm_ops)`,
		// Statistics of the indexed expression: without them the planner
		// takes a common needle for a rare one and sorts every match
		// instead of walking the key order (350 ms rather than 1 ms at
		// 100,000 rows). Autovacuum keeps them current afterwards.
		`ANALYZE ` + quote(string(table)),
	}
	for _, s := range stmts {
		if _, err := tx.ExecContext(ctx, s); err != nil {
			return false, fmt.Errorf("create the trigram index of %s (needs the pg_trgm extension and the right to create it): %s: %w", table, strings.Fields(s)[0], err)
		}
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("create the trigram index of %s: %w", table, err)
	}
	return true, nil
}

// matchIndexName names table's index: nosql table names may hold any
// character, the identifier is quoted.
func matchIndexName(table []byte) string {
	return "stepfort_match_" + strings.ReplaceAll(string(table), ".", "_")
}

// indexedLike returns a LIKE pattern over stepfort_match_text(nvalue)
// that every value holding needle (exactly, or ASCII-case-folded when
// folded) matches, and false when the index cannot narrow it: a needle
// that is not printable ASCII without backslash, or without an
// alphanumeric run of three characters (pg_trgm takes trigrams from
// words only; a pattern without one reads the whole index).
func indexedLike(needle []byte) (string, bool) {
	run, best := 0, 0
	var b strings.Builder
	b.WriteByte('%')
	for _, c := range needle {
		if c < 0x20 || c >= 0x7f || c == '\\' {
			return "", false
		}
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if 'a' <= c && c <= 'z' || '0' <= c && c <= '9' {
			run++
			best = max(best, run)
		} else {
			run = 0
		}
		if c == '%' || c == '_' {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	b.WriteByte('%')
	return b.String(), best >= 3
}

// AnalyzeTable refreshes PostgreSQL's statistics of table (and of its
// match index's expression) now, rather than when autovacuum next gets to
// it: after a bulk load, so searches are planned on the new rows. Other
// stores: a no-op.
func AnalyzeTable(store nosql.DB, table []byte) error {
	store = Unwrap(store)
	if _, ok := store.(*postgresql.DB); !ok {
		return nil
	}
	db, quote := sqlHandle(store)
	if db == nil {
		return nil
	}
	if _, err := db.Exec(`ANALYZE ` + quote(string(table))); err != nil {
		return fmt.Errorf("analyze %s: %w", table, err)
	}
	return nil
}
