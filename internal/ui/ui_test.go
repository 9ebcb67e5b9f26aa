package ui

import (
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/admin"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

// fakeAPI answers the admin API routes the tests use, with two tokens:
// "sft_rw" (everything) and "sft_ro" (certificates:read only).
type fakeAPI struct {
	mu      sync.Mutex
	revokes int
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	scopes := map[string][]string{"sft_rw": {"*"}, "sft_ro": {"certificates:read"}}[tok]
	if scopes == nil && r.URL.Path != "/health" && r.URL.Path != "/crl" {
		admin.WriteError(w, http.StatusUnauthorized, "invalid admin token")
		return
	}
	need := func(scope string) bool {
		if !admin.Grants(scopes, scope) {
			admin.WriteError(w, http.StatusForbidden, "token lacks scope %q", scope)
			return false
		}
		return true
	}
	switch {
	case r.URL.Path == "/api/v1/whoami":
		admin.WriteJSON(w, 200, map[string]any{"id": "0123456789abcdef", "name": tok, "scopes": scopes})
	case r.URL.Path == "/api/v1/certificates" && need("certificates:read"):
		admin.WriteJSON(w, 200, map[string]any{"certificates": []map[string]any{{"serial": "42", "serialHex": "2a", "commonName": "web.example.test <b>",
			"notAfter": time.Now().Add(48 * time.Hour), "status": "active", "provisioner": map[string]string{"name": "admin"}}}})
	case r.URL.Path == "/api/v1/certificates/42" && need("certificates:read"):
		admin.WriteJSON(w, 200, map[string]any{"serial": "42", "serialHex": "2a", "commonName": "web.example.test", "status": "active"})
	case r.URL.Path == "/api/v1/certificates/revoke" && need("certificates:write"):
		f.mu.Lock()
		f.revokes++
		f.mu.Unlock()
		admin.WriteJSON(w, 200, map[string]any{"revoked": 1, "serials": []string{"42"}})
	case r.URL.Path == "/api/v1/devices/import" && need("devices:write"):
		b, _ := io.ReadAll(r.Body)
		rows := strings.Count(strings.TrimSpace(string(b)), "\n")
		admin.WriteJSON(w, 200, map[string]any{"total": rows, "accepted": rows, "rows": []map[string]any{{"line": 2, "status": "accepted", "deviceId": "dev_1", "identifier": r.URL.Query().Get("map")}}})
	case r.URL.Path == "/api/v1/replicas" && need("health:read"):
		admin.WriteJSON(w, 200, map[string]any{"staleAfter": "30s", "replicas": []map[string]any{
			{"id": "ca1.example.test|:9000|41-aa", "version": "1.2.3", "lastSeen": time.Date(2026, 11, 29, 11, 59, 55, 0, time.UTC), "fips": "on", "crlLease": true, "status": "ok", "ocspStatusSource": "memory", "self": true},
			{"id": "ca2.example.test|:9000|42-bb <i>", "version": "1.2.3", "lastSeen": time.Date(2026, 11, 29, 11, 50, 0, 0, time.UTC), "fips": "off", "status": "ok", "stale": true}}})
	case r.URL.Path == "/api/v1/audit" && need("audit:read"):
		admin.WriteJSON(w, 200, map[string]any{"records": []map[string]any{{"seq": 7, "action": "ui.login", "outcome": "success"}}})
	case r.URL.Path == "/api/v1/audit/status" && need("audit:read"):
		admin.WriteJSON(w, 200, map[string]any{"state": "failed", "from": 0, "verified": 6, "size": 9, "error": map[string]any{"seq": 6, "reason": "record does not match its hash (edited)"},
			"checkpoint": map[string]any{"size": 5, "root": "ab12", "time": "2026-11-29T11:00:00Z", "keyId": "00ff00ff00ff00ff", "signatureValid": true, "rootVerified": true}})
	case r.URL.Path == "/health":
		admin.WriteJSON(w, 200, map[string]any{"status": "ok"})
	case strings.HasPrefix(r.URL.Path, "/api/v1/"):
		if w.Header().Get("Content-Type") == "" {
			admin.WriteError(w, http.StatusNotFound, "no such endpoint")
		}
	default:
		http.NotFound(w, r)
	}
}

type harness struct {
	t     *testing.T
	srv   *Server
	api   *fakeAPI
	audit *plugintest.Auditor
	now   time.Time
	mu    sync.Mutex
}

func newHarness(t *testing.T) *harness {
	h := &harness{t: t, api: &fakeAPI{}, audit: &plugintest.Auditor{}, now: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}
	srv, err := New(Options{API: h.api, Audit: h.audit, Now: h.clock, MaxSessions: 3})
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	return h
}

func (h *harness) clock() time.Time { h.mu.Lock(); defer h.mu.Unlock(); return h.now }
func (h *harness) advance(d time.Duration) {
	h.mu.Lock()
	h.now = h.now.Add(d)
	h.mu.Unlock()
}

// do sends a request as a same-origin browser would (Sec-Fetch-Site).
func (h *harness) do(method, path, cookie string, form url.Values, hdr map[string]string) *http.Response {
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	if raw, ok := hdr["X-Body"]; ok {
		body = strings.NewReader(raw)
		delete(hdr, "X-Body")
	}
	r := httptest.NewRequest(method, "https://ca.example.test"+path, body)
	if form != nil {
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	r.Header.Set("Sec-Fetch-Site", "same-origin")
	if cookie != "" {
		r.AddCookie(&http.Cookie{Name: CookieName, Value: cookie})
	}
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.srv.ServeHTTP(w, r)
	return w.Result()
}

func (h *harness) login(token string) (cookie, csrf string) {
	h.t.Helper()
	res := h.do("POST", "/ui/login", "", url.Values{"token": {token}, "next": {"/ui/certificates"}}, nil)
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/ui/certificates" {
		h.t.Fatalf("login: %d %s", res.StatusCode, res.Header.Get("Location"))
	}
	for _, c := range res.Cookies() {
		if c.Name == CookieName {
			if !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.Domain != "" {
				h.t.Fatalf("cookie attributes: %+v", c)
			}
			cookie = c.Value
		}
	}
	page := body(h.t, h.do("GET", "/ui/certificates", cookie, nil, nil))
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page)
	if cookie == "" || m == nil {
		h.t.Fatalf("no cookie or form token after login:\n%s", page)
	}
	return cookie, m[1]
}

func body(t *testing.T, res *http.Response) string {
	t.Helper()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

func TestLoginAuditedAndSessionCookie(t *testing.T) {
	h := newHarness(t)
	res := h.do("POST", "/ui/login", "", url.Values{"token": {"sft_0123456789abcdef_wrong"}}, nil)
	if res.StatusCode != http.StatusUnauthorized || len(res.Cookies()) != 0 {
		t.Fatalf("bad token: %d, cookies %v", res.StatusCode, res.Cookies())
	}
	h.login("sft_rw")
	recs := h.audit.Records()
	if len(recs) != 2 || recs[0].Outcome != plugins.AuditDenied || recs[0].Actor.ID != "0123456789abcdef" ||
		recs[1].Outcome != plugins.AuditSuccess || recs[1].Action != "ui.login" {
		t.Fatalf("audit records: %+v", recs)
	}
	for _, r := range recs {
		if strings.Contains(r.Reason+r.Actor.ID+r.Actor.Name, "wrong") {
			t.Fatalf("the secret reached the audit trail: %+v", r)
		}
	}
}

func TestLoggedOutRedirects(t *testing.T) {
	h := newHarness(t)
	for _, p := range []string{"/ui/", "/ui/certificates?q=x", "/ui/devices", "/ui/scep", "/ui/billing", "/ui/audit", "/ui/tokens", "/ui/certificates/42"} {
		res := h.do("GET", p, "", nil, nil)
		if res.StatusCode != http.StatusSeeOther || !strings.HasPrefix(res.Header.Get("Location"), "/ui/login?next=") {
			t.Errorf("%s: %d %s", p, res.StatusCode, res.Header.Get("Location"))
		}
	}
	if res := h.do("POST", "/ui/certificates/42/revoke", "forged", url.Values{"reasonCode": {"1"}}, nil); res.StatusCode != http.StatusSeeOther || h.api.revokes != 0 {
		t.Fatalf("logged-out POST: %d, revokes %d", res.StatusCode, h.api.revokes)
	}
}

func TestSecurityHeadersAndNoInlineScript(t *testing.T) {
	h := newHarness(t)
	cookie, _ := h.login("sft_rw")
	for _, p := range []string{"/ui/login", "/ui/", "/ui/certificates", "/ui/certificates/42"} {
		c := cookie
		if p == "/ui/login" {
			c = ""
		}
		res := h.do("GET", p, c, nil, nil)
		if res.Header.Get("Content-Security-Policy") != ContentSecurityPolicy || res.Header.Get("X-Frame-Options") != "DENY" ||
			res.Header.Get("X-Content-Type-Options") != "nosniff" || res.Header.Get("Referrer-Policy") != "no-referrer" ||
			res.Header.Get("Cache-Control") != "no-store" || res.Header.Get("Strict-Transport-Security") == "" {
			t.Errorf("%s headers: %v", p, res.Header)
		}
		b := body(t, res)
		if inline.MatchString(b) {
			t.Errorf("%s has inline script or style: %s", p, inline.FindString(b))
		}
		if strings.Contains(b, "<b>") {
			t.Errorf("%s: data not escaped", p)
		}
	}
}

// inline matches a script element with content, an event handler
// attribute, a style attribute or element, or a javascript: URL.
var inline = regexp.MustCompile(`(?i)<script[^>]*>\s*[^<\s]|\son[a-z]+\s*=|\sstyle\s*=|<style|javascript:`)

func TestFormTokenAndCrossOrigin(t *testing.T) {
	h := newHarness(t)
	cookie, csrf := h.login("sft_rw")
	form := url.Values{"reasonCode": {"1"}}
	if res := h.do("POST", "/ui/certificates/42/revoke", cookie, form, nil); res.StatusCode != http.StatusForbidden {
		t.Fatalf("POST without form token: %d", res.StatusCode)
	}
	form.Set("csrf", csrf)
	if res := h.do("POST", "/ui/certificates/42/revoke", cookie, form, map[string]string{"Sec-Fetch-Site": "cross-site"}); res.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-site POST: %d", res.StatusCode)
	}
	if res := h.do("POST", "/ui/certificates/42/revoke", cookie, form, map[string]string{"Sec-Fetch-Site": "", "Origin": "https://evil.example"}); res.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-origin POST: %d", res.StatusCode)
	}
	if h.api.revokes != 0 {
		t.Fatal("a refused POST revoked")
	}
	if res := h.do("POST", "/ui/certificates/42/revoke", cookie, form, nil); res.StatusCode != http.StatusSeeOther || h.api.revokes != 1 {
		t.Fatalf("good POST: %d, revokes %d", res.StatusCode, h.api.revokes)
	}
}

func TestScopesHideButtonsAndAPIRefuses(t *testing.T) {
	h := newHarness(t)
	cookie, csrf := h.login("sft_ro")
	page := body(t, h.do("GET", "/ui/certificates/42", cookie, nil, nil))
	if strings.Contains(page, "revokebtn") || strings.Contains(page, `href="/ui/tokens"`) {
		t.Fatal("read-only token sees revoke or tokens")
	}
	res := h.do("POST", "/ui/certificates/42/revoke", cookie, url.Values{"csrf": {csrf}, "reasonCode": {"1"}}, nil)
	if res.StatusCode != http.StatusForbidden || h.api.revokes != 0 || !strings.Contains(body(t, res), "certificates:write") {
		t.Fatalf("forged revoke: %d, revokes %d", res.StatusCode, h.api.revokes)
	}
}

func TestSessionTimeoutsAndBound(t *testing.T) {
	h := newHarness(t)
	cookie, _ := h.login("sft_rw")
	h.advance(DefaultIdleTimeout - time.Second)
	if res := h.do("GET", "/ui/", cookie, nil, nil); res.StatusCode != 200 {
		t.Fatalf("within idle timeout: %d", res.StatusCode)
	}
	h.advance(DefaultIdleTimeout)
	if res := h.do("GET", "/ui/", cookie, nil, nil); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("after idle timeout: %d", res.StatusCode)
	}
	cookie, _ = h.login("sft_rw")
	for i := 0; i < int(DefaultAbsoluteTimeout/(10*time.Minute)); i++ {
		h.advance(10 * time.Minute)
		h.do("GET", "/ui/", cookie, nil, nil)
	}
	if res := h.do("GET", "/ui/", cookie, nil, nil); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("after absolute timeout: %d", res.StatusCode)
	}
	for i := 0; i < 5; i++ {
		h.login("sft_rw")
	}
	if n := h.srv.sessions.count(); n > 3 {
		t.Fatalf("%d sessions held, bound is 3", n)
	}
}

func TestLogoutEndsSession(t *testing.T) {
	h := newHarness(t)
	cookie, csrf := h.login("sft_rw")
	if res := h.do("POST", "/ui/logout", cookie, url.Values{"csrf": {csrf}}, nil); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout: %d", res.StatusCode)
	}
	if res := h.do("GET", "/ui/", cookie, nil, nil); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("after logout: %d", res.StatusCode)
	}
}

func TestImportMultipart(t *testing.T) {
	h := newHarness(t)
	cookie, csrf := h.login("sft_rw")
	post := func(withToken bool) *http.Response {
		var buf strings.Builder
		mw := multipart.NewWriter(&buf)
		if withToken {
			_ = mw.WriteField("csrf", csrf)
		}
		_ = mw.WriteField("map", "serial:Serial Number")
		fw, _ := mw.CreateFormFile("file", "devices.csv")
		_, _ = io.WriteString(fw, "Serial Number\nA1\nA2\n")
		_ = mw.Close()
		return h.do("POST", "/ui/devices/import", cookie, nil, map[string]string{"Content-Type": mw.FormDataContentType(), "X-Body": buf.String()})
	}
	if res := post(false); res.StatusCode != http.StatusForbidden {
		t.Fatalf("import without form token: %d", res.StatusCode)
	}
	res := post(true)
	if b := body(t, res); res.StatusCode != 200 || !strings.Contains(b, "2 rows: 2 added") || !strings.Contains(b, "serial:Serial Number") {
		t.Fatalf("import: %d\n%s", res.StatusCode, b)
	}
}

func TestSafeNext(t *testing.T) {
	for in, want := range map[string]string{"/ui/devices?q=a": "/ui/devices?q=a", "https://evil/ui/": "/ui/", "//evil/ui/": "/ui/", "/ui/\\evil": "/ui/", "/api/v1/tokens": "/ui/"} {
		if got := safeNext(in); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestChart(t *testing.T) {
	c := newChart([]bar{{Label: "2026-10", Value: 5}, {Label: "2026-11", Value: 10}}, "endpoint-months")
	if c.Max != 10 || c.Bars[1].H != chartBase-chartTop || c.Bars[0].H != (chartBase-chartTop)/2 || c.Bars[1].Short != "26-11" {
		t.Fatalf("chart: %+v", c)
	}
}

func TestStaticHashed(t *testing.T) {
	h := newHarness(t)
	u := h.srv.static.urls["ui.js"]
	res := h.do("GET", u, "", nil, nil)
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/javascript") || !strings.Contains(res.Header.Get("Cache-Control"), "immutable") {
		t.Fatalf("%s: %d %v", u, res.StatusCode, res.Header)
	}
	if res := h.do("GET", "/ui/static/000000000000/ui.js", "", nil, nil); res.StatusCode != 404 {
		t.Fatalf("wrong hash: %d", res.StatusCode)
	}
}

// The overview lists every replica with its lease, health and staleness
// (health:read only); the audit page shows the chain's verification and
// the last checkpoint.
func TestOverviewReplicasAndAuditStatus(t *testing.T) {
	h := newHarness(t)
	cookie, _ := h.login("sft_rw")
	page := body(t, h.do("GET", "/ui/", cookie, nil, nil))
	for _, want := range []string{"ca1.example.test|:9000|41-aa", "(this replica)", "holds the CRL lease", "memory", "stale", "5s ago", "ca2.example.test|:9000|42-bb &lt;i&gt;"} {
		if !strings.Contains(page, want) {
			t.Errorf("overview lacks %q", want)
		}
	}
	page = body(t, h.do("GET", "/ui/audit", cookie, nil, nil))
	for _, want := range []string{`id="chainstate">failed`, "seq 6: record does not match its hash (edited)", "5 records, signed 2026-11-29T11:00:00Z", "00ff00ff00ff00ff", `id="cpsig">valid`, "root matches"} {
		if !strings.Contains(page, want) {
			t.Errorf("audit page lacks %q", want)
		}
	}
	if inline.MatchString(page) {
		t.Errorf("audit page has inline code: %s", inline.FindString(page))
	}
	ro, _ := h.login("sft_ro")
	if page := body(t, h.do("GET", "/ui/", ro, nil, nil)); strings.Contains(page, "ca1.example.test") || !strings.Contains(page, "needs the <code>health:read</code> scope") {
		t.Error("a token without health:read sees the replicas")
	}
}
