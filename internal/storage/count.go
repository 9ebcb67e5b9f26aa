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

// CountMatch counts the rows of table whose value contains every one of
// contains. A row that also contains unsure (a marker that the byte tests
// may be wrong for it, such as a nested object that can hold the same
// keys) is counted only if check says so; every other row is counted on
// the byte tests alone. unsure nil: every row is sure.
//
// On PostgreSQL one scan in the database counts the sure rows and the
// unsure ones (position() tests; no row leaves it), and the unsure ones,
// if any, are then read out for check. Elsewhere one walk of the table does both, a chunk per read
// transaction.
func CountMatch(store nosql.DB, table []byte, contains [][]byte, unsure []byte, check func(value []byte) (bool, error)) (int, error) {
	store = Unwrap(store)
	if _, ok := store.(*postgresql.DB); ok && unsure != nil {
		if db, quote := sqlHandle(store); db != nil {
			where := []string{"true"}
			args := []any{unsure}
			for _, c := range contains {
				args = append(args, c)
				where = append(where, "position($"+strconv.Itoa(len(args))+"::bytea in nvalue) > 0")
			}
			// One scan counts the sure rows and how many are unsure;
			// only then (rarely) are the unsure ones read out.
			var sure, unsureRows int
			err := db.QueryRow(`SELECT count(*) FILTER (WHERE position($1::bytea in nvalue) = 0), count(*) FILTER (WHERE position($1::bytea in nvalue) > 0) FROM `+
				quote(string(table))+" WHERE "+strings.Join(where, " AND "), args...).Scan(&sure, &unsureRows)
			if err != nil && !missingTable(err) {
				return 0, fmt.Errorf("count %s: %w", table, err)
			}
			if unsureRows == 0 {
				return sure, nil
			}
			all := func([]byte) bool { return true }
			checked, err := walkCount(store, table, append(append([][]byte(nil), contains...), unsure), all, check)
			return sure + checked, err
		}
	}
	return walkCount(store, table, contains, func(v []byte) bool { return unsure != nil && bytes.Contains(v, unsure) }, check)
}

// walkCount walks the rows holding contains, counting those isUnsure
// rejects and those check accepts.
func walkCount(store nosql.DB, table []byte, contains [][]byte, isUnsure func([]byte) bool, check func([]byte) (bool, error)) (int, error) {
	n := 0
	var after []byte
	for {
		next, err := ForEachPageMatch(store, table, after, countChunk, Match{Contains: contains}, func(_, v []byte) error {
			ok := true
			if isUnsure(v) {
				var err error
				if ok, err = check(v); err != nil {
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
