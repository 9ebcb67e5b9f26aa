package billing

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stepfort/stepfort/plugins"
)

// alertLease names the lease (host.Locker) of the expiry alert job; only
// its holder raises and delivers alerts.
const alertLease = "expiry-alerts"

// metrics are the plugin's Prometheus collectors.
type metrics struct {
	expiring prometheus.Gauge
	active   prometheus.Gauge
	alerts   *prometheus.CounterVec
}

func newMetrics() *metrics {
	return &metrics{
		expiring: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "stepfort", Subsystem: "billing", Name: "endpoints_expiring",
			Help: "Active Endpoints whose last certificate expires within the alert window, as of the last alert job run"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "stepfort", Subsystem: "billing", Name: "endpoints_active",
			Help: "Active Endpoints, as of the last alert job run"}),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stepfort", Subsystem: "billing", Name: "alert_webhook_total",
			Help: "Alert webhook deliveries by outcome"}, []string{"outcome"}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.expiring, m.active, m.alerts}
}

// AlertPayload is the JSON body POSTed to the webhook.
type AlertPayload struct {
	Type        string    `json:"type"` // "endpoint.expiring"
	AlertID     string    `json:"alertId"`
	EndpointID  string    `json:"endpointId"`
	Provisioner string    `json:"provisioner"`
	SubjectKey  string    `json:"subjectKey"`
	Serial      string    `json:"serial"`
	ExpiresAt   time.Time `json:"expiresAt"`
	RaisedAt    time.Time `json:"raisedAt"`
}

// SignatureHeader carries "sha256=" + hex HMAC-SHA256(secret, body).
const SignatureHeader = "X-Stepfort-Signature"

// Sign returns the SignatureHeader value for body.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// alerter is the expiry alert job.
type alerter struct {
	store   *Store
	cfg     AlertConfig
	secret  []byte
	now     func() time.Time
	locker  plugins.Locker
	log     *slog.Logger
	metrics *metrics
	client  *http.Client // nil without a webhook
}

// newAlerter takes the clock, the lease and the logger from host: two hosts
// on one database are two replicas competing for the job.
func newAlerter(s *Store, cfg AlertConfig, secret []byte, host plugins.Host, m *metrics) *alerter {
	a := &alerter{store: s, cfg: cfg, secret: secret, now: host.Now, locker: host.Locker(), log: host.Logger(), metrics: m}
	if cfg.Webhook != nil {
		a.client = &http.Client{Timeout: cfg.Webhook.Timeout.Duration}
	}
	return a
}

// loop runs the job every Interval until ctx ends (host.Go).
func (a *alerter) loop(ctx context.Context) {
	t := time.NewTicker(a.cfg.Interval.Duration)
	defer t.Stop()
	for {
		if err := a.run(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("expiry alert job failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// expiring reports whether the Endpoint is active and ends by expiry of its
// last certificate within the window. An Endpoint whose last certificate
// was revoked has ended on purpose and is not alerted.
func (a *alerter) expiring(e *Endpoint, now time.Time) bool {
	return e.State(now) == StateActive && e.EndReason == EndExpired && e.EndsAt.Sub(now) <= a.cfg.Window.Duration
}

// release gives the lease up if this replica holds it.
func (a *alerter) release(ctx context.Context) error {
	return a.locker.Unlock(ctx, alertLease)
}

// run is one pass of the job. Every replica refreshes its gauges; only the
// lease holder raises and delivers alerts.
func (a *alerter) run(ctx context.Context) error {
	// Read before TryLock, so deadline is never later than the lease's
	// Until (both come from the host clock).
	now := a.now()
	deadline := now.Add(a.cfg.LeaseTTL.Duration)
	leader, err := a.locker.TryLock(ctx, alertLease, a.cfg.LeaseTTL.Duration)
	if err != nil {
		return fmt.Errorf("lease %s: %w", alertLease, err)
	}
	work, err := a.scan(now)
	if err != nil || !leader {
		return err
	}
	for _, id := range work {
		// Stop before the lease may pass to another replica.
		if ctx.Err() != nil || !a.now().Before(deadline) {
			return ctx.Err()
		}
		if err := a.handle(ctx, id, now); err != nil {
			a.log.Error("expiry alert failed", "endpoint", id, "error", err)
		}
	}
	return nil
}

// scan refreshes the gauges and returns the Endpoints that have an alert
// to raise or a webhook delivery due.
func (a *alerter) scan(now time.Time) ([]string, error) {
	var active, expiring int
	var work []string
	err := a.store.Endpoints(func(e *Endpoint) error {
		if e.State(now) != StateActive {
			return nil
		}
		active++
		if a.expiring(e, now) {
			expiring++
			if e.Alert == nil || e.Alert.Serial != e.LastSerial {
				work = append(work, e.ID)
			}
		}
		if a.deliveryDue(e.Alert, now) {
			work = append(work, e.ID)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	a.metrics.active.Set(float64(active))
	a.metrics.expiring.Set(float64(expiring))
	return work, nil
}

// deliveryDue reports whether the alert's webhook POST should be tried now.
func (a *alerter) deliveryDue(al *Alert, now time.Time) bool {
	return al != nil && !al.Delivered && a.client != nil && !now.Before(al.NextAttempt) && al.Attempts < a.cfg.Webhook.MaxAttempts
}

// handle raises the alert of one Endpoint if due, then delivers any pending
// webhook.
func (a *alerter) handle(ctx context.Context, id string, now time.Time) error {
	var raised *Alert
	var ep Endpoint
	err := a.store.updateEndpoint(id, func(e *Endpoint) (bool, error) {
		raised = nil
		ep = *e
		if e.ID == "" || !a.expiring(e, now) {
			return false, nil
		}
		if e.Alert != nil && e.Alert.Serial == e.LastSerial {
			return false, nil
		}
		e.Alert = &Alert{ID: e.ID + ":" + e.LastSerial, Serial: e.LastSerial, ExpiresAt: e.EndsAt, RaisedAt: now.UTC(), Delivered: a.client == nil}
		raised = e.Alert
		ep = *e
		return true, nil
	})
	if err != nil {
		return err
	}
	if raised != nil {
		// The swap that set Alert.Serial is the one-time step: exactly one
		// replica logs each alert.
		a.log.Warn("endpoint expiring", "alert", raised.ID, "endpoint", ep.ID, "provisioner", ep.Provisioner.Name,
			"subject", ep.SubjectKey, "serial", raised.Serial, "expiresAt", raised.ExpiresAt, "expiresIn", raised.ExpiresAt.Sub(now).Round(time.Second).String())
	}
	if !a.deliveryDue(ep.Alert, now) {
		return nil
	}
	return a.deliver(ctx, &ep, now)
}

// deliver POSTs the Endpoint's pending alert once and records the outcome.
// Delivery is at least once: a replica that dies after the POST and before
// recording it leaves the alert to be sent again; receivers deduplicate by
// alertId.
func (a *alerter) deliver(ctx context.Context, e *Endpoint, now time.Time) error {
	al := e.Alert
	body, err := json.Marshal(AlertPayload{Type: "endpoint.expiring", AlertID: al.ID, EndpointID: e.ID, Provisioner: e.Provisioner.Name,
		SubjectKey: e.SubjectKey, Serial: al.Serial, ExpiresAt: al.ExpiresAt, RaisedAt: al.RaisedAt})
	if err != nil {
		return err
	}
	postErr := a.post(ctx, body)
	outcome := "ok"
	if postErr != nil {
		outcome = "error"
	}
	a.metrics.alerts.WithLabelValues(outcome).Inc()
	err = a.store.updateEndpoint(e.ID, func(cur *Endpoint) (bool, error) {
		if cur.Alert == nil || cur.Alert.ID != al.ID || cur.Alert.Delivered {
			return false, nil
		}
		cur.Alert.Attempts++
		if postErr == nil {
			cur.Alert.Delivered, cur.Alert.LastError = true, ""
			return true, nil
		}
		cur.Alert.LastError = postErr.Error()
		backoff := a.cfg.Webhook.Backoff.Duration << min(cur.Alert.Attempts-1, 20)
		cur.Alert.NextAttempt = now.Add(min(backoff, time.Hour)).UTC()
		return true, nil
	})
	if postErr != nil {
		a.log.Warn("alert webhook failed; will retry", "alert", al.ID, "attempt", al.Attempts+1, "error", postErr)
	}
	return err
}

func (a *alerter) post(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.cfg.Webhook.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(SignatureHeader, Sign(a.secret, body))
	resp, err := a.client.Do(req)
	if err != nil {
		return fmt.Errorf("post alert: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("post alert: HTTP %d", resp.StatusCode)
	}
	return nil
}
