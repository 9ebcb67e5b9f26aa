// Package storescan streams the rows of a smallstep/nosql table without
// materialising it.
//
// nosql's List returns the whole table as []*database.Entry with a copy of
// every key and value: for the million-row revocation table that is over a
// gigabyte of heap. ForEach instead walks a bbolt cursor inside one read
// transaction, or reads a PostgreSQL or MySQL result set row by row into
// reused buffers, and hands each row to a callback. nosql keeps its *bolt.DB
// and *sql.DB in unexported fields and offers no iterator, so this package
// reaches them by reflection (the *sql.DB through storage.SQLPool);
// TestFindsTheHandles fails if an upgrade of nosql or bbolt moves them.
// Other drivers (badger) fall back to List.
//
// A bbolt scan also releases the memory-mapped pages it has read as it
// goes: they are file-backed and stay in the page cache, but while mapped
// they count in the process's RSS, which would otherwise grow by the size
// of the table.
package storage

import (
	"bytes"
	"database/sql"
	"fmt"
	"reflect"
	"strings"
	"unsafe"

	"github.com/jackc/pgx/v5"
	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/bolt"
	"github.com/smallstep/nosql/database"
	"github.com/smallstep/nosql/mysql"
	"github.com/smallstep/nosql/postgresql"
	bbolt "go.etcd.io/bbolt"
)

// ForEach calls fn for every row of table, in the store's order (key order
// for bbolt, unspecified for SQL). A missing table has no rows and is not
// an error. An error from fn stops the scan and is returned as is.
//
// key and value are only valid during the call: they point into bbolt's
// memory map or into the SQL driver's buffers, which the next row reuses.
// fn must not retain them (copy what it keeps) and must not modify them.
//
// On bbolt, fn runs inside a read transaction: it must not write to the
// same database (bbolt would deadlock on a remap), and a long scan keeps
// the pages it reads from being reused by writers until it ends.
func ForEach(store nosql.DB, table []byte, fn func(key, value []byte) error) error {
	store = Unwrap(store)
	if b := boltHandle(store); b != nil {
		return forEachBolt(b, table, fn)
	}
	if s, quote := sqlHandle(store); s != nil {
		return forEachSQL(s, quote(string(table)), fn)
	}
	rows, err := store.List(table)
	if database.IsErrNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	for i, e := range rows {
		rows[i] = nil // let the scanned prefix go as we walk
		if err := fn(e.Key, e.Value); err != nil {
			return err
		}
	}
	return nil
}

// Unwrap returns the nosql.DB inside wrappers that embed one, like
// upstream's db.DB (which is what authority hosts hand out).
func Unwrap(store nosql.DB) nosql.DB {
	for range 4 {
		v := reflect.ValueOf(store)
		if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
			return store
		}
		f, ok := v.Elem().Type().FieldByName("DB")
		if !ok || !f.Anonymous || f.Type != reflect.TypeFor[nosql.DB]() {
			return store
		}
		inner, _ := v.Elem().FieldByIndex(f.Index).Interface().(nosql.DB)
		if inner == nil {
			return store
		}
		store = inner
	}
	return store
}

// field returns the unexported field name of type T in the struct *d
// points to, or the zero T.
func field[T any](d any, name string) T {
	var zero T
	v := reflect.ValueOf(d)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return zero
	}
	f := v.Elem().FieldByName(name)
	if !f.IsValid() || f.Type() != reflect.TypeFor[T]() || !f.CanAddr() {
		return zero
	}
	return reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Interface().(T)
}

func boltHandle(store nosql.DB) *bbolt.DB {
	if b, ok := store.(*bolt.DB); ok {
		return field[*bbolt.DB](b, "db")
	}
	return nil
}

// sqlHandle returns the *sql.DB of a PostgreSQL or MySQL store and how
// that driver quotes a table name (the same way nosql does).
func sqlHandle(store nosql.DB) (*sql.DB, func(string) string) {
	switch store.(type) {
	case *postgresql.DB:
		return SQLPool(store), func(t string) string { return pgx.Identifier(strings.Split(t, ".")).Sanitize() }
	case *mysql.DB:
		return SQLPool(store), func(t string) string { return "`" + strings.ReplaceAll(t, "`", "``") + "`" }
	}
	return nil, nil
}

// dropEvery is how many bytes of rows a bbolt scan reads between releases
// of the mapped pages it touched.
const dropEvery = 4 << 20

// boltBucket is table's bucket in tx, nil if it does not exist. table may
// name nested buckets ("a/b"), as nosql allows.
func boltBucket(tx *bbolt.Tx, table []byte) *bbolt.Bucket {
	var b *bbolt.Bucket
	for i, name := range bytes.Split(table, []byte("/")) {
		if i == 0 {
			b = tx.Bucket(name)
		} else {
			b = b.Bucket(name)
		}
		if b == nil {
			return nil
		}
	}
	return b
}

func forEachBolt(db *bbolt.DB, table []byte, fn func(key, value []byte) error) error {
	return db.View(func(tx *bbolt.Tx) error {
		b := boltBucket(tx, table)
		if b == nil {
			return nil
		}
		// The pages of the memory map count in the process's RSS once read;
		// a table scan would otherwise keep the whole file resident.
		// (Holding the read transaction keeps the map from being replaced.)
		mapped := field[[]byte](db, "dataref")
		defer dropPages(mapped)
		seen := 0
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if v == nil {
				continue // a nested bucket, not a row
			}
			if err := fn(k, v); err != nil {
				return err
			}
			if seen += len(k) + len(v); seen >= dropEvery {
				dropPages(mapped)
				seen = 0
			}
		}
		return nil
	})
}

func forEachSQL(db *sql.DB, quoted string, fn func(key, value []byte) error) error {
	rows, err := db.Query("SELECT nkey, nvalue FROM " + quoted)
	if err != nil {
		if missingTable(err) {
			return nil
		}
		return fmt.Errorf("scan %s: %w", quoted, err)
	}
	defer rows.Close()
	var key, value sql.RawBytes
	for rows.Next() {
		if err := rows.Scan(&key, &value); err != nil {
			return fmt.Errorf("scan %s: %w", quoted, err)
		}
		if err := fn(key, value); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("scan %s: %w", quoted, err)
	}
	return nil
}

// missingTable recognises "no such table" the way nosql's List does.
func missingTable(err error) bool {
	s := err.Error()
	return strings.Contains(s, "(SQLSTATE 42P01)") || strings.HasPrefix(s, "Error 1146")
}
