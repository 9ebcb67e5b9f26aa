package storage

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/postgresql"
)

// countChunk is how many rows one read transaction of a walking count
// covers.
const countChunk = 5000

// CountMatch counts the rows of table whose value passes m (as
// ForEachPageMatch tests it) and that check accepts. check sees only the
// unsure rows: those containing unsure (a marker that m's byte tests may
// be wrong for a row, such as a nested object that can hold the same
// keys); the other rows are counted on m alone. unsure nil: every row is
// unsure.
//
// On PostgreSQL, with a marker, one scan in the database counts the sure
// rows and the unsure ones (no row leaves it), and the unsure ones, if
// any, are then read out for check. Otherwise the table is walked a chunk
// per read transaction.
func CountMatch(store nosql.DB, table []byte, m Match, unsure []byte, check func(key, value []byte) (bool, error)) (int, error) {
	if err := m.validate(); err != nil {
		return 0, err
	}
	store = Unwrap(store)
	if _, ok := store.(*postgresql.DB); ok && unsure != nil {
		if db, quote := sqlHandle(store); db != nil {
			args := []any{unsure}
			where, _ := matchConds(&m, func(v any) string {
				args = append(args, v)
				return "$" + strconv.Itoa(len(args))
			})
			// One scan counts the sure rows and how many are unsure;
			// only then (rarely) are the unsure ones read out.
			var sure, unsureRows int
			err := db.QueryRow(`SELECT count(*) FILTER (WHERE position($1::bytea in nvalue) = 0), count(*) FILTER (WHERE position($1::bytea in nvalue) > 0) FROM `+
				quote(string(table))+" WHERE "+strings.Join(append(where, "true"), " AND "), args...).Scan(&sure, &unsureRows)
			if err != nil && !missingTable(err) {
				return 0, fmt.Errorf("count %s: %w", table, err)
			}
			if unsureRows == 0 {
				return sure, nil
			}
			marked := m
			marked.Contains = append(append([][]byte(nil), m.Contains...), unsure)
			checked, err := walkCount(store, table, marked, func([]byte) bool { return true }, check)
			return sure + checked, err
		}
	}
	return walkCount(store, table, m, func(v []byte) bool { return unsure == nil || bytes.Contains(v, unsure) }, check)
}

// walkCount walks the rows passing m, counting those isUnsure rejects and
// those check accepts.
func walkCount(store nosql.DB, table []byte, m Match, isUnsure func([]byte) bool, check func(key, value []byte) (bool, error)) (int, error) {
	m.sample = new(planSample) // sampled once for the whole walk
	n := 0
	var after []byte
	for {
		next, err := ForEachPageMatch(store, table, after, countChunk, m, func(k, v []byte) error {
			ok := true
			if isUnsure(v) {
				var err error
				if ok, err = check(k, v); err != nil {
					return err
				}
			}
			if ok {
				n++
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
		if next == nil {
			return n, nil
		}
		after = next
	}
}
