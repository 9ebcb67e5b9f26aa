package plugins

import "context"

// AuditRecord is one entry of the audit trail (docs/audit.md): what
// happened, who asked, to what, and how it ended. It never carries a
// secret: no token, challenge, password or key material.
type AuditRecord struct {
	// Action is dotted, object first: "certificate.sign",
	// "certificate.revoke", "scep.challenge.consume", "admin.token.create",
	// "crl.publish", "daemon.start". docs/audit.md lists them.
	Action  string       `json:"action"`
	Outcome AuditOutcome `json:"outcome"`
	// Reason says why the action was refused or failed.
	Reason  string            `json:"reason,omitempty"`
	Actor   AuditActor        `json:"actor"`
	Object  AuditObject       `json:"object,omitzero"`
	Details map[string]string `json:"details,omitempty"`
}

// AuditOutcome is how an audited action ended.
type AuditOutcome string

// Outcomes.
const (
	AuditSuccess AuditOutcome = "success"
	// AuditDenied: refused by policy (authentication, authorization, a
	// webhook, a plugin's check).
	AuditDenied AuditOutcome = "denied"
	// AuditFailure: it could not be done (an error).
	AuditFailure AuditOutcome = "failure"
)

// AuditActor is who asked for an action.
type AuditActor struct {
	// Kind: "provisioner", "adminToken", "mtls", "acmeAccount",
	// "plugin", "system" or "anonymous".
	Kind string `json:"kind"`
	// ID and Name identify the actor within its kind (an admin token's id
	// and name, a provisioner's name, a plugin's name).
	ID   string `json:"id,omitempty"`
	Name string `json:"name,omitempty"`
	// Subject is the client certificate's subject for mTLS.
	Subject    string `json:"subject,omitempty"`
	RemoteAddr string `json:"remoteAddr,omitempty"`
}

// AuditObject is what an action was about; every field is optional.
type AuditObject struct {
	Serial      string `json:"serial,omitempty"` // decimal
	Issuer      string `json:"issuer,omitempty"`
	Subject     string `json:"subject,omitempty"` // CN or first SAN of the certificate asked for
	Provisioner string `json:"provisioner,omitempty"`
	Device      string `json:"device,omitempty"`
	Token       string `json:"token,omitempty"` // an admin token's id, never its secret
	Config      string `json:"config,omitempty"`
}

// Auditor appends records to the audit trail. Record fills in the time
// and sequence. It returns an error only when the record could not be
// written and the trail is configured to fail closed: the caller then
// refuses the action it was about to allow.
type Auditor interface {
	Record(ctx context.Context, r AuditRecord) error
}
