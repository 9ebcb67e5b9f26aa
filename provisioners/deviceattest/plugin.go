// Package deviceattest is the inventory gate of the device identity chain.
// For the ACME provisioners it names (default "agents") a device-attest-01
// challenge, of any attestation format, becomes valid only for a permanent
// identifier that belongs to a registered, active device; the same check
// holds at finalize and on /renew and /rekey. It links every certificate to
// its device (device certificates from the attestation, account certificates
// from the X5C leaf that bought them) and revokes them, through the host's
// administrative revocation, when a device event says the device was
// disabled or removed. See docs/deviceattest.md.
package deviceattest

import (
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/smallstep/certificates/acme"

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
		New:       plugins.Constructor(New),
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
	// SweepInterval is how often the safety-net sweep revokes the
	// certificates of every linked device that is disabled or gone (device
	// events do this at once; the sweep catches what they cannot, such as
	// a device disabled by a store without events); default 5m.
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

// NamedProvisioners implements plugins.ProvisionerChecker: the gated
// provisioners must be ACME and the account provisioners X5C, or a typo
// would leave a provisioner ungated.
func (c *Config) NamedProvisioners() []plugins.NamedProvisioner {
	var out []plugins.NamedProvisioner
	for i, n := range c.Provisioners {
		out = append(out, plugins.NamedProvisioner{Path: fmt.Sprintf("provisioners[%d]", i), Name: n, Types: []string{"ACME"}})
	}
	for i, n := range c.AccountProvisioners {
		out = append(out, plugins.NamedProvisioner{Path: fmt.Sprintf("accountProvisioners[%d]", i), Name: n, Types: []string{"X5C"}})
	}
	return out
}

// Plugin is the device-attest gate.
type Plugin struct {
	cfg   *Config
	host  plugins.Host
	gate  *Gate
	links *Links
	log   *slog.Logger
}

// New opens the inventory and the link tables on the host's database and
// starts the revocation sweep in the host's goroutine group.
func New(cfg *Config, h plugins.Host) (*Plugin, error) {
	// Read-only use of the inventory: the plugin never disables a device,
	// so its store records no events.
	inv, err := inventory.NewStore(h.DB(), h.Now)
	if err != nil {
		return nil, err
	}
	links, err := NewLinks(h.DB())
	if err != nil {
		return nil, err
	}
	p := &Plugin{
		cfg:   cfg,
		host:  h,
		gate:  &Gate{Inventory: inv, Collections: cfg.Collections},
		links: links,
		log:   h.Logger(),
	}
	h.Go("deviceAttest.sweep", p.sweepLoop)
	return p, nil
}

// Name implements plugins.Plugin.
func (p *Plugin) Name() string { return Name }

// NamedProvisioners implements plugins.ProvisionerChecker (the daemon
// asks the plugin; `config check` the configuration).
func (p *Plugin) NamedProvisioners() []plugins.NamedProvisioner { return p.cfg.NamedProvisioners() }

func (p *Plugin) gated(name string) bool   { return slices.Contains(p.cfg.Provisioners, name) }
func (p *Plugin) account(name string) bool { return slices.Contains(p.cfg.AccountProvisioners, name) }

// WrapACMEDB implements plugins.ACMEDBWrapper.
func (p *Plugin) WrapACMEDB(db acme.DB) acme.DB {
	return &challengeGate{DB: db, p: p}
}
