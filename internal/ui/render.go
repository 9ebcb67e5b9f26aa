package ui

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/stepfort/stepfort/internal/admin"
)

// page is what every template gets.
type page struct {
	Title  string
	Nav    string // the active menu entry
	Flash  string
	Error  string
	CSRF   string
	Token  string // the logged-in token's name
	scopes []string
	Data   any
	Static map[string]string // file name -> URL with its content hash
}

// Can reports whether the session's token holds scope: a template shows
// a button only when the API would accept its action.
func (p *page) Can(scope string) bool { return p.scopes != nil && admin.Grants(p.scopes, scope) }

// LoggedIn reports whether the page is rendered for a session.
func (p *page) LoggedIn() bool { return p.scopes != nil }

var funcs = template.FuncMap{
	"time": func(t any) string {
		switch v := t.(type) {
		case time.Time:
			if v.IsZero() {
				return "—"
			}
			return v.UTC().Format("2006-01-02 15:04 UTC")
		case *time.Time:
			if v == nil || v.IsZero() {
				return "—"
			}
			return v.UTC().Format("2006-01-02 15:04 UTC")
		}
		return fmt.Sprint(t)
	},
	"join": strings.Join,
	"query": func(kv ...string) template.URL {
		v := url.Values{}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] != "" {
				v.Set(kv[i], kv[i+1])
			}
		}
		return template.URL(v.Encode())
	},
	"pathEscape": url.PathEscape,
	"list":       func(s ...string) []string { return s },
}

// parsePages builds one template set per page: the layout plus the page.
func parsePages(st *staticFiles) (map[string]*template.Template, error) {
	base, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/parts.html")
	if err != nil {
		return nil, err
	}
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		name := strings.TrimSuffix(path.Base(n), ".html")
		if name == "layout" || name == "parts" {
			continue
		}
		t, err := template.Must(base.Clone()).ParseFS(templateFS, n)
		if err != nil {
			return nil, fmt.Errorf("ui: template %s: %w", n, err)
		}
		pages[name] = t
	}
	return pages, nil
}

// render writes a page; with fragment set it writes only that template
// (the certificate search's result table, fetched as the admin types).
func (s *Server) render(w http.ResponseWriter, r *http.Request, status int, name string, p *page) {
	s.renderPart(w, r, status, name, "layout.html", p)
}

func (s *Server) renderPart(w http.ResponseWriter, r *http.Request, status int, name, part string, p *page) {
	if sess := sessionOf(r); sess != nil {
		p.CSRF, p.Token, p.scopes = sess.csrf, sess.tokenName, sess.scopes
		if p.Flash == "" {
			p.Flash = s.sessions.takeFlash(sess)
		}
	}
	p.Static = s.static.urls
	t := s.pages[name]
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, part, p); err != nil {
		s.opts.Log.Error("ui: render", "page", name, "error", err)
		http.Error(w, "internal error rendering the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// apiFailed answers a failed API call: a token that stopped working ends
// the session; anything else is shown on the page it happened on.
func (s *Server) apiFailed(w http.ResponseWriter, r *http.Request, res result, name string, p *page) {
	if res.status == http.StatusUnauthorized {
		s.sessions.remove(sessionOf(r))
		clearCookie(w)
		http.Redirect(w, r, Prefix+"/login", http.StatusSeeOther)
		return
	}
	p.Error = res.err
	status := res.status
	if status < 400 {
		status = http.StatusBadGateway
	}
	s.render(w, r, status, name, p)
}

// redirectFlash ends a POST with a redirect (so a reload does not repeat
// it) and a message on the next page.
func (s *Server) redirectFlash(w http.ResponseWriter, r *http.Request, to, msg string) {
	if msg != "" {
		s.sessions.setFlash(sessionOf(r), msg)
	}
	http.Redirect(w, r, to, http.StatusSeeOther)
}

// staticFiles are the embedded CSS and JS, served under a path with their
// content hash so they can be cached for good.
type staticFiles struct {
	files map[string][]byte
	hash  map[string]string
	urls  map[string]string
}

func loadStatic() (*staticFiles, error) {
	st := &staticFiles{files: map[string][]byte{}, hash: map[string]string{}, urls: map[string]string{}}
	entries, err := fs.ReadDir(staticFS, "static")
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		b, err := fs.ReadFile(staticFS, "static/"+e.Name())
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(b)
		h := hex.EncodeToString(sum[:6])
		st.files[e.Name()], st.hash[e.Name()] = b, h
		st.urls[e.Name()] = Prefix + "/static/" + h + "/" + e.Name()
	}
	return st, nil
}

var contentTypes = map[string]string{".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}

func (st *staticFiles) serve(w http.ResponseWriter, r *http.Request) {
	name, h := chi.URLParam(r, "name"), chi.URLParam(r, "hash")
	b, ok := st.files[name]
	ct, known := contentTypes[path.Ext(name)]
	if !ok || !known || st.hash[name] != h {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	_, _ = w.Write(b)
}
