// Package ha makes revocation active and consistent across replicas: an
// OCSP responder that answers from the shared database on every replica, a
// CRL published by exactly one replica at a time (a lease) with strictly
// increasing numbers, and certificates that point at both without
// templates. docs/ha.md is the design record.
package ha

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	upconfig "github.com/smallstep/certificates/authority/config"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/internal/crlchanges"
	"github.com/stepfort/stepfort/internal/legacy"
	"github.com/stepfort/stepfort/plugins"
)

// Name is the plugin's key under stepfort.plugins.
const Name = "revocation"

func init() {
	plugins.Register(plugins.Factory{
		Name:      Name,
		NewConfig: func() plugins.Config { return DefaultConfig() },
		New:       plugins.Constructor(New),
	})
}

// Config is the plugin's ca.json block.
type Config struct {
	OCSP OCSPConfig `json:"ocsp"`
	CRL  CRLConfig  `json:"crl"`
	// LegacyIssuers are CAs stepfort no longer issues under (an ADCS
	// issuing CA brought in by `stepfort migrate adcs issuer add`) whose
	// OCSP and CRLs it keeps serving. docs/migrate-adcs.md.
	LegacyIssuers []legacy.IssuerConfig `json:"legacyIssuers,omitempty"`
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
	// IDP puts a critical Issuing Distribution Point naming URL into the
	// CRL. Off by default: NSS (Firefox, Thunderbird, RHEL tooling) refuses
	// a CRL with it (SEC_ERROR_CRL_UNKNOWN_CRITICAL_EXTENSION), and a CRL
	// without one is a complete CRL of the issuer, which OpenSSL accepts.
	IDP bool `json:"idp,omitempty"`
	// Delta configures delta CRLs (RFC 5280 5.2.4).
	Delta DeltaConfig `json:"delta,omitzero"`
}

// DeltaConfig turns on delta CRLs: a base CRL every BasePeriod carrying a
// Freshest CRL extension that names URL, and delta CRLs listing what
// changed since, every DeltaPeriod and within PublishDelay of a
// revocation. Certificates carry the Freshest CRL extension too.
type DeltaConfig struct {
	Enabled bool `json:"enabled"`
	// URL is where the delta CRL is published; empty: derived from the
	// CRL URL (see docs/ha.md).
	URL         string          `json:"url,omitempty"`
	BasePeriod  config.Duration `json:"basePeriod,omitzero"`
	DeltaPeriod config.Duration `json:"deltaPeriod,omitzero"`
}

// periods returns the base and delta periods with defaults.
func (d *DeltaConfig) periods() (base, delta time.Duration) {
	base, delta = d.BasePeriod.Duration, d.DeltaPeriod.Duration
	if base == 0 {
		base = DefaultBasePeriod
	}
	if delta == 0 {
		delta = DefaultDeltaPeriod
	}
	return base, delta
}

func (d *DeltaConfig) validate() error {
	base, delta := d.periods()
	switch {
	case base < 2*time.Second || base > 366*24*time.Hour:
		return config.Errorf("crl.delta.basePeriod", "must be between 2s and 8784h (366 days), got %s", base)
	case delta < time.Second || delta >= base:
		return config.Errorf("crl.delta.deltaPeriod", "must be at least 1s and shorter than crl.delta.basePeriod (%s), got %s", base, delta)
	}
	return nil
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
	// ResponderKey is a KMS key URI (e.g. a pkcs11: URI naming the
	// module, token, key and pin-source) of stepfort's own delegated
	// responder key; empty: a key is made in memory at every rotation.
	// Only with signer "delegated". Legacy issuers keep generated keys.
	ResponderKey string `json:"responderKey,omitempty"`
	// CacheSize bounds the signed responses kept for certificates this CA
	// issued (about 1 KiB each); past it an arbitrary one is dropped and
	// signed again when asked. Responses for unknown serials have their own
	// bounds (65,536 and UnknownCacheBytes) so made-up serials cannot push
	// real ones out.
	CacheSize int `json:"cacheSize"`
	// CacheBytes bounds the same cache in bytes; whichever of the two
	// bounds is reached first applies.
	CacheBytes int64 `json:"cacheBytes"`
	// UnknownCacheBytes bounds, in bytes, the signed responses kept for
	// serials this CA never issued: anyone can ask for those.
	UnknownCacheBytes int64 `json:"unknownCacheBytes"`
	// RequestCacheBytes bounds, in bytes, the parsed requests kept so
	// repeated requests skip parsing (only requests for this CA's issuer).
	RequestCacheBytes int64 `json:"requestCacheBytes"`
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
			CacheBytes:        256 << 20,
			UnknownCacheBytes: 16 << 20,
			RequestCacheBytes: 8 << 20,
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
	for _, b := range []struct {
		path     string
		v        int64
		min, max int64
	}{
		{"ocsp.cacheBytes", c.OCSP.CacheBytes, 1 << 20, 64 << 30},
		{"ocsp.unknownCacheBytes", c.OCSP.UnknownCacheBytes, 64 << 10, 1 << 30},
		{"ocsp.requestCacheBytes", c.OCSP.RequestCacheBytes, 64 << 10, 1 << 30},
	} {
		if b.v < b.min || b.v > b.max {
			return config.Errorf(b.path, "must be between %d and %d bytes, got %d", b.min, b.max, b.v)
		}
	}
	if c.OCSP.Signer != "delegated" && c.OCSP.Signer != "ca" {
		return config.Errorf("ocsp.signer", `must be "delegated" or "ca", got %q`, c.OCSP.Signer)
	}
	if err := validResponderKey(c.OCSP); err != nil {
		return err
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
	if err := c.CRL.Delta.validate(); err != nil {
		return err
	}
	names, paths := map[string]bool{}, map[string]string{}
	for i, l := range c.LegacyIssuers {
		path := fmt.Sprintf("legacyIssuers[%d]", i)
		if err := l.Validate(path); err != nil {
			return err
		}
		if names[l.Name] {
			return config.Errorf(path+".name", "%q is used twice", l.Name)
		}
		names[l.Name] = true
		for _, u := range []string{l.CRLURL, l.DeltaCRLURL} {
			if u == "" {
				continue
			}
			up, _ := urlPath(u)
			if other, ok := paths[up]; ok {
				return config.Errorf(path, "CRL path %q is also %s's", up, other)
			}
			paths[up] = l.Name
		}
	}
	for path, u := range map[string]string{"ocsp.url": c.OCSP.URL, "crl.url": c.CRL.URL, "crl.delta.url": c.CRL.Delta.URL} {
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

// Plugin is the revocation plugin. Its fields are set by New and never
// change: what a configuration reload changes (the CRL's URL and validity)
// lives in a generation, handed to the publisher when it activates.
type Plugin struct {
	cfg       *Config
	host      plugins.Host
	responder *Responder
	publisher *Publisher
	// legacyStore holds the legacy issuers' imported certificates; nil
	// when none is configured.
	legacyStore *legacy.Store
}

// New builds the plugin ready to serve: the OCSP responder with its status
// index loaded (or its PostgreSQL feed prepared) and the CRL publisher,
// which publishes nothing until a generation with a CRL is activated. The
// background loops run in the host's goroutine group.
func New(cfg *Config, h plugins.Host) (*Plugin, error) {
	if h.DB() == nil {
		return nil, fmt.Errorf("the %s plugin needs a database", Name)
	}
	r, err := NewResponder(h, cfg.OCSP)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Plugin, error) {
		_ = r.Close()
		return nil, err
	}
	if err := r.StartStatusFeed(); err != nil {
		return fail(err)
	}
	pub, err := NewPublisher(h, cfg.CRL.PublishDelay.Duration, cfg.CRL.LeaseTTL.Duration)
	if err != nil {
		return fail(err)
	}
	legacyStore, err := addLegacyIssuers(cfg.LegacyIssuers, h, r, pub)
	if err != nil {
		return fail(err)
	}
	h.Go("ocsp-refresh", r.RefreshLoop)
	// Every replica runs the publisher loop; the lease picks the one that
	// acts.
	h.Go("crl-publisher", pub.Run)
	return &Plugin{cfg: cfg, host: h, responder: r, publisher: pub, legacyStore: legacyStore}, nil
}

// addLegacyIssuers loads every legacy issuer and makes the responder
// answer for it and the publisher publish its CRL series.
func addLegacyIssuers(list []legacy.IssuerConfig, h plugins.Host, r *Responder, pub *Publisher) (*legacy.Store, error) {
	if len(list) == 0 {
		return nil, nil
	}
	store, err := legacy.OpenStore(h.DB())
	if err != nil {
		return nil, fmt.Errorf("legacy issuers: %w", err)
	}
	for i, c := range list {
		path := fmt.Sprintf("stepfort.plugins.%s.legacyIssuers[%d]", Name, i)
		iss, err := legacy.Load(c)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if err := r.AddLegacyIssuer(iss, store); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		scope, err := legacyScope(c)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if err := pub.AddLegacySeries(c.Name, iss.Cert, iss.Signer, scope, legacyStoreSource{store, c.Name}); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	return store, nil
}

// legacyScope is a legacy issuer's CRL scope: its old CDP URL, an IDP
// only if it had one, deltas at its old Freshest CRL URL. Without deltas
// a base is valid for its period plus the overlap.
func legacyScope(c legacy.IssuerConfig) (*CRLScope, error) {
	base, delta := c.BasePeriodOrDefault(), c.DeltaPeriodOrDefault()
	var opts []ScopeOption
	if c.IDP {
		opts = append(opts, WithIDP())
	}
	if c.DeltaCRLURL != "" {
		opts = append(opts, WithDelta(DeltaScope{URL: c.DeltaCRLURL, BasePeriod: base, DeltaPeriod: delta}))
	}
	return NewCRLScope(c.CRLURL, base+overlap(base), opts...)
}

// legacyStoreSource is one legacy issuer's revocations in legacy.Store.
type legacyStoreSource struct {
	store *legacy.Store
	name  string
}

func (l legacyStoreSource) ForEachRevoked(fn func([]byte, time.Time, int, time.Time) error) error {
	return l.store.ForEachRevoked(l.name, fn)
}

func (l legacyStoreSource) State() (int64, int64, error) {
	st, err := l.store.State(l.name)
	return st.Version, st.CRLNumberFloor, err
}

// Name implements plugins.Plugin.
func (p *Plugin) Name() string { return Name }

// generation is the plugin's part of one configuration generation. It is
// immutable: requests served by an old generation read only its own
// values while a reload builds the next one.
type generation struct {
	publisher *Publisher
	crl       *CRLScope // nil when the generation has no CRL
	ocspURL   string
}

// MutateConfig makes the CRL's Issuing Distribution Point and the
// certificates' distribution point the same URL, and switches off
// upstream's own CRL generation (every replica regenerates on its own
// there, with racing numbers): the lease holder publishes instead, into
// the same row. It returns the generation's enforcer and CRL scope; the
// publisher uses the scope once the generation is activated.
func (p *Plugin) MutateConfig(cfg *upconfig.Config) (plugins.Generation, error) {
	scope, err := p.crlScope(cfg)
	if err != nil {
		return nil, err
	}
	if scope != nil {
		cfg.CRL.Enabled = false
		cfg.CRL.GenerateOnRevoke = false
	}
	return &generation{publisher: p.publisher, crl: scope, ocspURL: p.cfg.OCSP.URL}, nil
}

// crlScope resolves the CRL URL and validity of cfg: nil when upstream's
// CRL is disabled.
func (p *Plugin) crlScope(cfg *upconfig.Config) (*CRLScope, error) {
	want := p.cfg.CRL.URL
	if !cfg.CRL.IsEnabled() {
		if want != "" {
			return nil, fmt.Errorf("stepfort.plugins.%s.crl.url: set, but upstream's crl.enabled is false", Name)
		}
		return nil, nil
	}
	url := want
	switch {
	case want == "" && cfg.CRL.IDPurl == "":
		return nil, fmt.Errorf("crl.idpURL: required with stepfort.plugins.%s so certificates can name the CRL", Name)
	case want == "":
		url = cfg.CRL.IDPurl
	case cfg.CRL.IDPurl != "" && cfg.CRL.IDPurl != want:
		return nil, fmt.Errorf("stepfort.plugins.%s.crl.url %q differs from crl.idpURL %q: they must be equal", Name, want, cfg.CRL.IDPurl)
	}
	validity := 24 * time.Hour
	if cfg.CRL.CacheDuration != nil && cfg.CRL.CacheDuration.Duration > 0 {
		validity = cfg.CRL.CacheDuration.Duration
	}
	if validity > 10*24*time.Hour {
		return nil, fmt.Errorf("crl.cacheDuration: at most 240h (10 days), got %s", validity)
	}
	var opts []ScopeOption
	if p.cfg.CRL.IDP {
		opts = append(opts, WithIDP())
	}
	if d := p.cfg.CRL.Delta; d.Enabled {
		base, delta := d.periods()
		opts = append(opts, WithDelta(DeltaScope{URL: d.URL, BasePeriod: base, DeltaPeriod: delta}))
	}
	return NewCRLScope(url, validity, opts...)
}

// EnforceCertificate adds this generation's CRL distribution point and the
// OCSP URL to issued certificates (renewals copy them from the old
// certificate).
func (g *generation) EnforceCertificate(cert *x509.Certificate) error {
	if g.crl != nil && !slices.Contains(cert.CRLDistributionPoints, g.crl.URL()) {
		cert.CRLDistributionPoints = append(cert.CRLDistributionPoints, g.crl.URL())
	}
	// With deltas, certificates name the delta CRL too (Freshest CRL):
	// OpenSSL looks for deltas only when the certificate or the base
	// carries it.
	if g.crl != nil && g.crl.freshest != nil &&
		findExtension(cert.ExtraExtensions, oidFreshestCRL) == nil && findExtension(cert.Extensions, oidFreshestCRL) == nil {
		cert.ExtraExtensions = append(cert.ExtraExtensions, *g.crl.freshest)
	}
	if u := g.ocspURL; u != "" && !slices.Contains(cert.OCSPServer, u) {
		cert.OCSPServer = append(cert.OCSPServer, u)
	}
	return nil
}

// Activate hands the generation's CRL scope to the publisher, which
// publishes a CRL with the new Issuing Distribution Point at once if it
// changed.
func (g *generation) Activate() { g.publisher.Activate(g.crl) }

// Stop gives up the CRL lease (if this replica holds it) so another
// replica publishes at once instead of after the lease expires, and closes
// the KMS responder key. The publisher loop has returned by now.
func (p *Plugin) Stop(ctx context.Context) error {
	// The loops that sign have returned: the KMS responder key can go.
	if err := p.responder.Close(); err != nil {
		p.host.Logger().Warn("close OCSP responder key", "error", err)
	}
	if err := p.host.Locker().Unlock(ctx, crlLeaseName); err != nil {
		return fmt.Errorf("release CRL lease: %w", err)
	}
	return nil
}

// Health reports where OCSP statuses come from, and when there is a CRL,
// the publisher lease holder and the CRL number. /health is
// unauthenticated: the holder is named by an opaque tag, since its replica
// id holds the host name, address and PID.
func (p *Plugin) Health(ctx context.Context) (map[string]any, error) {
	out := map[string]any{
		// "memory": statuses come from the live index; "database": read
		// per request (no feed, or the feed is reconnecting).
		"ocspStatusSource": map[bool]string{true: "memory", false: "database"}[p.responder.idx.isLive()],
	}
	if p.publisher.Scope() == nil {
		return out, nil
	}
	l, err := p.host.Locker().Lease(ctx, crlLeaseName)
	if err != nil {
		return nil, fmt.Errorf("read CRL lease: %w", err)
	}
	out["crlPublisher"] = replicaTag(l.Holder)
	out["crlPublisherIsSelf"] = l.Holder == p.host.Replica() && p.host.Now().Before(l.Until)
	if info, _, err := p.publisher.current(); err == nil && info != nil {
		out["crlNumber"] = info.Number
	}
	if p.publisher.Scope().Delta() != nil {
		if info, _, err := p.publisher.currentDelta(); err == nil && info != nil {
			out["crlDeltaNumber"] = info.Number
		}
	}
	return out, nil
}

// DirectRoute answers OCSP requests ahead of upstream's middleware and
// router unless ocsp.accessLog asks for them in the access log. The
// responder recovers its own panics and counts responses by status.
//
// It also serves the CRLs published at other paths than /crl and
// /1.0/crl (the own delta, legacy issuers' CRLs at their old CDP paths),
// matching the decoded path so that "%20", "+" and "%2B" all work.
func (p *Plugin) DirectRoute(r *http.Request) http.Handler {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		if h := p.publisher.Route(r.URL.Path); h != nil {
			return h
		}
	}
	if p.cfg.OCSP.AccessLog {
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
func (p *Plugin) CertificateCommitted(ev plugins.CertificateEvent) { p.responder.Committed(ev) }

// ObserveCertificate marks the CRL dirty on every revocation. It does so
// even while this replica's generation has no CRL: the lease holder may be
// another replica whose generation has one.
func (p *Plugin) ObserveCertificate(_ context.Context, ev plugins.CertificateEvent) error {
	if ev.Kind != plugins.EventRevoked {
		return nil
	}
	if p.cfg.CRL.Delta.Enabled && ev.Revocation != nil {
		// The change log the deltas list (the event is written with the
		// revocation, so the row is committed by now).
		c := crlchanges.Change{Serial: ev.Serial, RevokedAt: ev.Revocation.RevokedAt, Reason: ev.Revocation.ReasonCode}
		if cert, err := ev.Certificate(); err == nil {
			c.NotAfter = cert.NotAfter
		}
		if c.RevokedAt.IsZero() {
			c.RevokedAt = ev.OccurredAt
		}
		if err := crlchanges.Record(p.host.DB(), ownSeriesName, c, p.host.Now()); err != nil {
			return fmt.Errorf("record CRL change: %w", err)
		}
	}
	return MarkDirty(p.host.DB(), ev.OccurredAt)
}

// Routes serves OCSP and the CRL over HTTPS.
func (p *Plugin) Routes(r chi.Router) { p.mount(r) }

// InsecureRoutes serves OCSP and the CRL over plain HTTP, where clients
// expect them.
func (p *Plugin) InsecureRoutes(r chi.Router) { p.mount(r) }

// mount adds the OCSP and CRL routes. The CRL routes replace upstream's
// api.CRL, which would answer "CRL not enabled" now that upstream's
// generation is switched off; whether there is a CRL is decided per
// request by the active generation, since routes outlive reloads.
func (p *Plugin) mount(r chi.Router) {
	r.Post("/ocsp", p.responder.ServeHTTP)
	r.Get("/ocsp/*", p.responder.ServeHTTP)
	r.Post("/1.0/ocsp", p.responder.ServeHTTP)
	r.Get("/1.0/ocsp/*", p.responder.ServeHTTP)
	r.Get("/crl", p.publisher.ServeCRL)
	r.Get("/1.0/crl", p.publisher.ServeCRL)
}

// replicaTag is an opaque short name of a replica id (the first 12 hex
// digits of its SHA-256), the same on every replica, so operators can see
// whether replicas agree on one lease holder without learning its host
// name, address or PID; "" when there is no holder.
func replicaTag(id string) string {
	if id == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:6])
}

// AdminRoutes serves the revocation of legacy issuers' certificates
// (`stepfort migrate adcs revoke`); none without legacy issuers.
func (p *Plugin) AdminRoutes() []plugins.AdminRoute {
	if p.legacyStore == nil {
		return nil
	}
	known := map[string]bool{}
	for _, c := range p.cfg.LegacyIssuers {
		known[c.Name] = true
	}
	return []plugins.AdminRoute{legacyRevokeRoute(p.legacyStore, func(name string) bool { return known[name] }, p.host.Now, p.host.Audit())}
}
