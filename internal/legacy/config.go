// Package legacy keeps the revocation of a CA that stepfort no longer
// issues under alive: an ADCS issuing CA whose key was brought in. It
// holds the legacy issuer's configuration, loads its certificate and key,
// and stores the certificates imported from the old CA's database with
// their status. The revocation plugin (package ha) answers OCSP and
// publishes CRLs for it; docs/design/adcs-migration.md is the design
// record.
package legacy

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/stepfort/stepfort/config"
)

// IssuerConfig is one entry of stepfort.plugins.revocation.legacyIssuers.
type IssuerConfig struct {
	// Name identifies the issuer in commands, the admin API and the
	// database ([A-Za-z0-9._-], at most 64 characters).
	Name string `json:"name"`
	// Certificate is the issuer's certificate (PEM file).
	Certificate string `json:"certificate"`
	// Key is the issuer's private key: a PEM file (encrypted with the
	// password in PasswordFile, or not encrypted) or a KMS key URI.
	Key          string `json:"key"`
	PasswordFile string `json:"passwordFile,omitempty"`
	// CRLURL is the CRL distribution point as the old CA's certificates
	// carry it (byte for byte, %20 and all). The base CRL is served at its
	// path on the HTTP listener.
	CRLURL string `json:"crlURL"`
	// DeltaCRLURL is the Freshest CRL URL the old CA's base CRLs carried;
	// empty: no delta CRLs. The delta CRL is served at its path.
	DeltaCRLURL string `json:"deltaCRLURL,omitempty"`
	// IDP puts an Issuing Distribution Point naming CRLURL into the CRLs.
	// Only when the old CA had one (ADCS does not by default): it changes
	// the CRL's scope for relying parties.
	IDP bool `json:"idp,omitempty"`
	// BasePeriod and DeltaPeriod are the publication periods (ADCS
	// defaults: one week and one day).
	BasePeriod  config.Duration `json:"basePeriod,omitzero"`
	DeltaPeriod config.Duration `json:"deltaPeriod,omitzero"`
}

// Limits of a configuration entry.
const (
	maxNameLen = 64
	// minPeriod keeps a misconfigured period from turning the publisher
	// into a busy loop.
	minPeriod = time.Minute
)

// Default publication periods: the ADCS defaults.
const (
	DefaultBasePeriod  = 7 * 24 * time.Hour
	DefaultDeltaPeriod = 24 * time.Hour
)

// Validate checks the entry; path names it in errors (for example
// "ca.json: stepfort.plugins.revocation.legacyIssuers[0]"). Files must
// exist; a Key that is a KMS URI (it contains ":" and is not a file) is
// not opened here.
func (c *IssuerConfig) Validate(path string) error {
	if err := ValidateName(c.Name); err != nil {
		return fmt.Errorf("%s.name: %w", path, err)
	}
	if c.Certificate == "" {
		return fmt.Errorf("%s.certificate: required", path)
	}
	if err := regularFile(c.Certificate); err != nil {
		return fmt.Errorf("%s.certificate: %w", path, err)
	}
	if c.Key == "" {
		return fmt.Errorf("%s.key: required", path)
	}
	if !isKMSURI(c.Key) {
		if err := regularFile(c.Key); err != nil {
			return fmt.Errorf("%s.key: %w", path, err)
		}
	}
	if c.PasswordFile != "" {
		if err := regularFile(c.PasswordFile); err != nil {
			return fmt.Errorf("%s.passwordFile: %w", path, err)
		}
	}
	if err := checkCRLURL(c.CRLURL); err != nil {
		return fmt.Errorf("%s.crlURL: %w", path, err)
	}
	if c.DeltaCRLURL != "" {
		if err := checkCRLURL(c.DeltaCRLURL); err != nil {
			return fmt.Errorf("%s.deltaCRLURL: %w", path, err)
		}
		if samePath(c.CRLURL, c.DeltaCRLURL) {
			return fmt.Errorf("%s.deltaCRLURL: has the same path as crlURL", path)
		}
	}
	for _, p := range []struct {
		name string
		d    time.Duration
	}{{"basePeriod", c.BasePeriod.Duration}, {"deltaPeriod", c.DeltaPeriod.Duration}} {
		if p.d != 0 && p.d < minPeriod {
			return fmt.Errorf("%s.%s: %s is shorter than %s", path, p.name, p.d, minPeriod)
		}
	}
	if c.DeltaCRLURL != "" && c.DeltaPeriodOrDefault() >= c.BasePeriodOrDefault() {
		return fmt.Errorf("%s.deltaPeriod: %s must be shorter than basePeriod %s", path, c.DeltaPeriodOrDefault(), c.BasePeriodOrDefault())
	}
	return nil
}

// BasePeriodOrDefault is BasePeriod, or DefaultBasePeriod when unset.
func (c *IssuerConfig) BasePeriodOrDefault() time.Duration {
	if c.BasePeriod.Duration > 0 {
		return c.BasePeriod.Duration
	}
	return DefaultBasePeriod
}

// DeltaPeriodOrDefault is DeltaPeriod, or DefaultDeltaPeriod when unset.
func (c *IssuerConfig) DeltaPeriodOrDefault() time.Duration {
	if c.DeltaPeriod.Duration > 0 {
		return c.DeltaPeriod.Duration
	}
	return DefaultDeltaPeriod
}

// ValidateName checks an issuer name: 1 to 64 characters of
// [A-Za-z0-9._-], not "." or "..", since it becomes part of file names and
// database keys.
func ValidateName(name string) error {
	switch {
	case name == "":
		return errors.New("required")
	case len(name) > maxNameLen:
		return fmt.Errorf("%q is longer than %d characters", name, maxNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("%q is not a name", name)
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
		if !ok {
			return fmt.Errorf("%q: only letters, digits, '.', '_' and '-' are allowed", name)
		}
	}
	return nil
}

func regularFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	return nil
}

// isKMSURI tells a KMS key URI ("pkcs11:...", "softkms:...") from a file
// path.
func isKMSURI(key string) bool {
	i := strings.Index(key, ":")
	return i > 1 && !strings.ContainsAny(key[:i], `/\`)
}

// checkCRLURL requires an absolute http(s) URL with a host and a path: the
// path is where the CRL is served.
func checkCRLURL(raw string) error {
	if raw == "" {
		return errors.New("required")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%q: must be an http or https URL", raw)
	}
	if u.Host == "" {
		return fmt.Errorf("%q: has no host", raw)
	}
	if u.Path == "" || u.Path == "/" {
		return fmt.Errorf("%q: has no path", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("%q: a CRL URL has no query or fragment", raw)
	}
	return nil
}

// samePath reports whether two valid URLs name the same decoded path.
func samePath(a, b string) bool {
	ua, err1 := url.Parse(a)
	ub, err2 := url.Parse(b)
	return err1 == nil && err2 == nil && ua.Path == ub.Path
}
