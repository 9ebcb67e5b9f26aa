package authority

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/linkedca"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/internal/provfields"
	"github.com/stepfort/stepfort/internal/setup"
	"github.com/stepfort/stepfort/plugins"
)

// gate is a SignAuthorizer plugin that denies every issuance through the
// provisioners it names.
type gate struct{ denyAll }

func (gate) Name() string { return "gate" }

func gateBuilder(names ...string) PluginBuilder {
	return PluginBuilder{Name: "gate", New: func(plugins.Host) (plugins.Plugin, error) {
		return gate{denyAll{names: names}}, nil
	}}
}

func enableAdmin(m map[string]any) {
	m["authority"].(map[string]any)["enableAdmin"] = true
}

// hasSignWebhook reports whether the live provisioner carries the
// in-process AUTHORIZING webhook.
func hasSignWebhook(t *testing.T, d *testDaemon, name string) bool {
	t.Helper()
	p, err := d.Authority().LoadProvisionerByName(name)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range provfields.Webhooks(p) {
		if w.Name == signWebhookName && w.URL == signWebhookURL(name) {
			return true
		}
	}
	return false
}

// With enableAdmin, provisioners live in the database. A gate configured
// after they were migrated there, and provisioners added or changed through
// upstream's admin API, must be gated all the same.
func TestGateCoversAdminDatabaseProvisioners(t *testing.T) {
	res := initCA(t, enableAdmin)
	first := runDaemon(t, res) // migrates ca.json's provisioners, no gate yet
	if err := first.stop(); err != nil {
		t.Fatal(err)
	}

	d := runDaemon(t, res, gateBuilder("admin", "runtime-x5c"))
	if !hasSignWebhook(t, d, "admin") {
		t.Fatal("a provisioner loaded from the admin database is not gated")
	}
	dir := t.TempDir()
	if out, err := stepErr(t, res, "ca", "certificate", "denied.example", filepath.Join(dir, "d.crt"), filepath.Join(dir, "d.key"),
		"--provisioner", "admin", "--provisioner-password-file", res.PasswordFile); err == nil {
		t.Fatalf("issuance through a gated database provisioner was allowed:\n%s", out)
	}

	// Added at run time, as upstream's admin API does.
	ctx := context.Background()
	root := readPEMCert(t, res.RootFile)
	x5c := &linkedca.Provisioner{Type: linkedca.Provisioner_X5C, Name: "runtime-x5c",
		Details: &linkedca.ProvisionerDetails{Data: &linkedca.ProvisionerDetails_X5C{X5C: &linkedca.X5CProvisioner{Roots: [][]byte{pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw})}}}}}
	if err := d.Authority().StoreProvisioner(ctx, x5c); err != nil {
		t.Fatal(err)
	}
	if !hasSignWebhook(t, d, "runtime-x5c") {
		t.Fatal("a provisioner added through the admin API is not gated")
	}
	// Changed at run time, with a request that carries no webhooks.
	stored, err := d.Authority().GetAdminDatabase().GetProvisioner(ctx, x5c.Id)
	if err != nil {
		t.Fatal(err)
	}
	stored.Webhooks = nil
	stored.Claims = &linkedca.Claims{DisableRenewal: true}
	if err := d.Authority().UpdateProvisioner(ctx, stored); err != nil {
		t.Fatal(err)
	}
	// Until the provisioner gets its webhook back, nothing is signed for it.
	ext, _ := (&provisioner.Extension{Type: provisioner.TypeX5C, Name: "runtime-x5c"}).ToExtension()
	enforce := gateIntact(&capabilities{signAuthorizers: []plugins.SignAuthorizer{denyAll{names: []string{"runtime-x5c"}}}}, d.Authority)
	if !hasSignWebhook(t, d, "runtime-x5c") {
		if err := enforce.Enforce(&x509.Certificate{Extensions: []pkix.Extension{ext}}); err == nil {
			t.Fatal("a provisioner updated without its webhook passed the last enforcer")
		}
	}
	// A reload gives it back.
	if err := d.Reload(); err != nil {
		t.Fatal(err)
	}
	if !hasSignWebhook(t, d, "runtime-x5c") {
		t.Fatal("a provisioner changed through the admin API lost its gate across a reload")
	}
	// The database keeps what the admin wrote, not the daemon's webhooks.
	raw, err := d.Authority().GetAdminDatabase().(*gatedAdminDB).DB.GetProvisioner(ctx, x5c.Id)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw.Webhooks) != 0 {
		t.Fatalf("in-process webhooks were stored: %v", raw.Webhooks)
	}
}

// The last enforcer refuses a gated provisioner that lacks its webhook,
// whatever path produced it.
func TestGateIntactRefusesUngatedProvisioner(t *testing.T) {
	d := startDaemon(t)
	enforce := gateIntact(&capabilities{signAuthorizers: []plugins.SignAuthorizer{denyAll{names: []string{"admin"}}}}, d.Authority)
	ext, _ := (&provisioner.Extension{Type: provisioner.TypeJWK, Name: "admin"}).ToExtension()
	cert := &x509.Certificate{Extensions: []pkix.Extension{ext}}
	if err := enforce.Enforce(cert); err == nil {
		t.Fatal("a gated provisioner without its webhook passed the enforcer")
	}
	other, _ := (&provisioner.Extension{Type: provisioner.TypeJWK, Name: "not-gated"}).ToExtension()
	if err := enforce.Enforce(&x509.Certificate{Extensions: []pkix.Extension{other}}); err != nil {
		t.Fatalf("an ungated provisioner was refused: %v", err)
	}
}

// namingPlugin names provisioners in its configuration.
type namingPlugin struct{ named []plugins.NamedProvisioner }

func (namingPlugin) Name() string                                    { return "naming" }
func (p namingPlugin) NamedProvisioners() []plugins.NamedProvisioner { return p.named }

// The daemon refuses to start when a plugin names a provisioner that does
// not exist or has the wrong type, checked against what upstream loaded.
func TestStartRefusesMisnamedProvisioners(t *testing.T) {
	res := initCA(t, nil)
	file, err := config.Load(res.ConfigFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		named plugins.NamedProvisioner
		want  string
	}{
		{plugins.NamedProvisioner{Path: "accounts[0]", Name: "Admin", Types: []string{"JWK"}}, `stepfort.plugins.naming.accounts[0]: provisioner "Admin" does not exist`},
		{plugins.NamedProvisioner{Path: "acme[0]", Name: "admin", Types: []string{"ACME"}}, `provisioner "admin" is of type JWK, must be ACME`},
	} {
		_, err := New(file, Options{Quiet: true, Password: readPassword(t, res), Plugins: []PluginBuilder{{Name: "naming", New: func(plugins.Host) (plugins.Plugin, error) {
			return namingPlugin{named: []plugins.NamedProvisioner{tt.named}}, nil
		}}}})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Fatalf("start: %v, want %q", err, tt.want)
		}
	}
}

func readPassword(t *testing.T, res *setup.Result) []byte {
	t.Helper()
	pw, err := os.ReadFile(res.PasswordFile)
	if err != nil {
		t.Fatal(err)
	}
	return []byte(strings.TrimSpace(string(pw)))
}
