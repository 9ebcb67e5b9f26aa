package certindex

import (
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"

	"github.com/stepfort/stepfort/plugins"
)

// Certificate statuses. Active and expired are computed from the clock at
// each read, never stored, so no job has to flip them.
const (
	StatusActive  = "active"
	StatusExpired = "expired"
	StatusRevoked = "revoked"
)

// Record is one indexed certificate. It is built from a certificate event
// (live) or from upstream's tables (reindex), and merged field by field
// (merge), so events applied in any order and any number of times give the
// same record.
type Record struct {
	Serial         string                 `json:"serial"`    // decimal, as upstream keys certificates
	SerialHex      string                 `json:"serialHex"` // lower-case hex, no colons, even length
	CommonName     string                 `json:"commonName,omitempty"`
	DNSNames       []string               `json:"dnsNames,omitempty"`
	IPAddresses    []string               `json:"ipAddresses,omitempty"`
	EmailAddresses []string               `json:"emailAddresses,omitempty"`
	URIs           []string               `json:"uris,omitempty"`
	Provisioner    plugins.ProvisionerRef `json:"provisioner"`
	NotBefore      time.Time              `json:"notBefore"`
	NotAfter       time.Time              `json:"notAfter"`
	Issuer         string                 `json:"issuer,omitempty"`
	AuthorityKeyID string                 `json:"authorityKeyId,omitempty"`
	// Revocation is set once the certificate is revoked.
	Revocation *Revocation `json:"revocation,omitempty"`
	// Endpoint is the billing Endpoint, computed with billing's published
	// rule (endpoint.go); empty where the rule cannot be applied.
	Endpoint string `json:"endpoint,omitempty"`
	// Device is the attested device identity (ACME device-attest-01).
	Device string `json:"device,omitempty"`
	// ParentSerial is the certificate a /renew or /rekey replaced (live
	// events only: upstream's tables do not keep the link).
	ParentSerial string `json:"parentSerial,omitempty"`
}

// Revocation is the revocation of an indexed certificate.
type Revocation struct {
	ReasonCode int       `json:"reasonCode"`
	Reason     string    `json:"reason,omitempty"`
	RevokedAt  time.Time `json:"revokedAt"`
}

// HasCertificate is false for a revocation of a serial whose certificate
// the index has not seen (yet): such a record waits for the issuance.
func (r *Record) HasCertificate() bool { return !r.NotAfter.IsZero() }

// Status is the record's status at now.
func (r *Record) Status(now time.Time) string {
	switch {
	case r.Revocation != nil:
		return StatusRevoked
	case !now.Before(r.NotAfter):
		return StatusExpired
	}
	return StatusActive
}

// Names returns the subject common name and every SAN, as written in the
// certificate.
func (r *Record) Names() []string {
	out := make([]string, 0, 1+len(r.DNSNames)+len(r.IPAddresses)+len(r.EmailAddresses)+len(r.URIs))
	if r.CommonName != "" {
		out = append(out, r.CommonName)
	}
	out = append(out, r.DNSNames...)
	out = append(out, r.IPAddresses...)
	out = append(out, r.EmailAddresses...)
	return append(out, r.URIs...)
}

// searchText is what the name filter searches: every distinct name
// lower-cased, each followed by a newline (a needle never holds one, so a
// match never spans two names).
func (r *Record) searchText() string {
	var b strings.Builder
	seen := make([]string, 0, 4)
	for _, n := range r.Names() {
		n = strings.ToLower(n)
		if slices.Contains(seen, n) {
			continue // the CN is usually a SAN too
		}
		seen = append(seen, n)
		b.WriteString(n)
		b.WriteByte('\n')
	}
	return b.String()
}

// fromCertificate fills the certificate fields of a record.
func fromCertificate(cert *x509.Certificate) *Record {
	r := &Record{
		Serial:     cert.SerialNumber.String(),
		SerialHex:  serialHex(cert.SerialNumber),
		CommonName: cert.Subject.CommonName,
		DNSNames:   cert.DNSNames, EmailAddresses: cert.EmailAddresses,
		NotBefore: cert.NotBefore.UTC(), NotAfter: cert.NotAfter.UTC(),
		Issuer: cert.Issuer.String(),
	}
	for _, ip := range cert.IPAddresses {
		r.IPAddresses = append(r.IPAddresses, ip.String())
	}
	for _, u := range cert.URIs {
		r.URIs = append(r.URIs, u.String())
	}
	if len(cert.AuthorityKeyId) > 0 {
		r.AuthorityKeyID = hex.EncodeToString(cert.AuthorityKeyId)
	}
	return r
}

// merge adds what other knows and r does not. Every field is either
// immutable (the certificate's) or written once (revocation, Endpoint,
// device), so merge is commutative and idempotent: the order in which
// replicas deliver events does not matter. It reports whether r changed.
func (r *Record) merge(o *Record) bool {
	changed := false
	if !r.HasCertificate() && o.HasCertificate() {
		rev, ep, dev, parent, prov := r.Revocation, r.Endpoint, r.Device, r.ParentSerial, r.Provisioner
		*r = *o
		r.Revocation, r.Endpoint, r.Device, r.ParentSerial, r.Provisioner = rev, ep, dev, parent, prov
		changed = true
	}
	if r.Serial == "" {
		r.Serial, r.SerialHex, changed = o.Serial, o.SerialHex, true
	}
	set := func(dst *string, v string) {
		if *dst == "" && v != "" {
			*dst, changed = v, true
		}
	}
	if r.Provisioner == (plugins.ProvisionerRef{}) && o.Provisioner != (plugins.ProvisionerRef{}) {
		r.Provisioner, changed = o.Provisioner, true
	}
	set(&r.Endpoint, o.Endpoint)
	set(&r.Device, o.Device)
	set(&r.ParentSerial, o.ParentSerial)
	if r.Revocation == nil && o.Revocation != nil {
		rev := *o.Revocation
		r.Revocation, changed = &rev, true
	}
	return changed
}

// serialHex is the lower-case hex of a serial, padded to whole bytes.
func serialHex(n *big.Int) string {
	s := n.Text(16)
	if len(s)%2 == 1 {
		s = "0" + s
	}
	return s
}

// maxSerialLen bounds a serial given by a client (RFC 5280: 20 octets,
// which is 49 decimal digits or 59 characters of colon-separated hex).
const maxSerialLen = 64

// SerialForms parses a serial as a client writes it and returns the
// decimal forms it may mean: hex with colons or a 0x prefix or a letter
// a-f is hex; digits only may be decimal or hex (openssl prints hex
// without colons too), so both are returned.
func SerialForms(s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > maxSerialLen {
		return nil, fmt.Errorf("serial: must be 1 to %d characters, got %d", maxSerialLen, len(s))
	}
	h := strings.ToLower(strings.ReplaceAll(s, ":", ""))
	explicitHex := strings.Contains(s, ":") || strings.HasPrefix(h, "0x")
	h = strings.TrimPrefix(h, "0x")
	var out []string
	if !explicitHex {
		if d, ok := new(big.Int).SetString(s, 10); ok && d.Sign() >= 0 {
			out = append(out, d.String())
		}
	}
	if x, ok := new(big.Int).SetString(h, 16); ok && h != "" && !strings.HasPrefix(h, "-") && !strings.HasPrefix(h, "+") {
		if d := x.String(); len(out) == 0 || out[0] != d {
			out = append(out, d)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("serial: %q is neither decimal nor hex", s)
	}
	return out, nil
}
