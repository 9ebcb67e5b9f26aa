package dynamicscep

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/stepfort/stepfort/internal/admin"
)

// apiServer mounts the plugin's routes behind the real admin API (token
// authentication, scopes, body limit) and returns tokens with scep:write,
// scep:read and an unrelated scope.
func apiServer(t *testing.T, p *Plugin) (srv http.Handler, write, read, other string) {
	t.Helper()
	tokens, err := admin.NewTokenStore(p.host.DB(), p.host.Now)
	if err != nil {
		t.Fatal(err)
	}
	mk := func(name, scope string) string {
		_, secret, err := tokens.Create(name, []string{scope}, 0)
		if err != nil {
			t.Fatal(err)
		}
		return secret
	}
	r := chi.NewRouter()
	(&admin.Server{Tokens: tokens}).Mount(r, p.AdminRoutes())
	return r, mk("mdm", ScopeWrite), mk("viewer", ScopeRead), mk("devices", "devices:write")
}

func call(t *testing.T, h http.Handler, token, method, path, body string) (int, map[string]any) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var out map[string]any
	if rec.Body.Len() > 0 {
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Fatalf("%s %s: body %q is not JSON", method, path, rec.Body)
		}
	}
	return rec.Code, out
}

// TestAdminAPI drives create, list and withdraw through the admin API:
// the contract the CLI relies on, scopes and bad input.
func TestAdminAPI(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) { testAdminAPI(t, backend) })
	}
}

func testAdminAPI(t *testing.T, backend string) {
	p, h := newPlugin(t, backend)
	srv, write, read, other := apiServer(t, p)
	dev := addDevice(t, p, "SERIAL-9")
	const base = "/api/v1/scep/challenges"

	// Scopes.
	for _, tt := range []struct {
		token, method, path, body string
		want                      int
	}{
		{"", "POST", base, `{}`, 401},
		{other, "POST", base, `{}`, 403},
		{read, "POST", base, `{}`, 403},
		{other, "GET", base, "", 403},
		{read, "DELETE", base + "/sc_0123456789abcdef", "", 403},
	} {
		if code, body := call(t, srv, tt.token, tt.method, tt.path, tt.body); code != tt.want {
			t.Fatalf("%s %s with %.10q: %d %v, want %d", tt.method, tt.path, tt.token, code, body, tt.want)
		}
	}

	// Create: the answer carries the challenge once, with its bindings.
	code, created := call(t, srv, write, "POST", base, `{"provisioner":"scep","ttl":"30m","device":"`+dev+`","commonName":"device-009",`+
		`"dnsNames":["Device-009.example.test"],"ipAddresses":["::ffff:192.0.2.9"],"emailAddresses":["d@example.test"],"uris":["urn:dev:9"]}`)
	if code != http.StatusCreated {
		t.Fatalf("create: %d %v", code, created)
	}
	for _, k := range []string{"id", "challenge", "provisioner", "source", "expiresAt", "createdAt"} {
		if created[k] == nil || created[k] == "" {
			t.Fatalf("create answer lacks %q: %v", k, created)
		}
	}
	exp, _ := time.Parse(time.RFC3339Nano, created["expiresAt"].(string))
	if created["source"] != "api" || created["device"] != dev || !exp.Equal(h.Now().UTC().Add(30*time.Minute)) ||
		created["dnsNames"].([]any)[0] != "device-009.example.test" || created["ipAddresses"].([]any)[0] != "192.0.2.9" {
		t.Fatalf("create answer %v", created)
	}
	if !strings.HasPrefix(created["createdBy"].(string), "token:") || !strings.Contains(created["createdBy"].(string), "(mdm)") {
		t.Fatalf("createdBy %v", created["createdBy"])
	}
	id, secret := created["id"].(string), created["challenge"].(string)

	h.Advance(time.Second) // lists are sorted by creation
	// Provisioner optional with one; default TTL 60m.
	code, second := call(t, srv, write, "POST", base, `{}`)
	if code != 201 || second["provisioner"] != "scep" {
		t.Fatalf("create with defaults: %d %v", code, second)
	}

	// Bad input: 400 naming the field.
	for _, tt := range []struct{ body, field string }{
		{`{"provisioner":"nope"}`, "provisioner:"},
		{`{"ttl":"forever"}`, "ttl:"},
		{`{"ttl":"0s"}`, "ttl:"},
		{`{"ttl":"25h"}`, "ttl:"},
		{`{"device":"dev_missing"}`, "device:"},
		{`{"commonName":"` + strings.Repeat("a", 65) + `"}`, "commonName:"},
		{`{"commonName":"a\u0000b"}`, "commonName:"},
		{`{"dnsNames":["bad name"]}`, "dnsNames[0]:"},
		{`{"dnsNames":["ok.example", "-bad.example"]}`, "dnsNames[1]:"},
		{`{"ipAddresses":["300.1.1.1"]}`, "ipAddresses[0]:"},
		{`{"emailAddresses":["Bob <b@example.test>"]}`, "emailAddresses[0]:"},
		{`{"uris":["not a uri"]}`, "uris[0]:"},
		{`{"uris":["relative/path"]}`, "uris[0]:"},
		{`{"dnsNames":[` + strings.Repeat(`"a.example",`, 100) + `"a.example"]}`, "dnsNames:"},
		{`{"challenge":"mine"}`, "unknown field"},
		{`{"ttl":5}`, "invalid request body"},
		{`{} {}`, "trailing data"},
	} {
		code, body := call(t, srv, write, "POST", base, tt.body)
		if code != http.StatusBadRequest || !strings.Contains(body["message"].(string), tt.field) {
			t.Fatalf("POST %.60s: %d %v, want 400 naming %q", tt.body, code, body, tt.field)
		}
	}
	if code, _ := call(t, srv, write, "POST", base, `{"commonName":"`+strings.Repeat("a", 2<<20)+`"}`); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized body: %d", code)
	}

	// List: outstanding only, no secrets.
	code, list := call(t, srv, read, "GET", base, "")
	items := list["challenges"].([]any)
	if code != 200 || len(items) != 2 || strings.Contains(mustJSON(list), secret) {
		t.Fatalf("list: %d %v", code, list)
	}
	if first := items[0].(map[string]any); first["id"] != id || first["state"] != "outstanding" || first["challenge"] != nil {
		t.Fatalf("list entry %v", first)
	}
	for _, q := range []string{"?all=yes", "?provisioner=nope"} {
		if code, _ := call(t, srv, read, "GET", base+q, ""); code != 400 {
			t.Fatalf("GET %s: %d", q, code)
		}
	}

	// Consume the first, withdraw the second.
	csr, _ := newCSR(t, csrSpec{cn: "device-009", dns: []string{"device-009.example.test"}})
	if _, err := p.ValidateSCEPChallenge(t.Context(), enroll(secret, csr)); err != nil {
		t.Fatal(err)
	}
	if code, body := call(t, srv, write, "DELETE", base+"/"+id, ""); code != http.StatusConflict {
		t.Fatalf("withdraw consumed: %d %v", code, body)
	}
	if code, _ := call(t, srv, write, "DELETE", base+"/"+second["id"].(string), ""); code != http.StatusNoContent {
		t.Fatalf("withdraw: %d", code)
	}
	for _, bad := range []string{second["id"].(string), "sc_0123456789abcdef", "nope"} {
		if code, _ := call(t, srv, write, "DELETE", base+"/"+bad, ""); code != http.StatusNotFound {
			t.Fatalf("withdraw %s: %d", bad, code)
		}
	}
	if _, err := p.ValidateSCEPChallenge(t.Context(), enroll(second["challenge"].(string), csr)); result(t, err) != ResultRefusedWithdrawn {
		t.Fatalf("withdrawn challenge: %v", err)
	}
	code, list = call(t, srv, read, "GET", base, "")
	if code != 200 || len(list["challenges"].([]any)) != 0 {
		t.Fatalf("list after use: %v", list)
	}
	_, list = call(t, srv, read, "GET", base+"?all=true&provisioner=scep", "")
	states := map[string]bool{}
	for _, it := range list["challenges"].([]any) {
		m := it.(map[string]any)
		states[m["state"].(string)] = true
		if m["state"] == "consumed" && (m["consumedAt"] == nil || m["transactionID"] != "tx-1") {
			t.Fatalf("consumed entry %v", m)
		}
	}
	if !states["consumed"] || !states["withdrawn"] {
		t.Fatalf("all=true states %v", states)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
