package storage

import (
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/smallstep/nosql"
)

// ReplicasTable holds one heartbeat row per running replica, keyed by its
// plugins.ReplicaID, in the shared database: every replica can list the
// cluster.
var ReplicasTable = []byte("stepfort_replicas")

// Heartbeat is what a replica says about itself every few seconds. ID
// holds the host name and listen address: show it to authenticated admins
// only.
type Heartbeat struct {
	ID        string    `json:"id"`
	Version   string    `json:"version"`
	StartedAt time.Time `json:"startedAt"`
	LastSeen  time.Time `json:"lastSeen"`
	// FIPS is the FIPS 140-3 mode: off, on or only.
	FIPS string `json:"fips"`
	// CRLLease: this replica holds the CRL publisher lease.
	CRLLease bool `json:"crlLease"`
	// Status is the replica's own /health status: ok or unavailable.
	Status string `json:"status"`
	// OCSPStatusSource is where its OCSP responder reads statuses
	// (memory, database; "" without the HA plugin).
	OCSPStatusSource string `json:"ocspStatusSource,omitempty"`
	// Problems are the failing checks of its /health (name → error).
	Problems map[string]string `json:"problems,omitempty"`
	// Stale is set by ListHeartbeats, never stored: LastSeen is older
	// than the stale bound.
	Stale bool `json:"stale"`
}

// maxHeartbeatProblems bounds what a row carries.
const maxHeartbeatProblems = 16

// WriteHeartbeat stores hb as its replica's row.
func WriteHeartbeat(db nosql.DB, hb Heartbeat) error {
	if hb.ID == "" {
		return fmt.Errorf("heartbeat: the replica id is required")
	}
	if len(hb.Problems) > maxHeartbeatProblems {
		p := make(map[string]string, maxHeartbeatProblems)
		for k, v := range hb.Problems {
			if len(p) == maxHeartbeatProblems {
				break
			}
			p[k] = v
		}
		hb.Problems = p
	}
	hb.Stale = false
	b, err := json.Marshal(hb)
	if err != nil {
		return err
	}
	if err := db.Set(ReplicasTable, []byte(hb.ID), b); err != nil {
		return fmt.Errorf("write heartbeat: %w", err)
	}
	return nil
}

// DeleteHeartbeat removes a replica's row (a clean stop).
func DeleteHeartbeat(db nosql.DB, id string) error {
	return db.Del(ReplicasTable, []byte(id))
}

// ListHeartbeats returns every replica's row, newest start first, with
// Stale set on those not seen within staleAfter of now.
func ListHeartbeats(db nosql.DB, now time.Time, staleAfter time.Duration) ([]Heartbeat, error) {
	var out []Heartbeat
	err := ForEach(db, ReplicasTable, func(k, v []byte) error {
		var hb Heartbeat
		if err := json.Unmarshal(v, &hb); err != nil {
			return fmt.Errorf("heartbeat %q: %w", k, err)
		}
		hb.Stale = now.Sub(hb.LastSeen) > staleAfter
		out = append(out, hb)
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].StartedAt.Equal(out[j].StartedAt) {
			return out[i].StartedAt.After(out[j].StartedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// PruneHeartbeats deletes the rows not seen for longer than olderThan
// (replicas that stopped without a clean stop: each start has a new id).
// It returns how many it deleted.
func PruneHeartbeats(db nosql.DB, now time.Time, olderThan time.Duration) (int, error) {
	all, err := ListHeartbeats(db, now, olderThan)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, hb := range all {
		if hb.Stale {
			if err := DeleteHeartbeat(db, hb.ID); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}
