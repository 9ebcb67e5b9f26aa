package storage

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/plugins"
)

// LeasesTable holds one row per lease, keyed by lease name; the value is a
// JSON plugins.Lease.
var LeasesTable = []byte("stepfort_leases")

// Locker implements plugins.Locker on one nosql table; the contract
// (atomicity, expiry, clocks) is written on plugins.Locker.
type Locker struct {
	db     nosql.DB
	holder string
	now    func() time.Time
}

var _ plugins.Locker = (*Locker)(nil)

// NewLocker creates the lease table if needed and returns the locker of the
// replica holder.
func NewLocker(db nosql.DB, holder string, now func() time.Time) (*Locker, error) {
	if err := db.CreateTable(LeasesTable); err != nil {
		return nil, fmt.Errorf("create table %s: %w", LeasesTable, err)
	}
	return &Locker{db: db, holder: holder, now: now}, nil
}

// TryLock implements plugins.Locker.
func (l *Locker) TryLock(_ context.Context, name string, ttl time.Duration) (bool, error) {
	old, cur, err := l.read(name)
	if err != nil {
		return false, err
	}
	now := l.now()
	if old != nil && cur.Holder != l.holder && now.Before(cur.Until) {
		return false, nil
	}
	next := plugins.Lease{Holder: l.holder, Until: now.Add(ttl).UTC(), Changes: cur.Changes}
	if cur.Holder != l.holder {
		next.Changes++
	}
	b, err := json.Marshal(next)
	if err != nil {
		return false, err
	}
	// From absent too: CmpAndSwap (not nosql's) lets only one replica
	// create the row of a lease never taken.
	_, swapped, err := CmpAndSwap(l.db, LeasesTable, []byte(name), old, b)
	if err != nil {
		return false, fmt.Errorf("write lease %s: %w", name, err)
	}
	return swapped, nil
}

// Unlock implements plugins.Locker.
func (l *Locker) Unlock(_ context.Context, name string) error {
	old, cur, err := l.read(name)
	if err != nil || old == nil || cur.Holder != l.holder {
		return err
	}
	cur.Until = time.Time{}
	b, err := json.Marshal(cur)
	if err != nil {
		return err
	}
	if _, _, err := l.db.CmpAndSwap(LeasesTable, []byte(name), old, b); err != nil {
		return fmt.Errorf("release lease %s: %w", name, err)
	}
	return nil
}

// Lease implements plugins.Locker.
func (l *Locker) Lease(_ context.Context, name string) (plugins.Lease, error) {
	_, cur, err := l.read(name)
	return cur, err
}

// read returns the stored row (nil when absent) and its decoded lease.
func (l *Locker) read(name string) ([]byte, plugins.Lease, error) {
	var cur plugins.Lease
	old, err := l.db.Get(LeasesTable, []byte(name))
	switch {
	case database.IsErrNotFound(err):
		return nil, cur, nil
	case err != nil:
		return nil, cur, fmt.Errorf("read lease %s: %w", name, err)
	}
	if err := json.Unmarshal(old, &cur); err != nil {
		return nil, cur, fmt.Errorf("decode lease %s: %w", name, err)
	}
	return old, cur, nil
}
