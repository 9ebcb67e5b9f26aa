package dynamicscep

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// backends are the databases the tests run on.
var backends = testenv.Backends

func TestMain(m *testing.M) { testenv.RunMain(m) }

// newPlugin builds the plugin on a fresh store of backend with the
// default configuration (provisioner "scep").
func newPlugin(t *testing.T, backend string) (*Plugin, *plugintest.Host) {
	t.Helper()
	return newPluginOn(t, testenv.OpenStore(t, backend), backend, defaultConfig())
}

// newPluginOn builds the plugin on db: two calls on one database are two
// replicas.
func newPluginOn(t testing.TB, db nosql.DB, backend string, cfg *Config) (*Plugin, *plugintest.Host) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	h := plugintest.NewHostWithDB(t, db, backend)
	p, err := New(cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	return p, h
}

// csrSpec describes a test CSR.
type csrSpec struct {
	cn     string
	dns    []string
	ips    []string
	emails []string
	uris   []string
}

// newCSR makes a CSR (and its key) for spec.
func newCSR(t testing.TB, s csrSpec) (*x509.CertificateRequest, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: s.cn}, DNSNames: s.dns, EmailAddresses: s.emails}
	for _, ip := range s.ips {
		tpl.IPAddresses = append(tpl.IPAddresses, net.ParseIP(ip))
	}
	for _, u := range s.uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tpl.URIs = append(tpl.URIs, pu)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tpl, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr, key
}

// issue makes the certificate "issued" for a CSR (self-signed with its
// key: only the key, serial and expiry matter to the plugin).
func issue(t *testing.T, csr *x509.CertificateRequest, key *ecdsa.PrivateKey, serial int64, now time.Time) *x509.Certificate {
	t.Helper()
	tpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: csr.Subject, DNSNames: csr.DNSNames,
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// create stores a challenge with bindings b and returns the secret.
func create(t *testing.T, p *Plugin, b Bindings, ttl string) (string, *Challenge) {
	t.Helper()
	c, err := p.buildChallenge(&CreateRequest{TTL: ttl, Bindings: b})
	if err != nil {
		t.Fatal(err)
	}
	secret, err := p.challenges.Create(c)
	if err != nil {
		t.Fatal(err)
	}
	return secret, c
}

// enroll is a SCEP enrollment of provisioner "scep".
func enroll(secret string, csr *x509.CertificateRequest) plugins.SCEPRequest {
	return plugins.SCEPRequest{Provisioner: "scep", Challenge: secret, TransactionID: "tx-1", CSR: csr}
}

// result is the Result of a refusal, "accepted" for nil.
func result(t *testing.T, err error) string {
	t.Helper()
	if err == nil {
		return ResultAccepted
	}
	r, ok := err.(*Refusal)
	if !ok {
		t.Fatalf("not a refusal: %v", err)
	}
	return r.Result
}

// addDevice registers an active device in the inventory of db.
func addDevice(t *testing.T, p *Plugin, pid string) string {
	t.Helper()
	inv, err := inventory.NewStore(p.host.DB(), p.host.Now)
	if err != nil {
		t.Fatal(err)
	}
	d, err := inv.Create(inventory.DeviceInput{Identifiers: []string{pid}})
	if err != nil {
		t.Fatal(err)
	}
	return d.ID
}

// setStatus changes a device's status in the inventory.
func setStatus(t *testing.T, p *Plugin, id string, s inventory.Status) {
	t.Helper()
	inv, err := inventory.NewStore(p.host.DB(), p.host.Now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inv.Update(id, inventory.DevicePatch{Status: &s}); err != nil {
		t.Fatal(err)
	}
}
