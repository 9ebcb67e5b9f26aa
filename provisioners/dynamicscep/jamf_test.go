package dynamicscep

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/stepfort/stepfort/config"
)

func durationOf(s string) config.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		panic(err)
	}
	return config.Duration{Duration: d}
}

// jamfBody is Jamf Pro's SCEPChallenge webhook (research §2.5).
const jamfBody = `{"webhook":{"webhookEvent":"SCEPChallenge","id":1,"eventTimestamp":1757435578,"name":""},
 "event":{"scepServerUrl":"https://ca.example/scep/scep","payloadIdentifier":"CDB0BC64-1234","payloadTypes":["com.apple.security.scep"]}}`

const jamfPassword = "jamf-webhook-password"

// newJamfPlugin builds the plugin with the jamf block on the HTTPS routes.
func newJamfPlugin(t *testing.T, backend string) (*Plugin, http.Handler) {
	t.Helper()
	cfg := defaultConfig()
	cfg.Provisioners = []string{"scep", "wifi"}
	cfg.Jamf = &JamfConfig{Username: "jamf", PasswordFile: passwordFile(t, jamfPassword+"\n"), ChallengeTTL: durationOf("4m")}
	p, _ := newPlugin2(t, backend, cfg)
	r := chi.NewRouter()
	p.Routes(r)
	return p, r
}

func postJamf(t *testing.T, h http.Handler, path, user, pass, body string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

// TestJamfWebhook: Jamf's body with the right credentials gets 200 and
// the challenge as the raw text body, valid once for the provisioner the
// scepServerUrl names, for the Jamf TTL.
func TestJamfWebhook(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			p, h := newJamfPlugin(t, backend)
			w := postJamf(t, h, DefaultJamfPath, "jamf", jamfPassword, jamfBody)
			if w.Code != http.StatusOK || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/plain") {
				t.Fatalf("%d %q %s", w.Code, w.Header().Get("Content-Type"), w.Body)
			}
			secret := w.Body.String()
			if len(secret) != 32 || strings.TrimSpace(secret) != secret {
				t.Fatalf("body %q is not the raw challenge", secret)
			}
			c, _, err := p.challenges.Lookup(secret)
			if err != nil || c.Source != SourceJamf || c.Provisioner != "scep" || c.ExpiresAt.Sub(c.CreatedAt) != 4*time.Minute || c.CreatedBy != "jamf:jamf" {
				t.Fatalf("stored %+v, %v", c, err)
			}
			csr, _ := newCSR(t, csrSpec{cn: "mac-1"})
			if _, err := p.ValidateSCEPChallenge(t.Context(), enroll(secret, csr)); err != nil {
				t.Fatal(err)
			}
			// scepServerUrl naming another served provisioner binds to it.
			w = postJamf(t, h, DefaultJamfPath, "jamf", jamfPassword, strings.Replace(jamfBody, "/scep/scep", "/scep/wifi/pkiclient.exe", 1))
			if c, _, err := p.challenges.Lookup(w.Body.String()); err != nil || c.Provisioner != "wifi" {
				t.Fatalf("wifi: %+v %v", c, err)
			}
			if r := result(t, func() error { _, err := p.ValidateSCEPChallenge(t.Context(), enroll(w.Body.String(), csr)); return err }()); r != ResultRefusedProvisioner {
				t.Fatalf("wifi challenge on scep: %s", r)
			}
		})
	}
}

// TestJamfRefusals: wrong or missing credentials get 401 with a Basic
// challenge; bad bodies get 400 naming the field, oversized ones 413;
// none creates a challenge.
func TestJamfRefusals(t *testing.T) {
	p, h := newJamfPlugin(t, "bbolt")
	for _, c := range []struct{ user, pass string }{{"", ""}, {"jamf", "wrong"}, {"JAMF", jamfPassword}, {"other", jamfPassword}} {
		w := postJamf(t, h, DefaultJamfPath, c.user, c.pass, jamfBody)
		if w.Code != http.StatusUnauthorized || !strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "Basic realm=") {
			t.Fatalf("%q/%q: %d %q", c.user, c.pass, w.Code, w.Header().Get("WWW-Authenticate"))
		}
	}
	for body, want := range map[string]string{
		"":    "body",
		"[1]": "body",
		"{":   "body",
		`{"webhook":{"webhookEvent":"ComputerAdded"}}`: "webhook.webhookEvent",
		jamfBody + " {}":                 "body",
		`{"webhook":{"webhookEvent":7}}`: "body",
	} {
		w := postJamf(t, h, DefaultJamfPath, "jamf", jamfPassword, body)
		if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), want) {
			t.Fatalf("%q: %d %s", body, w.Code, w.Body)
		}
	}
	w := postJamf(t, h, DefaultJamfPath, "jamf", jamfPassword, `{"x":"`+strings.Repeat("a", maxJamfBody)+`"}`)
	if w.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized: %d", w.Code)
	}
	if w := postJamf(t, h, "/scep/jamf/other", "jamf", jamfPassword, jamfBody); w.Code == http.StatusOK {
		t.Fatal("another path answered")
	}
	if n := countSource(t, p, SourceJamf); n != 0 {
		t.Fatalf("%d challenges created", n)
	}
	// A minimal body (no webhook object) is accepted: Jamf's fields
	// beyond the event name are not required.
	if w := postJamf(t, h, DefaultJamfPath, "jamf", jamfPassword, `{}`); w.Code != http.StatusOK {
		t.Fatalf("{}: %d %s", w.Code, w.Body)
	}
}

// TestJamfConfig: defaults and refusals naming the field.
func TestJamfConfig(t *testing.T) {
	good := passwordFile(t, "a-long-enough-password")
	tests := []struct {
		name string
		j    JamfConfig
		path string
	}{
		{"defaults", JamfConfig{Username: "jamf", PasswordFile: good}, ""},
		{"custom path", JamfConfig{Path: "/hooks/jamf", Username: "jamf", PasswordFile: good}, ""},
		{"relative path", JamfConfig{Path: "hooks", Username: "jamf", PasswordFile: good}, "jamf.path"},
		{"unclean path", JamfConfig{Path: "/a/../api/x", Username: "jamf", PasswordFile: good}, "jamf.path"},
		{"pattern path", JamfConfig{Path: "/a/{id}", Username: "jamf", PasswordFile: good}, "jamf.path"},
		{"admin api", JamfConfig{Path: "/api/v1/jamf", Username: "jamf", PasswordFile: good}, "jamf.path"},
		{"provisioner", JamfConfig{Provisioner: "nope", Username: "jamf", PasswordFile: good}, "jamf.provisioner"},
		{"ttl", JamfConfig{ChallengeTTL: durationOf("100h"), Username: "jamf", PasswordFile: good}, "jamf.challengeTTL"},
		{"no user", JamfConfig{PasswordFile: good}, "jamf.username"},
		{"no file", JamfConfig{Username: "jamf"}, "jamf.passwordFile"},
		{"empty file", JamfConfig{Username: "jamf", PasswordFile: passwordFile(t, "")}, "jamf.passwordFile"},
		{"huge file", JamfConfig{Username: "jamf", PasswordFile: passwordFile(t, strings.Repeat("x", maxPasswordFile+1))}, "jamf.passwordFile"},
	}
	for _, tt := range tests {
		c := defaultConfig()
		j := tt.j
		c.Jamf = &j
		err := c.Validate()
		switch {
		case tt.path == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.path != "" && (err == nil || !strings.Contains(err.Error(), tt.path)):
			t.Errorf("%s: %v, want an error naming %s", tt.name, err, tt.path)
		}
	}
	c := defaultConfig()
	c.Jamf = &JamfConfig{Username: "jamf", PasswordFile: good}
	if err := c.Validate(); err != nil || c.Jamf.Path != DefaultJamfPath || c.Jamf.ChallengeTTL.Duration != time.Hour || c.Jamf.Provisioner != "scep" {
		t.Fatalf("defaults: %v %+v", err, c.Jamf)
	}
}

// FuzzJamfBody: the parser never panics, and what it accepts is one JSON
// object whose event name, if any, is SCEPChallenge.
func FuzzJamfBody(f *testing.F) {
	for _, s := range []string{jamfBody, "{}", "", "[]", `{"webhook":null}`, `{"webhook":{"webhookEvent":"scepchallenge"}}`, `{"event":{"scepServerUrl":7}}`, "\xff\xfe{"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := ParseJamfBody(b)
		if err != nil {
			if ev != nil {
				t.Fatal("event with an error")
			}
			return
		}
		if e := ev.Webhook.WebhookEvent; e != "" && !strings.EqualFold(e, "SCEPChallenge") {
			t.Fatalf("accepted event %q", e)
		}
		if len(b) > maxJamfBody {
			t.Fatal("accepted an oversized body")
		}
	})
}
