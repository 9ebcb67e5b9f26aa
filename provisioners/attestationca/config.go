package attestationca

import (
	"path/filepath"
	"strings"
	"time"

	"github.com/stepfort/stepfort/config"
)

// Config is the plugin's ca.json block, under
// "stepfort": {"plugins": {"attestationCA": {...}}}.
type Config struct {
	// BasePath is where /attest and /secret are served on the HTTPS
	// listener (default "/attestation"); clients use
	// https://<ca>/attestation as --attestation-ca-url.
	BasePath string `json:"basePath"`
	// Certificate is the PEM file of the Attestation CA intermediate (it may
	// also hold further intermediates, leaf first); Key is its encrypted
	// private key, opened with the password in PasswordFile, or a KMS key
	// URI ("pkcs11:...;id=...;object=...?pin-source=...") that also names
	// the module and token (PasswordFile is then not used).
	Certificate  string `json:"certificate"`
	Key          string `json:"key"`
	PasswordFile string `json:"passwordFile"`
	// Root is the Attestation CA root (PEM). It is what ACME provisioners
	// list in attestationRoots; the plugin only checks the chain against it.
	Root string `json:"root"`
	// SessionTTL is how long a credential activation challenge may be
	// answered (default 5m).
	SessionTTL config.Duration `json:"sessionTTL"`
	// CertificateLifetime is the validity of AK certificates (default
	// 8760h). The step CLI does not renew AK certificates by itself.
	CertificateLifetime config.Duration `json:"certificateLifetime"`
	// EKRoots are PEM files of TPM manufacturer certificates trusted for EK
	// certificates; every certificate in them is a trust anchor. When set,
	// an EK certificate sent by a client must chain to one of them.
	EKRoots []string `json:"ekRoots"`
	// RequireEKCertificate denies TPMs that send no EK certificate matching
	// their EK (requires ekRoots).
	RequireEKCertificate bool `json:"requireEKCertificate"`
	// MaxRequestBytes bounds request bodies (default 65536).
	MaxRequestBytes int64 `json:"maxRequestBytes"`
	// RateLimit bounds how often /attest opens sessions.
	RateLimit RateLimitConfig `json:"rateLimit"`
}

// RateLimitConfig bounds /attest. A device attests once per AK, so both
// limits only matter to replays and floods. Past either, /attest answers
// 429 with Retry-After.
type RateLimitConfig struct {
	// PerEK is enforced in the database, so it holds across replicas.
	PerEK EKRateLimit `json:"perEK"`
	// Global is per replica, in memory.
	Global GlobalRateLimit `json:"global"`
}

// EKRateLimit allows Burst new sessions for one EK at once, then one per
// Interval (defaults 5 and 1m).
type EKRateLimit struct {
	Burst    int             `json:"burst"`
	Interval config.Duration `json:"interval"`
}

// GlobalRateLimit allows PerSecond /attest requests of registered, active
// devices per second on one replica, with bursts of Burst (defaults 200
// and 400).
type GlobalRateLimit struct {
	PerSecond int `json:"perSecond"`
	Burst     int `json:"burst"`
}

func defaultConfig() *Config {
	return &Config{
		BasePath:            "/attestation",
		SessionTTL:          config.Duration{Duration: 5 * time.Minute},
		CertificateLifetime: config.Duration{Duration: 8760 * time.Hour},
		MaxRequestBytes:     64 << 10,
		RateLimit: RateLimitConfig{
			PerEK:  EKRateLimit{Burst: 5, Interval: config.Duration{Duration: time.Minute}},
			Global: GlobalRateLimit{PerSecond: 200, Burst: 400},
		},
	}
}

// Validate checks paths and bounds; errors name the JSON field.
func (c *Config) Validate() error {
	if !strings.HasPrefix(c.BasePath, "/") || strings.HasSuffix(c.BasePath, "/") || strings.ContainsAny(c.BasePath, " {}*?#") {
		return config.Errorf("basePath", "must start with / and not end with /, got %q", c.BasePath)
	}
	fields := []struct{ name, v string }{{"certificate", c.Certificate}, {"key", c.Key}, {"passwordFile", c.PasswordFile}}
	if kmsKey(c.Key) {
		// A KMS key: the URI selects the device and gives its PIN.
		fields = fields[:1]
	}
	for _, f := range fields {
		if f.v == "" {
			return config.Errorf(f.name, "required")
		}
		if !filepath.IsAbs(f.v) {
			return config.Errorf(f.name, "must be absolute, got %q", f.v)
		}
	}
	if c.Root != "" && !filepath.IsAbs(c.Root) {
		return config.Errorf("root", "must be absolute, got %q", c.Root)
	}
	if c.SessionTTL.Duration < time.Second || c.SessionTTL.Duration > time.Hour {
		return config.Errorf("sessionTTL", "must be between 1s and 1h, got %s", c.SessionTTL.Duration)
	}
	if c.CertificateLifetime.Duration < time.Minute {
		return config.Errorf("certificateLifetime", "must be at least 1m, got %s", c.CertificateLifetime.Duration)
	}
	for i, r := range c.EKRoots {
		if !filepath.IsAbs(r) {
			return config.Errorf("ekRoots", "[%d] must be absolute, got %q", i, r)
		}
	}
	if c.RequireEKCertificate && len(c.EKRoots) == 0 {
		return config.Errorf("requireEKCertificate", "requires ekRoots")
	}
	if c.MaxRequestBytes < 4096 || c.MaxRequestBytes > 1<<20 {
		return config.Errorf("maxRequestBytes", "must be between 4096 and 1048576, got %d", c.MaxRequestBytes)
	}
	return c.RateLimit.validate()
}

func (r *RateLimitConfig) validate() error {
	if b := r.PerEK.Burst; b < 1 || b > 100 {
		return config.Errorf("rateLimit.perEK.burst", "must be between 1 and 100, got %d", b)
	}
	if d := r.PerEK.Interval.Duration; d < time.Millisecond || d > time.Hour {
		return config.Errorf("rateLimit.perEK.interval", "must be between 1ms and 1h, got %s", d)
	}
	if n := r.Global.PerSecond; n < 1 || n > 100_000 {
		return config.Errorf("rateLimit.global.perSecond", "must be between 1 and 100000, got %d", n)
	}
	if b := r.Global.Burst; b < 1 || b > 1_000_000 {
		return config.Errorf("rateLimit.global.burst", "must be between 1 and 1000000, got %d", b)
	}
	return nil
}
