// Package config loads ca.json: upstream step-ca's configuration, unchanged,
// plus stepfort's own top-level "stepfort" block, which is parsed strictly so
// that a typo is an error naming its JSON path instead of a silent default.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	upstream "github.com/smallstep/certificates/authority/config"

	"github.com/stepfort/stepfort/plugins"
)

// Key is the top-level ca.json key that holds stepfort's configuration.
const Key = "stepfort"

// Stepfort is the "stepfort" block of ca.json.
type Stepfort struct {
	// Admin configures the admin API under /api/v1 on the HTTPS listener.
	Admin Admin `json:"admin"`
	// UI configures the web dashboard under /ui/ (docs/ui.md).
	UI UI `json:"ui"`
	// Events configures delivery of certificate events to plugins.
	Events Events `json:"events"`
	// Log configures the daemon's structured log.
	Log Log `json:"log"`
	// Database sizes the connection pool of a PostgreSQL or MySQL database.
	Database Database `json:"database"`
	// Plugins maps a plugin name to its configuration block. A block may
	// carry "enabled": false to keep its settings but switch it off.
	Plugins map[string]json.RawMessage `json:"plugins"`
}

// Admin configures the admin API.
type Admin struct {
	// Enabled serves /api/v1; default true.
	Enabled *bool `json:"enabled,omitempty"`
	// MaxTokenTTL caps the lifetime of tokens created through the API and
	// is the lifetime of one created without a ttl; default
	// DefaultMaxTokenTTL, "0s" = no cap.
	MaxTokenTTL Duration `json:"maxTokenTTL"`
}

// DefaultMaxTokenTTL is the default admin.maxTokenTTL: 90 days, so a token
// created through the API and then forgotten stops working on its own.
const DefaultMaxTokenTTL = 2160 * time.Hour

// IsEnabled reports whether the admin API is served.
func (a Admin) IsEnabled() bool { return a.Enabled == nil || *a.Enabled }

// UI configures the web dashboard.
type UI struct {
	// Enabled serves /ui/ when the admin API is served; default true.
	Enabled *bool `json:"enabled,omitempty"`
	// IdleTimeout ends a session unused this long (default 15m);
	// AbsoluteTimeout ends any session this long after login (default 8h).
	IdleTimeout     Duration `json:"idleTimeout"`
	AbsoluteTimeout Duration `json:"absoluteTimeout"`
}

// IsEnabled reports whether the dashboard is served.
func (u UI) IsEnabled() bool { return u.Enabled == nil || *u.Enabled }

// Events configures the certificate event outbox.
type Events struct {
	// RetryInterval is how often undelivered events are retried and how
	// often the outbox is swept for events left by a crashed replica.
	RetryInterval Duration `json:"retryInterval"`
	// ClaimTTL is how long a replica holds an event it is delivering before
	// another replica may take it over.
	ClaimTTL Duration `json:"claimTTL"`
}

// Database sizes the SQL connection pool (ignored for bbolt and badger).
type Database struct {
	// MaxIdleConns is how many connections stay open between requests;
	// upstream keeps database/sql's default of 2, which makes every other
	// concurrent query open a new session.
	MaxIdleConns int `json:"maxIdleConns"`
	// MaxOpenConns caps connections per replica (0 = no cap, as upstream).
	// Keep replicas × maxOpenConns below PostgreSQL's max_connections.
	MaxOpenConns int `json:"maxOpenConns"`
	// ConnMaxIdleTime closes connections idle this long.
	ConnMaxIdleTime Duration `json:"connMaxIdleTime"`
}

// Log configures logging.
type Log struct {
	Level  string `json:"level"`  // debug, info, warn, error
	Format string `json:"format"` // json or text
}

// Defaults returns a Stepfort block with every default filled in.
func Defaults() *Stepfort {
	return &Stepfort{
		Admin: Admin{MaxTokenTTL: Duration{DefaultMaxTokenTTL}},
		UI:    UI{IdleTimeout: Duration{15 * time.Minute}, AbsoluteTimeout: Duration{8 * time.Hour}},
		Events: Events{
			RetryInterval: Duration{10 * time.Second},
			ClaimTTL:      Duration{30 * time.Second},
		},
		Log:      Log{Level: "info", Format: "json"},
		Database: Database{MaxIdleConns: 32, ConnMaxIdleTime: Duration{5 * time.Minute}},
	}
}

// Validate checks values the decoder cannot.
func (s *Stepfort) Validate() error {
	if d := s.Events.RetryInterval.Duration; d < 100*time.Millisecond || d > time.Hour {
		return Errorf(Key+".events.retryInterval", "must be between 100ms and 1h, got %s", d)
	}
	if d := s.Events.ClaimTTL.Duration; d < time.Second || d > time.Hour {
		return Errorf(Key+".events.claimTTL", "must be between 1s and 1h, got %s", d)
	}
	if n := s.Database.MaxIdleConns; n < 0 || n > 1000 {
		return Errorf(Key+".database.maxIdleConns", "must be between 0 and 1000, got %d", n)
	}
	if n := s.Database.MaxOpenConns; n < 0 || n > 10000 {
		return Errorf(Key+".database.maxOpenConns", "must be between 0 (no cap) and 10000, got %d", n)
	}
	if s.Database.ConnMaxIdleTime.Duration < 0 {
		return Errorf(Key+".database.connMaxIdleTime", "must not be negative")
	}
	if s.Admin.MaxTokenTTL.Duration < 0 {
		return Errorf(Key+".admin.maxTokenTTL", "must not be negative")
	}
	if d := s.UI.IdleTimeout.Duration; d < time.Minute || d > 24*time.Hour {
		return Errorf(Key+".ui.idleTimeout", "must be between 1m and 24h, got %s", d)
	}
	if d := s.UI.AbsoluteTimeout.Duration; d < s.UI.IdleTimeout.Duration || d > 7*24*time.Hour {
		return Errorf(Key+".ui.absoluteTimeout", "must be between ui.idleTimeout (%s) and 168h, got %s", s.UI.IdleTimeout.Duration, d)
	}
	switch s.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return Errorf(Key+".log.level", "must be one of debug, info, warn, error; got %q", s.Log.Level)
	}
	switch s.Log.Format {
	case "json", "text":
	default:
		return Errorf(Key+".log.format", "must be json or text; got %q", s.Log.Format)
	}
	return nil
}

// PluginConfig is one enabled plugin with its decoded configuration.
type PluginConfig struct {
	Name    string
	Factory plugins.Factory
	Config  plugins.Config
}

// File is a loaded ca.json.
type File struct {
	Path     string
	CA       *upstream.Config
	Stepfort *Stepfort
	Plugins  []PluginConfig
	// Raw is the "stepfort" block as written, to detect changes on reload.
	Raw json.RawMessage
}

// Load reads and validates ca.json. Errors name the file and, for the
// stepfort block, the JSON path of the offending value.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read configuration: %w", err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("%s: %s", path, describeSyntaxError(data, err))
	}
	f := &File{Path: path, Raw: top[Key]}
	if f.Stepfort, f.Plugins, err = ParseStepfort(top[Key]); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	// Upstream parses its own keys leniently and ignores ours.
	if f.CA, err = upstream.LoadConfiguration(path); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// ParseStepfort decodes and validates the "stepfort" block (nil means all
// defaults) and the configuration of each enabled plugin.
func ParseStepfort(raw json.RawMessage) (*Stepfort, []PluginConfig, error) {
	s := Defaults()
	if len(bytes.TrimSpace(raw)) > 0 {
		if err := DecodeStrict(raw, s, Key); err != nil {
			return nil, nil, err
		}
	}
	if err := s.Validate(); err != nil {
		return nil, nil, err
	}
	var out []PluginConfig
	for _, name := range sortedKeys(s.Plugins) {
		path := Key + ".plugins." + name
		factory, ok := plugins.Lookup(name)
		if !ok {
			return nil, nil, Errorf(path, "unknown plugin (available: %v)", plugins.Names())
		}
		block, enabled, err := splitEnabled(s.Plugins[name], path)
		if err != nil {
			return nil, nil, err
		}
		if !enabled {
			continue
		}
		cfg := factory.NewConfig()
		if err := DecodeStrict(block, cfg, path); err != nil {
			return nil, nil, err
		}
		if err := cfg.Validate(); err != nil {
			return nil, nil, prefix(path, err)
		}
		out = append(out, PluginConfig{Name: name, Factory: factory, Config: cfg})
	}
	return s, out, nil
}

// splitEnabled removes the optional "enabled" key from a plugin block.
func splitEnabled(block json.RawMessage, path string) (json.RawMessage, bool, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(block, &m); err != nil || m == nil {
		return nil, false, Errorf(path, "must be an object")
	}
	enabled := true
	if v, ok := m["enabled"]; ok {
		if err := json.Unmarshal(v, &enabled); err != nil {
			return nil, false, Errorf(path+".enabled", "must be a boolean")
		}
		delete(m, "enabled")
	}
	b, err := json.Marshal(m)
	return b, enabled, err
}

// describeSyntaxError turns a JSON syntax error into "line L, column C: msg".
func describeSyntaxError(data []byte, err error) string {
	var se *json.SyntaxError
	if !errors.As(err, &se) {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return "invalid JSON: the top level must be an object"
		}
		return "invalid JSON: " + err.Error()
	}
	off := int(se.Offset)
	if off > len(data) {
		off = len(data)
	}
	line := 1 + bytes.Count(data[:off], []byte("\n"))
	col := off - bytes.LastIndexByte(data[:off], '\n')
	return fmt.Sprintf("invalid JSON at line %d, column %d: %s", line, col, se.Error())
}
