// Package deviceattest is the inventory gate of the device identity chain.
// For the ACME provisioners it names (default "agents") a device-attest-01
// challenge, of any attestation format, becomes valid only for a permanent
// identifier that belongs to a registered, active device; the same check
// holds at finalize and on /renew and /rekey. It links every certificate to
// its device (device certificates from the attestation, account certificates
// from the X5C leaf that bought them) and revokes them, through upstream's
// revocation path, when the device is disabled or removed. See
// docs/deviceattest.md.
package deviceattest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smallstep/certificates/acme"
	"github.com/smallstep/certificates/authority"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// Name is the plugin's key under stepfort.plugins.
const Name = "deviceAttest"

func init() {
	plugins.Register(plugins.Factory{
		Name:      Name,
		NewConfig: func() plugins.Config { return defaultConfig() },
		New:       func(c plugins.Config) (plugins.Plugin, error) { return New(c.(*Config)), nil },
	})
}

// Config is the plugin's ca.json block.
type Config struct {
	// Provisioners are the ACME provisioners whose device-attest-01
	// challenges, finalizations and renewals are gated (default
	// ["agents"]); an empty list turns the gate off.
	Provisioners []string `json:"provisioners"`
	// AccountProvisioners are the X5C provisioners that issue account
	// certificates against device certificates (default ["accounts"]).
	AccountProvisioners []string `json:"accountProvisioners"`
	// Collections, if set, are the only inventory collections whose devices
	// pass the gate.
	Collections []string `json:"collections"`
	// RevocationReasonCode is the RFC 5280 CRLReason used when a device is
	// disabled or removed (default 5, cessationOfOperation).
	RevocationReasonCode int `json:"revocationReasonCode"`
	// RevocationReason is the free-text reason stored with the revocation.
	RevocationReason string `json:"revocationReason"`
	// SweepInterval is how often revocations missed by the change listener
	// (a crash, an import that disabled devices) are caught up; default 5m.
	SweepInterval config.Duration `json:"sweepInterval"`
}

func defaultConfig() *Config {
	return &Config{
		Provisioners:         []string{"agents"},
		AccountProvisioners:  []string{"accounts"},
		RevocationReasonCode: 5,
		RevocationReason:     "device disabled or removed from the inventory",
		SweepInterval:        config.Duration{Duration: 5 * time.Minute},
	}
}

// reasonCodes are the CRLReason values an operator may choose (RFC 5280
// 5.3.1; 2 cACompromise and 8 removeFromCRL make no sense here).
var reasonCodes = []int{0, 1, 3, 4, 5, 6, 9}

// Validate checks the configuration.
func (c *Config) Validate() error {
	for i, n := range c.Provisioners {
		if n == "" || n == "*" {
			return config.Errorf(fmt.Sprintf("provisioners[%d]", i), "must name a provisioner, got %q", n)
		}
	}
	for i, n := range c.AccountProvisioners {
		if n == "" || n == "*" || slices.Contains(c.Provisioners, n) {
			return config.Errorf(fmt.Sprintf("accountProvisioners[%d]", i), "must name a provisioner not in provisioners, got %q", n)
		}
	}
	if !slices.Contains(reasonCodes, c.RevocationReasonCode) {
		return config.Errorf("revocationReasonCode", "must be one of %v, got %d", reasonCodes, c.RevocationReasonCode)
	}
	if d := c.SweepInterval.Duration; d < time.Second || d > 24*time.Hour {
		return config.Errorf("sweepInterval", "must be between 1s and 24h, got %s", d)
	}
	return nil
}

// Plugin is the device-attest gate.
type Plugin struct {
	cfg   *Config
	state atomic.Pointer[state] // nil until Start

	cancel     context.CancelFunc
	wg         sync.WaitGroup
	unregister func()
}

type state struct {
	gate  *Gate
	links *Links
	auth  func() *authority.Authority
	log   *slog.Logger
	now   func() time.Time
}

// New returns the plugin.
func New(cfg *Config) *Plugin { return &Plugin{cfg: cfg} }

// Name implements plugins.Plugin.
func (p *Plugin) Name() string { return Name }

// Start opens the inventory and the link tables, listens for devices that
// stop being active and starts the sweep.
func (p *Plugin) Start(ctx context.Context, h plugins.Host) error {
	inv, err := inventory.NewStore(h.DB(), h.Now)
	if err != nil {
		return err
	}
	links, err := NewLinks(h.DB())
	if err != nil {
		return err
	}
	st := &state{
		gate:  &Gate{Inventory: inv, Collections: p.cfg.Collections},
		links: links,
		auth:  h.Authority,
		log:   h.Logger(),
		now:   h.Now,
	}
	p.state.Store(st)
	p.unregister = inventory.OnDeactivate(func(c inventory.DeviceChange) {
		p.deviceDeactivated(context.Background(), c)
	})
	sctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.sweepLoop(sctx)
	}()
	return nil
}

// Stop ends the sweep and the listener.
func (p *Plugin) Stop(context.Context) error {
	if p.unregister != nil {
		p.unregister()
	}
	if p.cancel != nil {
		p.cancel()
	}
	p.wg.Wait()
	return nil
}

func (p *Plugin) gated(name string) bool   { return slices.Contains(p.cfg.Provisioners, name) }
func (p *Plugin) account(name string) bool { return slices.Contains(p.cfg.AccountProvisioners, name) }

// errNotStarted fails closed before Start.
var errNotStarted = errors.New("device-attest gate not started")

// WrapACMEDB implements plugins.ACMEDBWrapper.
func (p *Plugin) WrapACMEDB(db acme.DB) acme.DB {
	return &challengeGate{DB: db, p: p}
}
