package config

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stepfort/stepfort/plugins"
)

type testPluginConfig struct {
	Window Duration `json:"window"`
	Names  []string `json:"names"`
	Nested struct {
		Limit int `json:"limit"`
	} `json:"nested"`
}

func (c *testPluginConfig) Validate() error {
	if c.Nested.Limit < 0 {
		return Errorf("nested.limit", "must not be negative")
	}
	return nil
}

func init() {
	plugins.Register(plugins.Factory{
		Name:      "configTest",
		NewConfig: func() plugins.Config { return &testPluginConfig{Window: Duration{time.Hour}} },
		New:       func(plugins.Config, plugins.Host) (plugins.Plugin, error) { return nil, nil },
	})
}

func TestParseStepfort(t *testing.T) {
	tests := []struct {
		name    string
		block   string
		wantErr string // substring; empty means success
		check   func(t *testing.T, s *Stepfort, p []PluginConfig)
	}{
		{name: "absent block gives defaults", block: "", check: func(t *testing.T, s *Stepfort, p []PluginConfig) {
			if s.Events.RetryInterval.Duration != 10*time.Second || !s.Admin.IsEnabled() || len(p) != 0 {
				t.Fatalf("unexpected defaults: %+v %v", s, p)
			}
		}},
		{name: "unknown top key", block: `{"admni": {}}`, wantErr: "stepfort.admni: unknown key"},
		{name: "unknown nested key", block: `{"admin": {"enabeld": true}}`, wantErr: "stepfort.admin.enabeld: unknown key"},
		{name: "wrong type", block: `{"admin": {"enabled": "yes"}}`, wantErr: "stepfort.admin.enabled: must be a boolean"},
		{name: "bad duration", block: `{"events": {"retryInterval": "10 parsecs"}}`, wantErr: `stepfort.events.retryInterval: invalid duration "10 parsecs"`},
		{name: "number duration", block: `{"events": {"retryInterval": 10}}`, wantErr: "stepfort.events.retryInterval: must be a duration string"},
		{name: "duration out of range", block: `{"events": {"retryInterval": "1ms"}}`, wantErr: "stepfort.events.retryInterval: must be between"},
		{name: "bad log level", block: `{"log": {"level": "loud"}}`, wantErr: "stepfort.log.level"},
		{name: "not an object", block: `[1]`, wantErr: "stepfort: must be an object"},
		{name: "unknown plugin", block: `{"plugins": {"nope": {}}}`, wantErr: "stepfort.plugins.nope: unknown plugin"},
		{name: "plugin unknown key", block: `{"plugins": {"configTest": {"windw": "1h"}}}`, wantErr: "stepfort.plugins.configTest.windw: unknown key"},
		{name: "plugin array element type", block: `{"plugins": {"configTest": {"names": ["a", 2]}}}`, wantErr: "stepfort.plugins.configTest.names[1]: must be a string"},
		{name: "plugin validate path", block: `{"plugins": {"configTest": {"nested": {"limit": -1}}}}`, wantErr: "stepfort.plugins.configTest.nested.limit: must not be negative"},
		{name: "plugin enabled must be bool", block: `{"plugins": {"configTest": {"enabled": 1}}}`, wantErr: "stepfort.plugins.configTest.enabled: must be a boolean"},
		{name: "plugin disabled is skipped", block: `{"plugins": {"configTest": {"enabled": false, "window": "2h"}}}`, check: func(t *testing.T, _ *Stepfort, p []PluginConfig) {
			if len(p) != 0 {
				t.Fatalf("disabled plugin was enabled: %v", p)
			}
		}},
		{name: "plugin defaults kept", block: `{"plugins": {"configTest": {"names": ["x"]}}}`, check: func(t *testing.T, _ *Stepfort, p []PluginConfig) {
			c := p[0].Config.(*testPluginConfig)
			if c.Window.Duration != time.Hour || c.Names[0] != "x" {
				t.Fatalf("got %+v", c)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, p, err := ParseStepfort(json.RawMessage(tt.block))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, s, p)
			}
		})
	}
}

func TestLoadReportsSyntaxPosition(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ca.json")
	if err := os.WriteFile(path, []byte("{\n  \"root\": \"x\",\n  \"crt\": ,\n}"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if err == nil || !strings.Contains(err.Error(), "line 3, column") {
		t.Fatalf("error = %v, want a line and column", err)
	}
}

func TestLoadUpstreamConfigWithoutStepfortBlock(t *testing.T) {
	f, err := Load("testdata/upstream-ca.json")
	if err != nil {
		t.Fatal(err)
	}
	if f.CA.AuthorityConfig.Provisioners[0].GetName() != "admin" || len(f.Plugins) != 0 {
		t.Fatalf("unexpected load: %+v", f)
	}
}

func TestCheckFindsWhatUpstreamDefersToServe(t *testing.T) {
	f, err := Load("testdata/upstream-ca.json")
	if err != nil {
		t.Fatal(err)
	}
	f.CA.Address = "nope"
	if err := f.Check(); err == nil || !strings.Contains(err.Error(), `address: "nope" is not host:port`) {
		t.Fatalf("Check = %v", err)
	}
	f.CA.Address = ":9000"
	if err := f.Check(); err == nil || !strings.Contains(err.Error(), "root[0]: open /nonexistent/root_ca.crt") {
		t.Fatalf("Check = %v", err)
	}
}
