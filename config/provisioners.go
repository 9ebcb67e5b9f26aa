package config

import (
	"slices"
	"strings"

	"github.com/stepfort/stepfort/plugins"
)

// ProvisionerLookup returns the type of the provisioner named name
// ("JWK", "X5C", ...) and whether it exists.
type ProvisionerLookup func(name string) (typ string, ok bool)

// CheckNamedProvisioners fails when a provisioner a plugin names is missing
// or of a type the plugin does not allow. checkers are the plugins' configs
// (or plugins) keyed by plugin name; the error names the JSON path.
func CheckNamedProvisioners(checkers map[string]plugins.ProvisionerChecker, lookup ProvisionerLookup, known []string) error {
	for _, name := range sortedKeys(checkers) {
		for _, np := range checkers[name].NamedProvisioners() {
			path := Key + ".plugins." + name + "." + np.Path
			typ, ok := lookup(np.Name)
			if !ok {
				return Errorf(path, "provisioner %q does not exist (provisioners: %s); names are case-sensitive", np.Name, strings.Join(known, ", "))
			}
			if len(np.Types) > 0 && !slices.Contains(np.Types, typ) {
				return Errorf(path, "provisioner %q is of type %s, must be %s", np.Name, typ, strings.Join(np.Types, " or "))
			}
		}
	}
	return nil
}

// ProvisionerCheckers returns the plugin configs that name provisioners,
// by plugin name.
func (f *File) ProvisionerCheckers() map[string]plugins.ProvisionerChecker {
	out := map[string]plugins.ProvisionerChecker{}
	for _, pc := range f.Plugins {
		if c, ok := pc.Config.(plugins.ProvisionerChecker); ok {
			out[pc.Name] = c
		}
	}
	return out
}

// checkProvisioners checks the provisioners plugins name against ca.json.
// With enableAdmin the provisioners live in the database, which `config
// check` does not open: the daemon checks them when it starts.
func (f *File) checkProvisioners() error {
	ac := f.CA.AuthorityConfig
	if ac == nil || ac.EnableAdmin {
		return nil
	}
	types := map[string]string{}
	var known []string
	for _, p := range ac.Provisioners {
		types[p.GetName()] = p.GetType().String()
		known = append(known, p.GetName())
	}
	return CheckNamedProvisioners(f.ProvisionerCheckers(), func(name string) (string, bool) {
		t, ok := types[name]
		return t, ok
	}, known)
}
