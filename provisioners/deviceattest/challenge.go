package deviceattest

import (
	"context"
	"time"

	"github.com/smallstep/certificates/acme"

	"github.com/stepfort/stepfort/plugins"
)

// challengeGate wraps upstream's ACME database. device-attest-01 validation
// (acme/challenge.go deviceAttest01Validate) ends with UpdateChallenge; a
// challenge about to become valid for a gated provisioner is stored invalid
// instead, with an ACME error the client prints. This is the earliest point
// at which the attested permanent identifier (ch.Value) is known to be
// genuine, for every attestation format (tpm, apple, step).
type challengeGate struct {
	acme.DB
	p *Plugin
}

func (g *challengeGate) UpdateChallenge(ctx context.Context, ch *acme.Challenge) error {
	if ch != nil && ch.Type == acme.DEVICEATTEST01 && ch.Status == acme.StatusValid {
		if err := g.p.checkChallenge(ctx, ch); err != nil {
			ch.Status = acme.StatusInvalid
			ch.ValidatedAt = ""
			ch.Error = err
			g.p.auditChallenge(ctx, ch, "inventory")
		}
	} else if ch != nil && ch.Type == acme.DEVICEATTEST01 && ch.Status == acme.StatusInvalid && ch.Error != nil {
		// Upstream refused the attestation itself (statement, roots,
		// identifier): recorded once, when the challenge turns invalid.
		g.p.auditChallenge(ctx, ch, "attestation")
	}
	return g.DB.UpdateChallenge(ctx, ch)
}

// auditChallenge records a refused device-attest-01 challenge as a
// certificate.sign denial (docs/audit.md): the ACME account, the
// provisioner, the permanent identifier and the ACME error.
func (p *Plugin) auditChallenge(ctx context.Context, ch *acme.Challenge, stage string) {
	a := p.host.Audit()
	if a == nil {
		return
	}
	det := map[string]string{"stage": stage, "plugin": Name, "challenge": ch.ID, "acmeError": ch.Error.Type}
	if ch.PayloadFormat != "" {
		det["format"] = ch.PayloadFormat
	}
	obj := plugins.AuditObject{Device: ch.Value, Subject: ch.Value}
	if prov, ok := acme.ProvisionerFromContext(ctx); ok {
		obj.Provisioner = prov.GetName()
	}
	reason := ch.Error.Detail
	if reason == "" && ch.Error.Err != nil {
		reason = ch.Error.Err.Error()
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = a.Record(rctx, plugins.AuditRecord{Action: "certificate.sign", Outcome: plugins.AuditDenied, Reason: reason,
		Actor: plugins.AuditActor{Kind: "acmeAccount", ID: ch.AccountID}, Object: obj, Details: det})
}

// checkChallenge returns the ACME error for a challenge the gate refuses.
func (p *Plugin) checkChallenge(ctx context.Context, ch *acme.Challenge) *acme.Error {
	prov, ok := acme.ProvisionerFromContext(ctx)
	if !ok {
		// Upstream always sets it; without it we cannot tell whether the
		// challenge is gated, so fail closed.
		return acme.NewError(acme.ErrorServerInternalType, "device-attest gate: no provisioner in context")
	}
	if !p.gated(prov.GetName()) {
		return nil
	}
	_, err := p.gate.Check(ch.Value)
	if err == nil {
		return nil
	}
	d := err.(*Denial)
	p.log.Info("device-attest-01 challenge denied", "event", "deviceattest.denied", "stage", "challenge",
		"provisioner", prov.GetName(), "permanentIdentifier", ch.Value, "format", ch.PayloadFormat, "reason", d.Code(), "error", d.Unwrap())
	if d.Code() == CodeLookupFailed {
		return acme.NewError(acme.ErrorServerInternalType, "%s", d.Error())
	}
	return acme.NewDetailedError(acme.ErrorRejectedIdentifierType, "%s", d.Error())
}
