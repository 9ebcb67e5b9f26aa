package certindex

import (
	"fmt"
	"time"

	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/internal/storage"
)

// Table is the index table: a real table with indexed columns on
// PostgreSQL (sqlstore.go), a key/value table keyed by decimal serial
// elsewhere (memstore.go).
const Table = "stepfort_certindex"

// Store is the certificate index. Implementations are safe for concurrent
// use.
type Store interface {
	// Put merges each record into the stored one (Record.merge), creating
	// it when absent. It is idempotent and its result does not depend on
	// the order of calls.
	Put(recs []*Record) error
	// Get returns the record of a decimal serial, nil when absent.
	Get(serial string) (*Record, error)
	// List returns one page in the query's order, and the cursor of the
	// next page (nil on the last page). Records without a certificate
	// (a revocation seen before its issuance) are never listed.
	List(q *Query) ([]*Record, *Cursor, error)
	// Count counts the certificates matching f at now.
	Count(f *Filter, now time.Time) (int, error)
	// Export calls fn with the stored JSON of every match of q's filter
	// and its status at q.Now, in the table's key order (q's sort, cursor
	// and limit are ignored), with memory bounded independently of the
	// number of rows. doc is only valid during the call.
	Export(q *Query, fn func(doc []byte, status string) error) error
}

// Analyzer is implemented by stores whose query planner needs fresh
// statistics after a bulk load (PostgreSQL).
type Analyzer interface {
	Analyze() error
}

// Open opens the index on db. backend is ca.json's db.type: PostgreSQL
// gets the SQL table; every other backend the key/value layout with an
// in-memory query index (bbolt is single-process, so one process holds it).
func Open(db nosql.DB, backend string) (Store, error) {
	if db == nil {
		return nil, fmt.Errorf("certIndex needs a database (ca.json \"db\")")
	}
	if backend == "postgresql" {
		pool := storage.SQLPool(storage.Unwrap(db))
		if pool == nil {
			return nil, fmt.Errorf("certIndex: no SQL pool in the %s database", backend)
		}
		return openSQL(pool)
	}
	return openMem(storage.Unwrap(db))
}

// status is Record.Status on stored fields: the revoked flag and notAfter
// in Unix seconds.
func status(revoked bool, notAfter, now int64) string {
	switch {
	case revoked:
		return StatusRevoked
	case now >= notAfter:
		return StatusExpired
	}
	return StatusActive
}

func unix(t *time.Time) int64 {
	if t == nil {
		return 0
	}
	return t.Unix()
}
