package events

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
)

// Observer is a named receiver of events. It receives the kinds it
// implements (Certificate, Device, or both); an event of a kind it does not
// implement counts as accepted by it.
type Observer struct {
	Name        string
	Certificate plugins.CertificateObserver // nil: no certificate events
	Device      plugins.DeviceObserver      // nil: no device events
}

// NewObserver returns the observer named name for v, which may implement
// plugins.CertificateObserver, plugins.DeviceObserver or both; ok is false
// when it implements neither.
func NewObserver(name string, v any) (ob Observer, ok bool) {
	ob.Name = name
	ob.Certificate, _ = v.(plugins.CertificateObserver)
	ob.Device, _ = v.(plugins.DeviceObserver)
	return ob, ob.Certificate != nil || ob.Device != nil
}

// Stats are counters the metrics package exports. Device events are
// reported with their DeviceEventKind as the kind.
type Stats interface {
	EventDelivered(observer string, kind plugins.EventKind)
	EventDeliveryFailed(observer string)
	EventsPending(n int)
}

// Outbox delivers pending events to observers. Several replicas may run an
// Outbox on the same database: an event is claimed with a compare-and-swap
// before delivery, and a claim expires after ClaimTTL so a crashed replica's
// events are taken over. Each observer has its own retry state per event,
// so one failing observer delays nobody else.
type Outbox struct {
	db        nosql.DB
	observers []Observer
	// certificates and devices say whether any observer wants that kind;
	// events of a kind nobody wants are not written.
	certificates, devices bool
	replica               string
	claimTTL              time.Duration
	retry                 time.Duration
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
	// Replica identifies this process; build it with plugins.ReplicaID so
	// a restart can take over its previous incarnation's claims.
	Replica       string
	ClaimTTL      time.Duration // default 30s
	RetryInterval time.Duration // default 10s
	Logger        *slog.Logger
	Stats         Stats            // optional
	Now           func() time.Time // default time.Now; every time decision uses it
}

// NewOutbox returns an Outbox for the given observers, or nil when there are
// none (then no events are written at all).
func NewOutbox(store nosql.DB, observers []Observer, o OutboxOptions) *Outbox {
	if len(observers) == 0 {
		return nil
	}
	o = o.withDefaults()
	ob := &Outbox{
		db: store, observers: observers, replica: o.Replica,
		claimTTL: o.ClaimTTL, retry: o.RetryInterval, grace: 2 * time.Second,
		log: o.Logger, stats: o.Stats, now: o.Now,
		notify: make(chan string, 4096),
	}
	for _, x := range observers {
		ob.certificates = ob.certificates || x.Certificate != nil
		ob.devices = ob.devices || x.Device != nil
	}
	return ob
}

func (o OutboxOptions) withDefaults() OutboxOptions {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ClaimTTL <= 0 {
		o.ClaimTTL = 30 * time.Second
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = 10 * time.Second
	}
	return o
}

// observesCertificates reports whether certificate events must be written.
func (o *Outbox) observesCertificates() bool { return o != nil && o.certificates }

// observesDevices reports whether device events must be written.
func (o *Outbox) observesDevices() bool { return o != nil && o.devices }

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
			o.deliverBatch(ctx, o.batch(id))
		case <-ticker.C:
			o.Sweep(ctx)
		}
	}
}

// maxBatch bounds how many notified events share one delete transaction.
const maxBatch = 256

// batch collects first and whatever else is queued now, so a burst costs
// one delete transaction (one fsync on bbolt) instead of one per event.
func (o *Outbox) batch(first string) [][]byte {
	batch := [][]byte{[]byte(first)}
	for len(batch) < maxBatch {
		select {
		case id := <-o.notify:
			batch = append(batch, []byte(id))
		default:
			return batch
		}
	}
	return batch
}

func (o *Outbox) deliverBatch(ctx context.Context, keys [][]byte) {
	var done [][]byte
	for _, key := range keys {
		if o.attempt(ctx, key, nil) {
			done = append(done, key)
		}
	}
	o.remove(done)
}

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
		rec, err := decodeRecord(e.Value)
		if err != nil {
			o.log.Error("drop unreadable event", "id", string(e.Key), "error", err)
			done = append(done, e.Key)
			continue
		}
		if rec.occurredAt().After(cutoff) && rec.Attempts == 0 {
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

// remove deletes finished events in one transaction.
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

// attempt hands one event to every observer that still needs it and is
// due. It reports whether the event is finished (accepted by every
// observer, or a spurious revoked event) and may be deleted. raw is the
// stored value if the caller has it.
//
// An event this replica just wrote is delivered without a claim: other
// replicas' sweeps leave events alone for a grace period, so the claim would
// only cost a write. Older events are claimed with a compare-and-swap first.
// Progress is written only when something failed: observers are idempotent,
// so a crash mid-delivery costs a redelivery, not a loss.
func (o *Outbox) attempt(ctx context.Context, key, raw []byte) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	rec, raw, ok := o.load(key, raw)
	if !ok {
		return false
	}
	now := o.now()
	if !o.claimable(rec, now) {
		return false
	}
	if !o.fresh(rec, now) {
		rec.ClaimedBy, rec.ClaimedUntil = o.replica, now.Add(o.claimTTL)
		if raw, ok = o.swap(key, raw, rec); !ok {
			return false
		}
	}
	if rec.Event != nil && rec.Event.Kind == plugins.EventRevoked {
		stored, err := o.revocationStored(rec.Event)
		if err != nil {
			o.postpone(key, raw, rec, fmt.Errorf("check revocation: %w", err))
			return false // a read error means retry, never drop
		}
		if !stored {
			o.log.Debug("drop revoked event without matching revocation", "id", rec.id(), "serial", rec.Event.Serial)
			return true
		}
	}
	if o.observeDue(ctx, rec) {
		return true
	}
	_, rec.NotBefore = rec.pending(o.observers)
	rec.ClaimedBy, rec.ClaimedUntil = "", time.Time{}
	o.swap(key, raw, rec)
	return false
}

// load reads and decodes the record unless the caller has it already.
func (o *Outbox) load(key, raw []byte) (*record, []byte, bool) {
	if raw == nil {
		var err error
		if raw, err = o.db.Get(Table, key); err != nil {
			return nil, nil, false // gone already (or unreadable now; the sweep retries)
		}
	}
	rec, err := decodeRecord(raw)
	if err != nil {
		return nil, nil, false // Sweep logs and drops it
	}
	return rec, raw, true
}

// claimable reports whether this replica may work on rec at now: nobody
// else holds a live claim and its back-off has passed.
func (o *Outbox) claimable(rec *record, now time.Time) bool {
	if now.Before(rec.NotBefore) {
		return false
	}
	return rec.ClaimedBy == "" || rec.ClaimedBy == o.replica || !now.Before(rec.ClaimedUntil) ||
		plugins.PreviousIncarnation(o.replica, rec.ClaimedBy)
}

// fresh reports whether rec was just written by this replica and never
// tried, so no other replica's sweep touches it yet and no claim is needed.
func (o *Outbox) fresh(rec *record, now time.Time) bool {
	return rec.Attempts == 0 && rec.ClaimedBy == "" && now.Sub(rec.occurredAt()) < o.grace/2
}

// observeDue calls every observer that still needs the event and is due,
// recording each one's outcome in rec. It reports whether no observer
// needs the event any more.
func (o *Outbox) observeDue(ctx context.Context, rec *record) bool {
	done := true
	for _, ob := range o.observers {
		if !rec.needs(ob) {
			continue
		}
		if ctx.Err() != nil || !rec.due(ob, o.now()) {
			done = false
			continue
		}
		if err := o.observe(ctx, ob, rec); err != nil {
			o.failed(rec, ob, err)
			done = false
			continue
		}
		rec.accepted(ob)
		if o.stats != nil {
			o.stats.EventDelivered(ob.Name, rec.kind())
		}
	}
	return done
}

// failed records, logs and counts one observer's failure.
func (o *Outbox) failed(rec *record, ob Observer, err error) {
	st := rec.failed(ob, err, o.now(), o.retry)
	o.log.Warn(rec.noun()+" event delivery failed; will retry",
		"id", rec.id(), "kind", rec.kind(), "serial", serial(rec), "observer", ob.Name,
		"attempts", st.Attempts, "retryAt", st.NotBefore, "error", err)
	if o.stats != nil {
		o.stats.EventDeliveryFailed(ob.Name)
	}
}

// postpone releases the event after a failure that is no observer's (a
// database read), with the back-off of its attempts.
func (o *Outbox) postpone(key, raw []byte, rec *record, err error) {
	rec.Attempts++
	rec.LastError = err.Error()
	rec.NotBefore = o.now().Add(backoff(rec.Attempts, o.retry))
	rec.ClaimedBy, rec.ClaimedUntil = "", time.Time{}
	o.swap(key, raw, rec)
	o.log.Warn("event delivery postponed; will retry", "id", rec.id(), "kind", rec.kind(),
		"attempts", rec.Attempts, "retryAt", rec.NotBefore, "error", err)
}

func serial(rec *record) string {
	if rec.Event != nil {
		return rec.Event.Serial
	}
	return ""
}

// observe calls one observer, turning a panic into an error so a faulty
// plugin cannot take the daemon down. The timeout lets a working replica
// finish before its claim runs out.
func (o *Outbox) observe(ctx context.Context, ob Observer, rec *record) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("observer panicked: %v", r)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, o.claimTTL/2)
	defer cancel()
	if rec.Device != nil {
		return ob.Device.ObserveDevice(ctx, *rec.Device)
	}
	return ob.Certificate.ObserveCertificate(ctx, *rec.Event)
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
// a spurious event from a duplicate revoke is never delivered. An error
// means the row could not be read: the caller retries, since "not stored"
// would drop the event for good.
func (o *Outbox) revocationStored(ev *plugins.CertificateEvent) (bool, error) {
	if ev.Revocation == nil {
		return false, nil
	}
	rci, err := storage.Revocation(o.db, ev.Serial)
	if err != nil || rci == nil {
		return false, err
	}
	return rci.RevokedAt.Equal(ev.Revocation.RevokedAt) && rci.ReasonCode == ev.Revocation.ReasonCode, nil
}

// backoff grows the retry delay exponentially from base, capped at 10 minutes.
func backoff(attempts int, base time.Duration) time.Duration {
	d := base
	for i := 1; i < attempts && d < 10*time.Minute; i++ {
		d *= 2
	}
	return min(d, 10*time.Minute)
}
