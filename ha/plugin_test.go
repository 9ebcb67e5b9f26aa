package ha

import (
	"bytes"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(c *Config)
		want string
	}{
		{"defaults", func(*Config) {}, ""},
		{"validity too short", func(c *Config) { c.OCSP.Validity.Duration = 1 }, "ocsp.validity"},
		{"bad signer", func(c *Config) { c.OCSP.Signer = "hsm" }, "ocsp.signer"},
		{"cache too small", func(c *Config) { c.OCSP.CacheSize = 10 }, "ocsp.cacheSize"},
		{"cache bytes too small", func(c *Config) { c.OCSP.CacheBytes = 1000 }, "ocsp.cacheBytes"},
		{"unknown cache bytes too large", func(c *Config) { c.OCSP.UnknownCacheBytes = 2 << 30 }, "ocsp.unknownCacheBytes"},
		{"request cache bytes unset", func(c *Config) { c.OCSP.RequestCacheBytes = 0 }, "ocsp.requestCacheBytes"},
		{"relative url", func(c *Config) { c.OCSP.URL = "/ocsp" }, "ocsp.url"},
		{"crl url scheme", func(c *Config) { c.CRL.URL = "ldap://x" }, "crl.url"},
		{"publish delay", func(c *Config) { c.CRL.PublishDelay.Duration = 0 }, "crl.publishDelay"},
		{"responder shorter than two validities", func(c *Config) { c.OCSP.ResponderLifetime.Duration = c.OCSP.Validity.Duration }, "ocsp.responderLifetime"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.edit(c)
			err := c.Validate()
			if (tt.want == "") != (err == nil) || (err != nil && !bytes.Contains([]byte(err.Error()), []byte(tt.want))) {
				t.Fatalf("Validate() = %v, want %q", err, tt.want)
			}
		})
	}
}
