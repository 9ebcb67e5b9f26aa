package billing

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

// TestPluginLifecycle: the plugin serves as soon as New returns, its alert
// job runs in the host's goroutine group under the host's lease, and Stop
// hands the lease to the next replica at once.
func TestPluginLifecycle(t *testing.T) {
	rcv := &receiver{secret: []byte("s3cret")}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte("  s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Alerts.Interval = config.Duration{Duration: 100 * time.Millisecond}
	cfg.Alerts.Webhook = &WebhookConfig{URL: srv.URL, SecretFile: secretFile}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	db := bboltDB(t)
	host := replicaHost(t, db, "a")
	host.SetNow(t0)

	p, err := New(cfg, host)
	if err != nil {
		t.Fatal(err)
	}
	// ACME groups by subject without asking the (absent) authority.
	c, der := newCert(t, t0, day, "soon.example")
	ev := plugins.CertificateEvent{ID: "ev1", Kind: plugins.EventIssued, Serial: c.SerialNumber.String(), OccurredAt: t0, Provisioner: &acmeP, CertificateDER: der}
	if err := p.ObserveCertificate(context.Background(), ev); err != nil {
		t.Fatalf("observe right after New: %v", err)
	}

	waitFor(t, "the alert webhook", func() bool { return len(rcv.payloads()) == 1 })
	lease, err := host.Locker().Lease(context.Background(), alertLease)
	if err != nil || lease.Holder != host.Replica() {
		t.Fatalf("lease = %+v, %v; want held by %s", lease, err, host.Replica())
	}
	if !gathered(t, host, "stepfort_billing_endpoints_active") {
		t.Fatal("metrics not registered on the host")
	}

	host.Close() // what the daemon does before Stop: cancel and join host.Go
	if err := p.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	next := replicaHost(t, db, "b")
	next.SetNow(t0.Add(time.Second)) // well inside the released lease's TTL
	if got, err := next.Locker().TryLock(context.Background(), alertLease, time.Minute); err != nil || !got {
		t.Fatalf("next replica after Stop: %v, %v; want the lease", got, err)
	}
}

// TestNewFails: what New cannot build fails the daemon's start, through the
// factory too (a nil Plugin, not a typed nil).
func TestNewFails(t *testing.T) {
	missing := DefaultConfig()
	missing.Alerts.Webhook = &WebhookConfig{URL: "https://x.example/h", SecretFile: filepath.Join(t.TempDir(), "none")}
	empty := DefaultConfig()
	emptyFile := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(emptyFile, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty.Alerts.Webhook = &WebhookConfig{URL: "https://x.example/h", SecretFile: emptyFile}
	noDB := func(t testing.TB) *plugintest.Host { return plugintest.NewHostWithDB(t, nil, "") }
	tests := []struct {
		name string
		cfg  *Config
		host func(testing.TB) *plugintest.Host
		want string
	}{
		{"no database", DefaultConfig(), noDB, "needs a database"},
		{"missing secret file", missing, plugintest.NewHost, "alerts.webhook.secretFile"},
		{"empty secret file", empty, plugintest.NewHost, "alerts.webhook.secretFile: file is empty"},
	}
	f, ok := plugins.Lookup(Name)
	if !ok {
		t.Fatal("billing factory not registered")
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := f.New(tt.cfg, tt.host(t))
			if err == nil || !strings.Contains(err.Error(), tt.want) || p != nil {
				t.Fatalf("New = %v, %v; want nil and an error containing %q", p, err, tt.want)
			}
		})
	}
}

// waitFor polls cond for up to 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// gathered reports whether the host's registry exports the metric name.
func gathered(t *testing.T, h *plugintest.Host, name string) bool {
	t.Helper()
	mfs, err := h.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return true
		}
	}
	return false
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name, json, field string
	}{
		{"defaults", `{}`, ""},
		{"certificate mode", `{"mode":"certificate"}`, ""},
		{"bad mode", `{"mode":"device"}`, "mode"},
		{"bad window", `{"alerts":{"window":"-1h"}}`, "alerts.window"},
		{"lease not above interval", `{"alerts":{"interval":"1m","leaseTTL":"1m"}}`, "alerts.leaseTTL"},
		{"webhook url", `{"alerts":{"webhook":{"url":"ftp://x","secretFile":"/s"}}}`, "alerts.webhook.url"},
		{"webhook secret", `{"alerts":{"webhook":{"url":"https://x.example/h"}}}`, "alerts.webhook.secretFile"},
		{"webhook ok", `{"alerts":{"webhook":{"url":"https://x.example/h","secretFile":"/s"}}}`, ""},
		{"unknown key", `{"mood":"x"}`, "mood"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			err := config.DecodeStrict([]byte(tt.json), c, "")
			if err == nil {
				err = c.Validate()
			}
			if tt.field == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			var fe *config.FieldError
			if err == nil || !errors.As(err, &fe) || !strings.Contains(fe.Path, tt.field) {
				t.Fatalf("error %v, want one naming %s", err, tt.field)
			}
		})
	}
}
