package ui

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/admin"
)

// The overview's figures are the exact counts of
// GET /api/v1/certificates/count and /devices/count, with the filters each
// figure means;
// they are kept for countTTL, dropped by any dashboard POST, and a cached
// answer still ends the session of a token that stopped working.
func TestOverviewCountsExact(t *testing.T) {
	h := newHarness(t)
	var active, calls atomic.Int64
	var revoked atomic.Bool
	active.Store(123456)
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if revoked.Load() && r.URL.Path != "/health" && r.URL.Path != "/crl" {
			admin.WriteError(w, http.StatusUnauthorized, "invalid admin token")
			return
		}
		if r.URL.Path == "/api/v1/devices/count" {
			admin.WriteJSON(w, http.StatusOK, map[string]any{"count": map[string]int{"active": 98312, "disabled": 17}[r.URL.Query().Get("status")]})
			return
		}
		if r.URL.Path != "/api/v1/certificates/count" {
			h.api.ServeHTTP(w, r)
			return
		}
		calls.Add(1)
		q := r.URL.Query()
		n := map[string]int64{
			"active|": active.Load(),
			"active|" + h.clock().Add(7*24*time.Hour).Format(time.RFC3339):  12,
			"active|" + h.clock().Add(30*24*time.Hour).Format(time.RFC3339): 345,
		}[q.Get("status")+"|"+q.Get("expiresBefore")]
		if q.Get("revokedSince") == "2026-11-01T00:00:00Z" && q.Get("status") == "" {
			n = 7
		}
		admin.WriteJSON(w, http.StatusOK, map[string]any{"count": n})
	})
	srv, err := New(Options{API: api, Audit: h.audit, Now: h.clock, MaxSessions: 3})
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	cookie, csrf := h.login("sft_rw")
	overview := func(wantActive int64) {
		t.Helper()
		page := body(t, h.do("GET", "/ui/", cookie, nil, nil))
		for _, want := range []string{`id="active">` + strconv.FormatInt(wantActive, 10) + `<`, `id="exp7">12<`, `id="exp30">345<`, `id="revokedmonth">7<`, `id="countedat"`,
			`id="devactive">98312<`, `id="devdisabled">17<`} {
			if !strings.Contains(page, want) {
				t.Errorf("overview lacks %s", want)
			}
		}
		if strings.Contains(page, "stop at") || strings.Contains(page, "+<") {
			t.Error("the overview still says counts are capped")
		}
	}
	overview(123456)
	if calls.Load() != 4 {
		t.Fatalf("%d count calls, want 4", calls.Load())
	}
	active.Store(100)
	h.advance(10 * time.Second)
	overview(123456) // kept
	if calls.Load() != 4 {
		t.Fatalf("cached counts recounted: %d calls", calls.Load())
	}
	h.advance(countTTL)
	overview(100) // expired
	active.Store(99)
	h.do("POST", "/ui/certificates/42/revoke", cookie, url.Values{"csrf": {csrf}, "reasonCode": {"1"}}, nil)
	overview(99) // a dashboard POST drops them
	revoked.Store(true)
	if res := h.do("GET", "/ui/", cookie, nil, nil); res.StatusCode != http.StatusSeeOther || !strings.HasSuffix(res.Header.Get("Location"), "/ui/login") {
		t.Fatalf("cached overview for a revoked token: %d %s", res.StatusCode, res.Header.Get("Location"))
	}
}

// The overview's "revoked this month" card opens the list of exactly
// those certificates: revoked=month asks the API for revokedSince the
// first of the month (UTC), and the form keeps the choice.
func TestCertificatesRevokedThisMonth(t *testing.T) {
	h := newHarness(t)
	var mu sync.Mutex
	var asked url.Values
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/v1/certificates" {
			mu.Lock()
			asked = r.URL.Query()
			mu.Unlock()
		}
		h.api.ServeHTTP(w, r)
	})
	srv, err := New(Options{API: api, Audit: h.audit, Now: h.clock, MaxSessions: 3})
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	cookie, _ := h.login("sft_rw")
	if page := body(t, h.do("GET", "/ui/", cookie, nil, nil)); !strings.Contains(page, `href="/ui/certificates?revoked=month"`) {
		t.Error("the revoked-this-month card does not open that list")
	}
	page := body(t, h.do("GET", "/ui/certificates?revoked=month", cookie, nil, nil))
	mu.Lock()
	got := asked.Get("revokedSince")
	mu.Unlock()
	if got != "2026-11-01T00:00:00Z" || !strings.Contains(page, `<option value="month" selected>`) {
		t.Fatalf("revokedSince %q; form keeps the choice: %v", got, strings.Contains(page, `value="month" selected`))
	}
	body(t, h.do("GET", "/ui/certificates?revoked=year", cookie, nil, nil))
	mu.Lock()
	got = asked.Get("revokedSince")
	mu.Unlock()
	if got != "" {
		t.Fatalf("an unknown revoked value asked for revokedSince %q", got)
	}
}
