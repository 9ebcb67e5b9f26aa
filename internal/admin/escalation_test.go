package admin

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// tokenWithTTL creates a token directly in the store and returns its secret.
func (f *apiFixture) tokenWithTTL(name string, ttl time.Duration, scopes ...string) string {
	f.t.Helper()
	_, secret, err := f.store.Create(name, scopes, ttl)
	if err != nil {
		f.t.Fatal(err)
	}
	return secret
}

// A token with a short lifetime must not mint one that outlives it
// (issue 11, finding 4).
func TestCreatedTokenMayNotOutliveCreator(t *testing.T) {
	f := newAPI(t, 0) // no cap: only the creator's lifetime bounds
	short := f.tokenWithTTL("short", time.Hour, "*")
	creatorExp := f.now.Add(time.Hour)

	f.wantError(http.MethodPost, "/tokens", short, `{"name":"x","scopes":["*"],"ttl":"2h"}`, 403, "forbidden", "outlive")

	// No ttl: the new token expires with its creator, not never.
	var created CreateTokenResponse
	resp := f.call(http.MethodPost, "/tokens", short, `{"name":"y","scopes":["*"]}`, &created)
	if resp.StatusCode != http.StatusCreated || created.Token == nil {
		t.Fatalf("create without ttl = %d %+v", resp.StatusCode, created)
	}
	if exp := created.Token.ExpiresAt; exp == nil || exp.After(creatorExp) {
		t.Errorf("token minted by a 1h token expires at %v, want at most %v", exp, creatorExp)
	}

	// Within the creator's lifetime is fine.
	if resp := f.call(http.MethodPost, "/tokens", short, `{"name":"z","scopes":["*"],"ttl":"30m"}`, nil); resp.StatusCode != http.StatusCreated {
		t.Errorf("ttl within the creator's lifetime = %d, want 201", resp.StatusCode)
	}
}

// With a cap, an empty ttl means the longest lifetime allowed, so clients
// that never sent a ttl keep working and get a finite token.
func TestEmptyTTLTakesTheCap(t *testing.T) {
	f := newAPI(t, 24*time.Hour)
	var created CreateTokenResponse
	resp := f.call(http.MethodPost, "/tokens", f.token("admin", "*"), `{"name":"x","scopes":["*"]}`, &created)
	if resp.StatusCode != http.StatusCreated || created.Token.ExpiresAt == nil || !created.Token.ExpiresAt.Equal(f.now.Add(24*time.Hour)) {
		t.Fatalf("create without ttl under a 24h cap = %d %+v, want 201 expiring in 24h", resp.StatusCode, created.Token)
	}
}

// A token may revoke only tokens whose every scope it holds (finding 4).
func TestRevokeNeedsTheTargetsScopes(t *testing.T) {
	f := newAPI(t, 0)
	root := f.token("root", "*")
	writer := f.token("writer", "tokens:write")
	idOf := func(secret string) string {
		tok, err := f.store.Authenticate(secret)
		if err != nil {
			t.Fatal(err)
		}
		return tok.ID
	}
	reader := f.token("reader", "tokens:read")

	f.wantError(http.MethodDelete, "/tokens/"+idOf(root), writer, "", 403, "forbidden", `scope "*"`)
	f.wantError(http.MethodDelete, "/tokens/"+idOf(reader), writer, "", 403, "forbidden", `scope "tokens:read"`)
	if _, err := f.store.Authenticate(root); err != nil {
		t.Fatalf("root token was revoked by a tokens:write token: %v", err)
	}

	// Each case revokes with fresh tokens, so no case depends on another.
	for _, tc := range []struct {
		name       string
		by, target []string
	}{
		{"same scopes", []string{"tokens:write"}, []string{"tokens:write"}},
		{"base scope", []string{"tokens"}, []string{"tokens:read"}},
		{"all", []string{"*"}, []string{"*"}},
		{"a subset", []string{"tokens", "widgets"}, []string{"widgets:read"}},
	} {
		by, target := f.token("by", tc.by...), f.token("target", tc.target...)
		if resp := f.call(http.MethodDelete, "/tokens/"+idOf(target), by, "", nil); resp.StatusCode != http.StatusOK {
			t.Errorf("%s: revoke = %d, want 200", tc.name, resp.StatusCode)
		}
	}
	if resp := f.call(http.MethodDelete, "/tokens/"+idOf(writer), writer, "", nil); resp.StatusCode != http.StatusOK {
		t.Errorf("revoking itself = %d, want 200", resp.StatusCode)
	}
	f.wantError(http.MethodDelete, "/tokens/0000000000000000", root, "", 404, "not_found", "not found")
}

// Token names are 1 to 64 printable characters (finding 11): they are
// logged and listed.
func TestTokenNameBounds(t *testing.T) {
	f := newAPI(t, 0)
	root := f.token("root", "*")
	for name, body := range map[string]string{
		"too long": `{"name":"` + strings.Repeat("a", 65) + `","scopes":["*"],"ttl":"1h"}`,
		"newline":  `{"name":"a\nforged log line","scopes":["*"],"ttl":"1h"}`,
		"control":  `{"name":"a\u001b[31m","scopes":["*"],"ttl":"1h"}`,
		"blank":    `{"name":"   ","scopes":["*"],"ttl":"1h"}`,
	} {
		t.Run(name, func(t *testing.T) {
			f.wantError(http.MethodPost, "/tokens", root, body, 400, "bad_request", "name")
		})
	}
	for _, ok := range []string{strings.Repeat("é", 64), "ci deploy (prod)", "a"} {
		if _, _, err := f.store.Create(ok, []string{"*"}, time.Hour); err != nil {
			t.Errorf("Create(%q) = %v, want ok", ok, err)
		}
	}
	// The store checks too: `tokens bootstrap --name` does not go through
	// the API, and only it can see invalid UTF-8 (JSON decoding replaces it).
	for _, bad := range []string{strings.Repeat("a", 65), "a\xff", "tab\there", ""} {
		if _, _, err := f.store.Create(bad, []string{"*"}, time.Hour); err == nil || !strings.HasPrefix(err.Error(), "name:") {
			t.Errorf("store: Create(%q) = %v, want a name: error", bad, err)
		}
	}
}

// ReadJSON takes exactly one JSON value (finding 11).
func TestReadJSONRejectsTrailingData(t *testing.T) {
	read := func(body string) (int, string) {
		rec := httptest.NewRecorder()
		var v struct {
			A int `json:"a"`
		}
		req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
		if ReadJSON(rec, req, &v) {
			return 0, ""
		}
		return rec.Code, rec.Body.String()
	}
	for _, body := range []string{`{"a":1} {"a":2}`, `{"a":1}x`, `{"a":1}]`, `{"a":1} 7`} {
		if code, msg := read(body); code != http.StatusBadRequest || !strings.Contains(msg, "trailing data") {
			t.Errorf("ReadJSON(%q) = %d %s, want 400 naming the trailing data", body, code, msg)
		}
	}
	for _, body := range []string{`{"a":1}`, "{\"a\":1}\n", " {\"a\":1} \r\n\t"} {
		if code, msg := read(body); code != 0 {
			t.Errorf("ReadJSON(%q) = %d %s, want accepted", body, code, msg)
		}
	}
	if code, msg := read(`{"a":1,"b":2}`); code != http.StatusBadRequest || !strings.Contains(msg, `unknown field \"b\"`) {
		t.Errorf("unknown field = %d %s, want 400 naming it", code, msg)
	}
	if code, msg := read(`{"a":1}` + strings.Repeat(" ", maxBody)); code != http.StatusRequestEntityTooLarge || !strings.Contains(msg, "exceeds") {
		t.Errorf("oversized body = %d %s, want 413", code, msg)
	}
}
