package events

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/plugins"
)

type deviceRecorder struct {
	mu     sync.Mutex
	events []plugins.DeviceEvent
}

func (r *deviceRecorder) ObserveDevice(_ context.Context, ev plugins.DeviceEvent) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
	return nil
}

func (r *deviceRecorder) got() []plugins.DeviceEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]plugins.DeviceEvent(nil), r.events...)
}

// addDevice records a device event for id in a transaction that also
// writes the device row, as an inventory plugin would.
func addDevice(t *testing.T, r *Recorder, tx *database.Tx, id string) *plugins.DeviceEvent {
	t.Helper()
	ev := &plugins.DeviceEvent{Kind: plugins.DeviceDisabled, DeviceID: id, Device: json.RawMessage(`{"id":"` + id + `"}`)}
	if err := r.AddDeviceEvent(tx, ev); err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestRecordedDeviceEventsAreDelivered(t *testing.T) {
	for name, open := range backends(t) {
		t.Run(name, func(t *testing.T) {
			base := open(t)
			clk := newClock()
			devs, certs := &deviceRecorder{}, &recorder{}
			ob := NewOutbox(base, []Observer{{Name: "dev", Device: devs}, {Name: "cert", Certificate: certs}},
				OutboxOptions{Replica: "a", ClaimTTL: 5 * time.Second, RetryInterval: time.Second, Now: clk.Now})
			r, err := NewRecorder(base, ob, clk.Now)
			if err != nil {
				t.Fatal(err)
			}
			devices := []byte("stepfort_test_devices")
			if err := base.CreateTable(devices); err != nil {
				t.Fatal(err)
			}

			tx := new(database.Tx)
			tx.Set(devices, []byte("d1"), []byte("disabled"))
			kept := addDevice(t, r, tx, "d1")
			if err := base.Update(tx); err != nil {
				t.Fatal(err)
			}
			r.Announce(kept.ID)

			// A change that did not happen after all: its event is discarded.
			tx = new(database.Tx)
			tx.Cas(devices, []byte("d1"), []byte("disabled")) // compares with absent: does not swap
			dropped := addDevice(t, r, tx, "d1")
			if err := base.Update(tx); err != nil {
				t.Fatal(err)
			}
			if err := r.Discard(dropped.ID); err != nil {
				t.Fatal(err)
			}

			if kept.ID == "" || !kept.OccurredAt.Equal(clk.Now().UTC()) {
				t.Fatalf("event id %q occurred at %v, want the injected clock %v", kept.ID, kept.OccurredAt, clk.Now())
			}
			ob.deliverBatch(context.Background(), ob.batch(<-ob.notify))
			clk.Advance(time.Minute)
			if left := ob.Sweep(context.Background()); left != 0 {
				t.Fatalf("%d events left", left)
			}
			got := devs.got()
			if len(got) != 1 || got[0].ID != kept.ID || got[0].DeviceID != "d1" || got[0].Kind != plugins.DeviceDisabled || string(got[0].Device) != `{"id":"d1"}` {
				t.Fatalf("device observer got %+v", got)
			}
			if len(certs.got()) != 0 {
				t.Fatal("a certificate observer received a device event")
			}
		})
	}
}

func TestRecorderWithoutDeviceObserversWritesNothing(t *testing.T) {
	base := backends(t)["bbolt"](t)
	for name, ob := range map[string]*Outbox{
		"no outbox":         nil,
		"certificates only": NewOutbox(base, []Observer{{Name: "cert", Certificate: &recorder{}}}, OutboxOptions{Replica: "a"}),
	} {
		t.Run(name, func(t *testing.T) {
			r, err := NewRecorder(base, ob, nil)
			if err != nil {
				t.Fatal(err)
			}
			tx := new(database.Tx)
			ev := addDevice(t, r, tx, "d1")
			if len(tx.Operations) != 0 || ev.ID == "" {
				t.Fatalf("tx has %d operations, event id %q", len(tx.Operations), ev.ID)
			}
			r.Announce(ev.ID)
			if err := r.Discard(ev.ID); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestDeviceOnlyOutboxWritesNoCertificateEvents(t *testing.T) {
	base := backends(t)["bbolt"](t)
	ob := NewOutbox(base, []Observer{{Name: "dev", Device: &deviceRecorder{}}}, OutboxOptions{Replica: "a"})
	d, err := NewDB(base, ob, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.StoreCertificateChain(nil, newCert(t, nil)); err != nil {
		t.Fatal(err)
	}
	if entries, err := base.List(Table); err != nil || len(entries) != 0 {
		t.Fatalf("certificate events written without a certificate observer: %d, %v", len(entries), err)
	}
}

func TestNewObserver(t *testing.T) {
	type both struct {
		*recorder
		*deviceRecorder
	}
	if ob, ok := NewObserver("x", both{&recorder{}, &deviceRecorder{}}); !ok || ob.Certificate == nil || ob.Device == nil || ob.Name != "x" {
		t.Fatalf("both: %+v %v", ob, ok)
	}
	if ob, ok := NewObserver("d", &deviceRecorder{}); !ok || ob.Certificate != nil || ob.Device == nil {
		t.Fatalf("device: %+v %v", ob, ok)
	}
	if _, ok := NewObserver("none", struct{}{}); ok {
		t.Fatal("an observer of nothing")
	}
}
