package ha

import (
	"crypto"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/stepfort/stepfort/internal/legacy"
	"github.com/stepfort/stepfort/plugins"
)

func actionRecords(recs []plugins.AuditRecord, action string) []plugins.AuditRecord {
	var out []plugins.AuditRecord
	for _, r := range recs {
		if r.Action == action {
			out = append(out, r)
		}
	}
	return out
}

// TestAuditCRLPublish: a base and a delta CRL each leave a crl.publish
// record with number, thisUpdate, nextUpdate and delta; a failure is
// recorded once, not on every retry.
func TestAuditCRLPublish(t *testing.T) {
	h := newCRLHost(t)
	p, err := NewPublisher(h, time.Second, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	scope, err := NewCRLScope(testIDP, 24*time.Hour, WithIDP(), WithDelta(DeltaScope{}))
	if err != nil {
		t.Fatal(err)
	}
	p.Activate(scope)
	for range 2 {
		if err := p.PublishDelta(); err == nil {
			t.Fatal("a delta without a base was published")
		}
	}
	if err := p.Publish(); err != nil {
		t.Fatal(err)
	}
	if err := p.PublishDelta(); err != nil {
		t.Fatal(err)
	}
	recs := actionRecords(h.AuditRecords(), "crl.publish")
	if len(recs) != 3 {
		t.Fatalf("records %+v", recs)
	}
	if r := recs[0]; r.Outcome != plugins.AuditFailure || !strings.Contains(r.Reason, "no confirmed base") || r.Details["delta"] != "true" {
		t.Errorf("failure record %+v", r)
	}
	info, crl, _ := storedCRL(t, h.Store)
	now := h.Now().UTC().Truncate(time.Second)
	base, delta := recs[1], recs[2]
	if base.Outcome != plugins.AuditSuccess || base.Details["number"] != strconv.FormatInt(info.Number, 10) || base.Details["delta"] != "false" ||
		base.Details["thisUpdate"] != now.Format(time.RFC3339) || base.Details["nextUpdate"] != crl.NextUpdate.UTC().Format(time.RFC3339) ||
		base.Object.Issuer != h.Auth.GetIntermediateCertificates()[0].Subject.String() || base.Actor.Kind != "system" {
		t.Errorf("base record %+v (CRL %d, %v)", base, info.Number, crl.NextUpdate)
	}
	if delta.Details["delta"] != "true" || delta.Details["baseNumber"] != base.Details["number"] || delta.Details["number"] == base.Details["number"] {
		t.Errorf("delta record %+v", delta)
	}
}

// TestAuditResponderIssue: the own and a legacy issuer's delegated
// responder certificates are each recorded with serial and issuer.
func TestAuditResponderIssue(t *testing.T) {
	h := newTestHost(t)
	r := startResponder(t, h, DefaultConfig().OCSP)
	ca := newTestLegacyCA(t, "Corp Issuing CA 1")
	store, err := legacy.OpenStore(h.Store)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.AddLegacyIssuer(ca.issuer("corp-1"), store); err != nil {
		t.Fatal(err)
	}
	own := askWith(t, r, big.NewInt(5), crypto.SHA1)
	leg := askIssuer(t, r, ca.cert, big.NewInt(9), crypto.SHA1, false)
	recs := actionRecords(h.AuditRecords(), "ocsp.responder.issue")
	if len(recs) != 2 {
		t.Fatalf("records %+v", recs)
	}
	byName := map[string]plugins.AuditRecord{}
	for _, rec := range recs {
		byName[rec.Details["issuerName"]] = rec
	}
	if rec := byName[ownIssuerName]; rec.Object.Serial != own.Certificate.SerialNumber.String() || rec.Details["legacy"] != "false" ||
		rec.Object.Issuer != own.Certificate.Issuer.String() {
		t.Errorf("own record %+v", rec)
	}
	if rec := byName["corp-1"]; rec.Object.Serial != leg.Certificate.SerialNumber.String() || rec.Details["legacy"] != "true" ||
		rec.Object.Issuer != ca.cert.Subject.String() {
		t.Errorf("legacy record %+v", rec)
	}
}

// TestAuditLegacyRevoke: the admin route records success and refusals.
func TestAuditLegacyRevoke(t *testing.T) {
	h := newTestHost(t)
	store, err := legacy.OpenStore(h.Store)
	if err != nil {
		t.Fatal(err)
	}
	importGood(t, store, "corp-1", big.NewInt(0x44))
	route := legacyRevokeRoute(store, func(n string) bool { return n == "corp-1" }, h.Now, h.Audit())
	mux := chi.NewRouter()
	mux.Method(route.Method, route.Pattern, route.Handler)
	do := func(name, body string) int {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/legacy-issuers/"+name+"/revocations", strings.NewReader(body)))
		return rec.Code
	}
	if c := do("corp-1", `{"serial":"44","reason":"keyCompromise"}`); c != 200 {
		t.Fatalf("revoke: %d", c)
	}
	if c := do("corp-1", `{"serial":"44","reason":"keyCompromise"}`); c != 409 {
		t.Fatalf("revoke again: %d", c)
	}
	if c := do("other", `{"serial":"44","reason":"keyCompromise"}`); c != 404 {
		t.Fatalf("unknown issuer: %d", c)
	}
	recs := actionRecords(h.AuditRecords(), "legacy.revoke")
	if len(recs) != 3 {
		t.Fatalf("records %+v", recs)
	}
	for i, want := range []plugins.AuditOutcome{plugins.AuditSuccess, plugins.AuditDenied, plugins.AuditDenied} {
		if recs[i].Outcome != want {
			t.Errorf("record %d: %+v", i, recs[i])
		}
	}
	if r := recs[0]; r.Object.Serial != "68" || r.Object.Issuer != "corp-1" || r.Details["reason"] != "keyCompromise" {
		t.Errorf("success record %+v", r)
	}
	if recs[1].Reason == "" || recs[2].Reason == "" {
		t.Errorf("refusals without a reason: %+v", recs[1:])
	}
}
