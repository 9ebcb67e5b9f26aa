package testenv

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/url"
	"strings"
)

// SetNames puts names into a certificate template as a test means them:
// the first is the subject CN, each other one a SAN by its form (an IP
// address, a URI with "://", an email with "@", else a DNS name). A URI
// that does not parse is a mistake in the test: it panics.
func SetNames(tpl *x509.Certificate, names ...string) {
	if len(names) > 0 {
		tpl.Subject = pkix.Name{CommonName: names[0]}
	}
	for _, n := range names[min(1, len(names)):] {
		switch {
		case net.ParseIP(n) != nil:
			tpl.IPAddresses = append(tpl.IPAddresses, net.ParseIP(n))
		case strings.Contains(n, "://"):
			u, err := url.Parse(n)
			if err != nil {
				panic("testenv.SetNames: " + err.Error()) // the test's own input
			}
			tpl.URIs = append(tpl.URIs, u)
		case strings.Contains(n, "@"):
			tpl.EmailAddresses = append(tpl.EmailAddresses, n)
		default:
			tpl.DNSNames = append(tpl.DNSNames, n)
		}
	}
}
