package ha

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"
)

// leaseTable holds one row per lease, keyed by lease name.
var leaseTable = []byte("stepfort_leases")

// Leases are named, time-limited claims in the shared database, used to
// run a singleton job (the CRL publisher) on exactly one replica.
//
// Contract:
//   - At most one holder at a time, as seen by the database: TryAcquire
//     writes with a compare-and-swap on the row it read, so two replicas
//     racing for an expired lease cannot both win.
//   - A holder keeps the lease by calling TryAcquire again before it
//     expires (the publisher renews every tick, well inside the TTL).
//   - If the holder dies (kill -9, network partition), nobody releases the
//     lease: it expires after the TTL and the next TryAcquire by another
//     replica wins. Work is therefore resumed within TTL + one tick.
//   - Clocks: expiry compares the acquirer's clock with the time written by
//     the previous holder, so replicas' clocks must agree to well within the
//     TTL (NTP). A holder whose lease expired while it was paused may still
//     act once; work guarded by a lease must itself be safe against that
//     (the CRL row is written with its own compare-and-swap, so a stale
//     holder cannot publish a lower CRL number).
type Leases struct {
	db  nosql.DB
	now func() time.Time
}

// Lease is the stored state of one lease.
type Lease struct {
	Holder  string    `json:"holder"`
	Until   time.Time `json:"until"`
	Changes int64     `json:"changes"` // how many times the holder changed
}

// NewLeases creates the lease table if needed.
func NewLeases(db nosql.DB, now func() time.Time) (*Leases, error) {
	if err := db.CreateTable(leaseTable); err != nil {
		return nil, fmt.Errorf("create table %s: %w", leaseTable, err)
	}
	return &Leases{db: db, now: now}, nil
}

// TryAcquire takes or renews the lease for holder. It reports whether
// holder now holds it.
func (l *Leases) TryAcquire(name, holder string, ttl time.Duration) (bool, error) {
	old, err := l.db.Get(leaseTable, []byte(name))
	if err != nil && !database.IsErrNotFound(err) {
		return false, fmt.Errorf("read lease %s: %w", name, err)
	}
	var cur Lease
	if old != nil {
		if err := json.Unmarshal(old, &cur); err != nil {
			return false, fmt.Errorf("decode lease %s: %w", name, err)
		}
	}
	now := l.now()
	if old != nil && cur.Holder != holder && now.Before(cur.Until) {
		return false, nil
	}
	next := Lease{Holder: holder, Until: now.Add(ttl), Changes: cur.Changes}
	if cur.Holder != holder {
		next.Changes++
	}
	b, _ := json.Marshal(next)
	_, swapped, err := l.db.CmpAndSwap(leaseTable, []byte(name), old, b)
	if err != nil {
		return false, fmt.Errorf("write lease %s: %w", name, err)
	}
	return swapped, nil
}

// Get returns the current state of a lease (zero if never taken).
func (l *Leases) Get(name string) (Lease, error) {
	var cur Lease
	b, err := l.db.Get(leaseTable, []byte(name))
	if database.IsErrNotFound(err) {
		return cur, nil
	}
	if err != nil {
		return cur, err
	}
	return cur, json.Unmarshal(b, &cur)
}

// Release gives the lease up if holder holds it, so another replica can
// take over at once on a clean shutdown.
func (l *Leases) Release(name, holder string) error {
	old, err := l.db.Get(leaseTable, []byte(name))
	if err != nil {
		return nil
	}
	var cur Lease
	if json.Unmarshal(old, &cur) != nil || cur.Holder != holder {
		return nil
	}
	cur.Until = time.Time{}
	b, _ := json.Marshal(cur)
	_, _, err = l.db.CmpAndSwap(leaseTable, []byte(name), old, b)
	return err
}
