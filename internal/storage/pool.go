// Package sqlpool sizes the connection pool of upstream's SQL databases.
//
// smallstep/nosql opens PostgreSQL and MySQL with database/sql's defaults,
// which keep only two idle connections: under concurrent load every other
// query opens (and authenticates) a new session, which dominated latency in
// bench/ha (hundreds of sessions per second, p99 over a second). nosql keeps
// its *sql.DB in an unexported field and offers no option, so this package
// reaches it by reflection; TestTuneFindsThePool fails if an upgrade of
// nosql moves it.
package storage

import (
	"database/sql"
	"reflect"
	"time"
	"unsafe"

	"github.com/smallstep/nosql"
)

// Settings are the pool sizes; zero values keep database/sql's defaults.
type PoolSettings struct {
	MaxIdleConns    int
	MaxOpenConns    int
	ConnMaxIdleTime time.Duration
}

// Tune applies s to the *sql.DB inside d. It reports whether d is a SQL
// database it could tune (bbolt and badger are not).
func TunePool(d nosql.DB, s PoolSettings) bool {
	pool := find(d)
	if pool == nil {
		return false
	}
	if s.MaxIdleConns > 0 {
		pool.SetMaxIdleConns(s.MaxIdleConns)
	}
	if s.MaxOpenConns > 0 {
		pool.SetMaxOpenConns(s.MaxOpenConns)
	}
	if s.ConnMaxIdleTime > 0 {
		pool.SetConnMaxIdleTime(s.ConnMaxIdleTime)
	}
	return true
}

// Pool returns the *sql.DB inside d, or nil when d is not a SQL database.
// Callers borrow it (for example to hold one connection for LISTEN); they
// must not close it.
func SQLPool(d nosql.DB) *sql.DB { return find(d) }

func find(d nosql.DB) *sql.DB {
	v := reflect.ValueOf(d)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return nil
	}
	f := v.Elem().FieldByName("db")
	if !f.IsValid() || f.Type() != reflect.TypeFor[*sql.DB]() || !f.CanAddr() {
		return nil
	}
	pool := reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Interface().(*sql.DB)
	return pool
}
