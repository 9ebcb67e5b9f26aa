package storage

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"
	"github.com/smallstep/nosql/postgresql"
)

// Why this file exists: nosql's compare-and-swap on PostgreSQL and MySQL
// reads the row with SELECT ... FOR UPDATE and then upserts. When the row is
// absent the SELECT locks nothing, so two writers comparing with "absent"
// both see it absent, both upsert, and both report swapped: the second
// silently overwrites the first. The same happens for CmpAndSwap entries of
// a database.Tx. CmpAndSwap and Update below insert an absent row with an
// INSERT that cannot overwrite (the primary key decides the one winner) and
// only then compare against what is there. bbolt and badger serialise whole
// transactions, so nosql's own compare-and-swap is exact there and they are
// passed through.

// maxAbsentAttempts bounds the insert/compare loop for a row that keeps
// appearing and disappearing under a compare with "absent" (someone deletes
// it between our failed insert and our read). Each turn means another writer
// made progress.
const maxAbsentAttempts = 16

// errContention is returned when maxAbsentAttempts is exhausted.
var errContention = errors.New("row created and deleted concurrently too often")

// CmpAndSwap is db.CmpAndSwap with exactly nosql's semantics (oldValue nil
// or empty matches an absent row or an empty value; current is the stored
// value when not swapped, newValue when swapped), but atomic when oldValue
// is empty on PostgreSQL and MySQL: of several writers, on any number of
// connections or replicas, creating the same absent key, exactly one
// swaps and every other gets the winner's value as current.
//
// On SQL stores db is unwrapped (see Unwrap): a wrapper's own CmpAndSwap
// is bypassed for an empty oldValue.
func CmpAndSwap(db nosql.DB, table, key, oldValue, newValue []byte) (current []byte, swapped bool, err error) {
	if len(oldValue) > 0 {
		return db.CmpAndSwap(table, key, oldValue, newValue) // the row exists: FOR UPDATE locks it
	}
	d, ok := dialectOf(Unwrap(db))
	if !ok {
		return db.CmpAndSwap(table, key, oldValue, newValue)
	}
	ctx := context.Background()
	tx, err := d.pool.BeginTx(ctx, nil)
	if err != nil {
		return nil, false, fmt.Errorf("compare-and-swap %s/%s: %w", table, key, err)
	}
	current, swapped, err = d.createOrCompare(ctx, tx, table, key, newValue)
	if err != nil || !swapped {
		_ = tx.Rollback()
		return current, swapped, err
	}
	if err := tx.Commit(); err != nil {
		return nil, false, fmt.Errorf("compare-and-swap %s/%s: commit: %w", table, key, err)
	}
	return current, true, nil
}

// Update is db.Update(tx) with nosql's semantics, but on PostgreSQL and
// MySQL every CmpAndSwap entry comparing with an absent (nil or empty)
// value is atomic like CmpAndSwap: of several concurrent transactions
// creating the same key, exactly one reports Swapped. As with nosql, an
// entry that does not swap does not abort the transaction: the other
// entries are still written and the caller reads Swapped. bbolt and badger
// are passed to db.Update.
func Update(db nosql.DB, tx *database.Tx) error {
	d, ok := dialectOf(Unwrap(db))
	if !ok {
		return db.Update(tx)
	}
	ctx := context.Background()
	sqlTx, err := d.pool.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("UPDATE failed: %w", err)
	}
	for _, op := range tx.Operations {
		if err := d.apply(ctx, sqlTx, op); err != nil {
			_ = sqlTx.Rollback()
			return fmt.Errorf("UPDATE failed: %w", err)
		}
	}
	if err := sqlTx.Commit(); err != nil {
		return fmt.Errorf("UPDATE failed: commit: %w", err)
	}
	return nil
}

// dialect is the SQL nosql uses on one driver, plus an insert that never
// overwrites.
type dialect struct {
	pool     *sql.DB
	quote    func(string) string
	postgres bool
}

func dialectOf(store nosql.DB) (dialect, bool) {
	pool, quote := sqlHandle(store)
	if pool == nil {
		return dialect{}, false
	}
	_, pg := store.(*postgresql.DB)
	return dialect{pool: pool, quote: quote, postgres: pg}, true
}

// q writes a statement for table: {t} is the quoted table, and $n
// placeholders become ? on MySQL.
func (d dialect) q(stmt string, table []byte) string {
	stmt = strings.ReplaceAll(stmt, "{t}", d.quote(string(table)))
	if !d.postgres {
		for _, n := range []string{"$1", "$2"} {
			stmt = strings.ReplaceAll(stmt, n, "?")
		}
	}
	return stmt
}

// createOrCompare stores value under an absent key, or, if the key exists
// with an empty value, replaces it (nosql's bytes.Equal treats nil and empty
// alike); otherwise it returns the stored value. On success the row stays
// locked until tx ends, so concurrent creators wait and then see it.
func (d dialect) createOrCompare(ctx context.Context, tx *sql.Tx, table, key, value []byte) ([]byte, bool, error) {
	for range maxAbsentAttempts {
		inserted, err := d.insertIfAbsent(ctx, tx, table, key, value)
		if err != nil {
			return nil, false, fmt.Errorf("compare-and-swap %s/%s: insert: %w", table, key, err)
		}
		if inserted {
			return value, true, nil
		}
		// The row exists (or a concurrent creator committed it): lock it.
		var cur []byte
		err = tx.QueryRowContext(ctx, d.q("SELECT nvalue FROM {t} WHERE nkey = $1 FOR UPDATE", table), key).Scan(&cur)
		if errors.Is(err, sql.ErrNoRows) {
			continue // deleted since our insert failed: compete again
		}
		if err != nil {
			return nil, false, fmt.Errorf("compare-and-swap %s/%s: read: %w", table, key, err)
		}
		if len(cur) > 0 {
			return cur, false, nil
		}
		if _, err := tx.ExecContext(ctx, d.q("UPDATE {t} SET nvalue = $2 WHERE nkey = $1", table), key, value); err != nil {
			return nil, false, fmt.Errorf("compare-and-swap %s/%s: write: %w", table, key, err)
		}
		return value, true, nil
	}
	return nil, false, fmt.Errorf("compare-and-swap %s/%s: %w", table, key, errContention)
}

// insertIfAbsent inserts the row unless the key exists, and never replaces
// it. PostgreSQL: an error would abort the transaction, so the conflict is
// declared. MySQL: INSERT IGNORE would also hide (and truncate) a key that
// is too long, so the duplicate-key error is recognised instead; InnoDB
// rolls back only that statement.
func (d dialect) insertIfAbsent(ctx context.Context, tx *sql.Tx, table, key, value []byte) (bool, error) {
	stmt := "INSERT INTO {t} (nkey, nvalue) VALUES ($1, $2)"
	if d.postgres {
		stmt += " ON CONFLICT (nkey) DO NOTHING"
	}
	res, err := tx.ExecContext(ctx, d.q(stmt, table), key, value)
	if err != nil {
		if !d.postgres && strings.HasPrefix(err.Error(), "Error 1062") { // ER_DUP_ENTRY
			return false, nil
		}
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// apply runs one entry of a database.Tx the way nosql's Update does, with
// nosql's statements, except for a compare with an absent value.
func (d dialect) apply(ctx context.Context, tx *sql.Tx, op *database.TxEntry) error {
	var err error
	switch op.Cmd {
	case database.CreateTable:
		_, err = tx.ExecContext(ctx, d.createTable(op.Bucket))
	case database.DeleteTable:
		_, err = tx.ExecContext(ctx, d.q("DROP TABLE {t}", op.Bucket))
		if err != nil && missingTable(err) {
			return fmt.Errorf("%w: %s", database.ErrNotFound, err)
		}
	case database.Get:
		var v []byte
		err = tx.QueryRowContext(ctx, d.q("SELECT nvalue FROM {t} WHERE nkey = $1", op.Bucket), op.Key).Scan(&v)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%s/%s: %w", op.Bucket, op.Key, database.ErrNotFound)
		}
		op.Result = v
	case database.Set:
		err = d.set(ctx, tx, op.Bucket, op.Key, op.Value)
	case database.Delete:
		_, err = tx.ExecContext(ctx, d.q("DELETE FROM {t} WHERE nkey = $1", op.Bucket), op.Key)
	case database.CmpAndSwap:
		if len(op.CmpValue) == 0 {
			op.Result, op.Swapped, err = d.createOrCompare(ctx, tx, op.Bucket, op.Key, op.Value)
		} else {
			op.Result, op.Swapped, err = d.compareExisting(ctx, tx, op.Bucket, op.Key, op.CmpValue, op.Value)
		}
	default: // CmpOrRollback included, as in nosql
		return database.ErrOpNotSupported
	}
	if err != nil {
		return fmt.Errorf("%s %s/%s: %w", op.Cmd, op.Bucket, op.Key, err)
	}
	return nil
}

// compareExisting is nosql's compare-and-swap for a non-empty old value:
// the row must exist to match, and FOR UPDATE then locks it.
func (d dialect) compareExisting(ctx context.Context, tx *sql.Tx, table, key, old, value []byte) ([]byte, bool, error) {
	var cur []byte
	err := tx.QueryRowContext(ctx, d.q("SELECT nvalue FROM {t} WHERE nkey = $1 FOR UPDATE", table), key).Scan(&cur)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, false, err
	}
	if string(cur) != string(old) {
		return cur, false, nil
	}
	if _, err := tx.ExecContext(ctx, d.q("UPDATE {t} SET nvalue = $2 WHERE nkey = $1", table), key, value); err != nil {
		return nil, false, err
	}
	return value, true, nil
}

func (d dialect) set(ctx context.Context, tx *sql.Tx, table, key, value []byte) error {
	if d.postgres {
		_, err := tx.ExecContext(ctx, d.q("INSERT INTO {t} (nkey, nvalue) VALUES ($1, $2) ON CONFLICT (nkey) DO UPDATE SET nvalue = excluded.nvalue", table), key, value)
		return err
	}
	_, err := tx.ExecContext(ctx, d.q("INSERT INTO {t} (nkey, nvalue) VALUES (?, ?) ON DUPLICATE KEY UPDATE nvalue = VALUES(nvalue)", table), key, value)
	return err
}

// createTable is nosql's table definition on each driver.
func (d dialect) createTable(table []byte) string {
	if d.postgres {
		return d.q("CREATE TABLE IF NOT EXISTS {t} (nkey BYTEA CHECK (octet_length(nkey) <= 255), nvalue BYTEA, PRIMARY KEY (nkey))", table)
	}
	return d.q("CREATE TABLE IF NOT EXISTS {t} (nkey VARBINARY(255), nvalue BLOB, PRIMARY KEY (nkey))", table)
}

// maxModifyAttempts bounds ModifyJSON's retries under contention.
const maxModifyAttempts = 50

// ErrContended is returned by ModifyJSON when other writers changed the
// record every time it tried.
var ErrContended = errors.New("too many concurrent writers")

// ModifyJSON reads the JSON record at key (the zero T when absent), lets
// fn change it, and writes it back with CmpAndSwap against the bytes it
// read, so an absent row is created atomically on every backend; on a
// concurrent change it reads again and retries. fn returns false to leave
// the record as it is. It returns the record as written (or left).
func ModifyJSON[T any](db nosql.DB, table, key []byte, fn func(*T) bool) (*T, error) {
	for range maxModifyAttempts {
		v, old, err := GetJSON[T](db, table, key)
		if err != nil {
			return nil, err
		}
		if !fn(v) {
			return v, nil
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		_, ok, err := CmpAndSwap(db, table, key, old, b)
		if err != nil {
			return nil, fmt.Errorf("write %s/%s: %w", table, key, err)
		}
		if ok {
			return v, nil
		}
	}
	return nil, fmt.Errorf("%s/%s: %w", table, key, ErrContended)
}

// GetJSON reads the JSON record at key: the zero T and nil bytes when the
// row is absent, else the decoded record and the stored bytes (what a
// compare-and-swap compares with).
func GetJSON[T any](db nosql.DB, table, key []byte) (*T, []byte, error) {
	var v T
	b, err := db.Get(table, key)
	switch {
	case database.IsErrNotFound(err):
		return &v, nil, nil
	case err != nil:
		return nil, nil, fmt.Errorf("read %s/%s: %w", table, key, err)
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, nil, fmt.Errorf("decode %s/%s: %w", table, key, err)
	}
	return &v, b, nil
}
