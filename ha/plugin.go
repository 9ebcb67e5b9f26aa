// Package ha makes revocation active: an OCSP responder that answers from
// the shared database on every replica, and certificates that point at it
// and at the CRL without templates. (The coordinated CRL publisher and
// leases across replicas are the next step; see docs/ha.md.)
package ha

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/http"
	"net/url"
	"slices"
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
	// CRLURL is the CRL distribution point put into certificates. It must
	// equal upstream's crl.idpURL (the CRL's Issuing Distribution Point), or
	// `openssl verify -crl_check` rejects every certificate with "different
	// CRL scope"; empty means use crl.idpURL.
	CRLURL string `json:"crlURL"`
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
}

// DefaultConfig is the configuration with defaults.
func DefaultConfig() *Config {
	return &Config{OCSP: OCSPConfig{
		Validity:          config.Duration{Duration: 24 * time.Hour},
		Signer:            "delegated",
		ResponderLifetime: config.Duration{Duration: 7 * 24 * time.Hour},
	}}
}

// Validate checks ranges and URLs.
func (c *Config) Validate() error {
	if v := c.OCSP.Validity.Duration; v < 8*time.Hour || v > 10*24*time.Hour {
		return config.Errorf("ocsp.validity", "must be between 8h and 240h (10 days), got %s", v)
	}
	if c.OCSP.Signer != "delegated" && c.OCSP.Signer != "ca" {
		return config.Errorf("ocsp.signer", `must be "delegated" or "ca", got %q`, c.OCSP.Signer)
	}
	if l := c.OCSP.ResponderLifetime.Duration; l < 2*c.OCSP.Validity.Duration {
		return config.Errorf("ocsp.responderLifetime", "must be at least twice ocsp.validity (%s), got %s", c.OCSP.Validity.Duration, l)
	}
	for path, u := range map[string]string{"ocsp.url": c.OCSP.URL, "crlURL": c.CRLURL} {
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
	cfg       *Config
	crlURL    string // resolved CDP, "" when the CRL is disabled
	responder *Responder
}

// New returns the plugin.
func New(cfg *Config) *Plugin { return &Plugin{cfg: cfg} }

// Name implements plugins.Plugin.
func (p *Plugin) Name() string { return Name }

// MutateConfig makes the CRL's Issuing Distribution Point and the
// certificates' distribution point the same URL.
func (p *Plugin) MutateConfig(cfg *upconfig.Config) error {
	p.crlURL = ""
	if !cfg.CRL.IsEnabled() {
		if p.cfg.CRLURL != "" {
			return fmt.Errorf("stepfort.plugins.%s.crlURL: set, but upstream's crl.enabled is false", Name)
		}
		return nil
	}
	switch {
	case p.cfg.CRLURL == "" && cfg.CRL.IDPurl == "":
		return fmt.Errorf("crl.idpURL: required with stepfort.plugins.%s so certificates can name the CRL", Name)
	case p.cfg.CRLURL == "":
		p.crlURL = cfg.CRL.IDPurl
	case cfg.CRL.IDPurl == "":
		cfg.CRL.IDPurl = p.cfg.CRLURL
		p.crlURL = p.cfg.CRLURL
	case cfg.CRL.IDPurl != p.cfg.CRLURL:
		return fmt.Errorf("stepfort.plugins.%s.crlURL %q differs from crl.idpURL %q: they must be equal", Name, p.cfg.CRLURL, cfg.CRL.IDPurl)
	default:
		p.crlURL = p.cfg.CRLURL
	}
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

// Start builds the responder.
func (p *Plugin) Start(_ context.Context, h plugins.Host) error {
	if h.DB() == nil {
		return fmt.Errorf("the OCSP responder needs a database")
	}
	r, err := NewResponder(h, p.cfg.OCSP)
	if err != nil {
		return err
	}
	p.responder = r
	return nil
}

// Stop implements plugins.Plugin.
func (p *Plugin) Stop(context.Context) error { return nil }

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
}
