// Package auditlog is a plugin that appends every certificate event (issued,
// renewed, revoked) to a JSON Lines file: an audit trail an operator can ship
// to a SIEM. Each line is written once per event ID even when delivery is
// retried, because the plugin skips IDs it has already written.
package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/plugins"
)

// Name is the plugin's key under stepfort.plugins.
const Name = "auditLog"

func init() {
	plugins.Register(plugins.Factory{
		Name:      Name,
		NewConfig: func() plugins.Config { return &Config{} },
		New:       func(c plugins.Config) (plugins.Plugin, error) { return New(c.(*Config)), nil },
	})
}

// Config is the plugin's ca.json block.
type Config struct {
	// Path of the JSON Lines file; created (0600) if missing.
	Path string `json:"path"`
}

// Validate requires an absolute path.
func (c *Config) Validate() error {
	if c.Path == "" {
		return config.Errorf("path", "required")
	}
	if !filepath.IsAbs(c.Path) {
		return config.Errorf("path", "must be absolute, got %q", c.Path)
	}
	return nil
}

// Line is one record in the file.
type Line struct {
	plugins.CertificateEvent
	NotBefore string `json:"notBefore,omitempty"`
	NotAfter  string `json:"notAfter,omitempty"`
	Subject   string `json:"subject,omitempty"`
}

// Plugin writes the audit file.
type Plugin struct {
	cfg  *Config
	mu   sync.Mutex
	seen map[string]bool // event IDs already in the file
}

// New returns the plugin.
func New(cfg *Config) *Plugin { return &Plugin{cfg: cfg} }

// Name implements plugins.Plugin.
func (p *Plugin) Name() string { return Name }

// Start loads the IDs already written so a redelivered event is not
// duplicated. A missing directory is not fatal: delivery fails and is
// retried until it exists.
func (p *Plugin) Start(_ context.Context, _ plugins.Host) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen = map[string]bool{}
	f, err := os.Open(p.cfg.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", p.cfg.Path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.ID != "" {
			p.seen[l.ID] = true
		}
	}
	return sc.Err()
}

// Stop implements plugins.Plugin.
func (p *Plugin) Stop(context.Context) error { return nil }

// ObserveCertificate appends the event, unless already written.
func (p *Plugin) ObserveCertificate(_ context.Context, ev plugins.CertificateEvent) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.seen[ev.ID] {
		return nil
	}
	line := Line{CertificateEvent: ev}
	if c, err := ev.Certificate(); err == nil {
		line.NotBefore = c.NotBefore.UTC().Format("2006-01-02T15:04:05Z")
		line.NotAfter = c.NotAfter.UTC().Format("2006-01-02T15:04:05Z")
		line.Subject = c.Subject.String()
	}
	line.CertificateDER = nil // keep the log small; the serial identifies it
	b, err := json.Marshal(line)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(p.cfg.Path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("open audit log: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write audit log: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync audit log: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	p.seen[ev.ID] = true
	return nil
}
