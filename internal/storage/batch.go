package storage

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"
	bbolt "go.etcd.io/bbolt"
)

// Why this file exists: a bulk import writes a million rows. nosql's Get
// and Set cost one round trip per row on PostgreSQL and MySQL (minutes for
// a million), and one bbolt transaction (one fsync) per row on bbolt.
// GetMany and WriteBatch read and write many rows per statement in one
// transaction.

// sqlRowsPerStatement bounds the rows of one multi-row statement (two
// parameters a row, under PostgreSQL's 65535 and MySQL's packet limits).
const sqlRowsPerStatement = 1000

// Write is one row of a WriteBatch: a Set of Value, or a Delete.
type Write struct {
	Table, Key, Value []byte
	Delete            bool
}

// GetMany reads the rows of keys from table: values[i] is keys[i]'s value,
// nil when absent (an empty stored value reads as empty, not nil). A
// missing table has no rows.
func GetMany(db nosql.DB, table []byte, keys [][]byte) ([][]byte, error) {
	values := make([][]byte, len(keys))
	if len(keys) == 0 {
		return values, nil
	}
	db = Unwrap(db)
	if d, ok := dialectOf(db); ok {
		return values, d.getMany(table, keys, values)
	}
	if b := boltHandle(db); b != nil {
		return values, getManyBolt(b, table, keys, values)
	}
	for i, k := range keys {
		v, err := db.Get(table, k)
		switch {
		case database.IsErrNotFound(err):
		case err != nil:
			return nil, fmt.Errorf("read %s/%s: %w", table, k, err)
		default:
			values[i] = nonNil(v)
		}
	}
	return values, nil
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// WriteBatch applies the writes in one transaction: all or nothing.
func WriteBatch(db nosql.DB, writes []Write) error {
	if len(writes) == 0 {
		return nil
	}
	db = Unwrap(db)
	if d, ok := dialectOf(db); ok {
		return d.writeBatch(writes)
	}
	tx := new(database.Tx)
	for _, w := range writes {
		if w.Delete {
			tx.Del(w.Table, w.Key)
		} else {
			tx.Set(w.Table, w.Key, w.Value)
		}
	}
	if err := db.Update(tx); err != nil {
		return fmt.Errorf("write batch of %d rows: %w", len(writes), err)
	}
	return nil
}

// params is "$from,$from+1,..." (n of them; "?,?,..." on MySQL).
func (d dialect) params(n, from int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		if d.postgres {
			b.WriteString("$" + strconv.Itoa(from+i))
		} else {
			b.WriteByte('?')
		}
	}
	return b.String()
}

// placeholders is n rows "(...)" of perRow parameters each, numbered from
// from.
func (d dialect) placeholders(n, perRow, from int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("(" + d.params(perRow, from+i*perRow) + ")")
	}
	return b.String()
}

func (d dialect) getMany(table []byte, keys [][]byte, values [][]byte) error {
	index := make(map[string]int, len(keys))
	for i, k := range keys {
		index[string(k)] = i
	}
	per := sqlRowsPerStatement
	if d.postgres {
		per = len(keys) // one array parameter
	}
	for start := 0; start < len(keys); start += per {
		chunk := keys[start:min(start+per, len(keys))]
		q := "SELECT nkey, nvalue FROM " + d.quote(string(table)) + " WHERE nkey IN (" + d.params(len(chunk), 1) + ")"
		args := make([]any, len(chunk))
		for i, k := range chunk {
			args[i] = k
		}
		if d.postgres {
			q = "SELECT nkey, nvalue FROM " + d.quote(string(table)) + " WHERE nkey = ANY($1)"
			args = []any{chunk}
		}
		rows, err := d.pool.Query(q, args...)
		if err != nil {
			if missingTable(err) {
				return nil
			}
			return fmt.Errorf("read %s: %w", table, err)
		}
		for rows.Next() {
			var k, v []byte
			if err := rows.Scan(&k, &v); err != nil {
				rows.Close()
				return fmt.Errorf("read %s: %w", table, err)
			}
			if i, ok := index[string(k)]; ok {
				values[i] = nonNil(v)
			}
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return fmt.Errorf("read %s: %w", table, err)
		}
	}
	return nil
}

func (d dialect) writeBatch(writes []Write) error {
	ctx := context.Background()
	if d.postgres && len(writes) >= pgCopyMin {
		if err := pgWriteBatch(ctx, d.pool, writes, d.quote); err != nil {
			return fmt.Errorf("write batch of %d rows: %w", len(writes), err)
		}
		return nil
	}
	tx, err := d.pool.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("write batch: %w", err)
	}
	if err := d.writeAll(ctx, tx, writes); err != nil {
		_ = tx.Rollback()
		return fmt.Errorf("write batch of %d rows: %w", len(writes), err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("write batch of %d rows: commit: %w", len(writes), err)
	}
	return nil
}

// writeAll groups consecutive writes of one kind to one table into
// multi-row statements. A key written twice in one statement would be an
// error on PostgreSQL ("cannot affect row a second time"), so a statement
// ends at a repeated key.
func (d dialect) writeAll(ctx context.Context, tx *sql.Tx, writes []Write) error {
	for len(writes) > 0 {
		n, seen := 0, map[string]bool{}
		for n < len(writes) && n < sqlRowsPerStatement && string(writes[n].Table) == string(writes[0].Table) &&
			writes[n].Delete == writes[0].Delete && !seen[string(writes[n].Key)] {
			seen[string(writes[n].Key)] = true
			n++
		}
		if err := d.writeGroup(ctx, tx, writes[:n]); err != nil {
			return err
		}
		writes = writes[n:]
	}
	return nil
}

func (d dialect) writeGroup(ctx context.Context, tx *sql.Tx, g []Write) error {
	t := d.quote(string(g[0].Table))
	var q string
	var args []any
	if g[0].Delete {
		for _, w := range g {
			args = append(args, w.Key)
		}
		q = "DELETE FROM " + t + " WHERE nkey IN (" + d.params(len(g), 1) + ")"
	} else {
		for _, w := range g {
			args = append(args, w.Key, nonNil(w.Value))
		}
		q = "INSERT INTO " + t + " (nkey, nvalue) VALUES " + d.placeholders(len(g), 2, 1)
		if d.postgres {
			q += " ON CONFLICT (nkey) DO UPDATE SET nvalue = excluded.nvalue"
		} else {
			q += " ON DUPLICATE KEY UPDATE nvalue = VALUES(nvalue)"
		}
	}
	if _, err := tx.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("%s: %w", t, err)
	}
	return nil
}

// getManyBolt reads in one read transaction (nosql's Get opens one per
// key). table may name nested buckets ("a/b"), as nosql allows.
func getManyBolt(db *bbolt.DB, table []byte, keys [][]byte, values [][]byte) error {
	return db.View(func(tx *bbolt.Tx) error {
		b := boltBucket(tx, table)
		if b == nil {
			return nil
		}
		for i, k := range keys {
			if v := b.Get(k); v != nil {
				values[i] = bytes.Clone(v)
			}
		}
		// Like a scan, a bulk import reads the whole file over its batches:
		// release the mapped pages so they do not all count in the RSS.
		dropPages(field[[]byte](db, "dataref"))
		return nil
	})
}

// pgCopyMin is the batch size from which PostgreSQL writes go through
// COPY into a temporary table (one round trip for the rows) instead of
// multi-row INSERTs.
const pgCopyMin = 2000

// pgWriteBatch writes sets with COPY and one INSERT ... SELECT per table,
// and deletes with DELETE ... = ANY, in one transaction.
func pgWriteBatch(ctx context.Context, db *sql.DB, writes []Write, quote func(string) string) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		c, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("unexpected driver connection %T", dc)
		}
		pc := c.Conn()
		tx, err := pc.Begin(ctx)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(ctx) }()
		sets, dels := map[string][][]any{}, map[string][][]byte{}
		var order []string
		for _, w := range writes {
			t := string(w.Table)
			if _, ok := sets[t]; !ok {
				if _, ok := dels[t]; !ok {
					order = append(order, t)
				}
			}
			if w.Delete {
				dels[t] = append(dels[t], w.Key)
			} else {
				sets[t] = append(sets[t], []any{w.Key, nonNil(w.Value)})
			}
		}
		if _, err := tx.Exec(ctx, "CREATE TEMP TABLE IF NOT EXISTS stepfort_batch (nkey BYTEA, nvalue BYTEA) ON COMMIT DELETE ROWS"); err != nil {
			return err
		}
		for _, t := range order {
			if rows := dedupeLast(sets[t]); len(rows) > 0 {
				if _, err := tx.CopyFrom(ctx, pgx.Identifier{"stepfort_batch"}, []string{"nkey", "nvalue"}, pgx.CopyFromRows(rows)); err != nil {
					return fmt.Errorf("copy into %s: %w", t, err)
				}
				q := "INSERT INTO " + quote(t) + " (nkey, nvalue) SELECT nkey, nvalue FROM stepfort_batch ON CONFLICT (nkey) DO UPDATE SET nvalue = excluded.nvalue"
				if _, err := tx.Exec(ctx, q); err != nil {
					return fmt.Errorf("%s: %w", t, err)
				}
				if _, err := tx.Exec(ctx, "TRUNCATE stepfort_batch"); err != nil {
					return err
				}
			}
			if keys := dels[t]; len(keys) > 0 {
				if _, err := tx.Exec(ctx, "DELETE FROM "+quote(t)+" WHERE nkey = ANY($1)", keys); err != nil {
					return fmt.Errorf("%s: %w", t, err)
				}
			}
		}
		return tx.Commit(ctx)
	})
}

// dedupeLast keeps the last row of each key (one INSERT cannot write a key
// twice).
func dedupeLast(rows [][]any) [][]any {
	seen := make(map[string]int, len(rows))
	out := rows[:0:0]
	for _, r := range rows {
		k := string(r[0].([]byte))
		if i, ok := seen[k]; ok {
			out[i] = r
			continue
		}
		seen[k] = len(out)
		out = append(out, r)
	}
	return out
}
