package deviceattest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/smallstep/certificates/acme"
	"github.com/smallstep/certificates/authority/provisioner"

	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// TestDenialAuditStage: the daemon records a gate refusal (at finalize,
// for an account certificate or on renewal) at stage "inventory", also
// when the denial is wrapped.
func TestDenialAuditStage(t *testing.T) {
	var s interface{ AuditStage() string }
	err := fmt.Errorf("finalize: %w", deny(CodeDisabled, "device %s is disabled", "d1"))
	if !errors.As(err, &s) || s.AuditStage() != "inventory" {
		t.Fatalf("stage of %v: %v", err, s)
	}
}

// TestChallengeAudit: a device-attest-01 challenge the inventory gate
// refuses and one upstream found invalid (the attestation) each leave one
// certificate.sign denied record with the account, provisioner and
// permanent identifier; a valid challenge of a registered device none.
func TestChallengeAudit(t *testing.T) {
	h := plugintest.NewHost(t)
	p, inv, _ := newPluginOn(t, defaultConfig(), h)
	if _, err := inv.Create(inventory.DeviceInput{Identifiers: []string{"17255819"}}); err != nil {
		t.Fatal(err)
	}
	db := p.WrapACMEDB(&recordingDB{})
	ctx := acme.NewProvisionerContext(context.Background(), &provisioner.ACME{Name: "agents"})
	update := func(ch *acme.Challenge) {
		if err := db.UpdateChallenge(ctx, ch); err != nil {
			t.Fatal(err)
		}
	}
	update(&acme.Challenge{ID: "c1", AccountID: "acct1", Type: acme.DEVICEATTEST01, Status: acme.StatusValid, Value: "17255819", PayloadFormat: "tpm"})
	update(&acme.Challenge{ID: "c2", AccountID: "acct2", Type: acme.DEVICEATTEST01, Status: acme.StatusValid, Value: "99999999", PayloadFormat: "tpm"})
	update(&acme.Challenge{ID: "c3", AccountID: "acct3", Type: acme.DEVICEATTEST01, Status: acme.StatusInvalid, Value: "17255819",
		Error: acme.NewDetailedError(acme.ErrorBadAttestationStatementType, "x5c not signed by a trusted root")})
	recs := h.AuditRecords()
	if len(recs) != 2 {
		t.Fatalf("records %+v", recs)
	}
	if r := recs[0]; r.Action != "certificate.sign" || r.Outcome != plugins.AuditDenied || r.Details["stage"] != "inventory" ||
		r.Actor.Kind != "acmeAccount" || r.Actor.ID != "acct2" || r.Object.Device != "99999999" || r.Object.Provisioner != "agents" ||
		!strings.Contains(r.Reason, "not registered") {
		t.Errorf("gate record %+v", r)
	}
	if r := recs[1]; r.Details["stage"] != "attestation" || r.Actor.ID != "acct3" || !strings.Contains(r.Reason, "trusted root") {
		t.Errorf("attestation record %+v", r)
	}
}
