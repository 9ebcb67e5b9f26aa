// Package dynamicscep is the dynamicScep plugin: one-time SCEP challenges.
// It validates the challengePassword of every enrollment of the upstream
// SCEP provisioners it names, through the in-process SCEPCHALLENGE
// webhook, against challenges it issued itself: random, stored only as
// their SHA-256, short-lived, consumed exactly once across replicas, and
// optionally bound to an inventory device, a subject common name and
// subject alternative names. A certificate enrolled with a device-bound
// challenge is linked to the device and revoked when the device is
// disabled or removed. See docs/scep.md.
package dynamicscep

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// Name is the plugin's key under stepfort.plugins.
const Name = "dynamicScep"

// Actor names the plugin in the record of the revocations it makes.
const Actor = "plugin:dynamicScep"

func init() {
	plugins.Register(plugins.Factory{
		Name:      Name,
		NewConfig: func() plugins.Config { return defaultConfig() },
		New:       plugins.Constructor(New),
	})
}

// Config is the plugin's ca.json block.
type Config struct {
	// Provisioners are the upstream SCEP provisioners whose enrollments
	// need a challenge of this plugin (default ["scep"]).
	Provisioners []string `json:"provisioners"`
	// ChallengeTTL is the lifetime of a challenge created without a ttl
	// (default 60m, as NDES).
	ChallengeTTL config.Duration `json:"challengeTTL"`
	// MaxChallengeTTL caps the ttl a caller may ask for (default 24h).
	MaxChallengeTTL config.Duration `json:"maxChallengeTTL"`
	// Retention is how long a consumed, withdrawn or expired challenge is
	// kept (listed with all=true, explaining a refusal) before it is
	// purged (default 24h).
	Retention config.Duration `json:"retention"`
	// Jamf is Jamf Pro's SCEPChallenge webhook (jamf.go); nil is off.
	Jamf *JamfConfig `json:"jamf,omitempty"`
	// NDES serves the Microsoft NDES URLs (ndes.go); nil is off.
	NDES *NDESConfig `json:"ndes,omitempty"`
	// Intune validates Intune-minted challenges (intune.go); nil is off.
	Intune *IntuneConfig `json:"intune,omitempty"`
}

func defaultConfig() *Config {
	return &Config{
		Provisioners:    []string{"scep"},
		ChallengeTTL:    config.Duration{Duration: 60 * time.Minute},
		MaxChallengeTTL: config.Duration{Duration: 24 * time.Hour},
		Retention:       config.Duration{Duration: 24 * time.Hour},
	}
}

// Limits of the configuration.
const (
	minTTL          = time.Second
	maxMaxTTL       = 30 * 24 * time.Hour
	minRetention    = time.Minute
	maxRetention    = 90 * 24 * time.Hour
	maxProvisioners = 64
)

// Validate checks the configuration; errors name the JSON path.
func (c *Config) Validate() error {
	if len(c.Provisioners) == 0 {
		return config.Errorf("provisioners", "must name at least one SCEP provisioner")
	}
	if len(c.Provisioners) > maxProvisioners {
		return config.Errorf("provisioners", "must name at most %d provisioners, got %d", maxProvisioners, len(c.Provisioners))
	}
	for i, n := range c.Provisioners {
		if n == "" || n == "*" || slices.Contains(c.Provisioners[:i], n) {
			return config.Errorf(fmt.Sprintf("provisioners[%d]", i), "must name a SCEP provisioner once, got %q", n)
		}
	}
	if d := c.MaxChallengeTTL.Duration; d < minTTL || d > maxMaxTTL {
		return config.Errorf("maxChallengeTTL", "must be between %s and %s, got %s", minTTL, maxMaxTTL, d)
	}
	if d := c.ChallengeTTL.Duration; d < minTTL || d > c.MaxChallengeTTL.Duration {
		return config.Errorf("challengeTTL", "must be between %s and maxChallengeTTL (%s), got %s", minTTL, c.MaxChallengeTTL.Duration, d)
	}
	if d := c.Retention.Duration; d < minRetention || d > maxRetention {
		return config.Errorf("retention", "must be between %s and %s, got %s", minRetention, maxRetention, d)
	}
	if err := c.Jamf.validate(c); err != nil {
		return err
	}
	if err := c.NDES.validate(c); err != nil {
		return err
	}
	if err := c.Intune.validate(c); err != nil {
		return err
	}
	return nil
}

// NamedProvisioners implements plugins.ProvisionerChecker: every named
// provisioner must exist and be of type SCEP, or a typo would leave a
// provisioner on its static challenge.
func (c *Config) NamedProvisioners() []plugins.NamedProvisioner {
	out := make([]plugins.NamedProvisioner, 0, len(c.Provisioners))
	for i, n := range c.Provisioners {
		out = append(out, plugins.NamedProvisioner{Path: fmt.Sprintf("provisioners[%d]", i), Name: n, Types: []string{"SCEP"}})
	}
	return out
}

// Plugin issues and validates one-time SCEP challenges.
type Plugin struct {
	cfg        *Config
	host       plugins.Host
	challenges *Challenges
	links      *Links
	inventory  *inventory.Store
	metrics    *metrics
	intune     *intune // nil without an intune block
	log        *slog.Logger
}

// New opens the plugin's tables and the inventory (read only) on the
// host's database, registers the metrics and starts the purge loop.
func New(cfg *Config, h plugins.Host) (*Plugin, error) {
	if h.DB() == nil {
		return nil, fmt.Errorf("%s: a database is required", Name)
	}
	challenges, err := NewChallenges(h.DB())
	if err != nil {
		return nil, err
	}
	links, err := NewLinks(h.DB())
	if err != nil {
		return nil, err
	}
	// Read-only use: the plugin never changes a device, so its store
	// records no events.
	inv, err := inventory.NewStore(h.DB(), h.Now)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(h.Metrics())
	if err != nil {
		return nil, err
	}
	p := &Plugin{cfg: cfg, host: h, challenges: challenges, links: links, inventory: inv, metrics: m, log: h.Logger()}
	if p.intune, err = newIntune(cfg.Intune, h, m); err != nil {
		return nil, err
	}
	h.Go(Name+".purge", p.purgeLoop)
	return p, nil
}

// Name implements plugins.Plugin.
func (p *Plugin) Name() string { return Name }

// NamedProvisioners implements plugins.ProvisionerChecker.
func (p *Plugin) NamedProvisioners() []plugins.NamedProvisioner { return p.cfg.NamedProvisioners() }

// SCEPProvisioners implements plugins.SCEPChallengeValidator and
// plugins.SCEPNotifier.
func (p *Plugin) SCEPProvisioners() []string { return slices.Clone(p.cfg.Provisioners) }

// Routes implements plugins.RouteProvider: the Jamf webhook and the NDES
// URLs on the HTTPS listener.
func (p *Plugin) Routes(r chi.Router) {
	p.jamfRoutes(r)
	p.ndesRoutes(r)
}

// InsecureRoutes implements plugins.InsecureRouteProvider: the NDES URLs
// on the HTTP listener, as NDES serves them.
func (p *Plugin) InsecureRoutes(r chi.Router) { p.ndesRoutes(r) }

func (p *Plugin) served(provisioner string) bool {
	return slices.Contains(p.cfg.Provisioners, provisioner)
}

// purgeInterval is how often the purge loop runs.
const purgeInterval = 10 * time.Minute

// purgeLoop removes, at start and every purgeInterval, challenges past
// their retention and pending device links nobody will use.
func (p *Plugin) purgeLoop(ctx context.Context) {
	t := time.NewTicker(purgeInterval)
	defer t.Stop()
	for {
		n, err := p.challenges.Purge(ctx, p.host.Now(), p.cfg.Retention.Duration)
		if err != nil && ctx.Err() == nil {
			p.log.Error("SCEP challenge purge", "event", "scep.purge_failed", "error", err)
		}
		m, err := p.links.PurgePending(ctx, p.host.Now())
		if err != nil && ctx.Err() == nil {
			p.log.Error("SCEP pending link purge", "event", "scep.purge_failed", "error", err)
		}
		if n+m > 0 {
			p.log.Info("SCEP state purged", "event", "scep.purged", "challenges", n, "pendingLinks", m)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

var (
	_ plugins.SCEPChallengeValidator = (*Plugin)(nil)
	_ plugins.SCEPNotifier           = (*Plugin)(nil)
	_ plugins.DeviceObserver         = (*Plugin)(nil)
	_ plugins.CertificateObserver    = (*Plugin)(nil)
	_ plugins.AdminRouteProvider     = (*Plugin)(nil)
	_ plugins.RouteProvider          = (*Plugin)(nil)
	_ plugins.InsecureRouteProvider  = (*Plugin)(nil)
	_ plugins.ProvisionerChecker     = (*Config)(nil)
)
