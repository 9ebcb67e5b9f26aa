package storage

import (
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/testenv"
)

// Heartbeats are listed newest start first, stale ones marked, and old
// ones pruned; a clean stop deletes its row.
func TestHeartbeats(t *testing.T) {
	for _, backend := range []string{"bbolt", "postgresql"} {
		t.Run(backend, func(t *testing.T) {
			db := testenv.OpenStore(t, backend)
			if err := db.CreateTable(ReplicasTable); err != nil {
				t.Fatal(err)
			}
			now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
			rows := []Heartbeat{
				{ID: "a|:9000|1-x", StartedAt: now.Add(-time.Hour), LastSeen: now.Add(-5 * time.Second), FIPS: "on", CRLLease: true, Status: "ok"},
				{ID: "b|:9000|2-y", StartedAt: now.Add(-time.Minute), LastSeen: now.Add(-40 * time.Second), FIPS: "off", Status: "ok"},
				{ID: "c|:9000|3-z", StartedAt: now.Add(-48 * time.Hour), LastSeen: now.Add(-25 * time.Hour), Status: "ok"},
			}
			for _, hb := range rows {
				if err := WriteHeartbeat(db, hb); err != nil {
					t.Fatal(err)
				}
			}
			if err := WriteHeartbeat(db, Heartbeat{}); err == nil {
				t.Fatal("a heartbeat without id was written")
			}
			got, err := ListHeartbeats(db, now, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 3 || got[0].ID != rows[1].ID || got[1].ID != rows[0].ID || got[2].ID != rows[2].ID {
				t.Fatalf("order: %+v", got)
			}
			if !got[0].Stale || got[1].Stale || !got[2].Stale || !got[1].CRLLease || got[1].FIPS != "on" {
				t.Fatalf("stale/fields: %+v", got)
			}
			if n, err := PruneHeartbeats(db, now, 24*time.Hour); err != nil || n != 1 {
				t.Fatalf("prune: %d %v", n, err)
			}
			if err := DeleteHeartbeat(db, rows[1].ID); err != nil {
				t.Fatal(err)
			}
			if got, _ := ListHeartbeats(db, now, 30*time.Second); len(got) != 1 || got[0].ID != rows[0].ID {
				t.Fatalf("after prune and delete: %+v", got)
			}
		})
	}
}
