package admin

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/plugins"
)

// outcomes is a Counter that remembers what it counted.
type outcomes struct {
	mu  sync.Mutex
	got map[string]int
}

func (o *outcomes) AdminRequest(outcome string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.got[outcome]++
}

func (o *outcomes) count(outcome string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.got[outcome]
}

type apiFixture struct {
	t       *testing.T
	url     string
	db      nosql.DB
	store   *TokenStore
	metrics *outcomes
	now     time.Time
}

// newAPI serves the admin API over a real bbolt token store, with one
// plugin route (GET /widgets, scope widgets:read) that echoes its caller.
func newAPI(t *testing.T, maxTTL time.Duration) *apiFixture {
	t.Helper()
	db, err := nosql.New("bbolt", filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	f := &apiFixture{t: t, db: db, metrics: &outcomes{got: map[string]int{}}, now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	f.store, err = NewTokenStore(db, func() time.Time { return f.now })
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Tokens: f.store, MaxTokenTTL: maxTTL, Metrics: f.metrics}
	r := chi.NewRouter()
	s.Mount(r, []plugins.AdminRoute{{
		Method: http.MethodGet, Pattern: "/widgets", Scope: "widgets:read",
		Handler: func(w http.ResponseWriter, r *http.Request) {
			WriteJSON(w, http.StatusOK, map[string]string{"caller": TokenFrom(r).Name})
		},
	}})
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	f.url = srv.URL + Prefix
	return f
}

// token creates a token directly in the store and returns its secret.
func (f *apiFixture) token(name string, scopes ...string) string {
	f.t.Helper()
	_, secret, err := f.store.Create(name, scopes, 0)
	if err != nil {
		f.t.Fatal(err)
	}
	return secret
}

// call sends a request and decodes the JSON answer into out (if non-nil).
func (f *apiFixture) call(method, path, bearer, body string, out any) *http.Response {
	f.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, f.url+path, rd)
	if err != nil {
		f.t.Fatal(err)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		f.t.Errorf("%s %s: Content-Type %q, want application/json", method, path, ct)
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			f.t.Fatalf("%s %s: decode answer: %v", method, path, err)
		}
	}
	return resp
}

// wantError checks the status and the JSON error body.
func (f *apiFixture) wantError(method, path, bearer, body string, status int, code, msgPart string) {
	f.t.Helper()
	var e Error
	resp := f.call(method, path, bearer, body, &e)
	if resp.StatusCode != status || e.Status != status || e.Error != code || !strings.Contains(e.Message, msgPart) {
		f.t.Errorf("%s %s = %d %+v, want %d %s containing %q", method, path, resp.StatusCode, e, status, code, msgPart)
	}
}

func TestAuthentication(t *testing.T) {
	f := newAPI(t, 0)
	good := f.token("ops", "*")
	revoked := f.token("old", "*")
	tok, err := f.store.Authenticate(revoked)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Revoke(tok.ID); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name, bearer, header, msg string
	}{
		{"no token", "", `Bearer realm="stepfort"`, "an admin token is required"},
		{"malformed", "not-a-token", `Bearer realm="stepfort", error="invalid_token"`, "invalid admin token"},
		{"wrong secret", good[:len(good)-2] + "xx", `Bearer realm="stepfort", error="invalid_token"`, "invalid admin token"},
		{"revoked", revoked, `Bearer realm="stepfort", error="invalid_token"`, "invalid admin token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e Error
			resp := f.call(http.MethodGet, "/whoami", tt.bearer, "", &e)
			if resp.StatusCode != http.StatusUnauthorized || e.Status != 401 || e.Error != "unauthorized" || !strings.Contains(e.Message, tt.msg) {
				t.Errorf("= %d %+v, want 401 unauthorized %q", resp.StatusCode, e, tt.msg)
			}
			if got := resp.Header.Get("WWW-Authenticate"); got != tt.header {
				t.Errorf("WWW-Authenticate %q, want %q", got, tt.header)
			}
		})
	}
	if n := f.metrics.count("unauthorized"); n != len(tests) {
		t.Errorf("counted %d unauthorized, want %d", n, len(tests))
	}

	var who Token
	if resp := f.call(http.MethodGet, "/whoami", good, "", &who); resp.StatusCode != http.StatusOK || who.Name != "ops" || who.Hash != "" {
		t.Errorf("whoami = %d %+v", resp.StatusCode, who)
	}
	if f.metrics.count("ok") != 1 {
		t.Errorf("counted %d ok, want 1", f.metrics.count("ok"))
	}
}

func TestScopes(t *testing.T) {
	f := newAPI(t, 0)
	tests := []struct {
		name   string
		scopes []string
		path   string
		status int
	}{
		{"whoami needs any valid token", []string{"widgets:read"}, "/whoami", 200},
		{"exact scope", []string{"widgets:read"}, "/widgets", 200},
		{"base scope grants read", []string{"widgets"}, "/widgets", 200},
		{"all", []string{"*"}, "/widgets", 200},
		{"write does not grant read", []string{"widgets:write"}, "/widgets", 403},
		{"other scope", []string{"tokens"}, "/widgets", 403},
		{"plugin scope does not grant tokens", []string{"widgets"}, "/tokens", 403},
		{"tokens:read lists", []string{"tokens:read"}, "/tokens", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			secret := f.token("t", tt.scopes...)
			if tt.status == 403 {
				f.wantError(http.MethodGet, tt.path, secret, "", 403, "forbidden", "lacks scope")
				return
			}
			if resp := f.call(http.MethodGet, tt.path, secret, "", nil); resp.StatusCode != tt.status {
				t.Errorf("= %d, want %d", resp.StatusCode, tt.status)
			}
		})
	}
	var out map[string]string
	f.call(http.MethodGet, "/widgets", f.token("plugin-caller", "widgets"), "", &out)
	if out["caller"] != "plugin-caller" {
		t.Errorf("plugin handler saw caller %q; TokenFrom must carry the authenticated token", out["caller"])
	}
	if f.metrics.count("forbidden") != 3 {
		t.Errorf("counted %d forbidden, want 3", f.metrics.count("forbidden"))
	}
}

func TestCreateListRevoke(t *testing.T) {
	f := newAPI(t, 0)
	admin := f.token("admin", "*")

	var created CreateTokenResponse
	resp := f.call(http.MethodPost, "/tokens", admin, `{"name":"ci","scopes":["widgets:read"],"ttl":"1h"}`, &created)
	if resp.StatusCode != http.StatusCreated || created.Token == nil || created.Secret == "" {
		t.Fatalf("create = %d %+v", resp.StatusCode, created)
	}
	if created.Token.Hash != "" || created.Token.ExpiresAt == nil || !created.Token.ExpiresAt.Equal(f.now.Add(time.Hour)) {
		t.Errorf("created token %+v: want no hash and expiry in 1h", created.Token)
	}
	// The one-time secret works, with exactly the scopes asked for.
	if resp := f.call(http.MethodGet, "/widgets", created.Secret, "", nil); resp.StatusCode != 200 {
		t.Errorf("new token on its scope = %d", resp.StatusCode)
	}
	f.wantError(http.MethodGet, "/tokens", created.Secret, "", 403, "forbidden", "tokens:read")

	var list struct {
		Tokens []*Token `json:"tokens"`
	}
	f.call(http.MethodGet, "/tokens", admin, "", &list)
	if len(list.Tokens) != 2 {
		t.Fatalf("list = %d tokens, want 2", len(list.Tokens))
	}
	for _, tk := range list.Tokens {
		if tk.Hash != "" {
			t.Errorf("list leaks the hash of %s", tk.Name)
		}
	}

	var revoked Token
	if resp := f.call(http.MethodDelete, "/tokens/"+created.Token.ID, admin, "", &revoked); resp.StatusCode != 200 || revoked.RevokedAt == nil {
		t.Fatalf("revoke = %d %+v", resp.StatusCode, revoked)
	}
	f.wantError(http.MethodGet, "/widgets", created.Secret, "", 401, "unauthorized", "invalid admin token")
	f.wantError(http.MethodDelete, "/tokens/0000000000000000", admin, "", 404, "not_found", "not found")
}

func TestCreateRejects(t *testing.T) {
	f := newAPI(t, 24*time.Hour)
	admin := f.token("admin", "*")
	limited := f.token("limited", "tokens", "widgets:read")
	tests := []struct {
		name, bearer, body string
		status             int
		msg                string
	}{
		{"unknown field", admin, `{"name":"x","scopes":["*"],"ttl":"1h","admin":true}`, 400, "invalid request body"},
		{"not JSON", admin, `name=x`, 400, "invalid request body"},
		{"bad ttl", admin, `{"name":"x","scopes":["*"],"ttl":"soon"}`, 400, "ttl"},
		{"ttl over the cap", admin, `{"name":"x","scopes":["*"],"ttl":"25h"}`, 400, "at most 24h0m0s"},
		{"invalid scope", admin, `{"name":"x","scopes":["Widgets"],"ttl":"1h"}`, 400, "invalid scope"},
		{"no name", admin, `{"name":"","scopes":["*"],"ttl":"1h"}`, 400, "name"},
		{"escalation", limited, `{"name":"x","scopes":["widgets:write"],"ttl":"1h"}`, 403, "cannot grant"},
		{"escalation to all", limited, `{"name":"x","scopes":["*"],"ttl":"1h"}`, 403, "cannot grant"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code := map[int]string{400: "bad_request", 403: "forbidden"}[tt.status]
			f.wantError(http.MethodPost, "/tokens", tt.bearer, tt.body, tt.status, code, tt.msg)
		})
	}
	// A token may hand on the scopes it holds.
	if resp := f.call(http.MethodPost, "/tokens", limited, `{"name":"y","scopes":["widgets:read"],"ttl":"1h"}`, nil); resp.StatusCode != http.StatusCreated {
		t.Errorf("delegating a held scope = %d, want 201", resp.StatusCode)
	}
}

func TestUnknownRoutesAnswerJSON(t *testing.T) {
	f := newAPI(t, 0)
	f.wantError(http.MethodGet, "/nope", "", "", 404, "not_found", "no such admin endpoint")
	f.wantError(http.MethodPut, "/tokens", "", "", 405, "method_not_allowed", "method not allowed")
}

// A database failure is not the caller's fault: 503, and still no access.
func TestTokenStoreDownIs503(t *testing.T) {
	f := newAPI(t, 0)
	secret := f.token("ops", "*")
	if err := f.db.Close(); err != nil {
		t.Fatal(err)
	}
	f.wantError(http.MethodGet, "/whoami", secret, "", 503, "service_unavailable", "token store unavailable")
	if f.metrics.count("error") != 1 {
		t.Errorf("counted %d errors, want 1", f.metrics.count("error"))
	}
}

// Each admin route's body limit applies once the token is checked: the
// default for routes that declare none, the declared one otherwise.
func TestAdminRouteBodyLimits(t *testing.T) {
	now := time.Now()
	store := newStore(t, &now)
	_, secret, err := store.Create("root", []string{"*"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	var read int
	upload := func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		read = len(b)
		if err != nil {
			WriteError(w, http.StatusRequestEntityTooLarge, "%v", err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
	mux := chi.NewRouter()
	(&Server{Tokens: store}).Mount(mux, []plugins.AdminRoute{
		{Method: http.MethodPost, Pattern: "/small", Scope: "x:write", Handler: upload},
		{Method: http.MethodPost, Pattern: "/big", Scope: "x:write", Handler: upload, MaxBody: 4 << 20},
	})
	post := func(path string, n int, token string) int {
		req := httptest.NewRequest(http.MethodPost, Prefix+path, bytes.NewReader(make([]byte, n)))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		return rec.Code
	}
	for _, tt := range []struct {
		path  string
		n     int
		token string
		want  int
	}{
		{"/small", plugins.DefaultMaxBody, secret, http.StatusNoContent},
		{"/small", plugins.DefaultMaxBody + 1, secret, http.StatusRequestEntityTooLarge},
		{"/big", 3 << 20, secret, http.StatusNoContent},
		{"/big", 4<<20 + 1, secret, http.StatusRequestEntityTooLarge},
		{"/big", 3 << 20, "", http.StatusUnauthorized},
	} {
		read = -1
		if got := post(tt.path, tt.n, tt.token); got != tt.want {
			t.Fatalf("POST %s with %d bytes: %d, want %d", tt.path, tt.n, got, tt.want)
		}
		if tt.want == http.StatusUnauthorized && read != -1 {
			t.Fatal("an unauthenticated body was read")
		}
	}
}
