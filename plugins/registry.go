package plugins

import (
	"fmt"
	"sort"
	"sync"
)

// Config is a plugin's configuration block. The daemon decodes it strictly
// (unknown keys are errors) and then calls Validate; Validate errors should
// name the offending field by its JSON name.
type Config interface {
	Validate() error
}

// Factory builds one kind of plugin.
type Factory struct {
	// Name is the key under "stepfort.plugins".
	Name string
	// NewConfig returns a pointer to a config with defaults filled in.
	NewConfig func() Config
	// New builds the plugin from a validated config. The plugin must be
	// ready to serve every capability it has when New returns; background
	// work goes through host.Go.
	New func(cfg Config, host Host) (Plugin, error)
}

var (
	registryMu sync.RWMutex
	registry   = map[string]Factory{}
)

// Register makes a plugin kind available to ca.json. It panics on a duplicate
// name, which is a programming error caught at start-up.
func Register(f Factory) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if f.Name == "" || f.NewConfig == nil || f.New == nil {
		panic("plugins: incomplete factory")
	}
	if _, dup := registry[f.Name]; dup {
		panic(fmt.Sprintf("plugins: %q registered twice", f.Name))
	}
	registry[f.Name] = f
}

// Constructor adapts a plugin package's typed constructor (its own config
// type, its own plugin type) to Factory.New: it asserts the config's type
// and, when construction fails, returns a nil Plugin rather than a typed
// nil pointer inside the interface.
func Constructor[C Config, P Plugin](newPlugin func(C, Host) (P, error)) func(Config, Host) (Plugin, error) {
	return func(c Config, h Host) (Plugin, error) {
		p, err := newPlugin(c.(C), h)
		if err != nil {
			return nil, err
		}
		return p, nil
	}
}

// Lookup returns the factory registered under name.
func Lookup(name string) (Factory, bool) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	f, ok := registry[name]
	return f, ok
}

// Names lists the registered plugin kinds, sorted.
func Names() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
