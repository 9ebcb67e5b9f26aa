package attestationca

import (
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"go.step.sm/crypto/pemutil"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

// testConfig writes an Attestation CA intermediate, its encrypted key and
// password file, and returns a validated config using them.
func testConfig(t *testing.T) *Config {
	t.Helper()
	is := testIssuer(t)
	dir := t.TempDir()
	cfg := defaultConfig()
	cfg.Certificate = filepath.Join(dir, "ca.crt")
	cfg.Key = filepath.Join(dir, "ca.key")
	cfg.PasswordFile = filepath.Join(dir, "password")
	cfg.SessionTTL = config.Duration{Duration: time.Second}
	keyBlock, err := pemutil.Serialize(is.signer, pemutil.WithPassword([]byte("pw")))
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		cfg.Certificate:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: is.chain[0].Raw}),
		cfg.Key:          pem.EncodeToMemory(keyBlock),
		cfg.PasswordFile: []byte("pw"),
	} {
		if err := os.WriteFile(name, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func post(t *testing.T, h http.Handler, path, body string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, strings.NewReader(body)))
	return rec.Code, rec.Body.String()
}

// TestPluginServesWhenBuilt: the routes answer from the moment New returns
// (there is no "not started" 503), and expired sessions are purged by the
// loop New hands to the host.
func TestPluginServesWhenBuilt(t *testing.T) {
	host := plugintest.NewHost(t)
	p, err := New(testConfig(t), host)
	if err != nil {
		t.Fatal(err)
	}
	r := chi.NewRouter()
	p.Routes(r)

	if code, body := post(t, r, "/attestation/attest", `{}`); code != http.StatusBadRequest || !strings.Contains(body, codeBadRequest) {
		t.Fatalf("/attest = %d %s, want 400 %s", code, body, codeBadRequest)
	}
	secret, _ := json.Marshal(SecretRequest{Secret: []byte("never-issued")})
	if code, body := post(t, r, "/attestation/secret", string(secret)); code != http.StatusForbidden || !strings.Contains(body, codeUnknownSecret) {
		t.Fatalf("/secret = %d %s, want 403 %s", code, body, codeUnknownSecret)
	}

	stale := []byte("stale-secret-stale-secret-stale-")
	if err := openWith(t, p.sessions, "x", stale, host.Now(), 0); err != nil {
		t.Fatal(err)
	}
	host.Advance(time.Hour) // the purge reads the host clock
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, err := p.sessions.Consume(stale, host.Now())
		if errors.Is(err, ErrUnknownSecret) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("session not purged: %v", err)
		}
	}
}

// TestNewFails: what New cannot build fails the daemon's start, through the
// factory too (a nil Plugin, not a typed nil).
func TestNewFails(t *testing.T) {
	tests := []struct {
		name string
		mod  func(c *Config)
		host func(testing.TB) *plugintest.Host
		want string
	}{
		{"no database", func(*Config) {}, func(t testing.TB) *plugintest.Host { return plugintest.NewHostWithDB(t, nil, "") }, "needs a database"},
		{"wrong password", func(c *Config) { _ = os.WriteFile(c.PasswordFile, []byte("nope"), 0o600) }, plugintest.NewHost, "key:"},
		{"missing EK roots", func(c *Config) { c.EKRoots = []string{filepath.Join(t.TempDir(), "none.pem")} }, plugintest.NewHost, "ekRoots:"},
	}
	f, ok := plugins.Lookup(Name)
	if !ok {
		t.Fatal("attestationCA factory not registered")
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			tt.mod(cfg)
			p, err := f.New(cfg, tt.host(t))
			if err == nil || !strings.Contains(err.Error(), tt.want) || p != nil {
				t.Fatalf("New = %v, %v; want nil and an error containing %q", p, err, tt.want)
			}
		})
	}
}

// TestLoadIssuerRoot: the intermediate must chain to the configured root.
func TestLoadIssuerRoot(t *testing.T) {
	cfg := testConfig(t)
	other := testIssuer(t).chain[0]
	cfg.Root = filepath.Join(t.TempDir(), "root.crt")
	if err := os.WriteFile(cfg.Root, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: other.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadIssuer(cfg); err == nil || !strings.Contains(err.Error(), "does not chain") {
		t.Fatalf("foreign root accepted: %v", err)
	}
	cfg.Root = cfg.Certificate // self-signed: its own root
	if _, err := loadIssuer(cfg); err != nil {
		t.Fatalf("intermediate with its own root: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	base := func() *Config {
		c := defaultConfig()
		c.Certificate, c.Key, c.PasswordFile = "/c", "/k", "/p"
		return c
	}
	tests := []struct {
		name string
		mod  func(c *Config)
		ok   bool
	}{
		{"defaults", func(*Config) {}, true},
		{"relative key", func(c *Config) { c.Key = "k" }, false},
		{"missing certificate", func(c *Config) { c.Certificate = "" }, false},
		{"bad base path", func(c *Config) { c.BasePath = "attestation/" }, false},
		{"require without roots", func(c *Config) { c.RequireEKCertificate = true }, false},
		{"ttl too short", func(c *Config) { c.SessionTTL.Duration = time.Millisecond }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mod(c)
			if err := c.Validate(); (err == nil) != tt.ok {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
}

// TestConfigRateLimit: the limits have defaults a partial block keeps, and
// out-of-range values are errors naming the JSON path.
func TestConfigRateLimit(t *testing.T) {
	tests := []struct {
		json string
		path string // "" = valid
	}{
		{`{}`, ""},
		{`{"rateLimit":{"perEK":{"burst":3}}}`, ""},
		{`{"rateLimit":{"perEK":{"burst":0}}}`, "rateLimit.perEK.burst"},
		{`{"rateLimit":{"perEK":{"burst":101}}}`, "rateLimit.perEK.burst"},
		{`{"rateLimit":{"perEK":{"interval":"500us"}}}`, "rateLimit.perEK.interval"},
		{`{"rateLimit":{"perEK":{"interval":"2h"}}}`, "rateLimit.perEK.interval"},
		{`{"rateLimit":{"global":{"perSecond":0}}}`, "rateLimit.global.perSecond"},
		{`{"rateLimit":{"global":{"burst":0}}}`, "rateLimit.global.burst"},
	}
	for _, tt := range tests {
		t.Run(tt.json, func(t *testing.T) {
			c := defaultConfig()
			c.Certificate, c.Key, c.PasswordFile = "/c", "/k", "/p"
			if err := json.Unmarshal([]byte(tt.json), c); err != nil {
				t.Fatal(err)
			}
			err := c.Validate()
			var fe *config.FieldError
			switch {
			case tt.path == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tt.path != "" && (!errors.As(err, &fe) || fe.Path != tt.path):
				t.Fatalf("Validate = %v, want an error at %s", err, tt.path)
			}
			if tt.path == "" && c.RateLimit.PerEK.Interval.Duration != time.Minute {
				t.Fatalf("default interval lost: %s", c.RateLimit.PerEK.Interval.Duration)
			}
		})
	}
}
