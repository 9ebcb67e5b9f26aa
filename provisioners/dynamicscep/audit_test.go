package dynamicscep

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stepfort/stepfort/plugins"
)

// TestAuditRefusals: every refused enrollment (unknown, consumed,
// expired, mismatched) leaves one scep.challenge.consume denied record
// with its reason and the challenge id, and no record holds the
// challenge; create and withdraw through the admin API are recorded with
// the token's id and name, never its secret.
func TestAuditRefusals(t *testing.T) {
	p, h := newPlugin(t, "bbolt")
	ctx := context.Background()
	csr, _ := newCSR(t, csrSpec{cn: "device-001"})
	secret, c := create(t, p, Bindings{CommonName: "device-001"}, "")
	if _, err := p.ValidateSCEPChallenge(ctx, enroll(secret, csr)); err != nil {
		t.Fatal(err)
	}
	_, _ = p.ValidateSCEPChallenge(ctx, enroll(secret, csr)) // consumed
	_, _ = p.ValidateSCEPChallenge(ctx, enroll("0123456789ABCDEF0123456789ABCDEF", csr))
	bound, bc := create(t, p, Bindings{CommonName: "device-002"}, "")
	_, _ = p.ValidateSCEPChallenge(ctx, enroll(bound, csr)) // mismatch
	short, sc := create(t, p, Bindings{}, "1m")
	h.Advance(2 * time.Minute)
	_, _ = p.ValidateSCEPChallenge(ctx, enroll(short, csr)) // expired

	want := []struct{ result, challenge, reason string }{
		{ResultRefusedConsumed, c.ID, "challenge already used"},
		{ResultRefusedUnknown, "", "unknown challenge"},
		{ResultRefusedMismatch, bc.ID, "commonName"},
		{ResultRefusedExpired, sc.ID, "challenge expired at"},
	}
	recs := h.AuditRecords()
	if len(recs) != len(want) {
		t.Fatalf("%d records, want %d: %+v", len(recs), len(want), recs)
	}
	for i, w := range want {
		r := recs[i]
		if r.Action != "scep.challenge.consume" || r.Outcome != plugins.AuditDenied || r.Details["result"] != w.result ||
			r.Details["challenge"] != w.challenge || !strings.Contains(r.Reason, w.reason) || r.Object.Provisioner != "scep" ||
			r.Object.Subject != "device-001" || r.Details["transactionID"] != "tx-1" {
			t.Errorf("record %d: %+v, want %+v", i, r, w)
		}
	}
	b, _ := json.Marshal(recs)
	for _, s := range []string{secret, bound, short} {
		if strings.Contains(string(b), s) {
			t.Fatalf("a record holds the challenge %s: %s", s, b)
		}
	}
}

func TestAuditChallengeAdmin(t *testing.T) {
	p, h := newPlugin(t, "bbolt")
	srv, write, _, _ := apiServer(t, p)
	code, body := call(t, srv, write, "POST", "/api/v1/scep/challenges", `{"provisioner":"scep","commonName":"dev-1"}`)
	if code != 201 {
		t.Fatalf("create: %d %v", code, body)
	}
	id, _ := body["id"].(string)
	challenge, _ := body["challenge"].(string)
	if code, _ := call(t, srv, write, "DELETE", "/api/v1/scep/challenges/"+id, ""); code != 204 {
		t.Fatalf("withdraw: %d", code)
	}
	if code, _ := call(t, srv, write, "DELETE", "/api/v1/scep/challenges/"+id, ""); code != 404 {
		t.Fatalf("withdraw again: %d", code)
	}
	recs := h.AuditRecords()
	if len(recs) != 3 {
		t.Fatalf("records %+v", recs)
	}
	for i, w := range []struct {
		action  string
		outcome plugins.AuditOutcome
	}{{"scep.challenge.create", plugins.AuditSuccess}, {"scep.challenge.withdraw", plugins.AuditSuccess}, {"scep.challenge.withdraw", plugins.AuditDenied}} {
		r := recs[i]
		if r.Action != w.action || r.Outcome != w.outcome || r.Details["challenge"] != id || r.Actor.Kind != "adminToken" || r.Actor.Name != "mdm" || r.Actor.ID == "" {
			t.Errorf("record %d: %+v", i, r)
		}
	}
	b, _ := json.Marshal(recs)
	if challenge == "" || strings.Contains(string(b), challenge) || strings.Contains(string(b), write) {
		t.Fatalf("a record holds the challenge or the token: %s", b)
	}
}
