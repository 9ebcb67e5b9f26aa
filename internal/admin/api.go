// Package admin is stepfort's admin API: the server under /api/v1 (JSON in
// and out, every route authenticated by a scoped bearer token) and the
// store of those tokens. Plugins add routes with plugins.AdminRouteProvider
// and answer with WriteJSON, WriteError and ReadJSON, so every endpoint
// speaks the same error format.
package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/stepfort/stepfort/plugins"
)

// Prefix is where the admin API is mounted.
const Prefix = "/api/v1"

// Counter records request outcomes for metrics: "ok", "unauthorized",
// "forbidden" or "error".
type Counter interface{ AdminRequest(outcome string) }

// Server is the admin API.
type Server struct {
	Tokens *TokenStore
	// MaxTokenTTL caps the lifetime of tokens created through the API, and
	// is the lifetime of one created without a ttl (0 = no cap; a token
	// created without a ttl then lives as long as its creator).
	MaxTokenTTL time.Duration
	Log         *slog.Logger // slog.Default() if nil
	Metrics     Counter      // optional
}

// Mount registers the admin API on r: the token routes and every plugin's
// admin routes, each behind authentication and its scope.
func (s *Server) Mount(r chi.Router, extra []plugins.AdminRoute) {
	r.Route(Prefix, func(r chi.Router) {
		r.Use(s.audited)
		r.NotFound(func(w http.ResponseWriter, _ *http.Request) {
			WriteError(w, http.StatusNotFound, "no such admin endpoint")
		})
		r.MethodNotAllowed(func(w http.ResponseWriter, _ *http.Request) {
			WriteError(w, http.StatusMethodNotAllowed, "method not allowed")
		})
		for _, rt := range append(s.routes(), extra...) {
			r.With(s.require(rt.Scope), limitBody(rt.MaxBody)).Method(rt.Method, rt.Pattern, rt.Handler)
		}
	})
}

// limitBody applies a route's body limit (plugins.DefaultMaxBody unless it
// declares one). It runs after the token check, so an unauthenticated
// request's body is never read.
func limitBody(limit int64) func(http.Handler) http.Handler {
	if limit <= 0 {
		limit = plugins.DefaultMaxBody
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ContentLength > limit {
				w.Header().Set("Connection", "close")
				WriteError(w, http.StatusRequestEntityTooLarge, "request body exceeds %d bytes", limit)
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, limit)
			next.ServeHTTP(w, r)
		})
	}
}

func (s *Server) routes() []plugins.AdminRoute {
	return []plugins.AdminRoute{
		{Method: http.MethodGet, Pattern: "/whoami", Scope: "", Handler: s.whoami},
		{Method: http.MethodGet, Pattern: "/tokens", Scope: "tokens:read", Handler: s.listTokens},
		{Method: http.MethodPost, Pattern: "/tokens", Scope: "tokens:write", Handler: s.createToken},
		{Method: http.MethodDelete, Pattern: "/tokens/{id}", Scope: "tokens:write", Handler: s.revokeToken},
	}
}

type tokenKey struct{}

// TokenFrom returns the authenticated token of a request (nil outside the
// admin API's handlers).
func TokenFrom(r *http.Request) *Token {
	t, _ := r.Context().Value(tokenKey{}).(*Token)
	return t
}

func withToken(r *http.Request, t *Token) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), tokenKey{}, t))
}

// require authenticates the bearer token and checks scope ("" = any valid
// token). 401 for a missing or bad token, 403 for a wrong scope.
func (s *Server) require(scope string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			auth := r.Header.Get("Authorization")
			bearer, ok := strings.CutPrefix(auth, "Bearer ")
			if !ok {
				s.count("unauthorized")
				callOf(r).reason = "no bearer token"
				w.Header().Set("WWW-Authenticate", `Bearer realm="stepfort"`)
				WriteError(w, http.StatusUnauthorized, "an admin token is required: send Authorization: Bearer <token>")
				return
			}
			t, err := s.Tokens.Authenticate(strings.TrimSpace(bearer))
			switch {
			case errors.Is(err, ErrUnauthenticated):
				s.count("unauthorized")
				callOf(r).reason = "invalid token: " + err.Error()
				w.Header().Set("WWW-Authenticate", `Bearer realm="stepfort", error="invalid_token"`)
				WriteError(w, http.StatusUnauthorized, "invalid admin token: %v", err)
				return
			case err != nil:
				s.count("error")
				callOf(r).reason = "token store unavailable"
				s.log().Error("admin token lookup failed", "error", err)
				WriteError(w, http.StatusServiceUnavailable, "token store unavailable")
				return
			}
			callOf(r).tok = t
			if scope != "" && !t.Allows(scope) {
				s.count("forbidden")
				callOf(r).reason = "token lacks scope " + scope
				s.log().Warn("admin request denied", "token", t.ID, "name", t.Name, "scope", scope, "path", r.URL.Path)
				WriteError(w, http.StatusForbidden, "token %q lacks scope %q", t.Name, scope)
				return
			}
			s.count("ok")
			next.ServeHTTP(w, withToken(r, t))
		})
	}
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.Default()
	}
	return s.Log
}

func (s *Server) count(outcome string) {
	if s.Metrics != nil {
		s.Metrics.AdminRequest(outcome)
	}
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request) {
	WriteJSON(w, http.StatusOK, TokenFrom(r))
}

// CreateTokenRequest is the body of POST /api/v1/tokens.
type CreateTokenRequest struct {
	Name   string   `json:"name"`
	Scopes []string `json:"scopes"`
	// TTL is a Go duration. Empty means the longest lifetime allowed: up to
	// MaxTokenTTL and the creator's own expiry (no expiry if neither bounds).
	TTL string `json:"ttl,omitempty"`
}

// CreateTokenResponse carries the one-time secret.
type CreateTokenResponse struct {
	Token  *Token `json:"token"`
	Secret string `json:"secret"`
}

// createToken mints a token with no scope its creator lacks and no life
// beyond its creator's: a token cannot escalate in reach or in time.
func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var req CreateTokenRequest
	if !ReadJSON(w, r, &req) {
		return
	}
	caller := TokenFrom(r)
	if err := ValidName(req.Name); err != nil {
		WriteError(w, http.StatusBadRequest, "%v", err)
		return
	}
	ttl, status, err := s.lifetime(req.TTL, caller)
	if err != nil {
		s.refuse(w, r, status, caller, err)
		return
	}
	for _, sc := range req.Scopes {
		if !ValidScope(sc) {
			WriteError(w, http.StatusBadRequest, "scopes: invalid scope %q", sc)
			return
		}
		if !caller.Allows(sc) {
			s.refuse(w, r, http.StatusForbidden, caller, fmt.Errorf("scopes: cannot grant %q, which this token does not hold", sc))
			return
		}
	}
	t, secret, err := s.Tokens.create(req.Name, req.Scopes, ttl, caller.ExpiresAt)
	if err != nil {
		WriteError(w, http.StatusBadRequest, "%v", err)
		return
	}
	s.record(r, tokenRecord("admin.token.create", caller, t, r))
	s.log().Info("admin token created", "id", t.ID, "name", t.Name, "scopes", t.Scopes, "expiresAt", t.ExpiresAt, "by", caller.ID)
	WriteJSON(w, http.StatusCreated, CreateTokenResponse{Token: t, Secret: secret})
}

// lifetime resolves the ttl of a new token (0 = no expiry) and, on error,
// the status to answer: 400 for a bad or over-cap ttl, 403 for one that
// would outlive the creator. An empty ttl is the cap; the store then also
// ends the token no later than its creator.
func (s *Server) lifetime(ttlStr string, caller *Token) (time.Duration, int, error) {
	if ttlStr == "" {
		return s.MaxTokenTTL, 0, nil
	}
	ttl, err := time.ParseDuration(ttlStr)
	if err != nil || ttl <= 0 {
		return 0, http.StatusBadRequest, fmt.Errorf("ttl: invalid duration %q (use e.g. \"720h\")", ttlStr)
	}
	if s.MaxTokenTTL > 0 && ttl > s.MaxTokenTTL {
		return 0, http.StatusBadRequest, fmt.Errorf("ttl: must be at most %s (stepfort.admin.maxTokenTTL)", s.MaxTokenTTL)
	}
	if exp := caller.ExpiresAt; exp != nil {
		if left := exp.Sub(s.Tokens.now()); ttl > left {
			return 0, http.StatusForbidden, fmt.Errorf("ttl: a token may not outlive its creator: token %q expires at %s, in %s", caller.Name, exp.UTC().Format(time.RFC3339), left.Round(time.Second))
		}
	}
	return ttl, 0, nil
}

// refuse answers an error and, for 403, logs the refusal as a scope
// refusal is logged.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, status int, caller *Token, err error) {
	callOf(r).reason = err.Error()
	if status == http.StatusForbidden {
		s.record(r, plugins.AuditRecord{Action: actionOf(r), Outcome: plugins.AuditDenied, Reason: err.Error(),
			Actor: plugins.AuditActor{Kind: "adminToken", ID: caller.ID, Name: caller.Name, RemoteAddr: r.RemoteAddr}})
		s.log().Warn("admin request denied", "token", caller.ID, "name", caller.Name, "reason", err.Error(), "path", r.URL.Path)
	}
	WriteError(w, status, "%v", err)
}

// TokenList is the answer of GET /api/v1/tokens: one page, and the cursor
// of the next page when there is one.
type TokenList struct {
	Tokens     []*Token `json:"tokens"`
	NextCursor string   `json:"nextCursor,omitempty"`
}

// listTokens answers one page (limit, cursor, status). Without a limit
// it is the first DefaultPageSize tokens, not all: clients follow
// nextCursor.
func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	q, err := tokenQuery(r.URL.Query())
	if err != nil {
		WriteError(w, http.StatusBadRequest, "%v", err)
		return
	}
	ts, next, err := s.Tokens.Page(q)
	if err != nil {
		WriteError(w, http.StatusServiceUnavailable, "list tokens: %v", err)
		return
	}
	WriteJSON(w, http.StatusOK, TokenList{Tokens: ts, NextCursor: next})
}

// tokenQuery reads and checks a token listing's query parameters.
func tokenQuery(v url.Values) (TokenQuery, error) {
	q := TokenQuery{Status: v.Get("status"), Cursor: v.Get("cursor")}
	// An empty parameter is an absent one, as on the other listings.
	if l := v.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > MaxPageSize {
			return q, fmt.Errorf("limit: must be an integer from 1 to %d", MaxPageSize)
		}
		q.Limit = n
	}
	return q, q.Validate()
}

// revokeToken revokes a token whose every scope the caller holds: a
// tokens:write token cannot revoke a "*" token.
func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	caller := TokenFrom(r)
	target, err := s.Tokens.get(id) // scopes never change, so checking first is safe
	if err == nil {
		for _, sc := range target.Scopes {
			if !caller.Allows(sc) {
				s.refuse(w, r, http.StatusForbidden, caller, fmt.Errorf("cannot revoke token %q: it holds scope %q, which this token does not hold", target.Name, sc))
				return
			}
		}
		target, err = s.Tokens.Revoke(id)
	}
	switch {
	case errors.Is(err, ErrNotFound):
		WriteError(w, http.StatusNotFound, "token %q not found", id)
	case err != nil:
		WriteError(w, http.StatusServiceUnavailable, "revoke token: %v", err)
	default:
		s.record(r, tokenRecord("admin.token.revoke", caller, target, r))
		s.log().Info("admin token revoked", "id", target.ID, "name", target.Name, "by", caller.ID)
		WriteJSON(w, http.StatusOK, target)
	}
}

// actionOf names the token action a refused request attempted.
func actionOf(r *http.Request) string {
	if r.Method == http.MethodDelete {
		return "admin.token.revoke"
	}
	return "admin.token.create"
}
