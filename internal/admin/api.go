// Package admin is stepfort's admin API: the server under /api/v1 (JSON in
// and out, every route authenticated by a scoped bearer token) and the
// store of those tokens. Plugins add routes with plugins.AdminRouteProvider
// and answer with WriteJSON, WriteError and ReadJSON, so every endpoint
// speaks the same error format.
package admin

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
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
	// MaxTokenTTL caps the lifetime of tokens created through the API
	// (0 = no cap, and tokens may never expire).
	MaxTokenTTL time.Duration
	Log         *slog.Logger // slog.Default() if nil
	Metrics     Counter      // optional
}

// Mount registers the admin API on r: the token routes and every plugin's
// admin routes, each behind authentication and its scope.
func (s *Server) Mount(r chi.Router, extra []plugins.AdminRoute) {
	r.Route(Prefix, func(r chi.Router) {
		r.NotFound(func(w http.ResponseWriter, _ *http.Request) {
			WriteError(w, http.StatusNotFound, "no such admin endpoint")
		})
		r.MethodNotAllowed(func(w http.ResponseWriter, _ *http.Request) {
			WriteError(w, http.StatusMethodNotAllowed, "method not allowed")
		})
		for _, rt := range s.routes() {
			r.With(s.require(rt.Scope)).Method(rt.Method, rt.Pattern, rt.Handler)
		}
		for _, rt := range extra {
			r.With(s.require(rt.Scope)).Method(rt.Method, rt.Pattern, rt.Handler)
		}
	})
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
				w.Header().Set("WWW-Authenticate", `Bearer realm="stepfort"`)
				WriteError(w, http.StatusUnauthorized, "an admin token is required: send Authorization: Bearer <token>")
				return
			}
			t, err := s.Tokens.Authenticate(strings.TrimSpace(bearer))
			switch {
			case errors.Is(err, ErrUnauthenticated):
				s.count("unauthorized")
				w.Header().Set("WWW-Authenticate", `Bearer realm="stepfort", error="invalid_token"`)
				WriteError(w, http.StatusUnauthorized, "invalid admin token: %v", err)
				return
			case err != nil:
				s.count("error")
				s.log().Error("admin token lookup failed", "error", err)
				WriteError(w, http.StatusServiceUnavailable, "token store unavailable")
				return
			}
			if scope != "" && !t.Allows(scope) {
				s.count("forbidden")
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
	TTL    string   `json:"ttl,omitempty"` // Go duration; empty = no expiry
}

// CreateTokenResponse carries the one-time secret.
type CreateTokenResponse struct {
	Token  *Token `json:"token"`
	Secret string `json:"secret"`
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var req CreateTokenRequest
	if !ReadJSON(w, r, &req) {
		return
	}
	var ttl time.Duration
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 {
			WriteError(w, http.StatusBadRequest, "ttl: invalid duration %q (use e.g. \"720h\")", req.TTL)
			return
		}
		ttl = d
	}
	if s.MaxTokenTTL > 0 && (ttl == 0 || ttl > s.MaxTokenTTL) {
		WriteError(w, http.StatusBadRequest, "ttl: must be set and at most %s (stepfort.maxTokenTTL)", s.MaxTokenTTL)
		return
	}
	// A token cannot mint a token with scopes it does not hold itself.
	caller := TokenFrom(r)
	for _, sc := range req.Scopes {
		if !ValidScope(sc) {
			WriteError(w, http.StatusBadRequest, "scopes: invalid scope %q", sc)
			return
		}
		if !caller.Allows(sc) {
			WriteError(w, http.StatusForbidden, "scopes: cannot grant %q, which this token does not hold", sc)
			return
		}
	}
	t, secret, err := s.Tokens.Create(req.Name, req.Scopes, ttl)
	if err != nil {
		WriteError(w, http.StatusBadRequest, "%v", err)
		return
	}
	s.log().Info("admin token created", "id", t.ID, "name", t.Name, "scopes", t.Scopes, "by", caller.ID)
	WriteJSON(w, http.StatusCreated, CreateTokenResponse{Token: t, Secret: secret})
}

func (s *Server) listTokens(w http.ResponseWriter, _ *http.Request) {
	ts, err := s.Tokens.List()
	if err != nil {
		WriteError(w, http.StatusServiceUnavailable, "list tokens: %v", err)
		return
	}
	WriteJSON(w, http.StatusOK, map[string]any{"tokens": ts})
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	t, err := s.Tokens.Revoke(id)
	switch {
	case errors.Is(err, ErrNotFound):
		WriteError(w, http.StatusNotFound, "token %q not found", id)
	case err != nil:
		WriteError(w, http.StatusServiceUnavailable, "revoke token: %v", err)
	default:
		s.log().Info("admin token revoked", "id", t.ID, "name", t.Name, "by", TokenFrom(r).ID)
		WriteJSON(w, http.StatusOK, t)
	}
}
