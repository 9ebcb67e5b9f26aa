package setup

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/stepfort/stepfort/config"

	// Every plugin init enables, so config.Load checks each block with the
	// plugin's own strict decoder and Validate.
	_ "github.com/stepfort/stepfort/plugins/builtin"
)

// TestInitConfigLoads checks ca.json the way `stepfort serve` does: upstream
// loads it and the stepfort block, with every plugin block, validates.
func TestInitConfigLoads(t *testing.T) {
	res := initInto(t, filepath.Join(t.TempDir(), "ca"), false)
	f, err := config.Load(res.ConfigFile)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range f.Plugins {
		names = append(names, p.Name)
	}
	want := []string{"attestationCA", "auditLog", "billing", "deviceAttest", "dynamicScep", "inventory", "revocation"}
	if !slices.Equal(names, want) {
		t.Errorf("enabled plugins %v, want %v", names, want)
	}
	var provs []string
	for _, p := range f.CA.AuthorityConfig.Provisioners {
		provs = append(provs, p.GetType().String()+":"+p.GetName())
	}
	if want := []string{"JWK:admin", "ACME:acme", "ACME:agents", "X5C:accounts", "SCEP:scep"}; !slices.Equal(provs, want) {
		t.Errorf("provisioners %v, want %v", provs, want)
	}
	if !f.Stepfort.Admin.IsEnabled() {
		t.Error("init left the admin API disabled")
	}
}
