package ui

import (
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
)

type challengeView struct {
	ID          string     `json:"id"`
	Challenge   string     `json:"challenge"`
	Provisioner string     `json:"provisioner"`
	Source      string     `json:"source"`
	ExpiresAt   time.Time  `json:"expiresAt"`
	CreatedAt   time.Time  `json:"createdAt"`
	CreatedBy   string     `json:"createdBy"`
	Device      string     `json:"device"`
	CommonName  string     `json:"commonName"`
	DNSNames    []string   `json:"dnsNames"`
	State       string     `json:"state"`
	ConsumedAt  *time.Time `json:"consumedAt"`
}

type challengeGroup struct {
	Source     string
	Challenges []challengeView
}

type scepPage struct {
	Groups    []challengeGroup
	Created   *challengeView // shown once, in the answer to the POST
	Truncated bool
}

func (s *Server) scepData(r *http.Request) (*scepPage, result) {
	var list struct {
		Challenges []challengeView `json:"challenges"`
		Truncated  bool            `json:"truncated"`
	}
	res := s.call(r, http.MethodGet, "/api/v1/scep/challenges", nil, &list)
	if !res.ok() {
		return &scepPage{}, res
	}
	by := map[string][]challengeView{}
	for _, c := range list.Challenges {
		by[c.Source] = append(by[c.Source], c)
	}
	d := &scepPage{Truncated: list.Truncated}
	for src, cs := range by {
		sort.Slice(cs, func(i, j int) bool { return cs[i].ExpiresAt.Before(cs[j].ExpiresAt) })
		d.Groups = append(d.Groups, challengeGroup{Source: src, Challenges: cs})
	}
	sort.Slice(d.Groups, func(i, j int) bool { return d.Groups[i].Source < d.Groups[j].Source })
	return d, res
}

func (s *Server) scep(w http.ResponseWriter, r *http.Request) {
	d, res := s.scepData(r)
	p := &page{Title: "SCEP challenges", Nav: "scep", Data: d}
	if !res.ok() {
		s.apiFailed(w, r, res, "scep", p)
		return
	}
	s.render(w, r, http.StatusOK, "scep", p)
}

// createChallenge answers with the page itself, not a redirect: the
// challenge is shown this once and never stored in the session.
func (s *Server) createChallenge(w http.ResponseWriter, r *http.Request) {
	body := map[string]any{}
	for _, k := range []string{"provisioner", "ttl", "commonName", "device"} {
		if v := strings.TrimSpace(r.PostFormValue(k)); v != "" {
			body[k] = v
		}
	}
	if names := splitList(r.PostFormValue("dnsNames")); len(names) > 0 {
		body["dnsNames"] = names
	}
	var c challengeView
	res := s.call(r, http.MethodPost, "/api/v1/scep/challenges", body, &c)
	if !res.ok() {
		if res.status == http.StatusUnauthorized {
			s.apiFailed(w, r, res, "scep", &page{})
			return
		}
		s.redirectFlash(w, r, Prefix+"/scep", "Challenge not created: "+res.err)
		return
	}
	d, lres := s.scepData(r)
	d.Created = &c
	p := &page{Title: "SCEP challenges", Nav: "scep", Data: d}
	if !lres.ok() {
		p.Error = lres.err
	}
	s.render(w, r, http.StatusCreated, "scep", p)
}

func (s *Server) withdrawChallenge(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	res := s.call(r, http.MethodDelete, "/api/v1/scep/challenges/"+url.PathEscape(id), nil, nil)
	if !res.ok() {
		if res.status == http.StatusUnauthorized {
			s.apiFailed(w, r, res, "scep", &page{})
			return
		}
		s.redirectFlash(w, r, Prefix+"/scep", "Challenge not withdrawn: "+res.err)
		return
	}
	s.redirectFlash(w, r, Prefix+"/scep", "Challenge "+id+" withdrawn.")
}
