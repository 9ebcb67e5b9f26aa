// Package ui is the web dashboard the daemon serves at /ui/ on its HTTPS
// listener: server-rendered html/template pages, embedded in the binary.
//
// The dashboard is a client of the admin API, in process: a login turns
// an admin token into a server-side session, and every page and action
// calls the admin API handler with that token. Scope checks, refusals and
// audit records are therefore the API's own; the dashboard only hides
// what the token could not do anyway. docs/ui.md is the design record.
package ui

import (
	"crypto/subtle"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/stepfort/stepfort/plugins"
)

// Prefix is where the dashboard is mounted.
const Prefix = "/ui"

// CookieName is the session cookie. The __Host- prefix makes browsers
// refuse it unless it is Secure, has Path=/ and no Domain: no subdomain
// or plain-HTTP page can set or overwrite it.
const CookieName = "__Host-stepfort-ui"

// Defaults and bounds.
const (
	DefaultIdleTimeout     = 15 * time.Minute
	DefaultAbsoluteTimeout = 8 * time.Hour
	DefaultMaxSessions     = 1000
	maxFormBody            = 16 << 10               // every form but the CSV import
	maxImportBody          = plugins.DefaultMaxBody // the CSV import form (the daemon caps every body there)
	pageSize               = 50
)

// ContentSecurityPolicy is sent with every dashboard response: scripts,
// styles and images only from the daemon, no inline anything, no framing.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Options configure a Server.
type Options struct {
	// API serves the daemon's HTTPS routes (at least /api/v1 and /health):
	// the dashboard calls it in process.
	API http.Handler
	// Audit receives login, failed login and logout records.
	Audit   plugins.Auditor
	Now     func() time.Time
	Log     *slog.Logger
	Replica string // this replica's id, shown on the overview
	// IdleTimeout ends a session unused this long; AbsoluteTimeout ends
	// any session this long after login.
	IdleTimeout, AbsoluteTimeout time.Duration
	MaxSessions                  int
}

// Server is the dashboard. Its sessions live as long as the Server, so
// the daemon keeps one across configuration reloads.
type Server struct {
	opts     Options
	sessions *sessions
	pages    map[string]*template.Template
	static   *staticFiles
	handler  http.Handler
	counts   countCache
}

// New builds the dashboard.
func New(o Options) (*Server, error) {
	if o.API == nil {
		return nil, errors.New("ui: no API handler")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.AbsoluteTimeout <= 0 {
		o.AbsoluteTimeout = DefaultAbsoluteTimeout
	}
	if o.MaxSessions <= 0 {
		o.MaxSessions = DefaultMaxSessions
	}
	s := &Server{opts: o, sessions: newSessions(o.MaxSessions, o.IdleTimeout, o.AbsoluteTimeout)}
	var err error
	if s.static, err = loadStatic(); err != nil {
		return nil, err
	}
	if s.pages, err = parsePages(s.static); err != nil {
		return nil, err
	}
	s.handler = s.routes()
	return s, nil
}

// ServeHTTP serves /ui and everything under it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

func (s *Server) routes() http.Handler {
	r := chi.NewRouter()
	r.Use(securityHeaders)
	r.Get(Prefix, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, Prefix+"/", http.StatusMovedPermanently)
	})
	r.Get(Prefix+"/static/{hash}/{name}", s.static.serve)
	r.Get(Prefix+"/login", s.loginForm)
	r.Post(Prefix+"/login", s.login)
	r.Group(func(r chi.Router) {
		r.Use(s.authenticated)
		r.Post(Prefix+"/logout", s.logout)
		r.Get(Prefix+"/", s.overview)
		r.Get(Prefix+"/certificates", s.certificates)
		r.Get(Prefix+"/certificates/export", s.exportCertificates)
		r.Get(Prefix+"/certificates/{serial}", s.certificate)
		r.Post(Prefix+"/certificates/{serial}/revoke", s.revokeCertificate)
		r.Get(Prefix+"/devices", s.devices)
		r.Post(Prefix+"/devices", s.addDevice)
		r.Get(Prefix+"/devices/import", s.importForm)
		r.With(bodyLimit(maxImportBody)).Post(Prefix+"/devices/import", s.importDevices)
		r.Get(Prefix+"/devices/collections", s.collections)
		r.Post(Prefix+"/devices/collections", s.addCollection)
		r.Post(Prefix+"/devices/collections/{name}/remove", s.removeCollection)
		r.Get(Prefix+"/devices/{id}", s.device)
		r.Post(Prefix+"/devices/{id}/status", s.deviceStatus)
		r.Post(Prefix+"/devices/{id}/remove", s.removeDevice)
		r.Get(Prefix+"/scep", s.scep)
		r.Post(Prefix+"/scep", s.createChallenge)
		r.Post(Prefix+"/scep/{id}/withdraw", s.withdrawChallenge)
		r.Get(Prefix+"/billing", s.billing)
		r.Get(Prefix+"/billing/endpoints/{id}", s.endpoint)
		r.Get(Prefix+"/audit", s.audit)
		r.Get(Prefix+"/tokens", s.tokens)
		r.Post(Prefix+"/tokens", s.createToken)
		r.Post(Prefix+"/tokens/{id}/revoke", s.revokeToken)
	})
	r.NotFound(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no such page", http.StatusNotFound) })
	// Go's cross-origin protection refuses state-changing requests a
	// browser marks as cross-site (Sec-Fetch-Site, or Origin vs Host);
	// the per-session form token is checked on top of it.
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.opts.Log.Warn("ui: cross-origin request refused", "path", r.URL.Path, "origin", r.Header.Get("Origin"), "remote", r.RemoteAddr)
		http.Error(w, "cross-origin request refused", http.StatusForbidden)
	}))
	return cop.Handler(bodyLimit(maxFormBody)(s.counts.forgetAfterPost(r)))
}

// securityHeaders are on every dashboard response.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", ContentSecurityPolicy)
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Strict-Transport-Security", "max-age=63072000")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Vary", "Cookie, Sec-Fetch-Site, Origin")
		if !strings.HasPrefix(r.URL.Path, Prefix+"/static/") {
			h.Set("Cache-Control", "no-store")
		}
		next.ServeHTTP(w, r)
	})
}

// bodyLimit bounds request bodies; a route with a larger limit sets its
// own, which the outer (smaller) one must let through.
func bodyLimit(n int64) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Body != nil && r.Method == http.MethodPost {
				if n == maxFormBody && r.URL.Path == Prefix+"/devices/import" {
					next.ServeHTTP(w, r)
					return
				}
				if r.ContentLength > n {
					http.Error(w, fmt.Sprintf("request body exceeds %d bytes", n), http.StatusRequestEntityTooLarge)
					return
				}
				r.Body = http.MaxBytesReader(w, r.Body, n)
			}
			next.ServeHTTP(w, r)
		})
	}
}

type sessionKey struct{}

func sessionOf(r *http.Request) *session {
	sess, _ := r.Context().Value(sessionKey{}).(*session)
	return sess
}

// authenticated lets through requests with a live session; others go to
// the login page (GET) or are refused (anything else). Every POST must
// carry the session's form token.
func (s *Server) authenticated(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var sess *session
		if c, err := r.Cookie(CookieName); err == nil {
			sess = s.sessions.get(c.Value, s.opts.Now())
		}
		if sess == nil {
			if r.Method == http.MethodGet || r.Method == http.MethodHead {
				http.Redirect(w, r, Prefix+"/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			http.Redirect(w, r, Prefix+"/login", http.StatusSeeOther)
			return
		}
		if r.Method == http.MethodPost && !validFormToken(r, sess) {
			s.opts.Log.Warn("ui: POST without a valid form token refused", "path", r.URL.Path, "token", sess.tokenID, "remote", r.RemoteAddr)
			http.Error(w, "missing or wrong form token: reload the page and try again", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r.WithContext(withSession(r.Context(), sess)))
	})
}

// validFormToken compares the form's csrf field with the session's.
// PostFormValue parses urlencoded and multipart bodies alike, within the
// body limit.
func validFormToken(r *http.Request, sess *session) bool {
	got := r.PostFormValue("csrf")
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(sess.csrf)) == 1
}

// safeNext keeps a post-login redirect on the dashboard.
func safeNext(next string) string {
	if !strings.HasPrefix(next, Prefix+"/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return Prefix + "/"
	}
	if u, err := url.Parse(next); err != nil || u.Host != "" || u.Scheme != "" {
		return Prefix + "/"
	}
	return next
}

// fsSub is fs.Sub that cannot fail on our embedded trees.
func fsSub(f fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(f, dir)
	if err != nil {
		panic(err)
	}
	return sub
}
