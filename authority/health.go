package authority

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/fips"
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
	body := map[string]any{"status": "ok", "fips": fips.Current()}
	status := http.StatusOK
	fail := func(key string, err error) {
		body[key] = err.Error()
		body["status"] = "unavailable"
		status = http.StatusServiceUnavailable
	}
	if d.store != nil {
		if err := withTimeout(r.Context(), func() error {
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
		err := withTimeout(r.Context(), func() error {
			var err error
			fields, err = hr.Health(r.Context())
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
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
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
