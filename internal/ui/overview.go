package ui

import (
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/url"
	"time"
)

// countCap is how far the overview counts by listing: the admin API has
// no count endpoint, so a figure above it is shown as "1000+".
const countCap = 1000

// count is a figure on the overview; Capped means "at least N".
type count struct {
	N      int
	Capped bool
	Err    string
	Shown  bool
}

type overviewPage struct {
	Active, Expiring7, Expiring30, RevokedMonth count
	Devices                                     map[string]count
	Month                                       string
	Endpoints                                   *reportLine
	Unit                                        string
	Health                                      map[string]any
	HealthStatus                                string
	CRL                                         *crlInfo
	Replica                                     string
	// Replicas from GET /api/v1/replicas (scope health:read); ReplicasErr
	// when the API refused or failed.
	Replicas    []replicaView
	ReplicasErr string
	StaleAfter  string
}

// replicaView is one row of GET /api/v1/replicas.
type replicaView struct {
	ID               string            `json:"id"`
	Version          string            `json:"version"`
	StartedAt        time.Time         `json:"startedAt"`
	LastSeen         time.Time         `json:"lastSeen"`
	FIPS             string            `json:"fips"`
	CRLLease         bool              `json:"crlLease"`
	Status           string            `json:"status"`
	OCSPStatusSource string            `json:"ocspStatusSource"`
	Problems         map[string]string `json:"problems"`
	Stale            bool              `json:"stale"`
	Self             bool              `json:"self"`
	// Seen is how long ago LastSeen was, for the page.
	Seen time.Duration `json:"-"`
}

type crlInfo struct {
	Number                 string
	ThisUpdate, NextUpdate time.Time
	Age                    time.Duration
	Entries                int
	Overdue                bool
	Err                    string
}

func (s *Server) overview(w http.ResponseWriter, r *http.Request) {
	now := s.opts.Now().UTC()
	d := &overviewPage{Devices: map[string]count{}, Month: now.Format("2006-01"), Replica: s.opts.Replica}
	p := &page{Title: "Overview", Nav: "overview", Data: d}
	pp := &page{scopes: sessionOf(r).scopes}
	if pp.Can("certificates:read") {
		in := func(days int) string { return now.Add(time.Duration(days) * 24 * time.Hour).Format(time.RFC3339) }
		d.Active = s.countCerts(r, url.Values{"status": {"active"}}, nil)
		d.Expiring7 = s.countCerts(r, url.Values{"status": {"active"}, "expiresBefore": {in(7)}}, nil)
		d.Expiring30 = s.countCerts(r, url.Values{"status": {"active"}, "expiresBefore": {in(30)}}, nil)
		monthStart := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
		d.RevokedMonth = s.countCerts(r, url.Values{"status": {"revoked"}, "expiresAfter": {monthStart.Format(time.RFC3339)}}, func(c *certView) bool {
			return c.Revocation != nil && !c.Revocation.RevokedAt.Before(monthStart)
		})
	}
	if pp.Can("devices:read") {
		for _, st := range []string{"active", "disabled"} {
			d.Devices[st] = s.countList(r, "/api/v1/devices?limit=1000&status="+st, "devices")
		}
	}
	if pp.Can("billing:read") {
		var rep report
		if s.call(r, http.MethodGet, "/api/v1/billing/report?month="+d.Month, nil, &rep).ok() {
			d.Endpoints, d.Unit = &rep.Total, rep.Unit
		}
	}
	var raw []byte
	s.callToken(r, "", http.MethodGet, "/health", nil, "", &raw)
	_ = json.Unmarshal(raw, &d.Health)
	d.HealthStatus, _ = d.Health["status"].(string)
	d.CRL = s.crl(r, now)
	if pp.Can("health:read") {
		s.replicas(r, d, now)
	}
	s.render(w, r, http.StatusOK, "overview", p)
}

// countCerts counts certificates matching v, up to countCap, optionally
// only those keep accepts.
func (s *Server) countCerts(r *http.Request, v url.Values, keep func(*certView) bool) count {
	v.Set("limit", "1000")
	var list struct {
		Certificates []certView `json:"certificates"`
		NextCursor   string     `json:"nextCursor"`
	}
	res := s.call(r, http.MethodGet, "/api/v1/certificates?"+v.Encode(), nil, &list)
	if !res.ok() {
		return count{Err: res.err, Shown: true}
	}
	n := 0
	for i := range list.Certificates {
		if keep == nil || keep(&list.Certificates[i]) {
			n++
		}
	}
	return count{N: n, Capped: list.NextCursor != "", Shown: true}
}

func (s *Server) countList(r *http.Request, path, field string) count {
	var list map[string]json.RawMessage
	res := s.call(r, http.MethodGet, path, nil, &list)
	if !res.ok() {
		return count{Err: res.err, Shown: true}
	}
	var rows []json.RawMessage
	_ = json.Unmarshal(list[field], &rows)
	_, more := list["nextCursor"]
	return count{N: len(rows), Capped: more, Shown: true}
}

// crl reads the CRL this replica serves (GET /crl, in process).
func (s *Server) crl(r *http.Request, now time.Time) *crlInfo {
	var raw []byte
	res := s.callToken(r, "", http.MethodGet, "/crl", nil, "", &raw)
	if !res.ok() {
		return &crlInfo{Err: res.err}
	}
	c, err := x509.ParseRevocationList(raw)
	if err != nil {
		return &crlInfo{Err: "cannot parse the CRL: " + err.Error()}
	}
	info := &crlInfo{ThisUpdate: c.ThisUpdate, NextUpdate: c.NextUpdate, Age: now.Sub(c.ThisUpdate).Round(time.Second),
		Entries: len(c.RevokedCertificateEntries), Overdue: !c.NextUpdate.IsZero() && now.After(c.NextUpdate)}
	if c.Number != nil {
		info.Number = c.Number.String()
	}
	return info
}

// replicas lists the cluster's replicas (their heartbeats) for the
// overview.
func (s *Server) replicas(r *http.Request, d *overviewPage, now time.Time) {
	var list struct {
		Replicas   []replicaView `json:"replicas"`
		StaleAfter string        `json:"staleAfter"`
	}
	if res := s.call(r, http.MethodGet, "/api/v1/replicas", nil, &list); !res.ok() {
		d.ReplicasErr = res.err
		return
	}
	for i := range list.Replicas {
		list.Replicas[i].Seen = now.Sub(list.Replicas[i].LastSeen).Round(time.Second)
	}
	d.Replicas, d.StaleAfter = list.Replicas, list.StaleAfter
}
