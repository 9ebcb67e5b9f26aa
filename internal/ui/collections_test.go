package ui

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/stepfort/stepfort/internal/admin"
)

// Collections: listed with a link to their devices, added, and removed
// (the API's refusal of a collection with devices is shown); a token
// without devices:write sees no forms and its forged POST is refused.
func TestCollections(t *testing.T) {
	h := newHarness(t)
	var mu sync.Mutex
	cols := map[string]string{"lab <1>": "test benches", "busy": ""}
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !strings.HasPrefix(r.URL.Path, "/api/v1/collections") || tok == "" {
			h.api.ServeHTTP(w, r)
			return
		}
		scopes := map[string][]string{"sft_rw": {"*"}, "sft_ro": {"certificates:read", "devices:read"}}[tok]
		write := r.Method != http.MethodGet
		if !admin.Grants(scopes, map[bool]string{false: "devices:read", true: "devices:write"}[write]) {
			admin.WriteError(w, http.StatusForbidden, "token lacks scope")
			return
		}
		mu.Lock()
		defer mu.Unlock()
		switch name, _ := url.PathUnescape(strings.TrimPrefix(r.URL.EscapedPath(), "/api/v1/collections/")); {
		case r.Method == http.MethodGet:
			var list []map[string]string
			for n, d := range cols {
				list = append(list, map[string]string{"name": n, "description": d})
			}
			admin.WriteJSON(w, http.StatusOK, map[string]any{"collections": list})
		case r.Method == http.MethodPost:
			var in map[string]string
			_ = json.NewDecoder(r.Body).Decode(&in)
			if _, ok := cols[in["name"]]; ok {
				admin.WriteError(w, http.StatusConflict, "collection %q exists", in["name"])
				return
			}
			cols[in["name"]] = in["description"]
			admin.WriteJSON(w, http.StatusCreated, in)
		case r.Method == http.MethodDelete && name == "busy":
			admin.WriteError(w, http.StatusConflict, "collection \"busy\" still has devices (e.g. dev_1)")
		case r.Method == http.MethodDelete:
			delete(cols, name)
			admin.WriteJSON(w, http.StatusOK, map[string]any{})
		}
	})
	srv, err := New(Options{API: api, Audit: h.audit, Now: h.clock, MaxSessions: 3})
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	cookie, csrf := h.login("sft_rw")
	page := body(t, h.do("GET", "/ui/devices/collections", cookie, nil, nil))
	for _, want := range []string{"lab &lt;1&gt;", "test benches", `href="/ui/devices?collection=lab&#43;%3C1%3E"`, `id="addcollection"`, "/ui/devices/collections/lab%20%3C1%3E/remove"} {
		if !strings.Contains(page, want) {
			t.Errorf("collections page lacks %s", want)
		}
	}
	if inline.MatchString(page) {
		t.Errorf("inline code: %s", inline.FindString(page))
	}
	flash := func(res *http.Response) string {
		t.Helper()
		if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/ui/devices/collections" {
			t.Fatalf("POST answered %d %s", res.StatusCode, res.Header.Get("Location"))
		}
		return body(t, h.do("GET", "/ui/devices/collections", cookie, nil, nil))
	}
	if p := flash(h.do("POST", "/ui/devices/collections", cookie, url.Values{"csrf": {csrf}, "name": {"phones"}, "description": {"mobile"}}, nil)); !strings.Contains(p, "Collection phones added.") || !strings.Contains(p, "mobile") {
		t.Errorf("add: %s", p)
	}
	if p := flash(h.do("POST", "/ui/devices/collections", cookie, url.Values{"csrf": {csrf}, "name": {"phones"}}, nil)); !strings.Contains(p, "Collection not added: collection &#34;phones&#34; exists") {
		t.Errorf("duplicate add: %s", p)
	}
	if p := flash(h.do("POST", "/ui/devices/collections/busy/remove", cookie, url.Values{"csrf": {csrf}}, nil)); !strings.Contains(p, "still has devices") {
		t.Errorf("remove busy: %s", p)
	}
	if p := flash(h.do("POST", "/ui/devices/collections/phones/remove", cookie, url.Values{"csrf": {csrf}}, nil)); !strings.Contains(p, "Collection phones removed.") || strings.Contains(p, "mobile") {
		t.Errorf("remove: %s", p)
	}
	ro, roCSRF := h.login("sft_ro")
	if p := body(t, h.do("GET", "/ui/devices/collections", ro, nil, nil)); strings.Contains(p, `id="addcollection"`) || strings.Contains(p, "/remove") {
		t.Error("a read-only token sees the forms")
	}
	h.do("POST", "/ui/devices/collections/lab%20%3C1%3E/remove", ro, url.Values{"csrf": {roCSRF}}, nil)
	mu.Lock()
	_, kept := cols["lab <1>"]
	mu.Unlock()
	if !kept {
		t.Error("a read-only token's forged POST removed a collection")
	}
}
