package attestationca

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/stepfort/stepfort/internal/admin"
	"github.com/stepfort/stepfort/plugins"
)

// denial is a refused request: an HTTP status, a stable code for the audit
// log and the JSON body, and a message for the client. Clients of this
// protocol print only the HTTP status line, so the code and message are in
// the JSON body and the audit log.
type denial struct {
	status     int
	code       string
	message    string
	retryAfter int64 // seconds, for 429 and 503; 0: no Retry-After
}

func (d *denial) Error() string { return d.code + ": " + d.message }

func deny(status int, code, format string, args ...any) *denial {
	return &denial{status: status, code: code, message: fmt.Sprintf(format, args...)}
}

// Denial codes (the "reason" of audit events).
const (
	codeBadRequest      = "bad_request"
	codeTooLarge        = "too_large"
	codeNotRegistered   = "ek_not_registered"
	codeDisabled        = "device_disabled"
	codeEKCertMissing   = "ek_certificate_missing"
	codeEKCertUntrusted = "ek_certificate_untrusted"
	codeUnknownSecret   = "unknown_secret"
	codeReplayed        = "secret_replayed"
	codeExpired         = "session_expired"
	codeReplaced        = "session_replaced"
	codeRateLimited     = "rate_limited"
	codeUnavailable     = "unavailable"
	codeInternal        = "internal_error"
)

// request is the audit context of one call.
type request struct {
	step     string // "attest" or "secret"
	ekURN    string
	deviceID string
}

// readBody reads a size-limited body.
func (p *Plugin) readBody(w http.ResponseWriter, r *http.Request) ([]byte, *denial) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, p.cfg.MaxRequestBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, deny(http.StatusRequestEntityTooLarge, codeTooLarge, "request body larger than %d bytes", p.cfg.MaxRequestBytes)
		}
		return nil, deny(http.StatusBadRequest, codeBadRequest, "read request body: %v", err)
	}
	return b, nil
}

// fail answers a denial and writes the audit event (no secrets in it).
func (p *Plugin) fail(w http.ResponseWriter, r *http.Request, rq *request, d *denial) {
	level := slog.LevelWarn
	if d.status >= 500 {
		level = slog.LevelError
	}
	p.log.Log(r.Context(), level, "attestation denied",
		"event", "attestation.denied", "step", rq.step, "ek", rq.ekURN, "device", rq.deviceID,
		"reason", d.code, "detail", d.message, "status", d.status,
		"remote", r.RemoteAddr, "request_id", r.Header.Get("X-Request-Id"), "user_agent", r.UserAgent())
	p.auditDenial(r, rq, d)
	if d.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(d.retryAfter, 10))
	}
	admin.WriteJSON(w, d.status, admin.Error{Status: d.status, Error: d.code, Message: d.message})
}

// auditDenial records a refused AK certificate request in the audit
// trail: certificate.sign denied at stage attestation (or failure for a
// 5xx), with the EK and device, never the activation secret.
func (p *Plugin) auditDenial(r *http.Request, rq *request, d *denial) {
	if p.audit == nil {
		return
	}
	outcome := plugins.AuditDenied
	if d.status >= 500 {
		outcome = plugins.AuditFailure
	}
	det := map[string]string{"stage": "attestation", "plugin": Name, "step": rq.step, "code": d.code, "status": strconv.Itoa(d.status)}
	if rq.ekURN != "" {
		det["ek"] = rq.ekURN
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
	defer cancel()
	_ = p.audit.Record(ctx, plugins.AuditRecord{Action: "certificate.sign", Outcome: outcome, Reason: d.code + ": " + d.message,
		Actor:  plugins.AuditActor{Kind: "anonymous", RemoteAddr: r.RemoteAddr},
		Object: plugins.AuditObject{Device: rq.deviceID}, Details: det})
}

// guard turns a panic while parsing attacker-controlled TPM structures into
// a 400 (the daemon recovers too, but would answer 500 without an audit
// event).
func (p *Plugin) guard(w http.ResponseWriter, r *http.Request, rq *request) {
	if rec := recover(); rec != nil {
		if rec == http.ErrAbortHandler {
			panic(rec)
		}
		p.log.Error("attestation handler panic", "panic", fmt.Sprint(rec), "stack", string(debug.Stack()))
		p.fail(w, r, rq, deny(http.StatusBadRequest, codeBadRequest, "malformed TPM structure"))
	}
}
