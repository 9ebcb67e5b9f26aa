package ha

import (
	"crypto/x509"
	"encoding/asn1"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	upconfig "github.com/smallstep/certificates/authority/config"

	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

const (
	urlA = "http://a.example/1.0/crl"
	urlB = "http://b.example/1.0/crl"
)

// upstreamCRL is a freshly loaded upstream configuration with a CRL at url
// ("" for none).
func upstreamCRL(url string) *upconfig.Config {
	if url == "" {
		return &upconfig.Config{}
	}
	return &upconfig.Config{CRL: &upconfig.CRLConfig{Enabled: true, GenerateOnRevoke: true, IDPurl: url}}
}

func newTestPlugin(t *testing.T, h plugins.Host) *Plugin {
	t.Helper()
	cfg := DefaultConfig()
	cfg.OCSP.URL = "http://ca.example/ocsp"
	cfg.CRL.IDP = true // these tests follow the IDP as the scope changes
	p, err := New(cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// generationFor runs MutateConfig as the daemon does on start or reload.
func generationFor(t testing.TB, p *Plugin, url string) plugins.Generation {
	t.Helper()
	gen, err := p.MutateConfig(upstreamCRL(url))
	if err != nil {
		t.Fatal(err)
	}
	return gen
}

// enforced is a certificate template after gen's enforcer ran.
func enforced(t testing.TB, gen plugins.Generation) *x509.Certificate {
	t.Helper()
	e, ok := gen.(plugins.CertificateEnforcer)
	if !ok {
		t.Fatal("the generation is not a CertificateEnforcer")
	}
	cert := &x509.Certificate{}
	if err := e.EnforceCertificate(cert); err != nil {
		t.Fatal(err)
	}
	return cert
}

// crlIDP parses the URI of a CRL's Issuing Distribution Point extension
// (RFC 5280 5.2.5: distributionPoint [0] { fullName [0] { URI [6] } }).
func crlIDP(t *testing.T, crl *x509.RevocationList) string {
	t.Helper()
	for _, e := range crl.Extensions {
		if !e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 28}) {
			continue
		}
		var idp struct {
			DistributionPoint struct {
				FullName []asn1.RawValue `asn1:"optional,tag:0"`
			} `asn1:"optional,tag:0"`
		}
		if _, err := asn1.Unmarshal(e.Value, &idp); err != nil {
			t.Fatalf("IDP extension: %v", err)
		}
		for _, n := range idp.DistributionPoint.FullName {
			if n.Class == asn1.ClassContextSpecific && n.Tag == 6 {
				return string(n.Bytes)
			}
		}
	}
	t.Fatal("the CRL has no Issuing Distribution Point URI")
	return ""
}

// TestReloadDoesNotRaceRequests: requests keep enforcing with the old
// generation while reloads build (and activate) new ones. Run with -race:
// a reload used to overwrite the fields requests read.
func TestReloadDoesNotRaceRequests(t *testing.T) {
	h := newTestHost(t)
	p := newTestPlugin(t, h)
	old := generationFor(t, p, urlA)
	old.Activate()

	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				cert := enforced(t, old)
				if len(cert.CRLDistributionPoints) != 1 || cert.CRLDistributionPoints[0] != urlA {
					t.Errorf("old generation enforced CDP %v, want %s", cert.CRLDistributionPoints, urlA)
					return
				}
				w := httptest.NewRecorder()
				p.publisher.ServeCRL(w, httptest.NewRequest("GET", "/crl", nil))
			}
		}()
	}
	for i := range 200 {
		url := urlB
		if i%2 == 1 {
			url = urlA
		}
		gen := generationFor(t, p, url)
		if i%10 == 0 {
			gen.Activate()
		}
	}
	close(stop)
	wg.Wait()
}

// TestActivatedCRLScopeMatchesCertificates: after a reload that changes the
// CRL URL is activated, certificates carry the new distribution point and
// the next CRL (published at once, not at the next revocation or refresh)
// carries the same URL as its Issuing Distribution Point.
func TestActivatedCRLScopeMatchesCertificates(t *testing.T) {
	h := newTestHost(t)
	p := newTestPlugin(t, h)
	first := generationFor(t, p, urlA)
	first.Activate()
	waitForIDP(t, h, p, urlA)

	second := generationFor(t, p, urlB)
	cert := enforced(t, second)
	if len(cert.CRLDistributionPoints) != 1 || cert.CRLDistributionPoints[0] != urlB {
		t.Fatalf("new generation enforced CDP %v, want %s", cert.CRLDistributionPoints, urlB)
	}
	if got := enforced(t, first).CRLDistributionPoints; len(got) != 1 || got[0] != urlA {
		t.Fatalf("building a generation changed the serving one: CDP %v", got)
	}
	if got := enforced(t, second).OCSPServer; len(got) != 1 || got[0] != "http://ca.example/ocsp" {
		t.Fatalf("OCSP URL %v", got)
	}

	second.Activate()
	took := waitForIDP(t, h, p, urlB)
	t.Logf("CRL with the new IDP published %s after activation", took)
	if health, err := p.Health(t.Context()); err != nil || health["crlPublisherIsSelf"] != true || health["crlNumber"] == nil {
		t.Fatalf("health %v, %v", health, err)
	}
}

// waitForIDP waits (at most two publisher ticks) until the served CRL's IDP
// is url and returns how long that took.
func waitForIDP(t *testing.T, h *plugintest.Host, p *Plugin, url string) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if row, err := h.Store.Get(crlTable, crlKey); err == nil && row != nil {
			if _, crl, _ := storedCRL(t, h.Store); crlIDP(t, crl) == url {
				return time.Since(start)
			}
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("no CRL with IDP %s within 2s", url)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestGenerationWithoutCRL: a configuration without upstream's CRL adds
// only the OCSP URL, and once active /crl answers like upstream with the
// CRL disabled.
func TestGenerationWithoutCRL(t *testing.T) {
	h := newTestHost(t)
	p := newTestPlugin(t, h)
	gen := generationFor(t, p, urlA)
	gen.Activate()
	off := generationFor(t, p, "")
	if cert := enforced(t, off); len(cert.CRLDistributionPoints) != 0 || len(cert.OCSPServer) != 1 {
		t.Fatalf("CDP %v, OCSP %v", cert.CRLDistributionPoints, cert.OCSPServer)
	}
	off.Activate()
	w := httptest.NewRecorder()
	p.publisher.ServeCRL(w, httptest.NewRequest("GET", "/1.0/crl", nil))
	if w.Code != http.StatusNotFound {
		t.Fatalf("/crl without a CRL: %d", w.Code)
	}
	if health, err := p.Health(t.Context()); err != nil || health["crlPublisher"] != nil {
		t.Fatalf("health %v, %v", health, err)
	}
}
