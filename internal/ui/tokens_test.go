package ui

import (
	"html"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/admin"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

// tokensAPI answers /api/v1/tokens with two pages (two tokens, then one)
// and remembers the queries; everything else goes to fakeAPI.
type tokensAPI struct {
	*fakeAPI
	mu      sync.Mutex
	queries []url.Values
}

func (a *tokensAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/api/v1/tokens" {
		a.fakeAPI.ServeHTTP(w, r)
		return
	}
	if r.Method == http.MethodPost {
		admin.WriteJSON(w, http.StatusCreated, map[string]any{"secret": "sft_00000000000000ff_onetime",
			"token": map[string]any{"id": "00000000000000ff", "name": "new", "scopes": []string{"devices:read"}, "createdAt": time.Now()}})
		return
	}
	q := r.URL.Query()
	a.mu.Lock()
	a.queries = append(a.queries, q)
	a.mu.Unlock()
	tok := func(id, name string) map[string]any {
		return map[string]any{"id": id, "name": name, "scopes": []string{"*"}, "createdAt": time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	}
	switch q.Get("cursor") {
	case "":
		admin.WriteJSON(w, 200, map[string]any{"tokens": []any{tok("00000000000000aa", "first <b>"), tok("00000000000000bb", "second")}, "nextCursor": "00000000000000bb"})
	case "00000000000000bb":
		admin.WriteJSON(w, 200, map[string]any{"tokens": []any{tok("00000000000000cc", "third")}})
	default:
		admin.WriteError(w, http.StatusBadRequest, "cursor: not a cursor of this listing")
	}
}

func (a *tokensAPI) last() url.Values {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.queries[len(a.queries)-1]
}

func newTokensHarness(t *testing.T) (*harness, *tokensAPI) {
	t.Helper()
	h := &harness{t: t, api: &fakeAPI{}, audit: &plugintest.Auditor{}, now: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}
	api := &tokensAPI{fakeAPI: h.api}
	srv, err := New(Options{API: api, Audit: h.audit, Now: h.clock, MaxSessions: 3})
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	return h, api
}

// The tokens page shows one page of pageSize from the API and links the
// next one (a plain link: keyboard reachable, no script); the next page
// links back to the first and, being the last, to nothing further.
func TestTokensPageNextLink(t *testing.T) {
	h, api := newTokensHarness(t)
	cookie, _ := h.login("sft_rw")

	res := h.do("GET", "/ui/tokens", cookie, nil, nil)
	page := body(t, res)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /ui/tokens: %d\n%s", res.StatusCode, page)
	}
	if q := api.last(); q.Get("limit") != "50" || q.Get("cursor") != "" || q.Get("status") != "" {
		t.Errorf("first page asked the API for %v, want limit=%d only", q, pageSize)
	}
	if strings.Count(page, `<tr class="token">`) != 2 || strings.Contains(page, "first <b>") || strings.Contains(page, "third") {
		t.Fatalf("first page rows wrong or unescaped:\n%s", page)
	}
	next := `<a rel="next" href="/ui/tokens?cursor=00000000000000bb">Next page</a>`
	if !strings.Contains(page, next) || strings.Contains(page, "First page") {
		t.Fatalf("first page: want %s and no first-page link:\n%s", next, page)
	}
	if inline.MatchString(page) {
		t.Errorf("tokens page has inline script or style: %s", inline.FindString(page))
	}

	page = body(t, h.do("GET", "/ui/tokens?cursor=00000000000000bb", cookie, nil, nil))
	if q := api.last(); q.Get("cursor") != "00000000000000bb" {
		t.Errorf("second page asked the API for %v", q)
	}
	if strings.Count(page, `<tr class="token">`) != 1 || !strings.Contains(page, "third") ||
		strings.Contains(page, "Next page") || !strings.Contains(page, `<a href="/ui/tokens?">First page</a>`) {
		t.Fatalf("second page:\n%s", page)
	}

	// The status filter goes to the API and stays in the next link.
	page = body(t, h.do("GET", "/ui/tokens?status=revoked", cookie, nil, nil))
	if q := api.last(); q.Get("status") != "revoked" {
		t.Errorf("filtered page asked the API for %v", q)
	}
	if want := html.EscapeString(`/ui/tokens?cursor=00000000000000bb&status=revoked`); !strings.Contains(page, `rel="next" href="`+want+`"`) {
		t.Fatalf("filtered next link lost the status, want %s:\n%s", want, page)
	}

	// A cursor the API refuses is shown, not a blank list.
	res = h.do("GET", "/ui/tokens?cursor=zz", cookie, nil, nil)
	if page = body(t, res); res.StatusCode != http.StatusBadRequest || !strings.Contains(page, "cursor:") {
		t.Fatalf("bad cursor: %d\n%s", res.StatusCode, page)
	}
}

// Creating a token still shows its secret once, over the first page.
func TestTokensCreateShowsSecretOverFirstPage(t *testing.T) {
	h, api := newTokensHarness(t)
	cookie, csrf := h.login("sft_rw")
	res := h.do("POST", "/ui/tokens", cookie, url.Values{"csrf": {csrf}, "name": {"new"}, "scopes": {"devices:read"}}, nil)
	page := body(t, res)
	if res.StatusCode != http.StatusCreated || !strings.Contains(page, "sft_00000000000000ff_onetime") || strings.Count(page, `<tr class="token">`) != 2 {
		t.Fatalf("create: %d\n%s", res.StatusCode, page)
	}
	if q := api.last(); q.Get("cursor") != "" || q.Get("limit") != "50" {
		t.Errorf("after create the list asked for %v, want the first page", q)
	}
}
