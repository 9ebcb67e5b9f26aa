// Package billing groups certificates into Endpoints and meters them in
// Endpoint-months (docs/billing.md has the rules and their precise
// definitions).
//
// The plugin observes certificate events: a /sign certificate starts an
// Endpoint, a /renew or /rekey certificate joins its parent's Endpoint, and
// certificates of renewal-disabled provisioners and of ACME and SCEP are
// grouped by subject. Each event costs a constant number of keyed reads and
// compare-and-swap writes, so several replicas can record concurrently. A
// singleton job raises expiry alerts; the admin API lists Endpoints, shows a
// lineage, reports a month and rebuilds from upstream's tables.
package billing

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/plugins"
)

// Name is the plugin's key under stepfort.plugins.
const Name = "billing"

func init() {
	plugins.Register(plugins.Factory{
		Name:      Name,
		NewConfig: func() plugins.Config { return DefaultConfig() },
		New:       plugins.Constructor(New),
	})
}

// Config is the plugin's ca.json block.
type Config struct {
	// Mode is "endpoint" (default: Endpoint-months) or "certificate"
	// (certificates active in the month).
	Mode   string      `json:"mode"`
	Alerts AlertConfig `json:"alerts"`
}

// AlertConfig configures expiry alerts.
type AlertConfig struct {
	// Window: alert when an Endpoint's last certificate expires within it
	// (default 72h).
	Window config.Duration `json:"window"`
	// Interval between runs of the alert job (default 1m).
	Interval config.Duration `json:"interval"`
	// LeaseTTL is how long a replica holds the alert job before another
	// may take it over (default 2m; more than Interval).
	LeaseTTL config.Duration `json:"leaseTTL"`
	// Webhook, if set, receives each alert as a signed JSON POST.
	Webhook *WebhookConfig `json:"webhook,omitempty"`
}

// WebhookConfig configures the alert webhook.
type WebhookConfig struct {
	// URL is an http or https URL.
	URL string `json:"url"`
	// SecretFile holds the HMAC-SHA256 key (the file's bytes, surrounding
	// whitespace trimmed) that signs each body.
	SecretFile string `json:"secretFile"`
	// MaxAttempts per alert (default 10).
	MaxAttempts int `json:"maxAttempts"`
	// Backoff is the delay after the first failure, doubled after each
	// further failure up to 1h (default 10s).
	Backoff config.Duration `json:"backoff"`
	// Timeout of one POST (default 10s).
	Timeout config.Duration `json:"timeout"`
}

// DefaultConfig returns a configuration with every default filled in.
func DefaultConfig() *Config {
	return &Config{
		Mode: ModeEndpoint,
		Alerts: AlertConfig{
			Window:   config.Duration{Duration: 72 * time.Hour},
			Interval: config.Duration{Duration: time.Minute},
			LeaseTTL: config.Duration{Duration: 2 * time.Minute},
		},
	}
}

// Validate checks the values and fills webhook defaults.
func (c *Config) Validate() error {
	if c.Mode != ModeEndpoint && c.Mode != ModeCertificate {
		return config.Errorf("mode", "must be %q or %q, got %q", ModeEndpoint, ModeCertificate, c.Mode)
	}
	a := &c.Alerts
	if a.Window.Duration <= 0 {
		return config.Errorf("alerts.window", "must be positive, got %s", a.Window.Duration)
	}
	if d := a.Interval.Duration; d < 100*time.Millisecond || d > 24*time.Hour {
		return config.Errorf("alerts.interval", "must be between 100ms and 24h, got %s", d)
	}
	if a.LeaseTTL.Duration <= a.Interval.Duration {
		return config.Errorf("alerts.leaseTTL", "must be longer than alerts.interval (%s), got %s", a.Interval.Duration, a.LeaseTTL.Duration)
	}
	if w := a.Webhook; w != nil {
		if err := w.validate(); err != nil {
			return err
		}
	}
	return nil
}

func (w *WebhookConfig) validate() error {
	if !(len(w.URL) > 8 && (w.URL[:7] == "http://" || w.URL[:8] == "https://")) {
		return config.Errorf("alerts.webhook.url", "must be an http:// or https:// URL, got %q", w.URL)
	}
	if w.SecretFile == "" {
		return config.Errorf("alerts.webhook.secretFile", "required: the webhook body is always signed")
	}
	if !filepath.IsAbs(w.SecretFile) {
		return config.Errorf("alerts.webhook.secretFile", "must be absolute, got %q", w.SecretFile)
	}
	if w.MaxAttempts == 0 {
		w.MaxAttempts = 10
	}
	if w.MaxAttempts < 1 || w.MaxAttempts > 1000 {
		return config.Errorf("alerts.webhook.maxAttempts", "must be between 1 and 1000, got %d", w.MaxAttempts)
	}
	if w.Backoff.Duration == 0 {
		w.Backoff.Duration = 10 * time.Second
	}
	if w.Backoff.Duration < 0 {
		return config.Errorf("alerts.webhook.backoff", "must be positive, got %s", w.Backoff.Duration)
	}
	if w.Timeout.Duration == 0 {
		w.Timeout.Duration = 10 * time.Second
	}
	if w.Timeout.Duration < 0 {
		return config.Errorf("alerts.webhook.timeout", "must be positive, got %s", w.Timeout.Duration)
	}
	return nil
}

// Plugin is the billing plugin. It is complete when New returns: every
// field is set once there and never changed.
type Plugin struct {
	cfg    *Config
	host   plugins.Host
	store  *Store
	alerts *alerter
}

// New builds the plugin on host: it creates the billing tables, reads the
// webhook secret, registers the metrics and schedules the alert job with
// host.Go, so a bad secret file or a missing database fails the daemon's
// start instead of the first event.
func New(cfg *Config, host plugins.Host) (*Plugin, error) {
	store, err := NewStore(host.DB(), authorityPolicy{authority: hostAuthority(host)}, host.Logger())
	if err != nil {
		return nil, err
	}
	secret, err := readSecret(cfg.Alerts.Webhook)
	if err != nil {
		return nil, err
	}
	m := newMetrics()
	for _, c := range m.collectors() {
		// One plugin per daemon registry: a duplicate is a wiring bug.
		if err := host.Metrics().Register(c); err != nil {
			return nil, fmt.Errorf("register billing metrics: %w", err)
		}
	}
	p := &Plugin{cfg: cfg, host: host, store: store, alerts: newAlerter(store, cfg.Alerts, secret, host, m)}
	host.Go("billing expiry alerts", p.alerts.loop)
	return p, nil
}

// readSecret reads the webhook's HMAC key; nil without a webhook.
func readSecret(w *WebhookConfig) ([]byte, error) {
	if w == nil {
		return nil, nil
	}
	b, err := os.ReadFile(w.SecretFile)
	if err != nil {
		return nil, fmt.Errorf("alerts.webhook.secretFile: %w", err)
	}
	secret := trimSpace(b)
	if len(secret) == 0 {
		return nil, errors.New("alerts.webhook.secretFile: file is empty")
	}
	return secret, nil
}

// Name implements plugins.Plugin.
func (p *Plugin) Name() string { return Name }

// Stop implements plugins.Stopper: it hands the alert lease back, so on a
// clean shutdown another replica takes the job at its next run instead of
// after leaseTTL. The daemon has joined the alert loop by then.
func (p *Plugin) Stop(ctx context.Context) error {
	return p.alerts.release(ctx)
}

// ObserveCertificate records the event (idempotently).
func (p *Plugin) ObserveCertificate(ctx context.Context, ev plugins.CertificateEvent) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := p.store.Record(ev); err != nil {
		return fmt.Errorf("billing: %s %s: %w", ev.Kind, ev.Serial, err)
	}
	return nil
}

// Store returns the plugin's store, for tools and tests.
func (p *Plugin) Store() *Store { return p.store }

func trimSpace(b []byte) []byte {
	i, j := 0, len(b)
	for i < j && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	for j > i && (b[j-1] == ' ' || b[j-1] == '\n' || b[j-1] == '\r' || b[j-1] == '\t') {
		j--
	}
	return b[i:j]
}
