package inventory

import (
	"context"
	"log/slog"
	"sync/atomic"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/plugins"
)

// Name is the plugin's key under stepfort.plugins.
const Name = "inventory"

func init() {
	plugins.Register(plugins.Factory{
		Name:      Name,
		NewConfig: func() plugins.Config { return &Config{MaxImportBytes: 128 << 20, MaxImportRows: 200_000} },
		New:       func(c plugins.Config) (plugins.Plugin, error) { return New(c.(*Config)), nil },
	})
}

// Config is the plugin's ca.json block.
type Config struct {
	// MaxImportBytes bounds an import request body (default 128 MiB).
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
	store atomic.Pointer[Store]
	log   atomic.Pointer[slog.Logger]
}

// New returns the plugin.
func New(cfg *Config) *Plugin { return &Plugin{cfg: cfg} }

// Name implements plugins.Plugin.
func (p *Plugin) Name() string { return Name }

// Start opens the store on the shared database.
func (p *Plugin) Start(_ context.Context, h plugins.Host) error {
	s, err := NewStore(h.DB(), h.Now)
	if err != nil {
		return err
	}
	p.store.Store(s)
	p.log.Store(h.Logger())
	return nil
}

// Stop implements plugins.Plugin.
func (p *Plugin) Stop(context.Context) error { return nil }

// Store returns the running store (nil before Start).
func (p *Plugin) Store() *Store { return p.store.Load() }

// AdminRoutes implements plugins.AdminRouteProvider.
func (p *Plugin) AdminRoutes() []plugins.AdminRoute {
	api := &API{Store: p.Store, MaxImportBytes: p.cfg.MaxImportBytes, MaxImportRows: p.cfg.MaxImportRows}
	api.Log = func() interface{ Info(string, ...any) } {
		if l := p.log.Load(); l != nil {
			return l
		}
		return slog.Default()
	}
	return api.Routes()
}
