package crlchanges

import (
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/testenv"
)

func TestMain(m *testing.M) { testenv.RunMain(m) }

// A base publication removes exactly the entries it listed: a change
// recorded after List survives Remove, and the latest change per serial
// wins.
func TestRemoveKeepsEntriesRecordedAfterList(t *testing.T) {
	for _, backend := range testenv.Backends {
		t.Run(backend, func(t *testing.T) {
			store := testenv.OpenStore(t, backend)
			if err := Init(store); err != nil {
				t.Fatal(err)
			}
			t0 := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
			must(t, Record(store, "own", Change{Serial: "10", RevokedAt: t0, Reason: 6}, t0))
			must(t, Record(store, "own", Change{Serial: "10", RevokedAt: t0, Reason: 1}, t0.Add(time.Second)))
			must(t, Record(store, "legacy/x", Change{Serial: "11", RevokedAt: t0, Reason: 1}, t0))
			latest, read, err := List(store, "own")
			must(t, err)
			if len(latest) != 1 || latest[0].Reason != 1 || len(read) != 2 {
				t.Fatalf("latest %+v, read %d entries; want one serial with reason 1 from two entries", latest, len(read))
			}
			// Recorded while the base is being built.
			must(t, Record(store, "own", Change{Serial: "12", RevokedAt: t0, Reason: 4}, t0.Add(2*time.Second)))
			must(t, Remove(store, read))
			latest, _, err = List(store, "own")
			must(t, err)
			if len(latest) != 1 || latest[0].Serial != "12" {
				t.Fatalf("after Remove: %+v, want only serial 12", latest)
			}
			other, _, err := List(store, "legacy/x")
			must(t, err)
			if len(other) != 1 || other[0].Serial != "11" {
				t.Fatalf("another series lost its entries: %+v", other)
			}
			if err := Record(store, "own", Change{Serial: "0x1f"}, t0); err == nil {
				t.Fatal("a hex serial was accepted")
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
