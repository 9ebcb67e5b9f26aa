package deviceattest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/plugins/plugintest"
)

// TestPurge: the sweep's purge removes pending authorizations and links
// once what they describe is long gone, and the list of a device whose
// certificates all expired, and keeps everything else.
func TestPurge(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			f := newOrderFixture(t, backend)
			l := f.p.links
			now := f.h.Now()
			old := now.Add(-linkRetention - time.Hour)
			for _, pend := range []struct {
				key     string
				expires time.Time
			}{{"stale", now.Add(-pendingRetention - time.Minute)}, {"fresh", now.Add(-time.Minute)}} {
				if err := l.SetPending(pend.key, Pending{DeviceID: "dev_x", Expires: pend.expires}); err != nil {
					t.Fatal(err)
				}
			}
			record := func(device, serial string, notAfter time.Time) {
				if err := l.Record(Link{Serial: serial, DeviceID: device, Kind: KindAccount, NotAfter: notAfter}, now); err != nil {
					t.Fatal(err)
				}
			}
			record("dev_gone", "1", old)
			record("dev_gone", "2", old.Add(-time.Hour))
			record("dev_live", "3", old)
			record("dev_live", "4", now.Add(-time.Hour)) // expired, within retention
			record("dev_live", "5", now.Add(time.Hour))

			if err := l.Purge(context.Background(), now); err != nil {
				t.Fatal(err)
			}
			for serial, want := range map[string]bool{"1": false, "2": false, "3": false, "4": true, "5": true} {
				if _, found, err := l.Get(serial); err != nil || found != want {
					t.Errorf("link %s: found %v (%v), want %v", serial, found, err, want)
				}
			}
			if ids, _ := l.Devices(); !slices.Equal(ids, []string{"dev_live"}) {
				t.Errorf("devices with links %v, want [dev_live]", ids)
			}
			dc, _ := l.DeviceCerts("dev_live")
			if len(dc.Certs) != 2 {
				t.Errorf("dev_live keeps %+v, want 4 and 5", dc.Certs)
			}
			for key, want := range map[string]bool{"stale": false, "fresh": true} {
				if _, found, err := l.Pending(key); err != nil || found != want {
					t.Errorf("pending %s: found %v (%v), want %v", key, found, err, want)
				}
			}
		})
	}
}

// TestSweepPurges: the sweep started through Host.Go purges as well.
func TestSweepPurges(t *testing.T) {
	h := plugintest.NewHostWithDB(t, openDB(t, "bbolt"), "bbolt")
	p, _, held := newPluginOn(t, defaultConfig(), h)
	if err := p.links.Record(Link{Serial: "1", DeviceID: "dev_gone", NotAfter: h.Now().Add(-linkRetention - time.Hour)}, h.Now()); err != nil {
		t.Fatal(err)
	}
	held.run(t, "deviceAttest.sweep")
	deadline := time.Now().Add(10 * time.Second)
	for {
		ids, err := p.links.Devices()
		if err != nil {
			t.Fatal(err)
		}
		if len(ids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sweep left %v", ids)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPurgeKeepsConcurrentLinks: a link recorded while the purge deletes
// its device's empty list is never lost.
func TestPurgeKeepsConcurrentLinks(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			f := newOrderFixture(t, backend)
			l := f.p.links
			now := f.h.Now()
			for round := range 20 {
				dev := fmt.Sprintf("dev_%d", round)
				if err := l.Record(Link{Serial: fmt.Sprint(1000 + round), DeviceID: dev, NotAfter: now.Add(-linkRetention - time.Hour)}, now); err != nil {
					t.Fatal(err)
				}
				serial := fmt.Sprint(5000 + round)
				var wg sync.WaitGroup
				wg.Add(2)
				go func() { defer wg.Done(); _ = l.Purge(context.Background(), now) }()
				go func() {
					defer wg.Done()
					if err := l.Record(Link{Serial: serial, DeviceID: dev, NotAfter: now.Add(time.Hour)}, now); err != nil {
						t.Error(err)
					}
				}()
				wg.Wait()
				dc, err := l.DeviceCerts(dev)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.ContainsFunc(dc.Certs, func(c DeviceCert) bool { return c.Serial == serial }) {
					t.Fatalf("round %d: live link %s lost by the purge: %+v", round, serial, dc.Certs)
				}
			}
		})
	}
}

// TestDeleteIf: the conditional delete deletes only the value compared
// and hands back what it removed otherwise.
func TestDeleteIf(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			db := openDB(t, backend)
			table := []byte("stepfort_test_deleteif")
			if err := db.CreateTable(table); err != nil {
				t.Fatal(err)
			}
			if err := db.Set(table, []byte("k"), []byte("v1")); err != nil {
				t.Fatal(err)
			}
			lost, err := deleteIf(db, table, []byte("k"), []byte("v0"))
			if err != nil || string(lost) != "v1" {
				t.Fatalf("mismatch: lost %q, %v", lost, err)
			}
			if err := db.Set(table, []byte("k"), []byte("v1")); err != nil {
				t.Fatal(err)
			}
			if lost, err := deleteIf(db, table, []byte("k"), []byte("v1")); err != nil || lost != nil {
				t.Fatalf("match: lost %q, %v", lost, err)
			}
			if _, err := db.Get(table, []byte("k")); !database.IsErrNotFound(err) {
				t.Fatalf("row still there: %v", err)
			}
			if lost, err := deleteIf(db, table, []byte("k"), []byte("v1")); err != nil || lost != nil {
				t.Fatalf("absent: lost %q, %v", lost, err)
			}
		})
	}
}
