package attestationca

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins"
)

// TestAuditDenials: an unregistered EK and a replayed activation secret
// each leave a certificate.sign denied record at stage attestation with
// the code; no record holds the secret.
func TestAuditDenials(t *testing.T) {
	c := newFloodCA(t, testenv.OpenStore(t, "bbolt"), "bbolt", "")
	s := newSoftTPM(t)
	if rec, _ := c.attest(t, s, s.body); rec.Code != http.StatusForbidden {
		t.Fatalf("unregistered EK: %d %s", rec.Code, rec.Body)
	}
	urn := c.register(t, s)
	rec, secret := c.attest(t, s, s.body)
	if rec.Code != http.StatusOK {
		t.Fatalf("attest: %d %s", rec.Code, rec.Body)
	}
	if rec := c.secret(secret); rec.Code != http.StatusOK {
		t.Fatalf("secret: %d %s", rec.Code, rec.Body)
	}
	if rec := c.secret(secret); rec.Code != http.StatusForbidden {
		t.Fatalf("replayed secret: %d %s", rec.Code, rec.Body)
	}
	recs := c.host.AuditRecords()
	if len(recs) != 2 {
		t.Fatalf("records %+v", recs)
	}
	for i, want := range []struct{ step, code string }{{"attest", codeNotRegistered}, {"secret", codeReplayed}} {
		r := recs[i]
		if r.Action != "certificate.sign" || r.Outcome != plugins.AuditDenied || r.Details["stage"] != "attestation" ||
			r.Details["step"] != want.step || r.Details["code"] != want.code || !strings.HasPrefix(r.Reason, want.code) {
			t.Errorf("record %d: %+v", i, r)
		}
	}
	if recs[0].Details["ek"] != urn {
		t.Errorf("record names EK %q, want %q", recs[0].Details["ek"], urn)
	}
	b, _ := json.Marshal(recs)
	for _, enc := range []string{base64.StdEncoding.EncodeToString(secret), base64.RawURLEncoding.EncodeToString(secret), string(secret)} {
		if strings.Contains(string(b), enc) {
			t.Fatalf("a record holds the activation secret: %s", b)
		}
	}
}
