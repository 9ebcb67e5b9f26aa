package ha

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/legacy"
)

// newLegacyCA is an ADCS-like issuing CA: cRLSign, a subject key id.
func newLegacyCA(t testing.TB) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "Corp Issuing CA 1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, SubjectKeyId: []byte{1, 2, 3, 4}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// fakeSource is a LegacySource filled by the test.
type fakeSource struct {
	mu             sync.Mutex
	revoked        map[string]int
	version, floor int64
}

func (f *fakeSource) ForEachRevoked(fn func([]byte, time.Time, int, time.Time) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for s, r := range f.revoked {
		if err := fn([]byte(s), time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), r, time.Time{}); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeSource) State() (int64, int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.version, f.floor, nil
}

const (
	legacyCRL   = "http://pki.corp.example/CertEnroll/Corp%20Issuing%20CA%201.crl"
	legacyDelta = "http://pki.corp.example/CertEnroll/Corp%20Issuing%20CA%201+.crl"
)

func legacyPublisher(t *testing.T, src LegacySource) (*crlHost, *Publisher, *legacySeries, *x509.Certificate) {
	t.Helper()
	h := newCRLHost(t)
	p, err := NewPublisher(h, time.Second, 5*time.Second)
	must(t, err)
	cert, key := newLegacyCA(t)
	scope, err := legacyScope(legacy.IssuerConfig{Name: "corp-1", CRLURL: legacyCRL, DeltaCRLURL: legacyDelta})
	must(t, err)
	must(t, p.AddLegacySeries("corp-1", cert, key, scope, src))
	return h, p, p.legacy[0], cert
}

// get fetches path through the publisher's direct routes.
func get(t *testing.T, p *Publisher, rawPath string) (*x509.RevocationList, int) {
	t.Helper()
	req := httptest.NewRequest("GET", rawPath, nil)
	hd := p.Route(req.URL.Path)
	if hd == nil {
		return nil, http.StatusNotFound
	}
	w := httptest.NewRecorder()
	hd.ServeHTTP(w, req)
	if w.Code != 200 {
		return nil, w.Code
	}
	crl, err := x509.ParseRevocationList(w.Body.Bytes())
	must(t, err)
	return crl, 200
}

// TestLegacySeriesContinuesNumbers: a legacy series continues above the
// old CA's floor, has no IDP and a Freshest CRL naming the old delta URL,
// is served at the old paths however the path is escaped, and an import
// (a new Version) makes a base due.
func TestLegacySeriesContinuesNumbers(t *testing.T) {
	src := &fakeSource{revoked: map[string]int{"1234567890": 1, "99": 6}, floor: 100, version: 1}
	_, p, l, cert := legacyPublisher(t, src)
	sc := l.scope()
	p.publishSeries(l.series, sc)
	base, code := get(t, p, "/CertEnroll/Corp%20Issuing%20CA%201.crl")
	if code != 200 || base.Number.Int64() != 101 || len(base.RevokedCertificateEntries) != 2 {
		t.Fatalf("base %d: %+v", code, base)
	}
	must(t, base.CheckSignatureFrom(cert))
	if findExtension(base.Extensions, oidIDP) != nil {
		t.Fatal("legacy base has an IDP the old CA did not have")
	}
	f := findExtension(base.Extensions, oidFreshestCRL)
	want, _ := distributionPoints(legacyDelta)
	if f == nil || string(f.Value) != string(want) {
		t.Fatal("legacy base lacks the old Freshest CRL URL byte for byte")
	}
	for _, path := range []string{"/CertEnroll/Corp%20Issuing%20CA%201+.crl", "/CertEnroll/Corp%20Issuing%20CA%201%2B.crl", "/CertEnroll/Corp%20Issuing%20CA%201%2b.crl"} {
		d, code := get(t, p, path)
		if code != 200 {
			t.Fatalf("%s: %d", path, code)
		}
		must(t, checkDeltaPair(base, d))
		if d.Number.Int64() != 102 {
			t.Fatalf("delta number %v", d.Number)
		}
	}
	if b, d, _ := p.dueSeries(l.series, sc); b || d {
		t.Fatalf("due %v %v right after publishing", b, d)
	}
	src.mu.Lock()
	src.version, src.revoked["5"] = 2, 0
	src.mu.Unlock()
	if b, _, _ := p.dueSeries(l.series, sc); !b {
		t.Fatal("an import did not make a base due")
	}
	p.publishSeries(l.series, sc)
	base2, _ := get(t, p, "/CertEnroll/Corp%20Issuing%20CA%201.crl")
	if base2.Number.Int64() != 103 || len(base2.RevokedCertificateEntries) != 3 {
		t.Fatalf("second base %v with %d entries", base2.Number, len(base2.RevokedCertificateEntries))
	}
	// The floor raised by a later import of a newer ADCS CRL wins.
	src.mu.Lock()
	src.version, src.floor = 3, 500
	src.mu.Unlock()
	p.publishSeries(l.series, sc)
	if b, _ := get(t, p, "/CertEnroll/Corp%20Issuing%20CA%201.crl"); b.Number.Int64() != 501 {
		t.Fatalf("base after the floor: %v", b.Number)
	}
}

// TestLegacySeriesFromStore: revocations made through legacy.Store after
// the base reach the delta (a released hold as removeFromCRL), and the
// next base absorbs them.
func TestLegacySeriesFromStore(t *testing.T) {
	h := newCRLHost(t)
	store, err := legacy.OpenStore(h.store)
	must(t, err)
	p, err := NewPublisher(h, time.Second, 5*time.Second)
	must(t, err)
	cert, key := newLegacyCA(t)
	scope, err := legacyScope(legacy.IssuerConfig{Name: "corp-1", CRLURL: legacyCRL, DeltaCRLURL: legacyDelta})
	must(t, err)
	must(t, p.AddLegacySeries("corp-1", cert, key, scope, legacyStoreSource{store, "corp-1"}))
	l := p.legacy[0]
	at := h.Now().Add(-time.Hour)
	must(t, store.Revoke("corp-1", big.NewInt(0x1001), 1, at, legacy.AllowUnknown()))
	must(t, store.Revoke("corp-1", big.NewInt(0x1002), legacy.ReasonCertificateHold, at, legacy.AllowUnknown()))
	p.publishSeries(l.series, scope)
	base, _ := get(t, p, "/CertEnroll/Corp%20Issuing%20CA%201.crl")
	if len(base.RevokedCertificateEntries) != 2 {
		t.Fatalf("base lists %d", len(base.RevokedCertificateEntries))
	}
	h.Advance(time.Minute)
	l.lastCheck = time.Time{}
	must(t, store.Revoke("corp-1", big.NewInt(0x1003), 4, h.Now(), legacy.AllowUnknown()))
	must(t, store.Revoke("corp-1", big.NewInt(0x1002), legacy.ReasonRemoveFromCRL, h.Now()))
	if b, d, err := p.dueSeries(l.series, scope); b || !d || err != nil {
		t.Fatalf("after a revocation: due base %v delta %v %v", b, d, err)
	}
	p.publishSeries(l.series, scope)
	d, _ := get(t, p, "/CertEnroll/Corp%20Issuing%20CA%201+.crl")
	must(t, checkDeltaPair(base, d))
	got := serials(d)
	if len(got) != 2 || got["4099"] != 4 || got["4098"] != legacy.ReasonRemoveFromCRL {
		t.Fatalf("delta %v", got)
	}
	h.Advance(7 * 24 * time.Hour)
	p.publishSeries(l.series, scope)
	base2, _ := get(t, p, "/CertEnroll/Corp%20Issuing%20CA%201.crl")
	d2, _ := get(t, p, "/CertEnroll/Corp%20Issuing%20CA%201+.crl")
	must(t, checkDeltaPair(base2, d2))
	if got := serials(base2); len(got) != 2 || got["4098"] != 0 && len(got) != 2 {
		t.Fatalf("new base %v", got)
	}
	if _, held := serials(base2)["4098"]; held {
		t.Fatal("the released hold is still on the base")
	}
	if len(d2.RevokedCertificateEntries) != 0 {
		t.Fatalf("delta after the new base: %v", serials(d2))
	}
}

// TestPluginServesLegacyIssuerCRLs: a legacyIssuers entry is loaded by
// New, its CRLs are published by the publisher loop (even while
// upstream's CRL is off) and served at the old CDP paths through
// DirectRoute.
func TestPluginServesLegacyIssuerCRLs(t *testing.T) {
	h := newTestHost(t)
	cert, key := newLegacyCA(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	must(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o600))
	der, err := x509.MarshalPKCS8PrivateKey(key)
	must(t, err)
	must(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600))
	cfg := DefaultConfig()
	cfg.LegacyIssuers = []legacy.IssuerConfig{{Name: "corp-1", Certificate: certFile, Key: keyFile, CRLURL: legacyCRL, DeltaCRLURL: legacyDelta}}
	must(t, cfg.Validate())
	p, err := New(cfg, h)
	must(t, err)
	generationFor(t, p, "").Activate() // upstream's CRL off
	deadline := time.Now().Add(10 * time.Second)
	for _, path := range []string{"/CertEnroll/Corp%20Issuing%20CA%201.crl", "/CertEnroll/Corp%20Issuing%20CA%201%2B.crl"} {
		for {
			req := httptest.NewRequest("GET", path, nil)
			hd := p.DirectRoute(req)
			if hd == nil {
				t.Fatalf("%s: no direct route", path)
			}
			w := httptest.NewRecorder()
			hd.ServeHTTP(w, req)
			if w.Code == 200 {
				crl, err := x509.ParseRevocationList(w.Body.Bytes())
				must(t, err)
				must(t, crl.CheckSignatureFrom(cert))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d %s", path, w.Code, w.Body)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// A duplicate name or CRL path is refused by Validate.
	cfg.LegacyIssuers = append(cfg.LegacyIssuers, cfg.LegacyIssuers[0])
	if err := cfg.Validate(); err == nil {
		t.Fatal("two legacy issuers with one name accepted")
	}
}
