package ha

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/stepfort/stepfort/internal/admin"
	"github.com/stepfort/stepfort/internal/legacy"
	"github.com/stepfort/stepfort/plugins"
)

// ScopeRevocationWrite is the admin scope of revoking a legacy issuer's
// certificate (POST /legacy-issuers/{name}/revocations).
const ScopeRevocationWrite = "revocation:write"

// LegacyRevokePattern is the admin route of a legacy revocation,
// relative to /api/v1.
const LegacyRevokePattern = "/legacy-issuers/{name}/revocations"

// LegacyRevokeRequest is the body of POST /legacy-issuers/{name}/revocations.
type LegacyRevokeRequest struct {
	// Serial in hexadecimal, as ADCS shows it (spaces and colons allowed).
	Serial string `json:"serial"`
	// Reason is a CRLReason number or name (legacy.ParseReason);
	// "removeFromCRL" releases a certificate on hold.
	Reason string `json:"reason"`
	// AllowUnknown revokes a serial the import does not know.
	AllowUnknown bool `json:"allowUnknown,omitempty"`
}

// LegacyRevokeResponse answers a legacy revocation.
type LegacyRevokeResponse struct {
	Issuer    string    `json:"issuer"`
	Serial    string    `json:"serial"`
	Status    string    `json:"status"` // "revoked" or "good" (released from hold)
	Reason    string    `json:"reason,omitempty"`
	RevokedAt time.Time `json:"revokedAt,omitzero"`
}

// maxSerialHex bounds a serial: 20 octets (RFC 5280), with separators.
const maxSerialHex = 64

// legacyRevokeRoute is the admin route that revokes (or releases from
// hold) a certificate of a configured legacy issuer: the change goes to
// the issuer's next delta CRL and, at once, to OCSP. known reports whether
// a name is a configured legacy issuer; now is the revocation time. Every
// answer leaves a legacy.revoke record in audit (the first one given;
// none: not recorded).
func legacyRevokeRoute(store *legacy.Store, known func(name string) bool, now func() time.Time, audit ...plugins.Auditor) plugins.AdminRoute {
	var a plugins.Auditor
	if len(audit) > 0 {
		a = audit[0]
	}
	return plugins.AdminRoute{
		Method:  http.MethodPost,
		Pattern: LegacyRevokePattern,
		Scope:   ScopeRevocationWrite,
		MaxBody: 4 << 10,
		Handler: func(w http.ResponseWriter, r *http.Request) {
			rec := legacyRevokeRecord{audit: a, r: r, issuer: chi.URLParam(r, "name")}
			status, msg, resp := legacyRevoke(r, w, store, known, now, &rec)
			if status == 0 { // the body was refused and answered by ReadJSON
				rec.done(http.StatusBadRequest, "unreadable request body")
				return
			}
			rec.done(status, msg)
			if status != http.StatusOK {
				admin.WriteError(w, status, "%s", msg)
				return
			}
			admin.WriteJSON(w, http.StatusOK, resp)
		},
	}
}

// legacyRevoke does one legacy revocation: the status and error message
// to answer, or 200 and the response; status 0 when ReadJSON answered.
func legacyRevoke(r *http.Request, w http.ResponseWriter, store *legacy.Store, known func(string) bool, now func() time.Time, rec *legacyRevokeRecord) (int, string, *LegacyRevokeResponse) {
	name := rec.issuer
	if !known(name) {
		return http.StatusNotFound, fmt.Sprintf("no legacy issuer named %q is configured", name), nil
	}
	var req LegacyRevokeRequest
	if !admin.ReadJSON(w, r, &req) {
		return 0, "", nil
	}
	serial, err := ParseHexSerial(req.Serial)
	if err != nil {
		return http.StatusBadRequest, "serial: " + err.Error(), nil
	}
	rec.serial = serial.String()
	reason, err := legacy.ParseReason(req.Reason)
	if err != nil {
		return http.StatusBadRequest, "reason: " + err.Error(), nil
	}
	rec.reason = legacy.ReasonName(reason)
	var opts []legacy.RevokeOption
	if req.AllowUnknown {
		opts = append(opts, legacy.AllowUnknown())
		rec.allowUnknown = true
	}
	at := now().UTC().Truncate(time.Second) // CRLs carry seconds
	if err := store.Revoke(name, serial, reason, at, opts...); err != nil {
		return revokeStatus(err), err.Error(), nil
	}
	resp := &LegacyRevokeResponse{Issuer: name, Serial: strings.ToUpper(serial.Text(16)), Status: "good"}
	if reason != legacy.ReasonRemoveFromCRL {
		resp.Status, resp.Reason, resp.RevokedAt = "revoked", legacy.ReasonName(reason), at
	}
	return http.StatusOK, "", resp
}

// legacyRevokeRecord is the legacy.revoke audit record of one request.
type legacyRevokeRecord struct {
	audit          plugins.Auditor
	r              *http.Request
	issuer, serial string
	reason         string
	allowUnknown   bool
}

// done records the answer: success, denied (4xx) or failure (5xx).
func (l *legacyRevokeRecord) done(status int, msg string) {
	if l.audit == nil {
		return
	}
	outcome := plugins.AuditSuccess
	switch {
	case status >= 500:
		outcome = plugins.AuditFailure
	case status >= 300:
		outcome = plugins.AuditDenied
	}
	actor := plugins.AuditActor{Kind: "adminToken", RemoteAddr: l.r.RemoteAddr}
	if t := admin.TokenFrom(l.r); t != nil {
		actor.ID, actor.Name = t.ID, t.Name
	}
	det := map[string]string{"status": strconv.Itoa(status), "legacyIssuer": l.issuer}
	if l.reason != "" {
		det["reason"] = l.reason
	}
	if l.allowUnknown {
		det["allowUnknown"] = "true"
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(l.r.Context()), 5*time.Second)
	defer cancel()
	_ = l.audit.Record(ctx, plugins.AuditRecord{Action: "legacy.revoke", Outcome: outcome, Reason: msg, Actor: actor,
		Object: plugins.AuditObject{Serial: l.serial, Issuer: l.issuer}, Details: det})
}

func revokeStatus(err error) int {
	switch {
	case errors.Is(err, legacy.ErrUnknownSerial):
		return http.StatusNotFound
	case errors.Is(err, legacy.ErrAlreadyRevoked), errors.Is(err, legacy.ErrNotOnHold):
		return http.StatusConflict
	case errors.Is(err, legacy.ErrBadReason):
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

// ParseHexSerial reads a serial in hexadecimal as ADCS prints it ("44 00
// 0a", "44:00:0a", "0x44000a" or "44000A").
func ParseHexSerial(s string) (*big.Int, error) {
	if len(s) > maxSerialHex {
		return nil, errors.New("longer than 20 octets")
	}
	s = strings.NewReplacer(" ", "", ":", "").Replace(strings.TrimSpace(s))
	s = strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	n, ok := new(big.Int).SetString(s, 16)
	switch {
	case s == "" || !ok:
		return nil, errors.New("not a hexadecimal number")
	case n.Sign() <= 0:
		return nil, errors.New("must be positive")
	case len(n.Bytes()) > 20:
		return nil, errors.New("longer than 20 octets")
	}
	return n, nil
}
