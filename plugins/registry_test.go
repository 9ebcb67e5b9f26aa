package plugins

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

type testConfig struct{}

func (*testConfig) Validate() error { return nil }

type testPlugin struct{ name string }

func (p *testPlugin) Name() string { return p.name }

func factory(name string) Factory {
	return Factory{
		Name:      name,
		NewConfig: func() Config { return &testConfig{} },
		New:       func(Config, Host) (Plugin, error) { return &testPlugin{name: name}, nil },
	}
}

// withEmptyRegistry runs the test against an empty registry and restores
// the process-wide one afterwards.
func withEmptyRegistry(t *testing.T) {
	t.Helper()
	registryMu.Lock()
	saved := registry
	registry = map[string]Factory{}
	registryMu.Unlock()
	t.Cleanup(func() {
		registryMu.Lock()
		registry = saved
		registryMu.Unlock()
	})
}

// mustPanic returns the panic value of fn, failing the test if it returns.
func mustPanic(t *testing.T, fn func()) (v any) {
	t.Helper()
	defer func() { v = recover() }()
	fn()
	t.Fatal("did not panic")
	return nil
}

func TestRegisterLookupNames(t *testing.T) {
	withEmptyRegistry(t)
	for _, n := range []string{"zeta", "alpha", "mid"} {
		Register(factory(n))
	}
	if got, want := Names(), []string{"alpha", "mid", "zeta"}; !slices.Equal(got, want) {
		t.Errorf("Names() = %v, want %v", got, want)
	}
	f, ok := Lookup("mid")
	if !ok || f.Name != "mid" {
		t.Fatalf("Lookup(mid) = %+v, %v", f, ok)
	}
	p, err := f.New(f.NewConfig(), nil)
	if err != nil || p.Name() != "mid" {
		t.Errorf("the looked-up factory built %v, %v", p, err)
	}
	if _, ok := Lookup("missing"); ok {
		t.Error("Lookup(missing) found a factory")
	}
}

func TestRegisterPanics(t *testing.T) {
	tests := []struct {
		name string
		f    Factory
		want string
	}{
		{"no name", Factory{NewConfig: factory("x").NewConfig, New: factory("x").New}, "incomplete"},
		{"no NewConfig", Factory{Name: "x", New: factory("x").New}, "incomplete"},
		{"no New", Factory{Name: "x", NewConfig: factory("x").NewConfig}, "incomplete"},
		{"duplicate", factory("taken"), `"taken" registered twice`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			withEmptyRegistry(t)
			Register(factory("taken"))
			v := mustPanic(t, func() { Register(tt.f) })
			if s, _ := v.(string); !strings.Contains(s, tt.want) {
				t.Errorf("panic %v, want it to say %q", v, tt.want)
			}
			if got := Names(); !slices.Equal(got, []string{"taken"}) {
				t.Errorf("after the panic Names() = %v, want only the first registration", got)
			}
		})
	}
}

// Constructor hands the typed config to the plugin's constructor, and a
// failed construction is a nil Plugin, not a typed nil inside it.
func TestConstructor(t *testing.T) {
	cfg := &testConfig{}
	newPlugin := Constructor(func(c *testConfig, _ Host) (*testPlugin, error) {
		if c != cfg {
			t.Error("the config was not passed through")
		}
		return nil, errors.New("boom")
	})
	if p, err := newPlugin(cfg, nil); p != nil || err == nil {
		t.Fatalf("failed construction: %#v, %v", p, err)
	}
	ok := Constructor(func(*testConfig, Host) (*testPlugin, error) { return &testPlugin{name: "x"}, nil })
	if p, err := ok(cfg, nil); err != nil || p.Name() != "x" {
		t.Fatalf("construction: %v, %v", p, err)
	}
}
