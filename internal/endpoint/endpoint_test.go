package endpoint

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/url"
	"testing"

	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins"
)

// cert is a certificate naming names: the first is the CN, the others are
// SANs of the type they parse as (testenv.SetNames).
func cert(t *testing.T, names ...string) *x509.Certificate {
	t.Helper()
	c := &x509.Certificate{}
	testenv.SetNames(c, names...)
	return c
}

func TestSubjectKey(t *testing.T) {
	tests := []struct {
		name string
		a, b []string
		same bool
	}{
		{"SAN order and case", []string{"a.example", "a.example", "B.example"}, []string{"b.example", "b.example", "A.example"}, true},
		{"CN repeated as SAN counts once", []string{"x.example", "x.example"}, []string{"X.EXAMPLE"}, true},
		{"IP, email and URI", []string{"d", "10.0.0.1", "Me@Example.com", "spiffe://example/d"}, []string{"D", "spiffe://EXAMPLE/d", "me@example.com", "10.0.0.1"}, true},
		{"IPv6 canonical", []string{"", "2001:DB8:0:0::1"}, []string{"", "2001:db8::1"}, true},
		{"different SAN", []string{"a.example", "b.example"}, []string{"a.example", "c.example"}, false},
		{"subset is different", []string{"a.example", "b.example"}, []string{"a.example"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ka, kb := SubjectKey(cert(t, tt.a...)), SubjectKey(cert(t, tt.b...))
			if (ka == kb) != tt.same {
				t.Fatalf("SubjectKey %q vs %q: same=%v, want %v", ka, kb, ka == kb, tt.same)
			}
		})
	}
	if k := SubjectKey(cert(t, " ")); k != "" {
		t.Fatalf("a certificate naming nothing has key %q, want empty", k)
	}
}

// The values were computed by billing's and the index's own copies of the
// rule before they were merged here: stored Endpoint IDs must not change.
func TestGolden(t *testing.T) {
	u, err := url.Parse("spiffe://EXAMPLE/d")
	if err != nil {
		t.Fatal(err)
	}
	c := &x509.Certificate{Subject: pkix.Name{CommonName: " D "}, DNSNames: []string{"b.example", "A.example", "a.example"},
		EmailAddresses: []string{"Me@Example.com"}, IPAddresses: []net.IP{net.ParseIP("10.0.0.1"), net.ParseIP("2001:DB8::1")}, URIs: []*url.URL{u}}
	byID := plugins.ProvisionerRef{ID: "prov-id", Type: "acme", Name: "acme"}
	byName := plugins.ProvisionerRef{Type: "acme", Name: "acme"}
	tests := []struct{ name, got, want string }{
		{"subject key", SubjectKey(c), "10.0.0.1,2001:db8::1,a.example,b.example,d,me@example.com,spiffe://example/d"},
		{"lineage", LineageID("1234567890"), "ep_cuz6curbfo2yxnlagmz4eknu"},
		{"subject, provisioner by ID", SubjectID(byID, SubjectKey(c)), "ep_e5o653vczsxereryyx7utuky"},
		{"subject, provisioner by type and name", SubjectID(byName, "a.example"), "ep_qelzouvxoxfamdejprplojfw"},
		{"provisioner key by ID", ProvisionerKey(byID), "prov-id"},
		{"provisioner key by type and name", ProvisionerKey(byName), "ACME/acme"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}

// The parts are joined unambiguously: a provisioner key and subject key
// that concatenate alike are different Endpoints, and lineage and subject
// IDs never collide.
func TestIDsSeparateParts(t *testing.T) {
	a := SubjectID(plugins.ProvisionerRef{ID: "p"}, "1a.example")
	b := SubjectID(plugins.ProvisionerRef{ID: "p1"}, "a.example")
	if a == b {
		t.Fatal("provisioner and subject key run together")
	}
	if LineageID("7") == SubjectID(plugins.ProvisionerRef{ID: "lineage"}, "7") {
		t.Fatal("lineage and subject IDs collide")
	}
}
