package admin

import (
	"context"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/stepfort/stepfort/plugins"
)

// Every admin API call leaves one "admin.request" record, success or
// failure, with the token's id and name (never its secret) or, for a
// missing or bad token, the remote address and the id the bearer claims.
// Token creation and revocation leave their own records.

// call is what the handlers learn about a request, for its record.
type call struct {
	tok    *Token
	reason string // why it was refused
}

type callKey struct{}

func callOf(r *http.Request) *call {
	c, _ := r.Context().Value(callKey{}).(*call)
	if c == nil {
		return &call{} // outside Mount (tests calling handlers directly)
	}
	return c
}

// statusWriter remembers the status; it passes Flush on (exports stream).
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// audited records every request that reaches the admin API.
func (s *Server) audited(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := &call{}
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), callKey{}, c)))
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		rec := plugins.AuditRecord{
			Action: "admin.request", Outcome: outcomeOf(sw.status), Reason: c.reason,
			Actor:   s.actor(r, c),
			Details: map[string]string{"method": r.Method, "path": r.URL.Path, "status": strconv.Itoa(sw.status)},
		}
		if rec.Reason == "" && rec.Outcome != plugins.AuditSuccess {
			rec.Reason = http.StatusText(sw.status)
		}
		s.record(r, rec)
	})
}

func outcomeOf(status int) plugins.AuditOutcome {
	switch {
	case status < 400:
		return plugins.AuditSuccess
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return plugins.AuditDenied
	default:
		return plugins.AuditFailure
	}
}

// claimedID matches a bearer's token id (the secret after it is not kept).
var claimedID = regexp.MustCompile(`^sft_([0-9a-f]{16})_`)

func (s *Server) actor(r *http.Request, c *call) plugins.AuditActor {
	a := plugins.AuditActor{Kind: "anonymous", RemoteAddr: r.RemoteAddr}
	if c.tok != nil {
		a.Kind, a.ID, a.Name = "adminToken", c.tok.ID, c.tok.Name
		return a
	}
	bearer, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if m := claimedID.FindStringSubmatch(strings.TrimSpace(bearer)); m != nil {
		a.ID = m[1] // the id it claims; the record says it did not authenticate
	}
	return a
}

// record appends r to the trail; the request may be gone, the record not.
func (s *Server) record(req *http.Request, r plugins.AuditRecord) {
	a := s.Tokens.Audit
	if a == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(req.Context()), 5*time.Second)
	defer cancel()
	if err := a.Record(ctx, r); err != nil {
		s.log().Error("audit record not written", "action", r.Action, "error", err)
	}
}

// tokenRecord is the record of a token's creation or revocation.
func tokenRecord(action string, caller *Token, t *Token, r *http.Request) plugins.AuditRecord {
	rec := plugins.AuditRecord{Action: action, Outcome: plugins.AuditSuccess,
		Actor:  plugins.AuditActor{Kind: "adminToken", ID: caller.ID, Name: caller.Name, RemoteAddr: r.RemoteAddr},
		Object: plugins.AuditObject{Token: t.ID}, Details: map[string]string{"name": t.Name, "scopes": strings.Join(t.Scopes, " ")}}
	if t.ExpiresAt != nil {
		rec.Details["expiresAt"] = t.ExpiresAt.UTC().Format(time.RFC3339)
	}
	return rec
}
