// Package ha makes revocation active and consistent across replicas: an
// OCSP responder that answers from the shared database on every replica, a
// CRL published by exactly one replica at a time (a lease) with strictly
// increasing numbers, and certificates that point at both without
// templates. docs/ha.md is the design record.
package ha

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	upconfig "github.com/smallstep/certificates/authority/config"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/plugins"
)

// Name is the plugin's key under stepfort.plugins.
const Name = "revocation"

func init() {
	plugins.Register(plugins.Factory{
		Name:      Name,
		NewConfig: func() plugins.Config { return DefaultConfig() },
		New:       func(c plugins.Config) (plugins.Plugin, error) { return New(c.(*Config)), nil },
	})
}

// Config is the plugin's ca.json block.
type Config struct {
	OCSP OCSPConfig `json:"ocsp"`
	CRL  CRLConfig  `json:"crl"`
}

// CRLConfig configures the coordinated CRL. Upstream's "crl" block still
// decides whether there is a CRL (enabled) and how long it is valid
// (cacheDuration); stepfort takes over generating it.
type CRLConfig struct {
	// URL is the CRL distribution point put into certificates. It must
	// equal upstream's crl.idpURL (the CRL's Issuing Distribution Point), or
	// `openssl verify -crl_check` rejects every certificate with "different
	// CRL scope"; empty means use crl.idpURL.
	URL string `json:"url"`
	// PublishDelay bounds the time from a revocation to a CRL that lists it;
	// revocations within it are published together.
	PublishDelay config.Duration `json:"publishDelay"`
	// LeaseTTL is how long the publisher lease lasts without renewal: the
	// longest time without a publisher after its replica dies.
	LeaseTTL config.Duration `json:"leaseTTL"`
}

// OCSPConfig configures the OCSP responder.
type OCSPConfig struct {
	// URL is put into certificates (AIA); empty disables the AIA extension
	// but the responder still answers at /ocsp.
	URL string `json:"url"`
	// Validity is how long a response is valid (nextUpdate - thisUpdate).
	Validity config.Duration `json:"validity"`
	// Signer is "delegated" (a responder certificate issued by the
	// intermediate, rotated automatically) or "ca" (the intermediate key).
	Signer string `json:"signer"`
	// ResponderLifetime is the delegated responder certificate's lifetime.
	ResponderLifetime config.Duration `json:"responderLifetime"`
	// CacheSize bounds the signed responses kept for certificates this CA
	// issued (about 1 KiB each); past it an arbitrary one is dropped and
	// signed again when asked. Responses for unknown serials have their own
	// bound (65,536) so made-up serials cannot push real ones out.
	CacheSize int `json:"cacheSize"`
	// AccessLog puts every OCSP request into upstream's access log. Off by
	// default: at thousands of requests per second the log line costs more
	// than the answer; stepfort_ocsp_responses_total counts them by status
	// and errors are logged either way.
	AccessLog bool `json:"accessLog"`
}

// DefaultConfig is the configuration with defaults.
func DefaultConfig() *Config {
	return &Config{
		OCSP: OCSPConfig{
			Validity:          config.Duration{Duration: 24 * time.Hour},
			Signer:            "delegated",
			ResponderLifetime: config.Duration{Duration: 7 * 24 * time.Hour},
			CacheSize:         200_000,
		},
		CRL: CRLConfig{
			PublishDelay: config.Duration{Duration: 5 * time.Second},
			LeaseTTL:     config.Duration{Duration: 15 * time.Second},
		},
	}
}

// Validate checks ranges and URLs.
func (c *Config) Validate() error {
	if v := c.OCSP.Validity.Duration; v < 8*time.Hour || v > 10*24*time.Hour {
		return config.Errorf("ocsp.validity", "must be between 8h and 240h (10 days), got %s", v)
	}
	if n := c.OCSP.CacheSize; n < 1000 || n > 50_000_000 {
		return config.Errorf("ocsp.cacheSize", "must be between 1000 and 50000000 responses, got %d", n)
	}
	if c.OCSP.Signer != "delegated" && c.OCSP.Signer != "ca" {
		return config.Errorf("ocsp.signer", `must be "delegated" or "ca", got %q`, c.OCSP.Signer)
	}
	if l := c.OCSP.ResponderLifetime.Duration; l < 2*c.OCSP.Validity.Duration {
		return config.Errorf("ocsp.responderLifetime", "must be at least twice ocsp.validity (%s), got %s", c.OCSP.Validity.Duration, l)
	}
	if d := c.CRL.PublishDelay.Duration; d < time.Second || d > 10*time.Minute {
		return config.Errorf("crl.publishDelay", "must be between 1s and 10m, got %s", d)
	}
	if d := c.CRL.LeaseTTL.Duration; d < 3*time.Second || d > 10*time.Minute {
		return config.Errorf("crl.leaseTTL", "must be between 3s and 10m, got %s", d)
	}
	for path, u := range map[string]string{"ocsp.url": c.OCSP.URL, "crl.url": c.CRL.URL} {
		if u == "" {
			continue
		}
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return config.Errorf(path, "must be an absolute http(s) URL, got %q", u)
		}
	}
	return nil
}

// Plugin is the revocation plugin.
type Plugin struct {
	cfg         *Config
	crlURL      string        // resolved CDP and IDP, "" when the CRL is disabled
	crlValidity time.Duration // upstream's crl.cacheDuration
	responder   *Responder
	watching    atomic.Pointer[Responder] // the responder, once it can take writes
	publisher   *Publisher
	done        chan struct{}
}

// New returns the plugin.
func New(cfg *Config) *Plugin { return &Plugin{cfg: cfg} }

// Name implements plugins.Plugin.
func (p *Plugin) Name() string { return Name }

// MutateConfig makes the CRL's Issuing Distribution Point and the
// certificates' distribution point the same URL, and switches off upstream's
// own CRL generation (every replica regenerates on its own there, with
// racing numbers): the lease holder publishes instead, into the same row.
func (p *Plugin) MutateConfig(cfg *upconfig.Config) error {
	p.crlURL = ""
	want := p.cfg.CRL.URL
	if !cfg.CRL.IsEnabled() {
		if want != "" {
			return fmt.Errorf("stepfort.plugins.%s.crl.url: set, but upstream's crl.enabled is false", Name)
		}
		return nil
	}
	switch {
	case want == "" && cfg.CRL.IDPurl == "":
		return fmt.Errorf("crl.idpURL: required with stepfort.plugins.%s so certificates can name the CRL", Name)
	case want == "":
		p.crlURL = cfg.CRL.IDPurl
	case cfg.CRL.IDPurl != "" && cfg.CRL.IDPurl != want:
		return fmt.Errorf("stepfort.plugins.%s.crl.url %q differs from crl.idpURL %q: they must be equal", Name, want, cfg.CRL.IDPurl)
	default:
		p.crlURL = want
	}
	p.crlValidity = 24 * time.Hour
	if cfg.CRL.CacheDuration != nil && cfg.CRL.CacheDuration.Duration > 0 {
		p.crlValidity = cfg.CRL.CacheDuration.Duration
	}
	if p.crlValidity > 10*24*time.Hour {
		return fmt.Errorf("crl.cacheDuration: at most 240h (10 days), got %s", p.crlValidity)
	}
	cfg.CRL.Enabled = false
	cfg.CRL.GenerateOnRevoke = false
	return nil
}

// EnforceCertificate adds the CRL distribution point and the OCSP URL to
// issued certificates (renewals copy them from the old certificate).
func (p *Plugin) EnforceCertificate(cert *x509.Certificate) error {
	if p.crlURL != "" && !slices.Contains(cert.CRLDistributionPoints, p.crlURL) {
		cert.CRLDistributionPoints = append(cert.CRLDistributionPoints, p.crlURL)
	}
	if u := p.cfg.OCSP.URL; u != "" && !slices.Contains(cert.OCSPServer, u) {
		cert.OCSPServer = append(cert.OCSPServer, u)
	}
	return nil
}

// Start builds the responder and, when there is a CRL, starts the
// publisher loop (every replica runs it; the lease picks the one that acts).
func (p *Plugin) Start(ctx context.Context, h plugins.Host) error {
	if h.DB() == nil {
		return fmt.Errorf("the revocation plugin needs a database")
	}
	r, err := NewResponder(h, p.cfg.OCSP)
	if err != nil {
		return err
	}
	p.responder = r
	p.watching.Store(r)
	if err := r.StartStatusFeed(ctx); err != nil {
		return err
	}
	go r.RefreshLoop(ctx)
	p.done = make(chan struct{})
	if p.crlURL == "" {
		close(p.done)
		return nil
	}
	host, _ := os.Hostname()
	replica := fmt.Sprintf("%s/%d/%x", host, os.Getpid(), time.Now().UnixNano()&0xffffff)
	if p.publisher, err = NewPublisher(h, replica, p.crlURL, p.crlValidity, p.cfg.CRL.PublishDelay.Duration, p.cfg.CRL.LeaseTTL.Duration); err != nil {
		return err
	}
	go func() { defer close(p.done); p.publisher.Run(ctx) }()
	return nil
}

// Stop waits for the publisher to release its lease.
func (p *Plugin) Stop(ctx context.Context) error {
	if p.done == nil {
		return nil
	}
	select {
	case <-p.done:
	case <-ctx.Done():
	}
	return nil
}

// Health reports the CRL publisher lease holder and the CRL number.
func (p *Plugin) Health(context.Context) (map[string]any, error) {
	out := map[string]any{}
	if r := p.responder; r != nil {
		// "memory": statuses come from the live index; "database": read
		// per request (no feed, or the feed is reconnecting).
		out["ocspStatusSource"] = map[bool]string{true: "memory", false: "database"}[r.idx.isLive()]
	}
	if p.publisher == nil {
		return out, nil
	}
	l, err := p.publisher.leases.Get(crlLeaseName)
	if err != nil {
		return nil, fmt.Errorf("read CRL lease: %w", err)
	}
	out["crlPublisher"] = l.Holder
	out["crlPublisherIsSelf"] = l.Holder == p.publisher.replica && time.Now().Before(l.Until)
	if info, _, err := p.publisher.current(); err == nil && info != nil {
		out["crlNumber"] = info.Number
	}
	return out, nil
}

// DirectRoute answers OCSP requests ahead of upstream's middleware and
// router unless ocsp.accessLog asks for them in the access log. The
// responder recovers its own panics and counts responses by status.
func (p *Plugin) DirectRoute(r *http.Request) http.Handler {
	if p.cfg.OCSP.AccessLog || p.responder == nil {
		return nil
	}
	path := strings.TrimPrefix(r.URL.Path, "/1.0")
	switch {
	case r.Method == http.MethodPost && path == "/ocsp",
		(r.Method == http.MethodGet || r.Method == http.MethodHead) && strings.HasPrefix(path, "/ocsp/"):
		return p.responder
	}
	return nil
}

// CertificateCommitted keeps the responder's status index current with this
// replica's own writes, before they are acknowledged.
func (p *Plugin) CertificateCommitted(ev plugins.CertificateEvent) {
	if r := p.watching.Load(); r != nil {
		r.Committed(ev)
	}
}

// ObserveCertificate marks the CRL dirty on every revocation.
func (p *Plugin) ObserveCertificate(_ context.Context, ev plugins.CertificateEvent) error {
	if ev.Kind != plugins.EventRevoked || p.publisher == nil {
		return nil
	}
	return MarkDirty(p.publisher.store, ev.OccurredAt)
}

// Routes serves OCSP over HTTPS.
func (p *Plugin) Routes(r chi.Router) { p.mount(r) }

// InsecureRoutes serves OCSP over plain HTTP, where clients expect it.
func (p *Plugin) InsecureRoutes(r chi.Router) { p.mount(r) }

func (p *Plugin) mount(r chi.Router) {
	h := func(w http.ResponseWriter, req *http.Request) { p.responder.ServeHTTP(w, req) }
	r.Post("/ocsp", h)
	r.Get("/ocsp/*", h)
	r.Post("/1.0/ocsp", h)
	r.Get("/1.0/ocsp/*", h)
	if p.crlURL != "" {
		// Replaces upstream's api.CRL, which would answer "CRL not enabled"
		// now that upstream's generation is switched off.
		crl := func(w http.ResponseWriter, req *http.Request) { p.publisher.ServeCRL(w, req) }
		r.Get("/crl", crl)
		r.Get("/1.0/crl", crl)
	}
}
