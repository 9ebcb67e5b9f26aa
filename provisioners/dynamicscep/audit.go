package dynamicscep

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/stepfort/stepfort/internal/admin"
	"github.com/stepfort/stepfort/plugins"
)

// Audit trail records (docs/audit.md): a refused enrollment is
// scep.challenge.consume denied (failure for an error), a challenge made
// or withdrawn through the admin API is scep.challenge.create or
// scep.challenge.withdraw. The challenge itself is never recorded; its
// id is.

const auditTimeout = 5 * time.Second

// recordRefusal writes the record of a refused enrollment.
func recordRefusal(ctx context.Context, a plugins.Auditor, req plugins.SCEPRequest, source, challengeID, device string, err error) {
	if a == nil {
		return
	}
	result, reason := ResultError, err.Error()
	var r *Refusal
	if errors.As(err, &r) {
		result, reason = r.Result, r.Reason
	}
	outcome := plugins.AuditDenied
	if result == ResultError {
		outcome = plugins.AuditFailure
	}
	det := map[string]string{"stage": "scep", "plugin": Name, "result": result, "source": source}
	if challengeID != "" {
		det["challenge"] = challengeID
	}
	if req.TransactionID != "" {
		det["transactionID"] = clip(req.TransactionID)
	}
	obj := plugins.AuditObject{Provisioner: req.Provisioner, Device: device}
	if req.CSR != nil {
		obj.Subject = clip(req.CSR.Subject.CommonName)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditTimeout)
	defer cancel()
	_ = a.Record(rctx, plugins.AuditRecord{Action: "scep.challenge.consume", Outcome: outcome, Reason: reason,
		Actor: plugins.AuditActor{Kind: "anonymous"}, Object: obj, Details: det})
}

// recordChallenge writes the record of a challenge created or withdrawn
// through the admin API (c nil: refused before one existed).
func (p *Plugin) recordChallenge(r *http.Request, action string, c *Challenge, outcome plugins.AuditOutcome, reason string) {
	a := p.host.Audit()
	if a == nil {
		return
	}
	actor := plugins.AuditActor{Kind: "adminToken", RemoteAddr: r.RemoteAddr}
	if t := admin.TokenFrom(r); t != nil {
		actor.ID, actor.Name = t.ID, t.Name
	}
	var obj plugins.AuditObject
	det := map[string]string{"plugin": Name}
	if c != nil {
		obj = plugins.AuditObject{Provisioner: c.Provisioner, Device: c.Device, Subject: c.CommonName}
		det["challenge"], det["source"] = c.ID, c.Source
		if !c.ExpiresAt.IsZero() {
			det["expiresAt"] = c.ExpiresAt.UTC().Format(time.RFC3339)
		}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), auditTimeout)
	defer cancel()
	if err := a.Record(ctx, plugins.AuditRecord{Action: action, Outcome: outcome, Reason: reason, Actor: actor, Object: obj, Details: det}); err != nil {
		p.log.Error("audit record lost", "action", action, "error", err)
	}
}
