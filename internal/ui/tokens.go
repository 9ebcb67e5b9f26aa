package ui

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
)

type tokenView struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	Scopes    []string   `json:"scopes"`
	CreatedAt time.Time  `json:"createdAt"`
	ExpiresAt *time.Time `json:"expiresAt"`
	RevokedAt *time.Time `json:"revokedAt"`
}

// Status is active, expired or revoked.
func (t tokenView) Status(now time.Time) string {
	switch {
	case t.RevokedAt != nil:
		return "revoked"
	case t.ExpiresAt != nil && !now.Before(*t.ExpiresAt):
		return "expired"
	}
	return "active"
}

type tokensPage struct {
	Tokens  []tokenView
	Now     time.Time
	Created *struct {
		Token  tokenView `json:"token"`
		Secret string    `json:"secret"`
	}
	Self string
	// Status filters the list ("": all); NextCursor continues it ("" on
	// the last page).
	Status     string
	NextCursor string
	FirstPage  bool
}

// tokensData reads one page of tokens (pageSize, in the API's token ID
// order) from the cursor and status in r's query.
func (s *Server) tokensData(r *http.Request) (*tokensPage, result) {
	q := r.URL.Query()
	d := &tokensPage{Now: s.opts.Now(), Self: sessionOf(r).tokenID, Status: q.Get("status"), FirstPage: q.Get("cursor") == ""}
	v := url.Values{"limit": {strconv.Itoa(pageSize)}}
	for k, val := range map[string]string{"status": d.Status, "cursor": q.Get("cursor")} {
		if val != "" {
			v.Set(k, val)
		}
	}
	var list struct {
		Tokens     []tokenView `json:"tokens"`
		NextCursor string      `json:"nextCursor"`
	}
	res := s.call(r, http.MethodGet, "/api/v1/tokens?"+v.Encode(), nil, &list)
	d.Tokens, d.NextCursor = list.Tokens, list.NextCursor
	return d, res
}

func (s *Server) tokens(w http.ResponseWriter, r *http.Request) {
	d, res := s.tokensData(r)
	p := &page{Title: "Admin tokens", Nav: "tokens", Data: d}
	if !res.ok() {
		s.apiFailed(w, r, res, "tokens", p)
		return
	}
	s.render(w, r, http.StatusOK, "tokens", p)
}

// createToken shows the new secret in its answer, once; it is not kept.
func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var scopes []string
	for _, f := range strings.FieldsFunc(r.PostFormValue("scopes"), func(c rune) bool { return c == ',' || c == ' ' || c == '\n' || c == '\r' }) {
		scopes = append(scopes, f)
	}
	body := map[string]any{"name": strings.TrimSpace(r.PostFormValue("name")), "scopes": scopes}
	if ttl := strings.TrimSpace(r.PostFormValue("ttl")); ttl != "" {
		body["ttl"] = ttl
	}
	d, _ := s.tokensData(r)
	d.Created = &struct {
		Token  tokenView `json:"token"`
		Secret string    `json:"secret"`
	}{}
	res := s.call(r, http.MethodPost, "/api/v1/tokens", body, d.Created)
	if !res.ok() {
		if res.status == http.StatusUnauthorized {
			s.apiFailed(w, r, res, "tokens", &page{})
			return
		}
		s.redirectFlash(w, r, Prefix+"/tokens", "Token not created: "+res.err)
		return
	}
	d, _ = s.tokensDataKeep(r, d)
	s.render(w, r, http.StatusCreated, "tokens", &page{Title: "Admin tokens", Nav: "tokens", Data: d})
}

// tokensDataKeep reloads the list (with the new token) and keeps the
// one-time secret.
func (s *Server) tokensDataKeep(r *http.Request, old *tokensPage) (*tokensPage, result) {
	d, res := s.tokensData(r)
	d.Created = old.Created
	return d, res
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	res := s.call(r, http.MethodDelete, "/api/v1/tokens/"+url.PathEscape(id), nil, nil)
	if !res.ok() {
		if res.status == http.StatusUnauthorized {
			s.apiFailed(w, r, res, "tokens", &page{})
			return
		}
		s.redirectFlash(w, r, Prefix+"/tokens", "Token not revoked: "+res.err)
		return
	}
	if id == sessionOf(r).tokenID {
		// The session's own token: it cannot call the API any more.
		s.sessions.remove(sessionOf(r))
		clearCookie(w)
		http.Redirect(w, r, Prefix+"/login", http.StatusSeeOther)
		return
	}
	s.redirectFlash(w, r, Prefix+"/tokens", "Token "+id+" revoked.")
}
