package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/stepfort/stepfort/internal/testenv"
)

// The dashboard's end-to-end test drives headless Chromium (Debian's
// chromium package) with chromedp against the real daemon, and writes a
// screenshot of every page to docs/ui/ (docs/ui.md links them).

// uiCSP is the Content-Security-Policy every dashboard page must carry.
const uiCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"

// inlineCode matches inline script, event-handler attributes, style
// attributes or elements and javascript: URLs.
var inlineCode = regexp.MustCompile(`(?i)<script[^>]*>\s*[^<\s]|\son[a-z]+\s*=|\sstyle\s*=|<style|javascript:`)

type browser struct {
	t   *testing.T
	ctx context.Context
	url string
}

func newBrowser(t *testing.T, baseURL string) *browser {
	t.Helper()
	bin := testenv.MustTool(t, "chromium")
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(bin), chromedp.NoSandbox,
		chromedp.WindowSize(1280, 860), chromedp.Flag("ignore-certificate-errors", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-gpu", true))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelA() })
	// No timeout on the first Run: cancelling it would kill the browser.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return &browser{t: t, ctx: ctx, url: baseURL}
}

// do runs steps with a timeout.
func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		loc, _ := chromedp.Run(b.ctx, chromedp.Location())
		html, _ := chromedp.Run(b.ctx, chromedp.OuterHTML(chromedp.CSS("main")))
		b.t.Fatalf("%s: %v (at %s)\n%s", what, err, loc, html)
	}
}

func uiRun[T any](b *browser, what string, a chromedp.Action[T]) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
	return v
}

func (b *browser) open(path string) {
	b.t.Helper()
	b.do("open "+path, chromedp.Navigate(b.url+path), chromedp.WaitReady(chromedp.CSS("main")))
}

// poll waits until a JavaScript expression is true.
func (b *browser) poll(what, expr string) {
	b.t.Helper()
	b.do(what, chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(15*time.Second))(ctx, t)
		return err
	}))
}

func (b *browser) login(token string) {
	b.t.Helper()
	b.open("/ui/login")
	b.do("log in", chromedp.SendKeys(chromedp.ID("token"), token), chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.CSS(`nav[aria-label="Main"]`)))
}

func (b *browser) logout() {
	b.t.Helper()
	b.do("log out", chromedp.Click(chromedp.CSS("form.logout button")), chromedp.WaitVisible(chromedp.ID("token")))
}

// screenshot writes the viewport to docs/ui/<name>.png.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	png := uiRun(b, "screenshot "+name, chromedp.CaptureScreenshot())
	root, err := testenv.RepoRoot()
	if err != nil {
		b.t.Fatal(err)
	}
	dir := filepath.Join(root, "docs", "ui")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func (b *browser) text(sel string) string {
	b.t.Helper()
	return strings.TrimSpace(uiRun(b, "text of "+sel, chromedp.Text(chromedp.CSS(sel))))
}

// TestUIDashboard: an admin logs in with a token, finds a certificate the
// step CLI issued by typing part of its name, revokes it (OCSP says
// revoked), adds a device, creates a SCEP challenge bound to it and
// enrolls with scepclient, disables the device (its certificate is
// revoked), and reads the month's Endpoints on the billing chart. A
// read-only token sees no revoke button and its forged POST is refused;
// cross-origin POSTs are refused; every page has the strict CSP and no
// inline script; logged-out requests go to the login page.
func TestUIDashboard(t *testing.T) {
	c := initCA(t)
	enableCertIndex(t, c.Config)
	serve(t, c.Config, c.Password, c.Port)
	hc := apiClient(t, c)
	admin := readToken(t, c)
	step := newStepCLI(t)
	step.bootstrap(c, c.URL)
	dir := t.TempDir()
	target, other := filepath.Join(dir, "target.crt"), filepath.Join(dir, "other.crt")
	step.must("ca", "certificate", "ui-target.corp.example", target, filepath.Join(dir, "target.key"),
		"--provisioner", "admin", "--provisioner-password-file", c.Password)
	step.must("ca", "certificate", "ui-other.corp.example", other, filepath.Join(dir, "other.key"),
		"--provisioner", "admin", "--provisioner-password-file", c.Password)
	otherSerial := certSerial(t, other)
	ocspURL := fmt.Sprintf("http://127.0.0.1:%d/ocsp", c.HTTPPort)
	code, m := call(t, hc, "POST", c.URL+"/api/v1/tokens", admin, map[string]any{"name": "ui-reader",
		"scopes": []string{"certificates:read", "devices:read", "scep:read", "billing:read", "endpoints:read", "audit:read", "tokens:read"}})
	if code != http.StatusCreated {
		t.Fatalf("mint reader: %d %v", code, m)
	}
	reader := m["secret"].(string)

	b := newBrowser(t, c.URL)
	// Logged out: a page sends the browser to the login form.
	b.open("/ui/certificates")
	if loc := uiRun(b, "location", chromedp.Location()); !strings.Contains(loc, "/ui/login?next=") {
		t.Fatalf("logged-out visit ended at %s", loc)
	}
	b.screenshot("login")
	b.login(admin)

	// Search as you type: the results are swapped in by ui.js.
	b.open("/ui/certificates")
	b.poll("certificates listed", `document.querySelectorAll('#results tr.cert').length >= 2`)
	b.screenshot("certificates")
	b.do("type", chromedp.SendKeys(chromedp.ID("q"), "ui-tar"))
	b.poll("search result", `(() => { const r = document.querySelectorAll('#results tr.cert');
		return r.length === 1 && r[0].textContent.includes('ui-target.corp.example') && location.search.includes('q=ui-tar'); })()`)
	b.do("open certificate", chromedp.Click(chromedp.CSS("#results tr.cert a")), chromedp.WaitVisible(chromedp.ID("revoke")))
	b.screenshot("certificate")
	b.do("revoke", chromedp.SetValue(chromedp.ID("reasonCode"), "1"), chromedp.SendKeys(chromedp.ID("reason"), "ui test"),
		chromedp.Click(chromedp.ID("revokebtn")), chromedp.WaitVisible(chromedp.CSS(".flash")))
	if st := b.text("#status"); st != "revoked" {
		t.Fatalf("status after revoke: %q (%s)", st, b.text(".flash"))
	}
	if out := ocspStatus(t, c, ocspURL, "-cert", target); !strings.Contains(out, target+": revoked") {
		t.Fatalf("OCSP after revoking in the UI:\n%s", out)
	}

	// A device, a SCEP challenge bound to it, an enrollment, then disable.
	b.open("/ui/devices")
	b.do("add device", chromedp.SendKeys(chromedp.ID("d-name"), "ui-mac"), chromedp.SendKeys(chromedp.ID("d-ids"), "UI-SERIAL-1"),
		chromedp.Click(chromedp.CSS("#adddevice button")), chromedp.WaitVisible(chromedp.ID("devstatus")))
	loc := uiRun(b, "location", chromedp.Location())
	devID, _ := url.PathUnescape(loc[strings.LastIndex(loc, "/")+1:])
	if !strings.HasPrefix(devID, "dev_") {
		t.Fatalf("device page %s", loc)
	}
	b.open("/ui/scep")
	b.do("create challenge", chromedp.SendKeys(chromedp.ID("c-cn"), "ui-mac"), chromedp.SendKeys(chromedp.ID("c-dev"), devID),
		chromedp.Click(chromedp.ID("createchallenge")), chromedp.WaitVisible(chromedp.ID("challenge")))
	challenge := b.text("#challenge")
	b.screenshot("scep")
	certFile := mustEnroll(t, c, c.HTTPPort, filepath.Join(t.TempDir(), "dev"), challenge, "ui-mac")
	b.open("/ui/devices/" + url.PathEscape(devID))
	b.screenshot("device")
	b.do("disable", chromedp.Click(chromedp.ID("disable")), chromedp.WaitVisible(chromedp.CSS(".flash")))
	if st := b.text("#devstatus"); st != "disabled" {
		t.Fatalf("device status %q", st)
	}
	eventually(t, 15*time.Second, func() error {
		if out := ocspStatus(t, c, ocspURL, "-cert", certFile); !strings.Contains(out, certFile+": revoked") {
			return fmt.Errorf("OCSP after disabling the device in the UI:\n%s", out)
		}
		return nil
	})
	// The dashboard shows the device's certificate revoked too.
	b.open("/ui/certificates/" + certSerial(t, certFile))
	b.poll("SCEP certificate revoked in the index", `(() => { const s = document.getElementById('status');
		if (s && s.textContent === 'revoked') return true;
		if (!window.__r) { window.__r = 1; setTimeout(() => location.reload(), 300); } return false; })()`)
	b.open("/ui/devices")
	b.screenshot("devices")
	// A collection added in the UI, listed with a link to its devices.
	b.open("/ui/devices/collections")
	b.do("add collection", chromedp.SendKeys(chromedp.ID("c-name"), "ui-lab"), chromedp.SendKeys(chromedp.ID("c-desc"), "test benches"),
		chromedp.Click(chromedp.CSS("#addcollection button")), chromedp.WaitVisible(chromedp.CSS(".flash")))
	if txt := b.text("#collections"); !strings.Contains(txt, "ui-lab") || !strings.Contains(txt, "test benches") {
		t.Fatalf("collections page:\n%s", txt)
	}
	b.screenshot("collections")

	// Billing: the chart's last bar and the table are this month's report.
	month := time.Now().UTC().Format("2006-01")
	code, rep := call(t, hc, "GET", c.URL+"/api/v1/billing/report?month="+month, admin, nil)
	if code != 200 {
		t.Fatalf("billing report: %d %v", code, rep)
	}
	total := rep["total"].(map[string]any)
	b.open("/ui/billing")
	bars := uiRun(b, "bars", chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll('#billingchart .bar text.value')).map(e => e.textContent)`))
	if len(bars) != 12 || bars[11] != fmt.Sprint(total["billable"]) || total["endpoints"].(float64) < 2 {
		t.Fatalf("chart bars %v, report total %v", bars, total)
	}
	if got := b.text("#totalendpoints"); got != fmt.Sprint(total["endpoints"]) {
		t.Fatalf("table total %s, report %v", got, total["endpoints"])
	}
	b.screenshot("billing")
	b.open("/ui/audit?action=ui.login")
	if txt := b.text("main table.list"); !strings.Contains(txt, "ui.login") || !strings.Contains(txt, "success") {
		t.Fatalf("audit page lacks the login:\n%s", txt)
	}
	// The chain was verified at start (the verifier runs every minute).
	b.open("/ui/audit")
	if got := b.text("#chainstate"); got != "ok" {
		t.Fatalf("audit chain state %q, want ok:\n%s", got, b.text("#chain"))
	}
	b.screenshot("audit")
	b.open("/ui/tokens")
	b.screenshot("tokens")
	// Every replica (here one) from its heartbeat, with the lease holder.
	b.open("/ui/")
	if txt := b.text("#replicas"); !strings.Contains(txt, "(this replica)") || !strings.Contains(txt, "ok") {
		t.Fatalf("overview replicas:\n%s", txt)
	}
	// Exact counts, as the count endpoints say; this month's revocations
	// include the two made above, and the disabled device is counted.
	now := time.Now().UTC()
	monthStart := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC).Format(time.RFC3339)
	for sel, path := range map[string]string{"#active": "certificates/count?status=active", "#revokedmonth": "certificates/count?revokedSince=" + monthStart,
		"#devactive": "devices/count?status=active", "#devdisabled": "devices/count?status=disabled"} {
		code, m := call(t, hc, "GET", c.URL+"/api/v1/"+path, admin, nil)
		if code != http.StatusOK {
			t.Fatalf("count %s: %d %v", path, code, m)
		}
		least := map[string]float64{"#revokedmonth": 2, "#devdisabled": 1}[sel]
		if got, want := b.text(sel), fmt.Sprint(m["count"]); got != want || m["count"].(float64) < least {
			t.Fatalf("overview %s = %q, API count %s (at least %v)", sel, got, want, least)
		}
	}
	b.screenshot("overview")

	// Read-only token: no revoke button, and a forged POST is refused.
	b.logout()
	b.login(reader)
	b.open("/ui/certificates/" + otherSerial)
	if none := uiRun(b, "no revoke", chromedp.Evaluate[bool](`document.getElementById('revokebtn') === null && document.getElementById('revoke') === null`)); !none {
		t.Fatal("a token without certificates:write sees the revoke form")
	}
	status := uiRun(b, "forged POST", chromedp.Evaluate[int](fmt.Sprintf(`fetch('/ui/certificates/%s/revoke', {method: 'POST', redirect: 'manual',
		body: new URLSearchParams({csrf: document.querySelector('input[name=csrf]').value, reasonCode: '1'})}).then(r => r.status)`, otherSerial),
		chromedp.EvalAwaitPromise))
	if status != http.StatusForbidden {
		t.Fatalf("forged revoke with a read-only token: HTTP %d", status)
	}
	if out := ocspStatus(t, c, ocspURL, "-cert", other); !strings.Contains(out, other+": good") {
		t.Fatalf("the forged POST revoked:\n%s", out)
	}

	uiHeadersAndCrossOrigin(t, c, admin, otherSerial)
	if out := ocspStatus(t, c, ocspURL, "-cert", other); !strings.Contains(out, other+": good") {
		t.Fatalf("a cross-origin POST revoked:\n%s", out)
	}
}

// uiHeadersAndCrossOrigin checks, with a plain HTTP client, the CSP and
// markup of every page, the redirect when logged out, and that
// cross-origin POSTs with a valid session and form token are refused.
func uiHeadersAndCrossOrigin(t *testing.T, c *ca, token, serial string) {
	t.Helper()
	hc := apiClient(t, c)
	hc.Jar, _ = cookiejar.New(nil)
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	do := func(method, path string, form url.Values, hdr map[string]string) (*http.Response, string) {
		t.Helper()
		var body io.Reader
		if form != nil {
			body = strings.NewReader(form.Encode())
		}
		req, _ := http.NewRequest(method, c.URL+path, body)
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		res, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res, string(b)
	}
	if res, _ := do("GET", "/ui/devices", nil, nil); res.StatusCode != http.StatusSeeOther || !strings.HasPrefix(res.Header.Get("Location"), "/ui/login") {
		t.Fatalf("logged out: %d %s", res.StatusCode, res.Header.Get("Location"))
	}
	if res, _ := do("POST", "/ui/login", url.Values{"token": {token}}, map[string]string{"Origin": "https://evil.example"}); res.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-origin login: %d", res.StatusCode)
	}
	if res, _ := do("POST", "/ui/login", url.Values{"token": {token}}, nil); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("login: %d", res.StatusCode)
	}
	var csrf string
	for _, p := range []string{"/ui/login", "/ui/", "/ui/certificates", "/ui/certificates/" + serial, "/ui/devices", "/ui/devices/collections", "/ui/devices/import",
		"/ui/scep", "/ui/billing", "/ui/audit", "/ui/tokens"} {
		res, body := do("GET", p, nil, nil)
		if res.StatusCode != 200 || res.Header.Get("Content-Security-Policy") != uiCSP || res.Header.Get("X-Frame-Options") != "DENY" ||
			res.Header.Get("X-Content-Type-Options") != "nosniff" || res.Header.Get("Referrer-Policy") != "no-referrer" {
			t.Fatalf("%s: %d %v", p, res.StatusCode, res.Header)
		}
		if p != "/ui/login" && res.Header.Get("Cache-Control") != "no-store" {
			t.Fatalf("%s: Cache-Control %q", p, res.Header.Get("Cache-Control"))
		}
		if m := inlineCode.FindString(body); m != "" {
			t.Fatalf("%s has inline code: %q", p, m)
		}
		if m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(body); m != nil {
			csrf = m[1]
		}
	}
	form := url.Values{"csrf": {csrf}, "reasonCode": {"1"}}
	for _, hdr := range []map[string]string{{"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}} {
		if res, _ := do("POST", "/ui/certificates/"+serial+"/revoke", form, hdr); res.StatusCode != http.StatusForbidden {
			t.Fatalf("cross-origin revoke %v: %d", hdr, res.StatusCode)
		}
	}
}
