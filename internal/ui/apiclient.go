package ui

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/go-chi/chi/v5"
)

// maxAPIResponse bounds what one in-process API answer may buffer; a page
// asks for at most pageSize rows (the overview's counts for 1,000).
const maxAPIResponse = 32 << 20

// result is one in-process API call's outcome. err is the API's error
// message (or ours), "" on a 2xx.
type result struct {
	status int
	err    string
}

func (r result) ok() bool { return r.err == "" }

// recorder is a minimal, bounded http.ResponseWriter.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
	over   bool
}

func (w *recorder) Header() http.Header { return w.header }
func (w *recorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}
func (w *recorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if w.body.Len()+len(b) > maxAPIResponse {
		w.over = true
		return 0, fmt.Errorf("response over %d bytes", maxAPIResponse)
	}
	return w.body.Write(b)
}

// call makes an admin API request as the session's token and decodes a
// 2xx JSON answer into out. A 401 means the token stopped working
// (revoked or expired): the caller ends the session.
func (s *Server) call(r *http.Request, method, path string, body any, out any) result {
	var rd io.Reader
	ctype := ""
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return result{status: http.StatusInternalServerError, err: err.Error()}
		}
		rd, ctype = bytes.NewReader(b), "application/json"
	}
	return s.callToken(r, sessionOf(r).token, method, path, rd, ctype, out)
}

// callToken makes an in-process request to the API handler with token.
// The inner request keeps the browser's remote address, so the API's
// audit records name the real client.
func (s *Server) callToken(r *http.Request, token, method, path string, body io.Reader, ctype string, out any) result {
	req, err := http.NewRequestWithContext(innerContext(r), method, path, body)
	if err != nil {
		return result{status: http.StatusBadRequest, err: err.Error()}
	}
	req.RemoteAddr, req.Host, req.TLS, req.Proto = r.RemoteAddr, r.Host, r.TLS, r.Proto
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	req.Header.Set("Accept", "application/json")
	rec := &recorder{header: http.Header{}}
	s.opts.API.ServeHTTP(rec, req)
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	if rec.over {
		return result{status: http.StatusBadGateway, err: "the API answer was too large"}
	}
	if rec.status >= 300 {
		var e struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(rec.body.Bytes(), &e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("%s (HTTP %d)", http.StatusText(rec.status), rec.status)
		}
		return result{status: rec.status, err: e.Message}
	}
	if out != nil {
		if raw, ok := out.(*[]byte); ok {
			*raw = rec.body.Bytes()
		} else if err := json.Unmarshal(rec.body.Bytes(), out); err != nil {
			return result{status: http.StatusBadGateway, err: "cannot read the API answer: " + err.Error()}
		}
	}
	return result{status: rec.status}
}

// innerContext is the browser request's context (its deadline and the
// daemon's values) without its router state: the API's router must route
// the inner request from scratch, not continue the dashboard's route.
func innerContext(r *http.Request) context.Context {
	return context.WithValue(r.Context(), chi.RouteCtxKey, nil)
}

// stream proxies an API answer (an export) to the browser as it comes,
// without buffering it.
func (s *Server) stream(w http.ResponseWriter, r *http.Request, path string) {
	req, err := http.NewRequestWithContext(innerContext(r), http.MethodGet, path, nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	req.RemoteAddr, req.Host, req.TLS = r.RemoteAddr, r.Host, r.TLS
	req.Header.Set("Authorization", "Bearer "+sessionOf(r).token)
	s.opts.API.ServeHTTP(w, req)
}
