// External test package: the plugins import packages that import setup
// (internal/legacy writes secrets with setup.WriteSecretFile), so loading
// ca.json with every plugin cannot happen inside package setup.
package setup_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/internal/setup"

	// Every plugin init enables, so config.Load checks each block with the
	// plugin's own strict decoder and Validate.
	_ "github.com/stepfort/stepfort/plugins/builtin"
)

func initForLoad(t *testing.T, o setup.Options) *setup.Result {
	t.Helper()
	o.Dir = filepath.Join(t.TempDir(), "ca")
	o.Address, o.InsecureAddress = "127.0.0.1:9443", "127.0.0.1:9480"
	res, err := setup.Init(o)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestInitConfigLoads checks ca.json the way `stepfort serve` does: upstream
// loads it and the stepfort block, with every plugin block, validates.
func TestInitConfigLoads(t *testing.T) {
	res := initForLoad(t, setup.Options{})
	f, err := config.Load(res.ConfigFile)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range f.Plugins {
		names = append(names, p.Name)
	}
	want := []string{"attestationCA", "auditLog", "billing", "certIndex", "deviceAttest", "dynamicScep", "inventory", "revocation"}
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

// TestInitDeltaCRL: --delta-crl writes the delta block with AD CS's
// periods, and the revocation plugin's strict decoder and Validate accept it.
func TestInitDeltaCRL(t *testing.T) {
	res := initForLoad(t, setup.Options{DeltaCRL: true})
	b, err := os.ReadFile(res.ConfigFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Stepfort struct {
			Plugins struct {
				Revocation struct {
					CRL struct {
						Delta map[string]any `json:"delta"`
					} `json:"crl"`
				} `json:"revocation"`
			} `json:"plugins"`
		} `json:"stepfort"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	got := doc.Stepfort.Plugins.Revocation.CRL.Delta
	if got["enabled"] != true || got["basePeriod"] != "168h" || got["deltaPeriod"] != "24h" {
		t.Fatalf("delta block = %v", got)
	}
	if _, err := config.Load(res.ConfigFile); err != nil {
		t.Fatal(err)
	}
}
