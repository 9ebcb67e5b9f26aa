package admin

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/stepfort/stepfort/internal/testenv"
)

// pagedAPI serves the admin API over a fresh store on backend and returns
// its base URL, the store and an all-powerful token's secret.
func pagedAPI(t *testing.T, backend string, now *time.Time) (string, *TokenStore, string) {
	t.Helper()
	store, err := NewTokenStore(testenv.OpenStore(t, backend), func() time.Time { return *now })
	if err != nil {
		t.Fatal(err)
	}
	_, secret, err := store.Create("admin", []string{"*"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	r := chi.NewRouter()
	(&Server{Tokens: store}).Mount(r, nil)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return srv.URL + Prefix, store, secret
}

// getTokens GETs /tokens?query and decodes the page; it fails the test on
// any status but 200.
func getTokens(t *testing.T, base, secret, query string) TokenList {
	t.Helper()
	var page TokenList
	f := &apiFixture{t: t, url: base}
	if resp := f.call(http.MethodGet, "/tokens?"+query, secret, "", &page); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /tokens?%s = %d", query, resp.StatusCode)
	}
	return page
}

// Walking the pages while tokens are created between them lists every
// token that existed at the start exactly once, in ID order, and no token
// twice; the last page has no cursor.
func TestTokenPagesNoGapsNoDuplicates(t *testing.T) {
	for _, backend := range testenv.Backends {
		t.Run(backend, func(t *testing.T) {
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			base, store, secret := pagedAPI(t, backend, &now)
			before := map[string]bool{}
			for i := range 23 {
				tok, _, err := store.Create(fmt.Sprintf("t%d", i), []string{"devices:read"}, 0)
				if err != nil {
					t.Fatal(err)
				}
				before[tok.ID] = true
			}
			whoami := getTokens(t, base, secret, "limit=1000").Tokens
			if len(whoami) != 24 {
				t.Fatalf("one page of 1000 has %d tokens, want 24", len(whoami))
			}
			for _, tk := range whoami {
				before[tk.ID] = true // the admin token too
			}

			seen := map[string]int{}
			last, cursor, pages := "", "", 0
			for {
				q := url.Values{"limit": {"5"}}
				if cursor != "" {
					q.Set("cursor", cursor)
				}
				page := getTokens(t, base, secret, q.Encode())
				pages++
				if len(page.Tokens) > 5 || (page.NextCursor != "" && len(page.Tokens) != 5) {
					t.Fatalf("page %d: %d tokens, cursor %q", pages, len(page.Tokens), page.NextCursor)
				}
				for _, tk := range page.Tokens {
					if tk.Hash != "" {
						t.Fatalf("page leaks the hash of %s", tk.Name)
					}
					if tk.ID <= last {
						t.Fatalf("page %d: %s after %s: not in ID order", pages, tk.ID, last)
					}
					last = tk.ID
					seen[tk.ID]++
				}
				// Two new tokens between pages: they may land before or
				// after the cursor.
				for range 2 {
					now = now.Add(time.Second)
					if _, _, err := store.Create("between", []string{"devices:read"}, 0); err != nil {
						t.Fatal(err)
					}
				}
				if page.NextCursor == "" {
					break
				}
				if pages > 100 {
					t.Fatal("the walk does not end")
				}
				cursor = page.NextCursor
			}
			for id := range before {
				if seen[id] != 1 {
					t.Errorf("token %s listed %d times, want 1", id, seen[id])
				}
			}
			for id, n := range seen {
				if n != 1 {
					t.Errorf("token %s listed %d times", id, n)
				}
			}
			if pages < 5 {
				t.Errorf("%d pages of 5 for at least 24 tokens", pages)
			}
		})
	}
}

// Without a limit the answer is the first DefaultPageSize tokens and a
// cursor; the rest follows.
func TestTokenListDefaultsToFirstPage(t *testing.T) {
	for _, backend := range testenv.Backends {
		t.Run(backend, func(t *testing.T) {
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			base, store, secret := pagedAPI(t, backend, &now)
			for i := range DefaultPageSize { // with the admin token: one more than a page
				if _, _, err := store.Create(fmt.Sprintf("t%d", i), []string{"devices:read"}, 0); err != nil {
					t.Fatal(err)
				}
			}
			first := getTokens(t, base, secret, "")
			if len(first.Tokens) != DefaultPageSize || first.NextCursor == "" {
				t.Fatalf("no limit: %d tokens, cursor %q; want %d and a cursor", len(first.Tokens), first.NextCursor, DefaultPageSize)
			}
			rest := getTokens(t, base, secret, "cursor="+url.QueryEscape(first.NextCursor))
			if len(rest.Tokens) != 1 || rest.NextCursor != "" || rest.Tokens[0].ID <= first.NextCursor {
				t.Fatalf("second page: %+v", rest)
			}
			all, err := store.List()
			if err != nil || len(all) != DefaultPageSize+1 {
				t.Fatalf("List = %d tokens, %v", len(all), err)
			}
			for i := 1; i < len(all); i++ {
				if all[i].CreatedAt.After(all[i-1].CreatedAt) {
					t.Fatalf("List not newest first at %d", i)
				}
			}
		})
	}
}

// status keeps one status; a page full of matches still ends with no
// cursor when no more match.
func TestTokenListStatusFilter(t *testing.T) {
	for _, backend := range testenv.Backends {
		t.Run(backend, func(t *testing.T) {
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			base, store, secret := pagedAPI(t, backend, &now)
			want := map[string]map[string]bool{StatusActive: {}, StatusExpired: {}, StatusRevoked: {}}
			for i := range 12 {
				ttl := time.Duration(0)
				if i%3 == 1 {
					ttl = time.Minute
				}
				tok, _, err := store.Create(fmt.Sprintf("t%d", i), []string{"devices:read"}, ttl)
				if err != nil {
					t.Fatal(err)
				}
				if i%3 == 2 {
					if _, err := store.Revoke(tok.ID); err != nil {
						t.Fatal(err)
					}
				}
				want[[]string{StatusActive, StatusExpired, StatusRevoked}[i%3]][tok.ID] = true
			}
			now = now.Add(time.Hour) // the 1-minute tokens have expired
			for status, ids := range want {
				got := map[string]bool{}
				cursor := ""
				for {
					page := getTokens(t, base, secret, "limit=2&status="+status+"&cursor="+cursor)
					for _, tk := range page.Tokens {
						if tk.Status(now) != status {
							t.Errorf("status=%s lists %s, which is %s", status, tk.Name, tk.Status(now))
						}
						got[tk.ID] = true
					}
					if cursor = page.NextCursor; cursor == "" {
						break
					}
				}
				if status == StatusActive {
					delete(got, tokenID(t, secret)) // the admin token
				}
				if len(got) != len(ids) {
					t.Errorf("status=%s: %d tokens, want %d", status, len(got), len(ids))
				}
				for id := range ids {
					if !got[id] {
						t.Errorf("status=%s misses %s", status, id)
					}
				}
			}
		})
	}
}

func tokenID(t *testing.T, secret string) string {
	t.Helper()
	id, _, ok := strings.Cut(strings.TrimPrefix(secret, prefix), "_")
	if !ok {
		t.Fatalf("bad secret %q", secret)
	}
	return id
}

// Bad paging parameters are 400s that name the field.
func TestTokenListRejectsBadParameters(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	base, _, secret := pagedAPI(t, "bbolt", &now)
	f := &apiFixture{t: t, url: base}
	for _, q := range []struct{ query, field string }{
		{"limit=0", "limit:"},
		{"limit=1001", "limit:"},
		{"limit=-1", "limit:"},
		{"limit=ten", "limit:"},
		{"cursor=xyz", "cursor:"},
		{"cursor=0123456789ABCDEF", "cursor:"},
		{"cursor=" + strings.Repeat("a", 17), "cursor:"},
		{"status=gone", "status:"},
	} {
		t.Run(q.query, func(t *testing.T) {
			f.t = t
			f.wantError(http.MethodGet, "/tokens?"+q.query, secret, "", http.StatusBadRequest, "bad_request", q.field)
		})
	}
	// The largest page is fine; empty parameters are absent ones.
	for _, q := range []string{"limit=1000", "limit=&cursor=&status="} {
		if page := getTokens(t, base, secret, q); len(page.Tokens) != 1 || page.NextCursor != "" {
			t.Fatalf("%s: %+v", q, page)
		}
	}
}
