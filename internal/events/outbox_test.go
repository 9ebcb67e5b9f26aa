package events

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/plugins"
)

// clock is a test clock the outbox reads through OutboxOptions.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// flakyDB fails reads of the revoked table while failing is set, as a
// database that drops a connection would.
type flakyDB struct {
	nosql.DB
	mu      sync.Mutex
	failing bool
}

func (f *flakyDB) setFailing(v bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failing = v
}

func (f *flakyDB) Get(bucket, key []byte) ([]byte, error) {
	f.mu.Lock()
	failing := f.failing
	f.mu.Unlock()
	if failing && bytes.Equal(bucket, revokedCertsTable) {
		return nil, errors.New("connection reset by peer")
	}
	return f.DB.Get(bucket, key)
}

// drain empties the outbox's notification queue and returns the IDs.
func drain(ob *Outbox) []string {
	var ids []string
	for {
		select {
		case id := <-ob.notify:
			ids = append(ids, id)
		default:
			return ids
		}
	}
}

func TestRevocationReadErrorIsRetriedNotDropped(t *testing.T) {
	base := backends(t)["bbolt"](t)
	flaky := &flakyDB{DB: base}
	clk := newClock()
	rec := &recorder{}
	ob := NewOutbox(flaky, []Observer{{Name: "rec", Certificate: rec}}, OutboxOptions{Replica: "a", ClaimTTL: time.Minute, RetryInterval: time.Second, Now: clk.Now})
	d, err := NewDB(base, ob, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := newCert(t, nil)
	if err := d.StoreCertificateChain(nil, c); err != nil {
		t.Fatal(err)
	}
	rci := &db.RevokedCertificateInfo{Serial: c.SerialNumber.String(), ReasonCode: 1, RevokedAt: time.Now().UTC()}
	if err := d.Revoke(rci); err != nil {
		t.Fatal(err)
	}
	ids := drain(ob)
	if len(ids) != 2 {
		t.Fatalf("notified %d events, want 2", len(ids))
	}
	revokedID := []byte(ids[1])

	flaky.setFailing(true)
	for i := 0; i < 3; i++ {
		if ob.deliver(context.Background(), revokedID, nil) {
			t.Fatal("revoked event deleted although the revocation could not be read")
		}
		clk.Advance(time.Hour)
		ob.grace = 0
		ob.Sweep(context.Background())
		if _, err := base.Get(Table, revokedID); err != nil {
			t.Fatalf("revoked event gone while the revocation could not be read: %v", err)
		}
	}
	for _, ev := range rec.got() {
		if ev.Kind == plugins.EventRevoked {
			t.Fatal("revoked event delivered without checking its revocation")
		}
	}

	flaky.setFailing(false)
	clk.Advance(time.Hour)
	if left := ob.Sweep(context.Background()); left != 0 {
		t.Fatalf("%d events left once the revocation is readable", left)
	}
	var revoked int
	for _, ev := range rec.got() {
		if ev.Kind == plugins.EventRevoked && ev.Serial == rci.Serial {
			revoked++
		}
	}
	if revoked != 1 {
		t.Fatalf("revoked event delivered %d times, want 1", revoked)
	}
}

// stats records the outbox's metric calls.
type stats struct {
	mu        sync.Mutex
	delivered map[string]int
	failed    map[string]int
	pending   []int
}

func newStats() *stats { return &stats{delivered: map[string]int{}, failed: map[string]int{}} }

func (s *stats) EventDelivered(observer string, _ plugins.EventKind) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delivered[observer]++
}

func (s *stats) EventDeliveryFailed(observer string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failed[observer]++
}

func (s *stats) EventsPending(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pending = append(s.pending, n)
}

func (s *stats) counts(observer string) (delivered, failed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.delivered[observer], s.failed[observer]
}

func (s *stats) lastPending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) == 0 {
		return -1
	}
	return s.pending[len(s.pending)-1]
}

func TestFailingObserverDoesNotStarveOthers(t *testing.T) {
	base := backends(t)["bbolt"](t)
	clk := newClock()
	st := newStats()
	down, up := &recorder{fail: 1 << 30}, &recorder{}
	ob := NewOutbox(base, []Observer{{Name: "down", Certificate: down}, {Name: "up", Certificate: up}},
		OutboxOptions{Replica: "a", ClaimTTL: time.Minute, RetryInterval: time.Second, Stats: st, Now: clk.Now})
	d, err := NewDB(base, ob, nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 3
	for i := 0; i < n; i++ {
		if err := d.StoreCertificateChain(nil, newCert(t, nil)); err != nil {
			t.Fatal(err)
		}
		for _, id := range drain(ob) {
			if ob.deliver(context.Background(), []byte(id), nil) {
				t.Fatal("event deleted although an observer failed")
			}
		}
		if got := len(up.got()); got != i+1 {
			t.Fatalf("healthy observer has %d events after %d issuances", got, i+1)
		}
		clk.Advance(time.Second)
	}
	ob.grace = 0
	if left := ob.Sweep(context.Background()); left != n {
		t.Fatalf("pending = %d while an observer fails, want %d", left, n)
	}
	if p := st.lastPending(); p != n {
		t.Fatalf("EventsPending = %d, want %d", p, n)
	}

	// The failing observer recovers: after its back-off it gets every
	// event, and the healthy one sees none of them again.
	down.mu.Lock()
	down.fail = 0
	down.mu.Unlock()
	clk.Advance(time.Hour)
	if left := ob.Sweep(context.Background()); left != 0 {
		t.Fatalf("pending = %d after recovery", left)
	}
	if got := len(down.got()); got != n {
		t.Fatalf("recovered observer got %d events, want %d", got, n)
	}
	if got := len(up.got()); got != n {
		t.Fatalf("healthy observer got %d events, want %d (no redelivery)", got, n)
	}
	if dl, f := st.counts("up"); dl != n || f != 0 {
		t.Fatalf("stats for up: delivered %d failed %d", dl, f)
	}
	if dl, f := st.counts("down"); dl != n || f < n {
		t.Fatalf("stats for down: delivered %d failed %d", dl, f)
	}
	if p := st.lastPending(); p != 0 {
		t.Fatalf("EventsPending = %d after recovery", p)
	}
}

// A record written by the first version (one retry state per event, no
// "observers") is delivered to the observers not yet in "delivered" once
// its notBefore has passed, and never again to those in it.
func TestRecordOfPreviousVersionIsDeliveredToTheRest(t *testing.T) {
	base := backends(t)["bbolt"](t)
	clk := newClock()
	a, b := &recorder{}, &recorder{}
	ob := NewOutbox(base, []Observer{{Name: "a", Certificate: a}, {Name: "b", Certificate: b}},
		OutboxOptions{Replica: "r", ClaimTTL: time.Minute, RetryInterval: time.Second, Now: clk.Now})
	if _, err := NewDB(base, ob, nil); err != nil {
		t.Fatal(err)
	}
	occurred := clk.Now().Add(-time.Hour).UTC()
	id := NewID(occurred)
	notBefore := clk.Now().Add(time.Minute).UTC().Format(time.RFC3339Nano)
	legacy := `{"event":{"id":"` + id + `","kind":"issued","serial":"42","occurredAt":"` + occurred.Format(time.RFC3339Nano) + `"},` +
		`"delivered":["b"],"attempts":2,"lastError":"a: observer down","notBefore":"` + notBefore + `",` +
		`"claimedBy":"gone|:1|1-x","claimedUntil":"` + occurred.Add(time.Minute).Format(time.RFC3339Nano) + `"}`
	if err := base.Set(Table, []byte(id), []byte(legacy)); err != nil {
		t.Fatal(err)
	}
	if left := ob.Sweep(context.Background()); left != 1 || len(a.got()) != 0 {
		t.Fatalf("legacy event delivered before its notBefore (left=%d)", left)
	}
	clk.Advance(2 * time.Minute)
	if left := ob.Sweep(context.Background()); left != 0 {
		t.Fatalf("pending = %d after the legacy back-off", left)
	}
	if got := a.got(); len(got) != 1 || got[0].ID != id || got[0].Serial != "42" {
		t.Fatalf("a got %+v", got)
	}
	if got := b.got(); len(got) != 0 {
		t.Fatalf("b, already in delivered, got the event again: %+v", got)
	}
}

// The stored record keeps the first version's fields meaningful, so the
// per-observer state does not hide what is pending from either version.
func TestRecordKeepsPerObserverState(t *testing.T) {
	base := backends(t)["bbolt"](t)
	clk := newClock()
	down, up := &recorder{fail: 1 << 30}, &recorder{}
	ob := NewOutbox(base, []Observer{{Name: "down", Certificate: down}, {Name: "up", Certificate: up}},
		OutboxOptions{Replica: "r", ClaimTTL: time.Minute, RetryInterval: time.Second, Now: clk.Now})
	d, _ := NewDB(base, ob, clk.Now)
	if err := d.StoreCertificateChain(nil, newCert(t, nil)); err != nil {
		t.Fatal(err)
	}
	id := drain(ob)[0]
	for i := 0; i < 2; i++ {
		if ob.deliver(context.Background(), []byte(id), nil) {
			t.Fatal("event deleted although an observer failed")
		}
		clk.Advance(time.Hour)
	}
	raw, err := base.Get(Table, []byte(id))
	if err != nil {
		t.Fatal(err)
	}
	var rec record
	mustUnmarshal(t, raw, &rec)
	st := rec.Observers["down"]
	if st == nil || st.Attempts != 2 || st.LastError != "observer down" || st.NotBefore.IsZero() {
		t.Fatalf("state of the failing observer = %+v", st)
	}
	if len(rec.Delivered) != 1 || rec.Delivered[0] != "up" || rec.Observers["up"] != nil {
		t.Fatalf("delivered = %v, observers = %v", rec.Delivered, rec.Observers)
	}
	if rec.Attempts != 2 || rec.LastError != "down: observer down" || !rec.NotBefore.Equal(st.NotBefore) {
		t.Fatalf("summary = attempts %d, lastError %q, notBefore %v", rec.Attempts, rec.LastError, rec.NotBefore)
	}
	if len(up.got()) != 1 {
		t.Fatalf("healthy observer got %d deliveries, want 1", len(up.got()))
	}
}
