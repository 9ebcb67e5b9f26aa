package audit

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smallstep/nosql"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
)

// Queue and batch bounds: Record blocks (bounded by its context) when
// queueSize records wait; one compare-and-swap appends up to maxBatch.
const (
	queueSize = 8192
	maxBatch  = 256
)

// ErrNotWritten is returned by Record under failClosed when the record
// could not be written: the caller refuses the action.
var ErrNotWritten = errors.New("audit record not written")

// TrailOptions configure a Trail.
type TrailOptions struct {
	// Key signs checkpoints: the Ed25519 file key or a KMS signer.
	Key                crypto.Signer
	Replica            string
	Now                func() time.Time
	Log                *slog.Logger
	FailClosed         bool
	CheckpointEvery    int64
	CheckpointInterval time.Duration
	// CheckpointFile receives every checkpoint as a JSON line ("" = none).
	CheckpointFile string
	Ship           *Shipper // optional SIEM sink
}

// Trail is the tamper-evident audit trail: a plugins.Auditor that appends
// hash-chained records to the shared database and signs checkpoints.
// Record is safe from any goroutine.
type Trail struct {
	st   *store
	o    TrailOptions
	q    chan *item
	done atomic.Bool // the appender has exited: Record appends itself
	cpMu sync.Mutex  // one checkpoint at a time
	last atomic.Int64
	// failing is set while appends fail (health, failClosed gates).
	failing atomic.Pointer[error]
	// verifier checks the live chain in the background (ChainStatus).
	verifier chainVerifier
}

// NewTrail opens the trail's tables. Run appends; until it runs, records
// queue.
func NewTrail(db nosql.DB, o TrailOptions) (*Trail, error) {
	st, err := openStore(db)
	if err != nil {
		return nil, err
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Trail{st: st, o: o, q: make(chan *item, queueSize)}, nil
}

// PublicKey is the key that verifies checkpoints.
func (t *Trail) PublicKey() crypto.PublicKey { return t.o.Key.Public() }

// Record implements plugins.Auditor. Without failClosed it queues the
// record and returns; with failClosed it waits until the record is in
// the database and returns ErrNotWritten if it could not be.
func (t *Trail) Record(ctx context.Context, r plugins.AuditRecord) error {
	return t.record(ctx, Record{AuditRecord: clean(r)}, t.o.FailClosed)
}

// recordEvent appends a record made from a certificate event and waits:
// the outbox redelivers the event until this returns nil.
func (t *Trail) recordEvent(ctx context.Context, id string, r plugins.AuditRecord) error {
	return t.record(ctx, Record{EventID: id, AuditRecord: clean(r)}, true)
}

// offer queues the record of a certificate event without waiting, and
// drops it when the queue is full (the outbox then records the event).
func (t *Trail) offer(id string, r plugins.AuditRecord) {
	if t.done.Load() {
		return
	}
	rec := Record{EventID: id, AuditRecord: clean(r), Time: formatTime(t.o.Now()), Replica: t.o.Replica}
	select {
	case t.q <- &item{rec: rec}:
	default:
	}
}

func (t *Trail) record(ctx context.Context, rec Record, wait bool) error {
	rec.Time, rec.Replica = formatTime(t.o.Now()), t.o.Replica
	it := &item{rec: rec}
	if wait {
		it.done = make(chan error, 1)
	}
	if t.done.Load() {
		_, err := t.append([]*item{it})
		return t.result(err, wait)
	}
	select {
	case t.q <- it:
	case <-ctx.Done():
		t.o.Log.Error("audit record dropped: queue full", "action", rec.Action, "error", ctx.Err())
		return t.result(ctx.Err(), wait)
	}
	if !wait {
		return nil
	}
	select {
	case err := <-it.done:
		return t.result(err, true)
	case <-ctx.Done():
		return t.result(ctx.Err(), true)
	}
}

func (t *Trail) result(err error, wait bool) error {
	if err == nil || !wait {
		return nil
	}
	return fmt.Errorf("%w: %v", ErrNotWritten, err)
}

// Healthy returns the last append error, nil while appends succeed. The
// error clears on the next successful append; when nothing is left to
// append after an outage, a read of the head shows the database is back,
// so /health recovers with the database instead of waiting for the next
// audited action.
func (t *Trail) Healthy() error {
	p := t.failing.Load()
	if p == nil {
		return nil
	}
	if _, _, err := t.st.readHead(); err != nil {
		return *p
	}
	t.failing.CompareAndSwap(p, nil)
	return nil
}

// Run appends queued records until ctx ends, then drains the queue, writes
// a final checkpoint and lets later records append synchronously.
func (t *Trail) Run(ctx context.Context) {
	var tick <-chan time.Time
	if t.o.CheckpointInterval > 0 {
		tk := time.NewTicker(t.o.CheckpointInterval)
		defer tk.Stop()
		tick = tk.C
	}
	for {
		select {
		case it := <-t.q:
			t.appendQueued(it)
		case <-tick:
			t.checkpoint()
		case <-ctx.Done():
			t.done.Store(true)
			for {
				select {
				case it := <-t.q:
					t.appendQueued(it)
				default:
					t.checkpoint()
					return
				}
			}
		}
	}
}

// appendQueued appends it and whatever else is queued, up to maxBatch.
func (t *Trail) appendQueued(first *item) {
	batch := []*item{first}
	for len(batch) < maxBatch {
		select {
		case it := <-t.q:
			batch = append(batch, it)
			continue
		default:
		}
		break
	}
	_, _ = t.append(batch)
}

// append writes a batch and answers its waiters; retried once after a
// failure so a transient error does not lose records.
func (t *Trail) append(batch []*item) (*head, error) {
	h, err := t.st.appendBatch(batch)
	if err != nil {
		time.Sleep(100 * time.Millisecond)
		h, err = t.st.appendBatch(batch)
	}
	for _, it := range batch {
		if it.done != nil {
			it.done <- err
		}
	}
	if err != nil {
		t.failing.Store(&err)
		t.o.Log.Error("audit records not written", "count", len(batch), "error", err)
		for _, it := range batch {
			t.o.Log.Error("audit record lost", "action", it.rec.Action, "outcome", it.rec.Outcome, "time", it.rec.Time)
		}
		return nil, err
	}
	t.failing.Store(nil)
	if h == nil {
		return nil, nil // all were recorded already
	}
	if t.o.Ship != nil {
		for _, p := range h.Pending {
			t.o.Ship.Send(p.Entry)
		}
	}
	prev := t.last.Swap(h.Size)
	if n := t.o.CheckpointEvery; n > 0 && h.Size/n != prev/n {
		t.checkpoint()
	}
	return h, nil
}

// checkpoint signs the current tree head, unless a checkpoint of that size
// exists, and writes it to the database, the checkpoint file and the
// shipper. It returns the latest checkpoint.
func (t *Trail) checkpoint() *Checkpoint {
	cp, err := t.Checkpoint()
	if err != nil {
		t.o.Log.Error("audit checkpoint failed", "error", err)
	}
	return cp
}

// Checkpoint signs a checkpoint of the whole trail now (or returns the
// latest one when nothing was appended since).
func (t *Trail) Checkpoint() (*Checkpoint, error) {
	t.cpMu.Lock()
	defer t.cpMu.Unlock()
	h, _, err := t.st.readHead()
	if err != nil {
		return nil, err
	}
	latest, err := t.Latest()
	if err != nil {
		return nil, err
	}
	if h.Size == 0 || (latest != nil && latest.Size >= h.Size) {
		return latest, nil
	}
	root, err := h.root()
	if err != nil {
		return nil, err
	}
	cp, err := sign(t.o.Key, h.Size, root, formatTime(t.o.Now()))
	if err != nil {
		return nil, err
	}
	b, _ := json.Marshal(cp)
	if _, _, err := storage.CmpAndSwap(t.st.db, checkpointsTable, seqKey(cp.Size), nil, b); err != nil {
		return nil, fmt.Errorf("store audit checkpoint: %w", err)
	}
	if _, err := storage.ModifyJSON(t.st.db, checkpointsTable, latestKey, func(l *Checkpoint) bool {
		if l.Size >= cp.Size {
			return false
		}
		*l = *cp
		return true
	}); err != nil {
		return nil, fmt.Errorf("store audit checkpoint: %w", err)
	}
	t.writeCheckpointFile(cp)
	if t.o.Ship != nil {
		t.o.Ship.SendCheckpoint(cp)
	}
	return cp, nil
}

// Latest returns the latest checkpoint, nil if none.
func (t *Trail) Latest() (*Checkpoint, error) {
	c, raw, err := storage.GetJSON[Checkpoint](t.st.db, checkpointsTable, latestKey)
	if err != nil || raw == nil {
		return nil, err
	}
	return c, nil
}

// writeCheckpointFile appends cp to the checkpoint file (0600, fsync).
func (t *Trail) writeCheckpointFile(cp *Checkpoint) {
	if t.o.CheckpointFile == "" {
		return
	}
	b, _ := json.Marshal(map[string]any{"checkpoint": cp})
	f, err := os.OpenFile(t.o.CheckpointFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err == nil {
		_, err = f.Write(append(b, '\n'))
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		t.o.Log.Error("audit checkpoint file", "path", t.o.CheckpointFile, "error", err)
	}
}

// Bounds returns the first retained sequence number and the trail's size.
func (t *Trail) Bounds() (first, size int64, err error) {
	a, err := t.st.readAnchor()
	if err != nil {
		return 0, 0, err
	}
	h, _, err := t.st.readHead()
	if err != nil {
		return 0, 0, err
	}
	return a.First, h.Size, nil
}

// Export writes records [from, to) as an export: a header with a
// checkpoint covering to (signed now if the latest does not) and the
// inclusion proofs, then one entry per line. to <= 0 means the whole
// trail.
func (t *Trail) Export(w io.Writer, from, to int64) error {
	hd, err := t.ExportHeader(from, to)
	if err != nil {
		return err
	}
	return t.WriteExport(w, hd)
}

// ExportHeader prepares the header of an export of [from, to).
func (t *Trail) ExportHeader(from, to int64) (*Header, error) {
	first, size, err := t.Bounds()
	if err != nil {
		return nil, err
	}
	if to <= 0 || to > size {
		to = size
	}
	if from < first {
		from = first
	}
	if from >= to {
		return nil, fmt.Errorf("no records in [%d, %d): the trail holds [%d, %d)", from, to, first, size)
	}
	cp, err := t.Latest()
	if err != nil {
		return nil, err
	}
	if cp == nil || cp.Size < to {
		if cp, err = t.Checkpoint(); err != nil {
			return nil, err
		}
	}
	hd := &Header{From: from, To: to, Checkpoint: cp}
	if hd.FirstProof, err = tlog.ProveRecord(cp.Size, from, dbReader{t.st}); err != nil {
		return nil, fmt.Errorf("inclusion proof of %d: %w", from, err)
	}
	if hd.LastProof, err = tlog.ProveRecord(cp.Size, to-1, dbReader{t.st}); err != nil {
		return nil, fmt.Errorf("inclusion proof of %d: %w", to-1, err)
	}
	return hd, nil
}

// WriteExport writes the header and the records it covers.
func (t *Trail) WriteExport(w io.Writer, hd *Header) error {
	from, to := hd.From, hd.To
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(exportLine{Header: hd}); err != nil {
		return err
	}
	const chunk = 1000
	for lo := from; lo < to; lo += chunk {
		es, err := t.st.readRange(lo, min(lo+chunk, to))
		if err != nil {
			return err
		}
		for _, e := range es {
			if err := enc.Encode(e); err != nil {
				return err
			}
		}
	}
	return nil
}
