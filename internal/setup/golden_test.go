package setup

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	upstream "github.com/smallstep/certificates/authority/config"
)

var update = flag.Bool("update", false, "rewrite testdata/ca.golden.json from Init's output")

// TestInitMatchesGolden pins what Init writes into ca.json: every
// provisioner, the stepfort block and upstream's settings, as upstream's
// loader reads them. The golden file was captured from the untyped-map
// implementation before ca.json was built from typed structs, so a change
// here is a change to what operators get.
func TestInitMatchesGolden(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	res, err := Init(Options{Dir: dir, Address: "127.0.0.1:9443", InsecureAddress: "127.0.0.1:9480"})
	if err != nil {
		t.Fatal(err)
	}
	got := normalizedConfig(t, res.Dir, res.ConfigFile)
	golden := filepath.Join("testdata", "ca.golden.json")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("ca.json differs from %s (run with -update only if the change is intended)\ngot:\n%s", golden, got)
	}
}

// normalizedConfig reads ca.json the way the daemon does (upstream's
// loader for its keys, the raw "stepfort" block for ours) and returns it
// as indented JSON with the installation directory replaced by $DIR and
// freshly generated keys and roots replaced by "<generated>", so two runs
// of Init compare equal.
func normalizedConfig(t *testing.T, dir, path string) []byte {
	t.Helper()
	ca, err := upstream.LoadConfiguration(path)
	if err != nil {
		t.Fatalf("upstream cannot load %s: %v", path, err)
	}
	caJSON, err := json.Marshal(ca)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		CA       map[string]any `json:"ca"`
		Stepfort any            `json:"stepfort"`
	}
	if err := json.Unmarshal(caJSON, &doc.CA); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(top["stepfort"], &doc.Stepfort); err != nil {
		t.Fatal(err)
	}
	provs := doc.CA["authority"].(map[string]any)["provisioners"].([]any)
	for _, p := range provs {
		p := p.(map[string]any)
		for _, k := range []string{"key", "encryptedKey", "roots", "attestationRoots", "decrypterCertificate", "challenge"} {
			if v, ok := p[k]; ok && v != nil && v != "" {
				p[k] = "<generated>"
			}
		}
		// A KMS URI carries the key's path query-escaped.
		if v, ok := p["decrypterKey"].(string); ok {
			if u, err := url.QueryUnescape(v); err == nil {
				p["decrypterKey"] = strings.ReplaceAll(u, dir, "$DIR")
			}
		}
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(replaceDir(doc, dir)); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// replaceDir rewrites every string under v that starts with dir.
func replaceDir(v any, dir string) any {
	switch v := v.(type) {
	case string:
		if rest, ok := strings.CutPrefix(v, dir); ok {
			return "$DIR" + rest
		}
		return v
	case map[string]any:
		for k, e := range v {
			v[k] = replaceDir(e, dir)
		}
		return v
	case []any:
		for i, e := range v {
			v[i] = replaceDir(e, dir)
		}
		return v
	case struct {
		CA       map[string]any `json:"ca"`
		Stepfort any            `json:"stepfort"`
	}:
		v.CA = replaceDir(v.CA, dir).(map[string]any)
		v.Stepfort = replaceDir(v.Stepfort, dir)
		return v
	}
	return v
}
