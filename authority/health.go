package authority

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	upstream "github.com/smallstep/certificates/authority"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/admin"
	"github.com/stepfort/stepfort/internal/fips"
	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
)

// healthTimeout bounds each check so /health never hangs behind a database
// that does not answer.
const healthTimeout = 2 * time.Second

// health replaces upstream's /health ({"status":"ok"}, which the step CLI's
// `step ca health` reads) with the same answer plus database reachability
// and what plugins report; any failure is a 503 with status "unavailable",
// so a load balancer takes the replica out. "fips" says which FIPS 140-3
// mode is active and with which Go Cryptographic Module (docs/fips.md).
func (d *Daemon) health(w http.ResponseWriter, r *http.Request) {
	body, problems := d.healthReport(r.Context())
	status := http.StatusOK
	if len(problems) > 0 {
		status = http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// healthReport is the body of /health and the failing checks (name →
// error), none when the replica is healthy.
func (d *Daemon) healthReport(ctx context.Context) (map[string]any, map[string]string) {
	body := map[string]any{"status": "ok", "fips": fips.Current()}
	problems := map[string]string{}
	fail := func(key string, err error) {
		body[key] = err.Error()
		body["status"] = "unavailable"
		problems[key] = err.Error()
	}
	if d.store != nil {
		if err := withTimeout(ctx, func() error {
			// A missing key proves a round trip without touching data.
			_, err := d.store.Get([]byte("x509_certs"), []byte("stepfort-health-probe"))
			if database.IsErrNotFound(err) {
				return nil
			}
			return err
		}); err != nil {
			fail("database", err)
		} else {
			body["database"] = "ok"
		}
	}
	for _, p := range d.plugins {
		hr, ok := p.(plugins.HealthReporter)
		if !ok {
			continue
		}
		var fields map[string]any
		err := withTimeout(ctx, func() error {
			var err error
			fields, err = hr.Health(ctx)
			return err
		})
		if err != nil {
			fail(p.Name(), err)
			continue
		}
		for k, v := range fields {
			body[k] = v
		}
	}
	return body, problems
}

// Heartbeats (docs/ui.md): every replica writes its row every
// heartbeatEvery; a row not renewed for staleAfter is stale, and one not
// seen for pruneAfter is deleted.
const (
	heartbeatEvery = 10 * time.Second
	staleAfter     = 3 * heartbeatEvery
	pruneAfter     = 24 * time.Hour
)

// replicasEndpoint is GET /api/v1/replicas, added to the plugins so it
// mounts with the admin API; nil without a database or admin API.
func (d *Daemon) replicasEndpoint() plugins.Plugin {
	if d.store == nil || d.tokens == nil {
		return nil
	}
	return &admin.Replicas{DB: d.store, Now: d.now, Self: d.replica, StaleAfter: staleAfter}
}

// runHeartbeat writes this replica's heartbeat until ctx ends, then
// deletes it (a clean stop is not a stale replica).
func (d *Daemon) runHeartbeat(ctx context.Context) {
	if err := d.store.CreateTable(storage.ReplicasTable); err != nil {
		d.log.Error("heartbeat: create table", "error", err)
		return
	}
	started := d.now().UTC()
	tk := time.NewTicker(heartbeatEvery)
	defer tk.Stop()
	var pruned time.Time
	for {
		d.beat(ctx, started)
		if now := d.now(); now.Sub(pruned) >= time.Hour {
			if n, err := storage.PruneHeartbeats(d.store, now, pruneAfter); err != nil {
				d.log.Warn("heartbeat: prune", "error", err)
			} else if n > 0 {
				d.log.Info("heartbeat: rows of long-gone replicas deleted", "rows", n)
			}
			pruned = now
		}
		select {
		case <-ctx.Done():
			if err := storage.DeleteHeartbeat(d.store, d.replica); err != nil {
				d.log.Warn("heartbeat: delete on stop", "error", err)
			}
			return
		case <-tk.C:
		}
	}
}

// beat writes one heartbeat from the replica's health report.
func (d *Daemon) beat(ctx context.Context, started time.Time) {
	body, problems := d.healthReport(ctx)
	hb := storage.Heartbeat{ID: d.replica, Version: upstream.GlobalVersion.Version, StartedAt: started, LastSeen: d.now().UTC(),
		FIPS: string(fips.Current().Mode), Problems: problems}
	hb.Status, _ = body["status"].(string)
	hb.CRLLease, _ = body["crlPublisherIsSelf"].(bool)
	hb.OCSPStatusSource, _ = body["ocspStatusSource"].(string)
	if hb.Version == "" {
		hb.Version = "dev"
	}
	if err := storage.WriteHeartbeat(d.store, hb); err != nil {
		d.log.Warn("heartbeat not written", "error", err)
	}
}

func withTimeout(ctx context.Context, fn func() error) error {
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("no answer within %s", healthTimeout)
	}
}
