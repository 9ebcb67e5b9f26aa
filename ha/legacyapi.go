package ha

import (
	"errors"
	"math/big"
	"net/http"
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
// a name is a configured legacy issuer; now is the revocation time.
func legacyRevokeRoute(store *legacy.Store, known func(name string) bool, now func() time.Time) plugins.AdminRoute {
	return plugins.AdminRoute{
		Method:  http.MethodPost,
		Pattern: LegacyRevokePattern,
		Scope:   ScopeRevocationWrite,
		MaxBody: 4 << 10,
		Handler: func(w http.ResponseWriter, r *http.Request) {
			name := chi.URLParam(r, "name")
			if !known(name) {
				admin.WriteError(w, http.StatusNotFound, "no legacy issuer named %q is configured", name)
				return
			}
			var req LegacyRevokeRequest
			if !admin.ReadJSON(w, r, &req) {
				return
			}
			serial, err := ParseHexSerial(req.Serial)
			if err != nil {
				admin.WriteError(w, http.StatusBadRequest, "serial: %v", err)
				return
			}
			reason, err := legacy.ParseReason(req.Reason)
			if err != nil {
				admin.WriteError(w, http.StatusBadRequest, "reason: %v", err)
				return
			}
			var opts []legacy.RevokeOption
			if req.AllowUnknown {
				opts = append(opts, legacy.AllowUnknown())
			}
			at := now().UTC().Truncate(time.Second) // CRLs carry seconds
			if err := store.Revoke(name, serial, reason, at, opts...); err != nil {
				admin.WriteError(w, revokeStatus(err), "%v", err)
				return
			}
			resp := LegacyRevokeResponse{Issuer: name, Serial: strings.ToUpper(serial.Text(16)), Status: "good"}
			if reason != legacy.ReasonRemoveFromCRL {
				resp.Status, resp.Reason, resp.RevokedAt = "revoked", legacy.ReasonName(reason), at
			}
			admin.WriteJSON(w, http.StatusOK, resp)
		},
	}
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
