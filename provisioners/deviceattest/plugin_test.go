package deviceattest

import (
	"testing"
	"time"

	"github.com/stepfort/stepfort/config"
)

func TestConfigValidate(t *testing.T) {
	for _, tt := range []struct {
		name string
		mod  func(c *Config)
		ok   bool
	}{
		{"default", func(*Config) {}, true},
		{"gate off", func(c *Config) { c.Provisioners = nil }, true},
		{"wildcard", func(c *Config) { c.Provisioners = []string{"*"} }, false},
		{"account also gated", func(c *Config) { c.AccountProvisioners = []string{"agents"} }, false},
		{"bad reason", func(c *Config) { c.RevocationReasonCode = 2 }, false},
		{"sweep too fast", func(c *Config) { c.SweepInterval = config.Duration{Duration: time.Millisecond} }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := defaultConfig()
			tt.mod(c)
			if err := c.Validate(); (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}
