package billing

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/stepfort/stepfort/plugins/plugintest"
)

// apiFixture serves the admin routes of a plugin on the fixture's store.
// The plugin is assembled by hand, without New, so no alert job runs
// beside the requests.
func apiFixture(t *testing.T) (*fixture, http.Handler, *plugintest.Host) {
	t.Helper()
	f := newFixture(t, nil)
	host := replicaHost(t, f.s.db, "api")
	host.SetNow(t0.Add(2 * time.Hour))
	p := &Plugin{cfg: DefaultConfig(), host: host, store: f.s}
	r := chi.NewRouter()
	for _, rt := range p.AdminRoutes() {
		r.Method(rt.Method, rt.Pattern, rt.Handler)
	}
	return f, r, host
}

func get(t *testing.T, h http.Handler, url string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, url, nil))
	return rec.Code, rec.Body.String()
}

func TestAPIBadInput(t *testing.T) {
	_, h, _ := apiFixture(t)
	tests := []struct{ url, field string }{
		{"/endpoints?state=gone", "state"},
		{"/endpoints?limit=0", "limit"},
		{"/endpoints?limit=x", "limit"},
		{"/endpoints?cursor=../x", "cursor"},
		{"/endpoints/not-an-id", "id"},
		{"/billing/report", "month"},
		{"/billing/report?month=2026-13", "month"},
		{"/billing/report?month=2026-03&format=xml", "format"},
	}
	for _, tt := range tests {
		code, body := get(t, h, tt.url)
		if code != http.StatusBadRequest || !strings.Contains(body, `"message": "`+tt.field+`:`) {
			t.Errorf("GET %s = %d %s, want 400 naming %s", tt.url, code, body, tt.field)
		}
	}
	if code, _ := get(t, h, "/endpoints/ep_aaaaaaaaaaaaaaaaaaaaaaaa"); code != http.StatusNotFound {
		t.Errorf("unknown endpoint: %d, want 404", code)
	}
}

func TestAPIListShowReport(t *testing.T) {
	f, h, _ := apiFixture(t)
	for _, n := range []string{"a.example", "b.example", "c.example"} {
		f.sign(jwk, t0, day, n)
	}
	gone := f.sign(oidc, t0, time.Hour, "gone.example")

	var page EndpointList
	var ids []string
	cursor := ""
	for {
		code, body := get(t, h, "/endpoints?limit=2&cursor="+cursor)
		if code != 200 {
			t.Fatalf("list: %d %s", code, body)
		}
		page = EndpointList{}
		_ = json.Unmarshal([]byte(body), &page)
		for _, e := range page.Endpoints {
			ids = append(ids, e.ID)
		}
		if page.NextCursor == "" {
			break
		}
		cursor = page.NextCursor
	}
	if len(ids) != 4 {
		t.Fatalf("paged through %d endpoints, want 4", len(ids))
	}
	filters := []struct {
		q    string
		want int
	}{
		{"state=active", 3}, {"state=ended", 1}, {"provisioner=google", 1}, {"provisioner=admin", 3}, {"q=B.EXAMPLE", 1}, {"q=example&state=ended", 1},
	}
	for _, ft := range filters {
		_, body := get(t, h, "/endpoints?"+ft.q)
		page = EndpointList{}
		_ = json.Unmarshal([]byte(body), &page)
		if len(page.Endpoints) != ft.want {
			t.Errorf("?%s: %d endpoints, want %d", ft.q, len(page.Endpoints), ft.want)
		}
	}
	ep := f.endpointOf(gone)
	code, body := get(t, h, "/endpoints/"+ep.ID)
	var d EndpointDetail
	if err := json.Unmarshal([]byte(body), &d); code != 200 || err != nil {
		t.Fatalf("show: %d %s", code, body)
	}
	if d.State != StateEnded || d.EndReason != EndExpired || len(d.Lineage) != 1 || d.Lineage[0].Serial != gone || d.Lineage[0].Status != "expired" {
		t.Fatalf("show = %+v", d)
	}
	code, body = get(t, h, "/billing/report?month=2026-03&format=csv")
	want := "month,mode,provisioner,type,endpoints,extra_certificates,certificates,billable\n" +
		"2026-03,endpoint,admin,JWK,3,0,3,3\n2026-03,endpoint,google,OIDC,1,0,1,1\n2026-03,endpoint,total,,4,0,4,4\n"
	if code != 200 || body != want {
		t.Fatalf("csv report = %d\n%s\nwant\n%s", code, body, want)
	}
	code, body = get(t, h, "/billing/report?month=2026-03")
	var r Report
	if err := json.Unmarshal([]byte(body), &r); code != 200 || err != nil || r.Total.Billable != 4 || r.Unit != "endpoint-month" {
		t.Fatalf("json report = %d %s", code, body)
	}
}
