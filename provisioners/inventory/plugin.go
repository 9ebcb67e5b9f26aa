package inventory

import (
	"log/slog"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/plugins"
)

// Name is the plugin's key under stepfort.plugins.
const Name = "inventory"

func init() {
	plugins.Register(plugins.Factory{
		Name:      Name,
		NewConfig: func() plugins.Config { return &Config{MaxImportBytes: DefaultMaxImportBytes, MaxImportRows: 200_000} },
		New:       plugins.Constructor(New),
	})
}

// DefaultMaxImportBytes is the default body limit of an import: 200,000
// rows of a typical MDM export (serial, name, owner, a few metadata
// columns) fit several times over. Imports run one at a time, so this is
// about what one import can hold in memory while it is parsed.
const DefaultMaxImportBytes = 64 << 20

// Config is the plugin's ca.json block.
type Config struct {
	// MaxImportBytes bounds an import request body (default 64 MiB); the
	// import route declares it as its plugins.AdminRoute.MaxBody.
	MaxImportBytes int64 `json:"maxImportBytes"`
	// MaxImportRows bounds the rows of one import (default 200000).
	MaxImportRows int `json:"maxImportRows"`
}

// Validate checks the limits.
func (c *Config) Validate() error {
	if c.MaxImportBytes < 1024 {
		return config.Errorf("maxImportBytes", "must be at least 1024, got %d", c.MaxImportBytes)
	}
	if c.MaxImportRows < 1 {
		return config.Errorf("maxImportRows", "must be at least 1, got %d", c.MaxImportRows)
	}
	return nil
}

// Plugin serves the inventory admin API.
type Plugin struct {
	cfg   *Config
	store *Store
	log   *slog.Logger
	audit plugins.Auditor
}

// New opens the inventory on the host's database. Changes made through the
// plugin (admin API, import) that disable or remove a device record a
// durable device event through the host (see WithEvents).
func New(cfg *Config, h plugins.Host) (*Plugin, error) {
	s, err := NewStore(h.DB(), h.Now, WithEvents(h.Events()), WithLogger(h.Logger()))
	if err != nil {
		return nil, err
	}
	return &Plugin{cfg: cfg, store: s, log: h.Logger(), audit: h.Audit()}, nil
}

// Name implements plugins.Plugin.
func (p *Plugin) Name() string { return Name }

// Store returns the plugin's store.
func (p *Plugin) Store() *Store { return p.store }

// AdminRoutes implements plugins.AdminRouteProvider.
func (p *Plugin) AdminRoutes() []plugins.AdminRoute {
	api := &API{Store: p.store, MaxImportBytes: p.cfg.MaxImportBytes, MaxImportRows: p.cfg.MaxImportRows, Log: p.log, Audit: p.audit}
	return api.Routes()
}
