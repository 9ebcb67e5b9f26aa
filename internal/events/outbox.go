package events

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
)

// record is the stored form of a pending event plus its delivery state.
type record struct {
	Event        plugins.CertificateEvent `json:"event"`
	Delivered    []string                 `json:"delivered,omitempty"` // observers that accepted it
	Attempts     int                      `json:"attempts,omitempty"`
	LastError    string                   `json:"lastError,omitempty"`
	NotBefore    time.Time                `json:"notBefore,omitzero"` // retry back-off
	ClaimedBy    string                   `json:"claimedBy,omitempty"`
	ClaimedUntil time.Time                `json:"claimedUntil,omitzero"`
}

// Observer is a named CertificateObserver.
type Observer struct {
	Name string
	plugins.CertificateObserver
}

// Stats are counters the metrics package exports.
type Stats interface {
	EventDelivered(observer string, kind plugins.EventKind)
	EventDeliveryFailed(observer string)
	EventsPending(n int)
}

// Outbox delivers pending events to observers. Several replicas may run an
// Outbox on the same database: an event is claimed with a compare-and-swap
// before delivery, and a claim expires after ClaimTTL so a crashed replica's
// events are taken over.
type Outbox struct {
	db        nosql.DB
	observers []Observer
	replica   string
	claimTTL  time.Duration
	retry     time.Duration
	// grace keeps sweeps away from events that the writing replica is about
	// to deliver itself, so the common case needs no cross-replica claim race.
	grace time.Duration
	log   *slog.Logger
	stats Stats
	now   func() time.Time

	notify chan string
	mu     sync.Mutex // serialises delivery within this replica
}

// OutboxOptions configure an Outbox.
type OutboxOptions struct {
	Replica       string
	ClaimTTL      time.Duration
	RetryInterval time.Duration
	Logger        *slog.Logger
	Stats         Stats
	Now           func() time.Time
}

// NewOutbox returns an Outbox for the given observers, or nil when there are
// none (then no events are written at all).
func NewOutbox(store nosql.DB, observers []Observer, o OutboxOptions) *Outbox {
	if len(observers) == 0 {
		return nil
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Outbox{
		db: store, observers: observers, replica: o.Replica,
		claimTTL: o.ClaimTTL, retry: o.RetryInterval, grace: 2 * time.Second,
		log: o.Logger, stats: o.Stats, now: o.Now,
		notify: make(chan string, 4096),
	}
}

// Notify tells the Outbox that this replica just committed event id. It never
// blocks: if the queue is full the next sweep delivers the event.
func (o *Outbox) Notify(id string) {
	select {
	case o.notify <- id:
	default:
	}
}

// Run delivers notified events at once and sweeps the table every retry
// interval until ctx ends. The first sweep runs immediately, which is what
// delivers events left behind by a crash.
func (o *Outbox) Run(ctx context.Context) {
	ticker := time.NewTicker(o.retry)
	defer ticker.Stop()
	o.Sweep(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case id := <-o.notify:
			// Deliver everything queued now, then delete the delivered
			// events in one transaction: one commit (one fsync on bbolt)
			// per burst instead of one per event.
			batch := [][]byte{[]byte(id)}
			for len(batch) < maxBatch {
				select {
				case id := <-o.notify:
					batch = append(batch, []byte(id))
					continue
				default:
				}
				break
			}
			var done [][]byte
			for _, key := range batch {
				if o.attempt(ctx, key, nil) {
					done = append(done, key)
				}
			}
			o.remove(done)
		case <-ticker.C:
			o.Sweep(ctx)
		}
	}
}

// maxBatch bounds how many notified events share one delete transaction.
const maxBatch = 256

// Sweep tries every pending event whose claim and back-off allow it, oldest
// first. It returns how many events remain pending.
func (o *Outbox) Sweep(ctx context.Context) int {
	entries, err := o.db.List(Table)
	if err != nil {
		if !database.IsErrNotFound(err) {
			o.log.Error("list pending events", "error", err)
		}
		return 0
	}
	sort.Slice(entries, func(i, j int) bool { return bytes.Compare(entries[i].Key, entries[j].Key) < 0 })
	cutoff := o.now().Add(-o.grace)
	pending := 0
	var done [][]byte
	for _, e := range entries {
		if ctx.Err() != nil {
			break
		}
		var rec record
		if err := json.Unmarshal(e.Value, &rec); err != nil {
			o.log.Error("drop unreadable event", "id", string(e.Key), "error", err)
			done = append(done, e.Key)
			continue
		}
		if rec.Event.OccurredAt.After(cutoff) && rec.Attempts == 0 {
			pending++
			continue // its own replica is delivering it right now
		}
		if o.attempt(ctx, e.Key, e.Value) {
			done = append(done, e.Key)
		} else {
			pending++
		}
	}
	if !o.remove(done) {
		pending += len(done)
	}
	if o.stats != nil {
		o.stats.EventsPending(pending)
	}
	return pending
}

// deliver is attempt followed by the delete; it reports whether the event
// is gone.
func (o *Outbox) deliver(ctx context.Context, key, raw []byte) bool {
	if !o.attempt(ctx, key, raw) {
		return false
	}
	return o.remove([][]byte{key})
}

// remove deletes delivered events in one transaction.
func (o *Outbox) remove(keys [][]byte) bool {
	if len(keys) == 0 {
		return true
	}
	tx := new(database.Tx)
	for _, k := range keys {
		tx.Del(Table, k)
	}
	if err := o.db.Update(tx); err != nil {
		o.log.Error("delete delivered events", "count", len(keys), "error", err)
		return false
	}
	return true
}

// attempt hands one event to every observer that has not yet accepted it.
// It reports whether the event is finished (delivered, or a spurious revoked
// event) and may be deleted. raw is the stored value if the caller has it.
//
// An event this replica just wrote is delivered without a claim: other
// replicas' sweeps leave events alone for a grace period, so the claim would
// only cost a write. Older events are claimed with a compare-and-swap first.
// Progress is written only on failure (which observers already accepted it):
// observers are idempotent, so a crash mid-delivery costs a redelivery, not
// a loss.
func (o *Outbox) attempt(ctx context.Context, key, raw []byte) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if raw == nil {
		var err error
		if raw, err = o.db.Get(Table, key); err != nil {
			return false // gone already (or unreadable now; the sweep retries)
		}
	}
	var rec record
	if err := json.Unmarshal(raw, &rec); err != nil {
		return false
	}
	now := o.now()
	if rec.ClaimedBy != "" && rec.ClaimedBy != o.replica && now.Before(rec.ClaimedUntil) && !o.previousIncarnation(rec.ClaimedBy) {
		return false
	}
	if now.Before(rec.NotBefore) {
		return false
	}
	fresh := rec.Attempts == 0 && rec.ClaimedBy == "" && now.Sub(rec.Event.OccurredAt) < o.grace/2
	if !fresh {
		rec.ClaimedBy, rec.ClaimedUntil = o.replica, now.Add(o.claimTTL)
		var ok bool
		if raw, ok = o.swap(key, raw, &rec); !ok {
			return false
		}
	}
	if rec.Event.Kind == plugins.EventRevoked && !o.revocationStored(&rec.Event) {
		o.log.Debug("drop revoked event without matching revocation", "id", rec.Event.ID, "serial", rec.Event.Serial)
		return true
	}
	for _, ob := range o.observers {
		if slices.Contains(rec.Delivered, ob.Name) {
			continue
		}
		if err := o.observe(ctx, ob, rec.Event); err != nil {
			rec.Attempts++
			rec.LastError = fmt.Sprintf("%s: %v", ob.Name, err)
			rec.NotBefore = o.now().Add(backoff(rec.Attempts, o.retry))
			rec.ClaimedBy, rec.ClaimedUntil = "", time.Time{}
			o.swap(key, raw, &rec)
			o.log.Warn("certificate event delivery failed; will retry",
				"id", rec.Event.ID, "kind", rec.Event.Kind, "serial", rec.Event.Serial,
				"observer", ob.Name, "attempts", rec.Attempts, "error", err)
			if o.stats != nil {
				o.stats.EventDeliveryFailed(ob.Name)
			}
			return false
		}
		if o.stats != nil {
			o.stats.EventDelivered(ob.Name, rec.Event.Kind)
		}
		rec.Delivered = append(rec.Delivered, ob.Name)
	}
	return true
}

// previousIncarnation reports whether a claim was made by an earlier run of
// this same replica (same stable "host|address|" prefix, other incarnation):
// that process is dead, since this one holds its listen address.
func (o *Outbox) previousIncarnation(claimedBy string) bool {
	i := strings.LastIndexByte(o.replica, '|')
	return i > 0 && strings.HasPrefix(claimedBy, o.replica[:i+1])
}

// observe calls one observer, turning a panic into an error so a faulty
// plugin cannot take the daemon down.
func (o *Outbox) observe(ctx context.Context, ob Observer, ev plugins.CertificateEvent) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("observer panicked: %v", r)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, o.claimTTL/2)
	defer cancel()
	return ob.ObserveCertificate(ctx, ev)
}

// swap replaces the stored record if it still equals old.
func (o *Outbox) swap(key, old []byte, rec *record) ([]byte, bool) {
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, false
	}
	_, swapped, err := o.db.CmpAndSwap(Table, key, old, b)
	if err != nil {
		o.log.Error("update event", "id", string(key), "error", err)
		return nil, false
	}
	return b, swapped
}

// revocationStored reports whether the revocation row matches the event, so
// a spurious event from a duplicate revoke is never delivered.
func (o *Outbox) revocationStored(ev *plugins.CertificateEvent) bool {
	rci, err := storage.Revocation(o.db, ev.Serial)
	if err != nil || rci == nil || ev.Revocation == nil {
		return false
	}
	return rci.RevokedAt.Equal(ev.Revocation.RevokedAt) && rci.ReasonCode == ev.Revocation.ReasonCode
}

// backoff grows the retry delay exponentially from base, capped at 10 minutes.
func backoff(attempts int, base time.Duration) time.Duration {
	d := base
	for i := 1; i < attempts && d < 10*time.Minute; i++ {
		d *= 2
	}
	return min(d, 10*time.Minute)
}

// ErrNoOutbox is returned by operations that need observers when none exist.
var ErrNoOutbox = errors.New("no certificate observers are configured")
