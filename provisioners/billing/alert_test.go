package billing

import (
	"bytes"
	"context"
	"crypto/hmac"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

// receiver is a webhook endpoint that verifies signatures and can fail.
type receiver struct {
	mu       sync.Mutex
	secret   []byte
	failNext int
	got      []AlertPayload
	bad      int
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	if !hmac.Equal([]byte(req.Header.Get(SignatureHeader)), []byte(Sign(r.secret, body))) {
		r.bad++
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if r.failNext > 0 {
		r.failNext--
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	var p AlertPayload
	if err := json.Unmarshal(body, &p); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	r.got = append(r.got, p)
}

func (r *receiver) payloads() []AlertPayload {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]AlertPayload(nil), r.got...)
}

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *logBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

// TestExpiryAlert: two replicas run the job; the alert fires once, on the
// right Endpoint, signed, retried after a failure, and fires again only for
// the next certificate.
func TestExpiryAlert(t *testing.T) {
	rcv := &receiver{secret: []byte("s3cret"), failNext: 1}
	srv := httptest.NewServer(rcv)
	defer srv.Close()

	d := bboltDB(t)
	f := newFixture(t, d)
	expiring := f.sign(jwk, t0, 30*day, "expiring.example")
	f.sign(jwk, t0, 90*day, "later.example")
	revoked := f.sign(jwk, t0, 30*day, "revoked.example")
	f.revoke(revoked, t0.Add(day))
	// Revoked an instant before the job runs, so still active: not alerted.
	justRevoked := f.sign(jwk, t0, 30*day, "just-revoked.example")
	f.revoke(justRevoked, t0.Add(27*day+time.Hour+time.Second))
	ep := f.endpointOf(expiring)

	cfg := DefaultConfig().Alerts
	cfg.Webhook = &WebhookConfig{URL: srv.URL, SecretFile: "/unused", MaxAttempts: 5, Backoff: config.Duration{Duration: time.Minute}, Timeout: config.Duration{Duration: 5 * time.Second}}
	logs := &logBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	hosts := []*plugintest.Host{replicaHost(t, d, "replica-a"), replicaHost(t, d, "replica-b")}
	for _, h := range hosts {
		h.Log = log
	}
	m := newMetrics()
	replicas := []*alerter{
		newAlerter(f.s, cfg, rcv.secret, hosts[0], m),
		newAlerter(newTestStore(t, d), cfg, rcv.secret, hosts[1], newMetrics()),
	}
	runAll := func(at time.Time) {
		t.Helper()
		for _, h := range hosts {
			h.SetNow(at)
		}
		for _, a := range replicas {
			if err := a.run(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}

	runAll(t0.Add(26 * day)) // 4 days left: outside the 72h window
	if n := len(rcv.payloads()); n != 0 || logs.count("endpoint expiring") != 0 {
		t.Fatalf("alert before the window: %d webhooks", n)
	}
	runAll(t0.Add(27*day + time.Hour)) // inside: raised, first POST fails
	if logs.count("endpoint expiring") != 1 || len(rcv.payloads()) != 0 {
		t.Fatalf("after first run: %d log lines, %d webhooks", logs.count("endpoint expiring"), len(rcv.payloads()))
	}
	if g := testutil.ToFloat64(m.expiring); g != 1 {
		t.Fatalf("expiring gauge = %v, want 1", g)
	}
	runAll(t0.Add(27*day + time.Hour + 30*time.Second)) // back-off not over
	if len(rcv.payloads()) != 0 {
		t.Fatal("retried before the back-off")
	}
	for i := range 5 {
		runAll(t0.Add(27*day + 2*time.Hour + time.Duration(i)*time.Minute))
	}
	got := rcv.payloads()
	if len(got) != 1 || rcv.bad != 0 {
		t.Fatalf("webhooks = %+v (bad signatures %d), want exactly one", got, rcv.bad)
	}
	if got[0].EndpointID != ep.ID || got[0].Serial != expiring || !got[0].ExpiresAt.Equal(t0.Add(30*day)) || got[0].Type != "endpoint.expiring" {
		t.Fatalf("alert = %+v, want endpoint %s serial %s", got[0], ep.ID, expiring)
	}
	if logs.count("endpoint expiring") != 1 {
		t.Fatalf("alert logged %d times", logs.count("endpoint expiring"))
	}

	// Renewal moves the expiry out of the window; its own expiry alerts again.
	next := f.renew(expiring, t0.Add(28*day), 30*day, false)
	runAll(t0.Add(29 * day))
	if len(rcv.payloads()) != 1 {
		t.Fatal("alerted after renewal")
	}
	runAll(t0.Add(56 * day))
	got = rcv.payloads()
	if len(got) != 2 || got[1].Serial != next || got[1].EndpointID != ep.ID {
		t.Fatalf("second alert = %+v", got)
	}
}

// TestAlertLease: the alert job's lease, as two replicas see it through
// their hosts' Locker.
func TestAlertLease(t *testing.T) {
	db := bboltDB(t)
	hosts := map[string]*plugintest.Host{"a": replicaHost(t, db, "a"), "b": replicaHost(t, db, "b")}
	at := func(holder string, d time.Duration) plugins.Locker {
		hosts[holder].SetNow(t0.Add(d))
		return hosts[holder].Locker()
	}
	ctx := context.Background()
	tests := []struct {
		holder string
		at     time.Duration
		want   bool
	}{
		{"a", 0, true},
		{"b", time.Second, false},          // held by a
		{"a", 2 * time.Second, true},       // renewal by the holder
		{"b", 2*time.Second + 59e9, false}, // still held
		{"b", 2*time.Second + 61e9, true},  // expired: taken over
		{"a", 2*time.Second + 62e9, false}, // a lost it
	}
	for i, tt := range tests {
		got, err := at(tt.holder, tt.at).TryLock(ctx, alertLease, time.Minute)
		if err != nil || got != tt.want {
			t.Fatalf("step %d: %s acquire = %v, %v; want %v", i, tt.holder, got, err, tt.want)
		}
	}
	if err := at("b", 70*time.Second).Unlock(ctx, alertLease); err != nil {
		t.Fatal(err)
	}
	if got, _ := at("a", 71*time.Second).TryLock(ctx, alertLease, time.Minute); !got {
		t.Fatal("lease not free after release")
	}
}
