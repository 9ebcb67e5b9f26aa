package storage

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins"
)

// clock is an injected clock shared by the lockers of one test.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// leaseStores runs fn on bbolt and on a real PostgreSQL.
func leaseStores(t *testing.T, fn func(t *testing.T, db nosql.DB)) {
	t.Run("bbolt", func(t *testing.T) {
		db, err := nosql.New("bbolt", filepath.Join(t.TempDir(), "db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = db.Close() })
		fn(t, db)
	})
	t.Run("postgresql", func(t *testing.T) {
		pg := testenv.StartPostgres(t)
		db, err := nosql.New("postgresql", pg.DSN(), nosql.WithDatabase("leasetest"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = db.Close() })
		fn(t, db)
	})
}

func newLocker(t *testing.T, db nosql.DB, holder string, c *clock) *Locker {
	t.Helper()
	l, err := NewLocker(db, holder, c.Now)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestLeaseContract: renewal by the holder, expiry on the injected clock,
// takeover, Unlock by a non-holder and by the holder.
func TestLeaseContract(t *testing.T) {
	leaseStores(t, func(t *testing.T, db nosql.DB) {
		ctx := context.Background()
		c := &clock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
		a, b := newLocker(t, db, "a", c), newLocker(t, db, "b", c)
		try := func(l *Locker) bool {
			t.Helper()
			ok, err := l.TryLock(ctx, "job", 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			return ok
		}
		if cur, err := a.Lease(ctx, "job"); err != nil || cur != (plugins.Lease{}) {
			t.Fatalf("never taken: %+v, %v", cur, err)
		}
		if !try(a) {
			t.Fatal("a could not take a free lease")
		}
		if try(b) {
			t.Fatal("b took a lease a holds")
		}
		c.advance(5 * time.Second)
		if !try(a) {
			t.Fatal("a could not renew")
		}
		if cur, _ := a.Lease(ctx, "job"); !cur.Until.Equal(c.Now().Add(10 * time.Second)) {
			t.Fatalf("renewal wrote until %v, want now+ttl on the injected clock", cur.Until)
		}
		c.advance(9 * time.Second) // renewal moved the expiry
		if try(b) {
			t.Fatal("b took a renewed lease")
		}
		c.advance(2 * time.Second) // a died and did not renew
		if !try(b) {
			t.Fatal("b could not take an expired lease")
		}
		if cur, _ := a.Lease(ctx, "job"); cur.Holder != "b" || cur.Changes != 2 {
			t.Fatalf("lease %+v", cur)
		}
		if err := a.Unlock(ctx, "job"); err != nil { // not the holder: no effect
			t.Fatal(err)
		}
		if try(a) {
			t.Fatal("unlock by a non-holder freed the lease")
		}
		if err := b.Unlock(ctx, "job"); err != nil {
			t.Fatal(err)
		}
		if !try(a) {
			t.Fatal("a could not take a released lease at once")
		}
		if cur, _ := b.Lease(ctx, "job"); cur.Holder != "a" || cur.Changes != 3 {
			t.Fatalf("lease %+v after takeover", cur)
		}
	})
}

// TestLeaseRace: lockers racing for leases that were never taken (on
// PostgreSQL nosql's compare-and-swap alone let two win these) and for an
// expired one, round after round: exactly one wins each time.
func TestLeaseRace(t *testing.T) {
	leaseStores(t, func(t *testing.T, db nosql.DB) {
		const lockers, rounds = 8, 40
		c := &clock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
		var ls []*Locker
		for i := range lockers {
			ls = append(ls, newLocker(t, db, fmt.Sprintf("replica-%d", i), c))
		}
		for round := range rounds {
			name := "race" // expired after its first round
			if round%2 == 0 {
				name = fmt.Sprint("fresh-", round) // no row yet
			}
			winners := race(t, ls, name)
			if len(winners) != 1 {
				t.Fatalf("round %d (%s): %d winners %v, want exactly one", round, name, len(winners), winners)
			}
			cur, err := ls[0].Lease(context.Background(), name)
			if err != nil || cur.Holder != winners[0] {
				t.Fatalf("round %d: stored holder %q, winner %s (%v)", round, cur.Holder, winners[0], err)
			}
			c.advance(11 * time.Second) // everyone's lease expires
		}
	})
}

// race has every locker try the lease at once and returns the winners.
func race(t *testing.T, ls []*Locker, name string) []string {
	t.Helper()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		winners []string
	)
	start := make(chan struct{})
	for _, l := range ls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ok, err := l.TryLock(context.Background(), name, 10*time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			if ok {
				mu.Lock()
				winners = append(winners, l.holder)
				mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()
	return winners
}
