package deviceattest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// failingDB fails reads of inventory devices while fail is set: the
// database is unreachable for the observer.
type failingDB struct {
	nosql.DB
	fail atomic.Bool
}

func (f *failingDB) Get(bucket, key []byte) ([]byte, error) {
	if f.fail.Load() && bytes.Equal(bucket, inventory.DevicesTable) {
		return nil, errors.New("connection reset by peer")
	}
	return f.DB.Get(bucket, key)
}

// revocationFixture is a plugin on one backend with a device that has
// linked certificates.
type revocationFixture struct {
	p      *Plugin
	h      *heldHost
	db     *failingDB
	inv    *inventory.Store // records device events in h's recorder
	device *inventory.Device
	// live are the linked certificates a revocation must reach; the
	// device also has an expired one and one already marked revoked.
	live []string
}

func newRevocationFixture(t *testing.T, backend string, certs int) *revocationFixture {
	t.Helper()
	db := &failingDB{DB: openDB(t, backend)}
	h := plugintest.NewHostWithDB(t, db, backend)
	p, _, held := newPluginOn(t, defaultConfig(), h)
	inv, err := inventory.NewStore(db, h.Now, inventory.WithEvents(h.Events()))
	if err != nil {
		t.Fatal(err)
	}
	d, err := inv.Create(inventory.DeviceInput{Identifiers: []string{"17255819"}})
	if err != nil {
		t.Fatal(err)
	}
	f := &revocationFixture{p: p, h: held, db: db, inv: inv, device: d}
	now := h.Now()
	link := func(serial, kind string, notAfter time.Time) {
		if err := p.links.Record(Link{Serial: serial, DeviceID: d.ID, Kind: kind, NotAfter: notAfter}, now.Add(-48*time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range certs {
		serial := fmt.Sprint(1000 + i)
		kind := KindAccount
		if i == 0 {
			kind = KindDevice
		}
		link(serial, kind, now.Add(24*time.Hour))
		f.live = append(f.live, serial)
	}
	link("900", KindAccount, now.Add(-time.Hour)) // expired
	link("901", KindAccount, now.Add(time.Hour))
	if err := p.links.MarkRevoked(d.ID, []string{"901"}); err != nil {
		t.Fatal(err)
	}
	return f
}

// setStatus changes the device's status through the inventory and
// returns the device event the change recorded, if any.
func (f *revocationFixture) setStatus(t *testing.T, s inventory.Status) *plugins.DeviceEvent {
	t.Helper()
	rec := f.h.Recorder.(*plugintest.Recorder)
	n := len(rec.Added)
	if _, err := f.inv.Update(f.device.ID, inventory.DevicePatch{Status: &s}); err != nil {
		t.Fatal(err)
	}
	if len(rec.Added) == n {
		return nil
	}
	return &rec.Added[n]
}

// revokedSerials returns the serials the host was asked to revoke, after
// checking each request is the plugin's administrative revocation.
func (f *revocationFixture) revokedSerials(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, r := range f.h.Revoked() {
		if r.Actor != Actor || r.ReasonCode != 5 || r.Reason != defaultConfig().RevocationReason {
			t.Fatalf("revocation %+v is not the plugin's", r)
		}
		out = append(out, r.Serial)
	}
	slices.Sort(out)
	return out
}

// TestObserveDeviceRevokes: the event of a disabled or removed device
// revokes its live linked certificates through Host.Revoke, as the
// plugin; a second delivery of the event revokes nothing more.
func TestObserveDeviceRevokes(t *testing.T) {
	for _, backend := range backends {
		for _, kind := range []plugins.DeviceEventKind{plugins.DeviceDisabled, plugins.DeviceRemoved} {
			t.Run(backend+"/"+string(kind), func(t *testing.T) {
				f := newRevocationFixture(t, backend, 3)
				var ev *plugins.DeviceEvent
				if kind == plugins.DeviceDisabled {
					ev = f.setStatus(t, inventory.StatusDisabled)
				} else {
					if _, err := f.inv.Delete(f.device.ID); err != nil {
						t.Fatal(err)
					}
					rec := f.h.Recorder.(*plugintest.Recorder)
					ev = &rec.Added[len(rec.Added)-1]
				}
				if ev == nil || ev.Kind != kind || ev.DeviceID != f.device.ID {
					t.Fatalf("inventory recorded %+v", ev)
				}
				if err := f.p.ObserveDevice(context.Background(), *ev); err != nil {
					t.Fatal(err)
				}
				if got := f.revokedSerials(t); !slices.Equal(got, f.live) {
					t.Fatalf("revoked %v, want %v", got, f.live)
				}
				if err := f.p.ObserveDevice(context.Background(), *ev); err != nil {
					t.Fatal(err)
				}
				if got := len(f.h.Revoked()); got != len(f.live) {
					t.Fatalf("redelivery revoked again: %d requests", got)
				}
			})
		}
	}
}

// TestObserveDeviceActsOnStateNow: an event of a device enabled again
// before delivery revokes nothing; a failed inventory read is returned
// (the daemon redelivers) and revokes nothing.
func TestObserveDeviceActsOnStateNow(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend+"/re-enabled", func(t *testing.T) {
			f := newRevocationFixture(t, backend, 2)
			ev := f.setStatus(t, inventory.StatusDisabled)
			if ev == nil {
				t.Fatal("disabling recorded no event")
			}
			if again := f.setStatus(t, inventory.StatusActive); again != nil {
				t.Fatalf("enabling recorded %+v", again)
			}
			if err := f.p.ObserveDevice(context.Background(), *ev); err != nil {
				t.Fatal(err)
			}
			if got := f.h.Revoked(); len(got) != 0 {
				t.Fatalf("re-enabled device lost certificates: %+v", got)
			}
		})
		t.Run(backend+"/read error", func(t *testing.T) {
			f := newRevocationFixture(t, backend, 2)
			ev := f.setStatus(t, inventory.StatusDisabled)
			f.db.fail.Store(true)
			if err := f.p.ObserveDevice(context.Background(), *ev); err == nil {
				t.Fatal("read error swallowed: the event would not be redelivered")
			}
			if got := f.h.Revoked(); len(got) != 0 {
				t.Fatalf("revoked without knowing the device's state: %+v", got)
			}
			f.db.fail.Store(false)
			if err := f.p.ObserveDevice(context.Background(), *ev); err != nil {
				t.Fatal(err)
			}
			if got := f.revokedSerials(t); !slices.Equal(got, f.live) {
				t.Fatalf("redelivery revoked %v, want %v", got, f.live)
			}
		})
	}
}

// TestRevokeOutcomes: a certificate revoked already counts as done; any
// other revocation error is returned and the certificate stays due, so the
// redelivered event (or the sweep) tries again.
func TestRevokeOutcomes(t *testing.T) {
	f := newRevocationFixture(t, "bbolt", 2)
	ev := f.setStatus(t, inventory.StatusDisabled)
	var calls atomic.Int32
	f.h.RevokeFunc = func(_ context.Context, req plugins.RevokeRequest) error {
		calls.Add(1)
		if req.Serial == f.live[0] {
			return plugins.ErrAlreadyRevoked
		}
		return errors.New("database is down")
	}
	if err := f.p.ObserveDevice(context.Background(), *ev); err == nil {
		t.Fatal("revocation error swallowed")
	}
	dc, err := f.p.links.DeviceCerts(f.device.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range dc.Certs {
		if want := c.Serial == f.live[0] || c.Serial == "901"; c.Revoked != want {
			t.Fatalf("certificate %s marked revoked=%v, want %v", c.Serial, c.Revoked, want)
		}
	}
	f.h.RevokeFunc = nil
	if err := f.p.ObserveDevice(context.Background(), *ev); err != nil {
		t.Fatal(err)
	}
	if got := f.revokedSerials(t); !slices.Equal(got, f.live[1:]) {
		t.Fatalf("retry revoked %v, want %v", got, f.live[1:])
	}
}

// TestRevokeWorkerPool: a device with many certificates is revoked by at
// most revokeWorkers concurrent Host.Revoke calls.
func TestRevokeWorkerPool(t *testing.T) {
	f := newRevocationFixture(t, "bbolt", 40)
	ev := f.setStatus(t, inventory.StatusDisabled)
	var (
		mu             sync.Mutex
		inFlight, peak int
		serials        []string
	)
	f.h.RevokeFunc = func(_ context.Context, req plugins.RevokeRequest) error {
		mu.Lock()
		inFlight++
		peak = max(peak, inFlight)
		serials = append(serials, req.Serial)
		mu.Unlock()
		time.Sleep(2 * time.Millisecond)
		mu.Lock()
		inFlight--
		mu.Unlock()
		return nil
	}
	if err := f.p.ObserveDevice(context.Background(), *ev); err != nil {
		t.Fatal(err)
	}
	slices.Sort(serials)
	if !slices.Equal(serials, f.live) {
		t.Fatalf("revoked %d certificates, want %d", len(serials), len(f.live))
	}
	if peak > revokeWorkers || peak < 2 {
		t.Fatalf("%d concurrent revocations, want 2..%d", peak, revokeWorkers)
	}
}

// TestSweepRunsInHostGroup: the sweep is started through Host.Go and, at
// once, revokes the certificates of a device disabled without an event
// (a store built without WithEvents).
func TestSweepRunsInHostGroup(t *testing.T) {
	f := newRevocationFixture(t, "bbolt", 2)
	noEvents, err := inventory.NewStore(f.db, f.h.Now)
	if err != nil {
		t.Fatal(err)
	}
	disabled := inventory.StatusDisabled
	if _, err := noEvents.Update(f.device.ID, inventory.DevicePatch{Status: &disabled}); err != nil {
		t.Fatal(err)
	}
	f.h.run(t, "deviceAttest.sweep")
	deadline := time.Now().Add(10 * time.Second)
	for len(f.h.Revoked()) < len(f.live) {
		if time.Now().After(deadline) {
			t.Fatalf("sweep revoked %v, want %v", f.h.Revoked(), f.live)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := f.revokedSerials(t); !slices.Equal(got, f.live) {
		t.Fatalf("sweep revoked %v, want %v", got, f.live)
	}
}
