package certindex

import (
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/stepfort/stepfort/plugins"
)

// TestAKCertificatesIndexed: an AK certificate event of the Attestation CA
// (a certificate upstream's tables do not hold, a provisioner upstream does
// not know) is indexed with its provisioner and device, gets no Endpoint,
// and is found by provisioner, device and SAN; it never waits on the
// authority for grouping.
func TestAKCertificatesIndexed(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			f := newFixture(t, backend)
			f.p.group = typeGrouping // the real rule: any lookup of an unknown provisioner fails
			ak := plugins.ProvisionerRef{Name: "attestationCA", Type: plugins.ProvisionerTypeAttestationCA}
			const urn = "urn:ek:sha256:q0eaj2ozxwylxfqk2sqcpxx3owhrvw3yj7tu3yy4pgs3hjyhm5xa"
			c := akCert(t, urn)
			ev := plugins.CertificateEvent{ID: "ak", Kind: plugins.EventIssued, Serial: c.SerialNumber.String(), OccurredAt: t0,
				Provisioner: &ak, PermanentIdentifier: urn, CertificateDER: c.Raw}
			f.observe(ev, ev)
			r := f.get(ev.Serial)
			if r.Provisioner != ak || r.Device != urn || r.Endpoint != "" || r.Status(t0) != StatusActive ||
				len(r.URIs) != 1 || r.URIs[0] != urn || !r.NotAfter.Equal(c.NotAfter) {
				t.Fatalf("record %s", mustJSON(r))
			}
			for name, flt := range map[string]Filter{
				"provisioner": {Provisioner: "attestationCA"},
				"device":      {Device: urn},
				"name":        {Q: "urn:ek:sha256:q0eaj"},
			} {
				recs := f.list(&Query{Filter: flt, Sort: SortNotAfter, Limit: 10, Now: t0})
				if len(recs) != 1 || recs[0].Serial != ev.Serial {
					t.Fatalf("by %s: %d records", name, len(recs))
				}
			}
		})
	}
}

// akCert is an AK certificate as the Attestation CA makes it: no subject,
// the EK URN as URI SAN.
func akCert(t *testing.T, urn string) *x509.Certificate {
	t.Helper()
	newCert(t, t0, time.Hour) // the test CA
	u, err := url.Parse(urn)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{SerialNumber: new(big.Int).Lsh(big.NewInt(2_000_000+nextSerial.Add(1)), 64),
		NotBefore: t0, NotAfter: t0.Add(24 * time.Hour), URIs: []*url.URL{u}}
	der, err := x509.CreateCertificate(rand.Reader, tpl, caCert, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}
