package inventory

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

// testEventsTable stands in for the daemon's event table.
var testEventsTable = []byte("stepfort_test_device_events")

// txRecorder is plugintest's in-memory recorder that also writes each
// event into the transaction it is given, as the daemon's recorder does,
// so a test can see that the event was committed with the change.
type txRecorder struct {
	plugintest.Recorder
}

func (r *txRecorder) AddDeviceEvent(tx *database.Tx, ev *plugins.DeviceEvent) error {
	if tx == nil {
		return errors.New("device event outside a transaction")
	}
	if err := r.Recorder.AddDeviceEvent(tx, ev); err != nil {
		return err
	}
	b, _ := json.Marshal(ev)
	tx.Set(testEventsTable, []byte(ev.ID), b)
	return nil
}

// identifiers returns the first identifier of each recorded event's device.
func (r *txRecorder) identifiers(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, ev := range r.Added {
		var d Device
		if err := json.Unmarshal(ev.Device, &d); err != nil {
			t.Fatalf("event %s: device: %v", ev.ID, err)
		}
		out = append(out, d.Identifiers[0])
	}
	return out
}

// assertCommitted checks that event id was written with the change.
func (r *txRecorder) assertCommitted(t *testing.T, db nosql.DB, id string) {
	t.Helper()
	if _, err := db.Get(testEventsTable, []byte(id)); err != nil {
		t.Fatalf("event %s not committed: %v", id, err)
	}
}

func newEventStore(t *testing.T, db nosql.DB) (*Store, *txRecorder) {
	t.Helper()
	if err := db.CreateTable(testEventsTable); err != nil {
		t.Fatal(err)
	}
	rec := &txRecorder{}
	s, err := NewStore(db, nil, WithEvents(rec))
	if err != nil {
		t.Fatal(err)
	}
	return s, rec
}

// TestStoreDeviceEvents: disabling an active device and deleting a device
// each record exactly one event, in the change's transaction, and announce
// it; other changes record none.
func TestStoreDeviceEvents(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			s, rec := newEventStore(t, openDB(t, backend))
			d, err := s.Create(DeviceInput{Identifiers: []string{"SER1"}, Name: "pc1"})
			if err != nil {
				t.Fatal(err)
			}
			name, active, disabled := "pc1-renamed", StatusActive, StatusDisabled
			steps := []struct {
				name   string
				change func() error
				want   plugins.DeviceEventKind // "" for no event
				status Status                  // of the device in the event
			}{
				{"rename", func() error { _, err := s.Update(d.ID, DevicePatch{Name: &name}); return err }, "", ""},
				{"disable", func() error { _, err := s.Update(d.ID, DevicePatch{Status: &disabled}); return err }, plugins.DeviceDisabled, StatusDisabled},
				{"disable again", func() error { _, err := s.Update(d.ID, DevicePatch{Status: &disabled}); return err }, "", ""},
				{"attestation of a disabled device", func() error { return s.RecordAttestation(d.ID, Attestation{EKURN: "x"}) }, "", ""},
				{"enable", func() error { _, err := s.Update(d.ID, DevicePatch{Status: &active}); return err }, "", ""},
				{"delete", func() error { _, err := s.Delete(d.ID); return err }, plugins.DeviceRemoved, StatusActive},
			}
			for _, st := range steps {
				n := len(rec.Added)
				if err := st.change(); err != nil {
					t.Fatalf("%s: %v", st.name, err)
				}
				if st.want == "" {
					if len(rec.Added) != n {
						t.Fatalf("%s: recorded %+v", st.name, rec.Added[n:])
					}
					continue
				}
				if len(rec.Added) != n+1 {
					t.Fatalf("%s: %d events, want 1", st.name, len(rec.Added)-n)
				}
				ev := rec.Added[n]
				var got Device
				if err := json.Unmarshal(ev.Device, &got); err != nil {
					t.Fatal(err)
				}
				if ev.Kind != st.want || ev.DeviceID != d.ID || got.ID != d.ID || got.Status != st.status || got.Name != name {
					t.Fatalf("%s: event %s %s with device %+v", st.name, ev.Kind, ev.DeviceID, got)
				}
				rec.assertCommitted(t, s.db, ev.ID)
				if len(rec.Announced) == 0 || rec.Announced[len(rec.Announced)-1] != ev.ID {
					t.Fatalf("%s: event %s not announced (%v)", st.name, ev.ID, rec.Announced)
				}
			}
			if len(rec.Announced) != 2 || len(rec.Discarded) != 0 {
				t.Fatalf("announced %v, discarded %v", rec.Announced, rec.Discarded)
			}
		})
	}
}

// TestStoreLostRaceDiscardsEvent: when another writer changes the device
// between the store's read and its transaction, the compare-and-swap
// fails, the event recorded with it is discarded, and the retry decides
// afresh: disable again (and announce) if the device is still active, or
// record nothing if the other writer disabled it.
func TestStoreLostRaceDiscardsEvent(t *testing.T) {
	tests := []struct {
		name      string
		race      func(d *Device)
		announced int
	}{
		{"other writer renames", func(d *Device) { d.Name = "elsewhere" }, 1},
		{"other writer disables", func(d *Device) { d.Status = StatusDisabled }, 0},
	}
	for _, backend := range backends {
		for _, tt := range tests {
			t.Run(backend+"/"+tt.name, func(t *testing.T) {
				db := &racingDB{innerDB: openDB(t, backend)}
				s, rec := newEventStore(t, db)
				d, err := s.Create(DeviceInput{Identifiers: []string{"SER1"}})
				if err != nil {
					t.Fatal(err)
				}
				db.before = func() { setStored(t, db.innerDB, d.ID, tt.race) }
				disabled := StatusDisabled
				got, err := s.Update(d.ID, DevicePatch{Status: &disabled})
				if err != nil {
					t.Fatal(err)
				}
				if got.Active() {
					t.Fatal("device still active")
				}
				if len(rec.Added) != 1+tt.announced || len(rec.Discarded) != 1 || rec.Discarded[0] != rec.Added[0].ID {
					t.Fatalf("added %d, discarded %v, want the first of %d discarded", len(rec.Added), rec.Discarded, 1+tt.announced)
				}
				if len(rec.Announced) != tt.announced || tt.announced == 1 && rec.Announced[0] != rec.Added[1].ID {
					t.Fatalf("announced %v of %+v", rec.Announced, rec.Added)
				}
			})
		}
	}
}

// TestStoreWithoutEvents: a store built without WithEvents (the
// attestation CA's) changes devices without recording anything.
func TestStoreWithoutEvents(t *testing.T) {
	s := newTestStore(t)
	d, err := s.Create(DeviceInput{Identifiers: []string{"SER1"}})
	if err != nil {
		t.Fatal(err)
	}
	disabled := StatusDisabled
	if _, err := s.Update(d.ID, DevicePatch{Status: &disabled}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(d.ID); err != nil {
		t.Fatal(err)
	}
}
