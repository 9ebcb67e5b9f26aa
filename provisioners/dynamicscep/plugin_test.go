package dynamicscep

import (
	"strings"
	"testing"
	"time"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/plugins"
)

// TestConfigValidate: defaults are valid and every bad value is refused
// with its JSON path.
func TestConfigValidate(t *testing.T) {
	d := func(s string) config.Duration {
		v, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		return config.Duration{Duration: v}
	}
	tests := []struct {
		name string
		mod  func(c *Config)
		path string // "" = valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"two provisioners", func(c *Config) { c.Provisioners = []string{"scep", "wifi"} }, ""},
		{"no provisioner", func(c *Config) { c.Provisioners = nil }, "provisioners"},
		{"empty name", func(c *Config) { c.Provisioners = []string{""} }, "provisioners[0]"},
		{"wildcard", func(c *Config) { c.Provisioners = []string{"scep", "*"} }, "provisioners[1]"},
		{"duplicate", func(c *Config) { c.Provisioners = []string{"scep", "scep"} }, "provisioners[1]"},
		{"ttl over max", func(c *Config) { c.ChallengeTTL = d("25h") }, "challengeTTL"},
		{"ttl zero", func(c *Config) { c.ChallengeTTL = d("0s") }, "challengeTTL"},
		{"max too long", func(c *Config) { c.MaxChallengeTTL = d("1000h") }, "maxChallengeTTL"},
		{"retention short", func(c *Config) { c.Retention = d("1s") }, "retention"},
	}
	for _, tt := range tests {
		c := defaultConfig()
		tt.mod(c)
		err := c.Validate()
		switch {
		case tt.path == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.path != "" && (err == nil || !strings.Contains(err.Error(), tt.path)):
			t.Errorf("%s: %v, want an error naming %s", tt.name, err, tt.path)
		}
	}
	named := (&Config{Provisioners: []string{"a", "b"}}).NamedProvisioners()
	if len(named) != 2 || named[1].Path != "provisioners[1]" || named[1].Name != "b" || named[1].Types[0] != "SCEP" {
		t.Fatalf("named provisioners %+v", named)
	}
}

// TestFactory: the plugin is registered and built from its defaults.
func TestFactory(t *testing.T) {
	f, ok := plugins.Lookup(Name)
	if !ok {
		t.Fatal("dynamicScep not registered")
	}
	cfg := f.NewConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	p, _ := newPlugin(t, "bbolt")
	if p.Name() != Name || strings.Join(p.SCEPProvisioners(), ",") != "scep" {
		t.Fatalf("plugin %s serves %v", p.Name(), p.SCEPProvisioners())
	}
}
