package storage

import (
	"bytes"
	"database/sql"
	"fmt"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/mysql"
	bbolt "go.etcd.io/bbolt"
)

// ForEachPage calls fn for at most max rows of table whose keys sort after
// after (nil: from the first), in key order, and returns the last key it
// passed when there may be more rows (nil at the end). Unlike ForEach, each
// page is its own read transaction (bbolt) or query (SQL), so a long walk
// paced by a slow consumer (an export to a slow client) never holds a
// transaction open for long, and fn may write between pages.
//
// key and value are only valid during the call, as for ForEach. A missing
// table has no rows. Stores other than bbolt, PostgreSQL and MySQL (badger)
// have no ordered range read in nosql: every row comes in one page, held
// in memory by nosql's List.
func ForEachPage(store nosql.DB, table, after []byte, max int, fn func(key, value []byte) error) ([]byte, error) {
	if max < 1 {
		return nil, fmt.Errorf("ForEachPage: max must be positive, got %d", max)
	}
	store = Unwrap(store)
	if b := boltHandle(store); b != nil {
		return pageBolt(b, table, after, max, fn)
	}
	if s, quote := sqlHandle(store); s != nil {
		_, isMySQL := store.(*mysql.DB)
		return pageSQL(s, quote(string(table)), isMySQL, after, max, fn)
	}
	if after != nil {
		return nil, nil // everything came in the first page
	}
	return nil, ForEach(store, table, fn)
}

func pageBolt(db *bbolt.DB, table, after []byte, max int, fn func(key, value []byte) error) ([]byte, error) {
	return walkBolt(db, table, after, max, nil, fn)
}

// walkBolt passes fn at most max rows of table after after, in one read
// transaction, skipping nested buckets and, when keep is set, the values it
// refuses; it returns the key of the max-th row passed (nil at the end).
func walkBolt(db *bbolt.DB, table, after []byte, max int, keep func(value []byte) bool, fn func(key, value []byte) error) ([]byte, error) {
	var next []byte
	err := db.View(func(tx *bbolt.Tx) error {
		b := boltBucket(tx, table)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		k, v := c.First()
		if after != nil {
			if k, v = c.Seek(after); k != nil && bytes.Equal(k, after) {
				k, v = c.Next()
			}
		}
		n := 0
		for ; k != nil; k, v = c.Next() {
			if v == nil || (keep != nil && !keep(v)) {
				continue // a nested bucket, not a row, or refused
			}
			if err := fn(k, v); err != nil {
				return err
			}
			if n++; n == max {
				next = append([]byte(nil), k...)
				return nil
			}
		}
		return nil
	})
	return next, err
}

func pageSQL(db *sql.DB, quoted string, isMySQL bool, after []byte, max int, fn func(key, value []byte) error) ([]byte, error) {
	p1, p2 := "$1", "$2"
	if isMySQL {
		p1, p2 = "?", "?"
	}
	if after == nil {
		return pageRows(db, quoted, "SELECT nkey, nvalue FROM "+quoted+" ORDER BY nkey LIMIT "+p1, []any{max}, max, fn)
	}
	return pageRows(db, quoted, "SELECT nkey, nvalue FROM "+quoted+" WHERE nkey > "+p1+" ORDER BY nkey LIMIT "+p2, []any{after, max}, max, fn)
}

// pageRows runs query q (nkey, nvalue of table quoted, at most max rows)
// and passes fn its rows; it returns the last key when max came (there may
// be more), nil at the end. A missing table has no rows.
// rowQuerier is *sql.DB or *sql.Tx.
type rowQuerier interface {
	Query(query string, args ...any) (*sql.Rows, error)
}

func pageRows(db rowQuerier, quoted, q string, args []any, max int, fn func(key, value []byte) error) ([]byte, error) {
	rows, err := db.Query(q, args...)
	if err != nil {
		if missingTable(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("scan %s: %w", quoted, err)
	}
	defer rows.Close()
	var key, value sql.RawBytes
	var last []byte
	n := 0
	for rows.Next() {
		if err := rows.Scan(&key, &value); err != nil {
			return nil, fmt.Errorf("scan %s: %w", quoted, err)
		}
		if err := fn(key, value); err != nil {
			return nil, err
		}
		last = append(last[:0], key...)
		n++
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("scan %s: %w", quoted, err)
	}
	if n < max {
		return nil, nil
	}
	return last, nil
}
