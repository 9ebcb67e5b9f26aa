package ui

import (
	"net/http"
	"net/url"
	"strconv"
	"time"
)

type auditRecord struct {
	Seq     int64  `json:"seq"`
	Time    string `json:"time"`
	Replica string `json:"replica"`
	Action  string `json:"action"`
	Outcome string `json:"outcome"`
	Reason  string `json:"reason"`
	Actor   struct {
		Kind       string `json:"kind"`
		ID         string `json:"id"`
		Name       string `json:"name"`
		Subject    string `json:"subject"`
		RemoteAddr string `json:"remoteAddr"`
	} `json:"actor"`
	Object  map[string]string `json:"object"`
	Details map[string]string `json:"details"`
	Hash    string            `json:"hash"`
}

type auditPage struct {
	Records                                       []auditRecord
	Next                                          *int64
	Action, Outcome, Actor, Serial, Device, Since string
	FirstPage                                     bool
	Chain                                         *chainStatus
	ChainErr                                      string
}

// chainStatus is GET /api/v1/audit/status.
type chainStatus struct {
	State     string    `json:"state"`
	From      int64     `json:"from"`
	Verified  int64     `json:"verified"`
	Size      int64     `json:"size"`
	CheckedAt time.Time `json:"checkedAt"`
	Duration  string    `json:"duration"`
	Error     *struct {
		Seq    int64  `json:"seq"`
		Reason string `json:"reason"`
	} `json:"error"`
	Checkpoint *struct {
		Size           int64  `json:"size"`
		Root           string `json:"root"`
		Time           string `json:"time"`
		KeyID          string `json:"keyId"`
		SignatureValid bool   `json:"signatureValid"`
		SignatureError string `json:"signatureError"`
		RootVerified   bool   `json:"rootVerified"`
	} `json:"checkpoint"`
}

var auditParams = []string{"action", "outcome", "actor", "serial", "device", "since", "until"}

func (s *Server) audit(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	d := &auditPage{Action: q.Get("action"), Outcome: q.Get("outcome"), Actor: q.Get("actor"), Serial: q.Get("serial"),
		Device: q.Get("device"), Since: q.Get("since"), FirstPage: q.Get("after") == ""}
	p := &page{Title: "Audit", Nav: "audit", Data: d}
	v := url.Values{"limit": {strconv.Itoa(pageSize)}}
	for _, k := range append(auditParams, "after") {
		if val := q.Get(k); val != "" {
			v.Set(k, val)
		}
	}
	var pg struct {
		Records []auditRecord `json:"records"`
		Next    *int64        `json:"next"`
	}
	if res := s.call(r, http.MethodGet, "/api/v1/audit?"+v.Encode(), nil, &pg); !res.ok() {
		s.apiFailed(w, r, res, "audit", p)
		return
	}
	d.Records, d.Next = pg.Records, pg.Next
	var cs chainStatus
	if res := s.call(r, http.MethodGet, "/api/v1/audit/status", nil, &cs); res.ok() {
		d.Chain = &cs
	} else {
		d.ChainErr = res.err
	}
	s.render(w, r, http.StatusOK, "audit", p)
}
