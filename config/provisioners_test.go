package config_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/internal/setup"
	// Every built-in plugin, as the binary has them.
	_ "github.com/stepfort/stepfort/plugins/builtin"
)

// A plugin that names a provisioner that does not exist, or one of the
// wrong type, must fail `config check`: before, a wrong letter case in
// deviceAttest's accountProvisioners passed and left the real X5C
// provisioner ungated.
func TestCheckRefusesMisnamedProvisioners(t *testing.T) {
	res, err := setup.Init(setup.Options{Dir: filepath.Join(t.TempDir(), "ca"), Address: "127.0.0.1:9443", InsecureAddress: "127.0.0.1:9444"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name     string
		accounts []string
		agents   []string
		want     string // substring of the error; "" means valid
	}{
		{"as written by init", []string{"accounts"}, []string{"agents"}, ""},
		{"wrong letter case", []string{"Accounts"}, []string{"agents"}, `stepfort.plugins.deviceAttest.accountProvisioners[0]: provisioner "Accounts" does not exist`},
		{"missing ACME provisioner", []string{"accounts"}, []string{"agents", "nope"}, `stepfort.plugins.deviceAttest.provisioners[1]: provisioner "nope" does not exist`},
		{"wrong type", []string{"admin"}, []string{"agents"}, `stepfort.plugins.deviceAttest.accountProvisioners[0]: provisioner "admin" is of type JWK, must be X5C`},
		{"ACME gate on a JWK provisioner", []string{"accounts"}, []string{"admin"}, `provisioner "admin" is of type JWK, must be ACME`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := writeDeviceAttest(t, res.ConfigFile, tt.agents, tt.accounts)
			f, err := config.Load(path)
			if err == nil {
				err = f.Check()
			}
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("valid configuration refused: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// writeDeviceAttest writes a copy of ca.json whose deviceAttest block
// names the given provisioners.
func writeDeviceAttest(t *testing.T, src string, agents, accounts []string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	da := m["stepfort"].(map[string]any)["plugins"].(map[string]any)["deviceAttest"].(map[string]any)
	da["provisioners"], da["accountProvisioners"] = agents, accounts
	b, _ = json.Marshal(m)
	path := filepath.Join(filepath.Dir(src), "ca-"+strings.ReplaceAll(t.Name(), "/", "_")+".json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
