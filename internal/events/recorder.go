package events

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/plugins"
)

// Recorder implements plugins.EventRecorder and
// plugins.CertificateEventRecorder: plugins put device events, and events of
// certificates they sign themselves, into their own transactions, and the
// Outbox delivers them like upstream's certificate events. Device events are
// written only when some observer implements plugins.DeviceObserver,
// certificate events only when some observer implements
// plugins.CertificateObserver.
type Recorder struct {
	db     nosql.DB
	outbox *Outbox
	now    func() time.Time
}

var (
	_ plugins.EventRecorder            = (*Recorder)(nil)
	_ plugins.CertificateEventRecorder = (*Recorder)(nil)
)

// NewRecorder returns the recorder of events delivered by outbox (nil: no
// observers, record nothing) on store, the database the plugins' own
// transactions run on. now is the clock of event IDs and times (nil:
// time.Now).
func NewRecorder(store nosql.DB, outbox *Outbox, now func() time.Time) (*Recorder, error) {
	if now == nil {
		now = time.Now
	}
	if outbox.observesDevices() || outbox.observesCertificates() {
		if err := store.CreateTable(Table); err != nil {
			return nil, fmt.Errorf("create table %s: %w", Table, err)
		}
	}
	return &Recorder{db: store, outbox: outbox, now: now}, nil
}

// AddDeviceEvent implements plugins.EventRecorder. It fills ev.ID and
// ev.OccurredAt even when nobody observes device events, so the caller's
// Announce and Discard need no special case.
func (r *Recorder) AddDeviceEvent(tx *database.Tx, ev *plugins.DeviceEvent) error {
	now := r.now().UTC()
	ev.ID, ev.OccurredAt = NewID(now), now
	if !r.outbox.observesDevices() {
		return nil
	}
	b, err := json.Marshal(&record{Device: ev})
	if err != nil {
		return fmt.Errorf("marshal device event: %w", err)
	}
	tx.Set(Table, []byte(ev.ID), b)
	return nil
}

// AddCertificateEvent implements plugins.CertificateEventRecorder: the
// record is the one DB writes for upstream's issuances, so observers cannot
// tell the two apart except by the provisioner. It fills ev.ID and
// ev.OccurredAt even when nobody observes certificate events.
func (r *Recorder) AddCertificateEvent(tx *database.Tx, ev *plugins.CertificateEvent) error {
	if err := plugins.CheckCertificateEvent(ev); err != nil {
		return err
	}
	now := r.now().UTC()
	ev.ID, ev.OccurredAt = NewID(now), now
	if !r.outbox.observesCertificates() {
		return nil
	}
	b, err := json.Marshal(&record{Event: ev})
	if err != nil {
		return fmt.Errorf("marshal certificate event: %w", err)
	}
	tx.Set(Table, []byte(ev.ID), b)
	return nil
}

// Announce implements plugins.EventRecorder: this replica delivers the
// committed event at once instead of at the next sweep.
func (r *Recorder) Announce(id string) {
	if r.outbox.observesDevices() || r.outbox.observesCertificates() {
		r.outbox.Notify(id)
	}
}

// Discard implements plugins.EventRecorder: it deletes an event whose
// change did not happen after all. Should the process die first, the event
// is delivered anyway; DeviceObserver's contract (act on the device as it
// is now) makes that harmless.
func (r *Recorder) Discard(id string) error {
	if !r.outbox.observesDevices() && !r.outbox.observesCertificates() {
		return nil
	}
	if err := r.db.Del(Table, []byte(id)); err != nil {
		return fmt.Errorf("discard event %s: %w", id, err)
	}
	return nil
}
