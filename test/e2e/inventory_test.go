package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestInventoryImport: a CSV export with MDM column names is imported with
// a column mapping through the CLI; every row is reported, a re-import is
// idempotent, and admin API scopes are enforced.
func TestInventoryImport(t *testing.T) {
	c := initCA(t)
	serve(t, c.Config, c.Password, c.Port)
	if out, err := stepfortCLI(t, c, "collections", "create", "macs", "--device-type", "laptop"); err != nil {
		t.Fatalf("collections create: %v\n%s", err, out)
	}
	csv := filepath.Join(t.TempDir(), "jamf.csv")
	data := "Serial Number,Computer Name,Department,Username\n" +
		"C02AAA,mac-a,macs,alice\n" +
		"C02BBB,mac-b,macs,bob\n" +
		",mac-nobody,macs,carol\n" +
		"C02CCC,mac-c,no-such-collection,dave\n"
	if err := os.WriteFile(csv, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	mapping := "serial:Serial Number,name:Computer Name,collection:Department,owner:Username"
	importOnce := func() map[string]any {
		t.Helper()
		out, err := stepfortCLI(t, c, "devices", "import", csv, "--map", mapping, "--source", "jamf", "--json")
		if err != nil && !strings.Contains(err.Error(), "exit status 2") {
			t.Fatalf("import: %v\n%s", err, out)
		}
		var rep map[string]any
		if err := json.Unmarshal([]byte(out[:strings.LastIndex(out, "}")+1]), &rep); err != nil {
			t.Fatalf("import output: %v\n%s", err, out)
		}
		return rep
	}
	rep := importOnce()
	if rep["accepted"] != 2.0 || rep["rejected"] != 2.0 {
		t.Fatalf("first import: %v", rep)
	}
	rows := rep["rows"].([]any)
	reasons := []string{rows[2].(map[string]any)["reason"].(string), rows[3].(map[string]any)["reason"].(string)}
	if !strings.Contains(reasons[0], "identifier") || !strings.Contains(reasons[1], "collection") {
		t.Fatalf("reasons: %v", reasons)
	}
	rep = importOnce()
	if rep["accepted"] != 0.0 || rep["unchanged"] != 2.0 || rep["updated"] != 0.0 {
		t.Fatalf("re-import not idempotent: %v", rep)
	}
	out, err := stepfortCLI(t, c, "devices", "list", "--collection", "macs", "--json")
	if err != nil || strings.Count(out, `"source": "import:jamf"`) != 2 {
		t.Fatalf("list: %v\n%s", err, out)
	}

	// Scopes: devices:read can list but not write; tokens without devices
	// scopes get 403; no token gets 401.
	hc := apiClient(t, c)
	admin := readToken(t, c)
	mint := func(scope string) string {
		_, m := call(t, hc, "POST", c.URL+"/api/v1/tokens", admin, map[string]any{"name": scope, "scopes": []string{scope}})
		return m["secret"].(string)
	}
	reader, other := mint("devices:read"), mint("tokens:read")
	for _, tt := range []struct {
		name, method, path, token string
		want                      int
	}{
		{"reader lists", "GET", "/devices", reader, 200},
		{"reader cannot add", "POST", "/devices", reader, 403},
		{"reader cannot import", "POST", "/devices/import", reader, 403},
		{"reader cannot delete", "DELETE", "/devices/C02AAA", reader, 403},
		{"other scope cannot list", "GET", "/devices", other, 403},
		{"other scope cannot list collections", "GET", "/collections", other, 403},
		{"no token", "GET", "/devices", "", 401},
		{"admin deletes", "DELETE", "/devices/C02AAA", admin, 200},
	} {
		var body any
		if tt.method == "POST" {
			body = map[string]any{"identifiers": []string{"X1"}}
		}
		if code, m := call(t, hc, tt.method, c.URL+"/api/v1"+tt.path, tt.token, body); code != tt.want {
			t.Errorf("%s: got %d %v, want %d", tt.name, code, m, tt.want)
		}
	}
}
