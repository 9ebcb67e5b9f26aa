package ui

import (
	"context"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/stepfort/stepfort/plugins"
)

// maxTokenLen bounds what the login form accepts: a token is 81 bytes.
const maxTokenLen = 256

func withSession(ctx context.Context, sess *session) context.Context {
	return context.WithValue(ctx, sessionKey{}, sess)
}

func (s *Server) loginForm(w http.ResponseWriter, r *http.Request) {
	s.render(w, r, http.StatusOK, "login", &page{Title: "Log in", Data: map[string]string{"Next": safeNext(r.URL.Query().Get("next"))}})
}

// login checks the token with the admin API (GET /api/v1/whoami, as the
// token) and starts a new session. Success and failure are audited.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	token := strings.TrimSpace(r.PostFormValue("token"))
	next := safeNext(r.PostFormValue("next"))
	fail := func(status int, reason, shown string) {
		s.record(r, plugins.AuditRecord{Action: "ui.login", Outcome: plugins.AuditDenied, Reason: reason,
			Actor: plugins.AuditActor{Kind: "anonymous", ID: claimedID(token), RemoteAddr: r.RemoteAddr}})
		s.opts.Log.Warn("ui: login refused", "reason", reason, "remote", r.RemoteAddr)
		s.render(w, r, status, "login", &page{Title: "Log in", Error: shown, Data: map[string]string{"Next": next}})
	}
	if token == "" || len(token) > maxTokenLen {
		fail(http.StatusUnauthorized, "no token or an over-long one", "Enter an admin token (sft_…).")
		return
	}
	var who struct {
		ID     string   `json:"id"`
		Name   string   `json:"name"`
		Scopes []string `json:"scopes"`
	}
	res := s.callToken(r, token, http.MethodGet, "/api/v1/whoami", nil, "", &who)
	switch {
	case res.status == http.StatusUnauthorized:
		fail(http.StatusUnauthorized, "invalid token", "That token is not valid: it is unknown, expired or revoked.")
		return
	case res.err != "":
		fail(http.StatusServiceUnavailable, "admin API: "+res.err, "The admin API could not check the token: "+res.err)
		return
	}
	ok := plugins.AuditRecord{Action: "ui.login", Outcome: plugins.AuditSuccess,
		Actor: plugins.AuditActor{Kind: "adminToken", ID: who.ID, Name: who.Name, RemoteAddr: r.RemoteAddr}}
	if err := s.recordErr(r, ok); err != nil {
		// The trail is fail-closed and could not record the login.
		s.render(w, r, http.StatusServiceUnavailable, "login", &page{Title: "Log in", Error: "The audit trail could not record the login, so it is refused.", Data: map[string]string{"Next": next}})
		return
	}
	// A fresh session: any cookie the browser had is not reused.
	if c, err := r.Cookie(CookieName); err == nil {
		if old := s.sessions.get(c.Value, s.opts.Now()); old != nil {
			s.sessions.remove(old)
		}
	}
	cookie, _ := s.sessions.create(s.opts.Now(), token, who.ID, who.Name, who.Scopes)
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: cookie, Path: "/", Secure: true, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, MaxAge: int(s.opts.AbsoluteTimeout / time.Second)})
	s.opts.Log.Info("ui: login", "token", who.ID, "name", who.Name, "remote", r.RemoteAddr)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	sess := sessionOf(r)
	s.sessions.remove(sess)
	s.record(r, plugins.AuditRecord{Action: "ui.logout", Outcome: plugins.AuditSuccess,
		Actor: plugins.AuditActor{Kind: "adminToken", ID: sess.tokenID, Name: sess.tokenName, RemoteAddr: r.RemoteAddr}})
	clearCookie(w)
	http.Redirect(w, r, Prefix+"/login", http.StatusSeeOther)
}

func clearCookie(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: -1})
}

// claimedIDRe matches the id part of a token (never the secret).
var claimedIDRe = regexp.MustCompile(`^sft_([0-9a-f]{16})_`)

func claimedID(token string) string {
	if m := claimedIDRe.FindStringSubmatch(token); m != nil {
		return m[1]
	}
	return ""
}

func (s *Server) record(r *http.Request, rec plugins.AuditRecord) { _ = s.recordErr(r, rec) }

func (s *Server) recordErr(r *http.Request, rec plugins.AuditRecord) error {
	if s.opts.Audit == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
	defer cancel()
	err := s.opts.Audit.Record(ctx, rec)
	if err != nil {
		s.opts.Log.Error("ui: audit record not written", "action", rec.Action, "error", err)
	}
	return err
}
