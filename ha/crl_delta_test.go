package ha

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/smallstep/certificates/db"

	"github.com/stepfort/stepfort/internal/crlchanges"
)

const testDeltaURL = "http://ca.example/1.0/crl/delta"

// newDeltaPublisher is a publisher with deltas on (base every 168h,
// delta every 24h), with or without an IDP.
func newDeltaPublisher(t testing.TB, h *crlHost, idp bool) *Publisher {
	t.Helper()
	p, err := NewPublisher(h, time.Second, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	opts := []ScopeOption{WithDelta(DeltaScope{})}
	if idp {
		opts = append(opts, WithIDP())
	}
	scope, err := NewCRLScope(testIDP, 24*time.Hour, opts...)
	if err != nil {
		t.Fatal(err)
	}
	p.Activate(scope)
	return p
}

// storedDelta reads the own series' delta row.
func storedDelta(t *testing.T, p *Publisher) *x509.RevocationList {
	t.Helper()
	_, crl, err := p.currentDelta()
	if err != nil || crl == nil {
		t.Fatalf("no delta: %v", err)
	}
	full, err := x509.ParseRevocationList(crl.Raw)
	if err != nil {
		t.Fatal(err)
	}
	return full
}

func serials(crl *x509.RevocationList) map[string]int {
	m := map[string]int{}
	for _, e := range crl.RevokedCertificateEntries {
		m[e.SerialNumber.String()] = e.ReasonCode
	}
	return m
}

// revokeWithChange stores an upstream revocation row and records the
// change as ObserveCertificate does.
func revokeWithChange(t *testing.T, h *crlHost, serial string, reason int) {
	t.Helper()
	revoke(t, h.store, db.RevokedCertificateInfo{Serial: serial, RevokedAt: h.Now(), ReasonCode: reason, ExpiresAt: h.Now().Add(time.Hour * 48)})
	if err := crlchanges.Record(h.store, ownSeriesName, crlchanges.Change{Serial: serial, RevokedAt: h.Now(), Reason: reason}, h.Now()); err != nil {
		t.Fatal(err)
	}
}

// TestDeltaCRLRules checks RFC 5280 5.2.4 on what the publisher writes,
// with and without an IDP: same issuer and AKI, IDP absent on both or
// identical, one numbering sequence, the delta's base number ≤ the base's,
// a critical Delta CRL Indicator, Freshest CRL on the base only; entries
// stay on every delta until a base includes them; removeFromCRL passes.
func TestDeltaCRLRules(t *testing.T) {
	for _, idp := range []bool{false, true} {
		t.Run(map[bool]string{false: "no IDP", true: "IDP"}[idp], func(t *testing.T) {
			h := newCRLHost(t)
			p := newDeltaPublisher(t, h, idp)
			revokeWithChange(t, h, "100", 1)
			var numbers []int64
			note := func(crl *x509.RevocationList) {
				n := crl.Number.Int64()
				if len(numbers) > 0 && n <= numbers[len(numbers)-1] {
					t.Fatalf("number %d after %v", n, numbers)
				}
				numbers = append(numbers, n)
			}
			must(t, p.Publish())
			_, base, _ := storedCRL(t, h.store)
			note(base)
			if latest, _, _ := crlchanges.List(h.store, ownSeriesName); len(latest) != 0 {
				t.Fatalf("the base did not prune the changes it includes: %v", latest)
			}
			f := findExtension(base.Extensions, oidFreshestCRL)
			want, _ := distributionPoints(testDeltaURL)
			if f == nil || f.Critical || !bytes.Equal(f.Value, want) {
				t.Fatalf("base Freshest CRL %+v", f)
			}
			if (findExtension(base.Extensions, oidIDP) != nil) != idp {
				t.Fatalf("base IDP present %v, want %v", !idp, idp)
			}

			// Revocations after the base reach the delta only.
			h.Advance(time.Minute)
			revokeWithChange(t, h, "200", 4)
			revokeWithChange(t, h, "300", crlchanges.RemoveFromCRL) // a released hold
			must(t, p.PublishDelta())
			d := storedDelta(t, p)
			note(d)
			if err := checkDeltaPair(base, d); err != nil {
				t.Fatal(err)
			}
			got := serials(d)
			if len(got) != 2 || got["200"] != 4 || got["300"] != crlchanges.RemoveFromCRL {
				t.Fatalf("delta entries %v", got)
			}
			if d.NextUpdate.Sub(d.ThisUpdate) != 24*time.Hour+12*time.Hour/5 {
				t.Fatalf("delta validity %s", d.NextUpdate.Sub(d.ThisUpdate))
			}
			// A later delta still lists them.
			h.Advance(time.Minute)
			revokeWithChange(t, h, "400", 0)
			must(t, p.PublishDelta())
			d2 := storedDelta(t, p)
			note(d2)
			if got := serials(d2); len(got) != 3 {
				t.Fatalf("second delta %v: entries must stay until a base includes them", got)
			}
			must(t, checkDeltaPair(base, d2))

			// A new base absorbs them; the next delta is empty and names it.
			h.Advance(time.Minute)
			must(t, p.Publish())
			_, base2, _ := storedCRL(t, h.store)
			note(base2)
			if got := serials(base2); len(got) != 4 {
				t.Fatalf("new base %v", got)
			}
			must(t, p.PublishDelta())
			d3 := storedDelta(t, p)
			note(d3)
			must(t, checkDeltaPair(base2, d3))
			if len(d3.RevokedCertificateEntries) != 0 {
				t.Fatalf("delta after the base still lists %v", serials(d3))
			}
			// A delta numbered below the new base is no delta of it.
			if err := checkDeltaPair(base2, d2); err == nil {
				t.Fatal("a delta numbered below the base was accepted")
			}
		})
	}
}

// TestCheckDeltaPairRejects: the checker the tests rely on refuses what
// RFC 5280 forbids.
func TestCheckDeltaPairRejects(t *testing.T) {
	h := newCRLHost(t)
	p := newDeltaPublisher(t, h, false)
	must(t, p.Publish())
	must(t, p.PublishDelta())
	_, base, _ := storedCRL(t, h.store)
	d := storedDelta(t, p)
	must(t, checkDeltaPair(base, d))
	bad := func(name string, edit func(b, d *x509.RevocationList)) {
		b2, d2 := *base, *d
		b2.Extensions = append([]pkix.Extension(nil), base.Extensions...)
		d2.Extensions = append([]pkix.Extension(nil), d.Extensions...)
		edit(&b2, &d2)
		if err := checkDeltaPair(&b2, &d2); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	idp, _ := issuingDistributionPoint(testIDP)
	bad("IDP on the delta only", func(_, d *x509.RevocationList) { d.Extensions = append(d.Extensions, idp) })
	bad("other AKI", func(_, d *x509.RevocationList) { d.AuthorityKeyId = []byte{1} })
	bad("base number above", func(b, _ *x509.RevocationList) { b.Number = big.NewInt(0) })
	bad("indicator not critical", func(_, d *x509.RevocationList) {
		for i := range d.Extensions {
			if d.Extensions[i].Id.Equal(oidDeltaCRLIndicator) {
				d.Extensions[i].Critical = false
			}
		}
	})
	bad("freshest on delta", func(b, d *x509.RevocationList) {
		d.Extensions = append(d.Extensions, *findExtension(b.Extensions, oidFreshestCRL))
	})
	bad("same number", func(b, d *x509.RevocationList) { d.Number = b.Number })
}

// TestDeltaDue: a revocation makes a delta due, not a base; the periods
// make each due; a new base makes a delta due at once.
func TestDeltaDue(t *testing.T) {
	h := newCRLHost(t)
	p := newDeltaPublisher(t, h, false)
	check := func(wantBase, wantDelta bool) {
		t.Helper()
		b, d, err := p.dueSeries(p.own, p.Scope())
		if err != nil || b != wantBase || d != wantDelta {
			t.Fatalf("due base %v delta %v (%v), want %v %v", b, d, err, wantBase, wantDelta)
		}
	}
	check(true, true)
	p.publishSeries(p.own, p.Scope())
	check(false, false)
	h.Advance(time.Second)
	// A revocation in the second before the publication (thisUpdate is
	// truncated to the second).
	must(t, MarkDirty(h.store, h.Now().Add(-500*time.Millisecond)))
	check(false, true)
	p.publishSeries(p.own, p.Scope())
	check(false, false)
	h.Advance(24 * time.Hour)
	check(false, true)
	p.publishSeries(p.own, p.Scope())
	h.Advance(6 * 24 * time.Hour)
	check(true, true)
	p.publishSeries(p.own, p.Scope())
	check(false, false)
	_, base, _ := storedCRL(t, h.store)
	must(t, checkDeltaPair(base, storedDelta(t, p)))
	if v := base.NextUpdate.Sub(base.ThisUpdate); v != 7*24*time.Hour+12*time.Hour {
		t.Fatalf("base validity %s, want a week + 12h", v)
	}
	// Deltas switched off: the stored base carries a Freshest CRL the
	// scope no longer wants, so a base is due at once.
	plain, _ := NewCRLScope(testIDP, 24*time.Hour)
	p.Activate(plain)
	check(true, false)
}

// TestScopeNamesCompareExtensions: the "scope changed" check compares what
// the CRL would carry now (IDP and Freshest CRL, present or absent).
func TestScopeNamesCompareExtensions(t *testing.T) {
	h := newCRLHost(t)
	p := newDeltaPublisher(t, h, true)
	must(t, p.Publish())
	_, crl, _ := storedCRL(t, h.store)
	for _, tc := range []struct {
		opts []ScopeOption
		url  string
		want bool
	}{
		{[]ScopeOption{WithIDP(), WithDelta(DeltaScope{})}, testIDP, true},
		{[]ScopeOption{WithDelta(DeltaScope{})}, testIDP, false},
		{[]ScopeOption{WithIDP()}, testIDP, false},
		{[]ScopeOption{WithIDP(), WithDelta(DeltaScope{URL: "http://other/d.crl"})}, testIDP, false},
		{[]ScopeOption{WithIDP(), WithDelta(DeltaScope{URL: testDeltaURL})}, "http://x/1.0/crl", false},
	} {
		s, err := NewCRLScope(tc.url, time.Hour, tc.opts...)
		must(t, err)
		if got := s.names(crl); got != tc.want {
			t.Errorf("%s idp=%v delta=%+v: names %v, want %v", tc.url, s.idp != nil, s.delta, got, tc.want)
		}
	}
	plain, _ := NewCRLScope("http://x/1.0/crl", time.Hour)
	h2 := newCRLHost(t)
	p2, _ := NewPublisher(h2, time.Second, 5*time.Second)
	p2.Activate(plain)
	must(t, p2.Publish())
	_, crl2, _ := storedCRL(t, h2.store)
	if !plain.names(crl2) || len(crl2.Extensions) != 2 {
		t.Fatalf("a CRL without IDP: extensions %v", crl2.Extensions)
	}
	other, _ := NewCRLScope("http://y/1.0/crl", time.Hour)
	if !other.names(crl2) {
		t.Fatal("without an IDP the URL is not in the CRL: no republication needed")
	}
}

func TestDeltaURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://ca.example/1.0/crl":                                  "http://ca.example/1.0/crl/delta",
		"http://ca.example/crl/":                                     "http://ca.example/crl/delta",
		"http://pki.corp.example/CertEnroll/Corp%20Issuing%20CA.crl": "http://pki.corp.example/CertEnroll/Corp%20Issuing%20CA+.crl",
		"http://pki.example/x.CRL?a=b":                               "http://pki.example/x+.CRL?a=b",
	} {
		if got := DeltaURL(in); got != want {
			t.Errorf("DeltaURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestEnforceAddsFreshestOnce: with deltas on, certificates carry the
// Freshest CRL extension naming the delta URL, once.
func TestEnforceAddsFreshestOnce(t *testing.T) {
	h := newTestHost(t)
	cfg := DefaultConfig()
	cfg.CRL.Delta.Enabled = true
	p, err := New(cfg, h)
	must(t, err)
	gen := generationFor(t, p, urlA)
	cert := enforced(t, gen)
	must(t, gen.(interface {
		EnforceCertificate(*x509.Certificate) error
	}).EnforceCertificate(cert))
	n := 0
	for _, e := range cert.ExtraExtensions {
		if e.Id.Equal(oidFreshestCRL) {
			n++
			var dps []struct {
				DP struct {
					Full []asn1.RawValue `asn1:"optional,tag:0"`
				} `asn1:"optional,tag:0"`
			}
			if _, err := asn1.Unmarshal(e.Value, &dps); err != nil || len(dps) != 1 || string(dps[0].DP.Full[0].Bytes) != urlA+"/delta" || e.Critical {
				t.Fatalf("Freshest CRL %x: %v", e.Value, err)
			}
		}
	}
	if n != 1 {
		t.Fatalf("%d Freshest CRL extensions", n)
	}
	// Served at its path on both listeners (DirectRoute), once published.
	gen.Activate()
	deadline := time.Now().Add(5 * time.Second)
	for {
		w := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/1.0/crl/delta", nil)
		if hd := p.DirectRoute(req); hd != nil {
			hd.ServeHTTP(w, req)
		}
		if w.Code == http.StatusOK {
			d, err := x509.ParseRevocationList(w.Body.Bytes())
			if err != nil || findExtension(d.Extensions, oidDeltaCRLIndicator) == nil {
				t.Fatalf("served delta: %v", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("delta not served: %d %s", w.Code, w.Body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	health, err := p.Health(t.Context())
	must(t, err)
	if _, ok := health["crlDeltaNumber"]; !ok {
		t.Fatalf("health %v lacks crlDeltaNumber", health)
	}
}

func TestDeltaConfigValidate(t *testing.T) {
	c := DefaultConfig()
	c.CRL.Delta.Enabled = true
	must(t, c.Validate())
	c.CRL.Delta.DeltaPeriod.Duration = 200 * time.Hour
	if err := c.Validate(); err == nil || !bytes.Contains([]byte(err.Error()), []byte("crl.delta.deltaPeriod")) {
		t.Fatalf("delta period ≥ base period: %v", err)
	}
	c.CRL.Delta.DeltaPeriod.Duration = 0
	c.CRL.Delta.URL = "/relative"
	if err := c.Validate(); err == nil || !bytes.Contains([]byte(err.Error()), []byte("crl.delta.url")) {
		t.Fatalf("relative delta URL: %v", err)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// checkDeltaPair checks RFC 5280 5.2.4 between a base and a delta CRL:
// same issuer and AKI, IDP absent from both or identical, one numbering
// sequence (base number ≥ the delta's BaseCRLNumber, delta number > base
// number), a critical indicator on the delta and no Freshest CRL on it.
func checkDeltaPair(base, delta *x509.RevocationList) error {
	ind := findExtension(delta.Extensions, oidDeltaCRLIndicator)
	switch {
	case ind == nil:
		return fmt.Errorf("the delta has no Delta CRL Indicator")
	case !ind.Critical:
		return fmt.Errorf("the Delta CRL Indicator is not critical")
	case findExtension(base.Extensions, oidDeltaCRLIndicator) != nil:
		return fmt.Errorf("the base carries a Delta CRL Indicator")
	case findExtension(delta.Extensions, oidFreshestCRL) != nil:
		return fmt.Errorf("the delta carries a Freshest CRL extension")
	case !bytes.Equal(base.RawIssuer, delta.RawIssuer):
		return fmt.Errorf("issuers differ")
	case !bytes.Equal(base.AuthorityKeyId, delta.AuthorityKeyId):
		return fmt.Errorf("authority key identifiers differ")
	case !sameExtension(delta, oidIDP, findExtension(base.Extensions, oidIDP)):
		return fmt.Errorf("issuing distribution points differ")
	}
	var bn *big.Int
	if _, err := asn1.Unmarshal(ind.Value, &bn); err != nil {
		return fmt.Errorf("delta CRL indicator: %w", err)
	}
	if base.Number == nil || delta.Number == nil {
		return fmt.Errorf("a CRL has no number")
	}
	if base.Number.Cmp(bn) < 0 {
		return fmt.Errorf("the delta's base number %v exceeds the base's number %v", bn, base.Number)
	}
	if delta.Number.Cmp(base.Number) <= 0 {
		return fmt.Errorf("the delta's number %v is not above the base's %v", delta.Number, base.Number)
	}
	return nil
}
