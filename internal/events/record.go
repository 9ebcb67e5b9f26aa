package events

import (
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/stepfort/stepfort/plugins"
)

// record is the stored form of a pending event (one row of Table) plus its
// delivery state. It holds exactly one of Event and Device.
//
// The fields delivered, attempts, lastError, notBefore, claimedBy and
// claimedUntil are the format of the first version, which kept one retry
// state for the whole event. They keep their meaning, so a record written
// by either version is read correctly by the other:
//
//   - delivered lists the observers that accepted the event;
//   - attempts and lastError count and describe failures of any observer;
//   - notBefore is the earliest time any observer still pending is due, so
//     nobody touches the record before then.
//
// observers adds each observer's own retry state (absent in records of the
// first version, where every pending observer is simply due at notBefore).
type record struct {
	Event        *plugins.CertificateEvent `json:"event,omitempty"`
	Device       *plugins.DeviceEvent      `json:"device,omitempty"`
	Delivered    []string                  `json:"delivered,omitempty"`
	Attempts     int                       `json:"attempts,omitempty"`
	LastError    string                    `json:"lastError,omitempty"`
	NotBefore    time.Time                 `json:"notBefore,omitzero"`
	Observers    map[string]*retryState    `json:"observers,omitempty"`
	ClaimedBy    string                    `json:"claimedBy,omitempty"`
	ClaimedUntil time.Time                 `json:"claimedUntil,omitzero"`
}

// retryState is one observer's delivery state for one event. Observers
// without an entry have not failed yet; an observer that accepts the event
// moves from Observers to Delivered.
type retryState struct {
	Attempts  int       `json:"attempts"`
	LastError string    `json:"lastError,omitempty"`
	NotBefore time.Time `json:"notBefore,omitzero"`
}

var errEmptyRecord = errors.New("event record holds neither a certificate nor a device event")

// decodeRecord parses a stored record.
func decodeRecord(raw []byte) (*record, error) {
	var rec record
	if err := json.Unmarshal(raw, &rec); err != nil {
		return nil, err
	}
	if rec.Event == nil && rec.Device == nil {
		return nil, errEmptyRecord
	}
	return &rec, nil
}

func (r *record) id() string {
	if r.Device != nil {
		return r.Device.ID
	}
	return r.Event.ID
}

func (r *record) occurredAt() time.Time {
	if r.Device != nil {
		return r.Device.OccurredAt
	}
	return r.Event.OccurredAt
}

// noun names the kind of event in log messages.
func (r *record) noun() string {
	if r.Device != nil {
		return "device"
	}
	return "certificate"
}

// kind labels the event in logs and metrics.
func (r *record) kind() plugins.EventKind {
	if r.Device != nil {
		return plugins.EventKind(r.Device.Kind)
	}
	return r.Event.Kind
}

// needs reports whether ob still has to accept the event: it observes this
// kind of event and has not accepted it yet.
func (r *record) needs(ob Observer) bool {
	if (r.Device != nil && ob.Device == nil) || (r.Event != nil && ob.Certificate == nil) {
		return false
	}
	return !slices.Contains(r.Delivered, ob.Name)
}

// due reports whether ob may be tried at now.
func (r *record) due(ob Observer, now time.Time) bool {
	st := r.Observers[ob.Name]
	return st == nil || !now.Before(st.NotBefore)
}

func (r *record) accepted(ob Observer) {
	r.Delivered = append(r.Delivered, ob.Name)
	delete(r.Observers, ob.Name)
}

// failed records a failure of ob and schedules its next attempt.
func (r *record) failed(ob Observer, err error, now time.Time, retry time.Duration) *retryState {
	if r.Observers == nil {
		r.Observers = map[string]*retryState{}
	}
	st := r.Observers[ob.Name]
	if st == nil {
		st = &retryState{}
		r.Observers[ob.Name] = st
	}
	st.Attempts++
	st.LastError = err.Error()
	st.NotBefore = now.Add(backoff(st.Attempts, retry))
	r.Attempts++
	r.LastError = ob.Name + ": " + st.LastError
	return st
}

// pending returns the observers that still have to accept the event and
// the earliest time one of them is due.
func (r *record) pending(observers []Observer) (n int, next time.Time) {
	for _, ob := range observers {
		if !r.needs(ob) {
			continue
		}
		n++
		var at time.Time
		if st := r.Observers[ob.Name]; st != nil {
			at = st.NotBefore
		}
		if n == 1 || at.Before(next) {
			next = at
		}
	}
	return n, next
}
