// Package endpoint is billing's published Endpoint rule (docs/billing.md,
// "The rules"): a certificate's subject key and the IDs of Endpoints.
//
// The billing plugin records Endpoints with it; the certificate index
// computes each certificate's Endpoint with it, without reading billing's
// tables (billing may be off, and its tables are its own). Plugins do not
// import each other, so the rule lives here, once: both plugins give a
// certificate the same Endpoint ID because they run the same code.
//
// IDs are stored and shown to customers: changing how they are derived
// splits every existing Endpoint in two. The golden values in the tests
// pin them.
package endpoint

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base32"
	"net"
	"sort"
	"strings"

	"github.com/stepfort/stepfort/plugins"
)

// SubjectKey normalises a certificate's subject for grouping: the common
// name and every SAN (DNS, IP, email, URI), lower-cased, trimmed, IPs in
// canonical form, deduplicated and sorted, joined by ",". Order and
// capitalization are ignored, and a name in both the CN and a SAN counts
// once. It is empty when the certificate names nothing.
func SubjectKey(c *x509.Certificate) string {
	names := []string{c.Subject.CommonName}
	names = append(names, c.DNSNames...)
	names = append(names, c.EmailAddresses...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	for _, u := range c.URIs {
		names = append(names, u.String())
	}
	return normalizeNames(names)
}

func normalizeNames(names []string) string {
	set := map[string]bool{}
	for _, n := range names {
		n = strings.ToLower(strings.TrimSpace(n))
		if n == "" {
			continue
		}
		if ip := net.ParseIP(n); ip != nil {
			n = ip.String()
		}
		set[n] = true
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// ProvisionerKey identifies a provisioner: its ID, else its upper-cased
// type and its name ("ACME/acme").
func ProvisionerKey(p plugins.ProvisionerRef) string {
	if p.ID != "" {
		return p.ID
	}
	return strings.ToUpper(p.Type) + "/" + p.Name
}

// LineageID is the Endpoint started by the certificate with this serial
// (a /sign certificate of lineage grouping); its renewals join it.
func LineageID(serial string) string { return id("lineage", serial) }

// SubjectID is the Endpoint of a subject key under one provisioner
// (subject grouping).
func SubjectID(prov plugins.ProvisionerRef, subjectKey string) string {
	return id("subject", ProvisionerKey(prov), subjectKey)
}

var idEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// id derives an Endpoint ID from what identifies the Endpoint, so every
// replica (and both plugins) that handles the same certificate computes the
// same ID: that is what makes redelivery and concurrent delivery converge
// on one Endpoint.
func id(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return "ep_" + strings.ToLower(idEncoding.EncodeToString(h[:15]))
}
