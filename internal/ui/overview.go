package ui

import (
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// countCap is how far the overview counts devices by listing: the
// inventory API has no count, so a figure above it is shown as "1000+".
const countCap = 1000

// count is a figure on the overview; Capped means "at least N".
type count struct {
	N      int
	Capped bool
	Err    string
	Shown  bool
}

type overviewPage struct {
	Certs        certCountSet
	Devices      map[string]count
	Month        string
	Endpoints    *reportLine
	Unit         string
	Health       map[string]any
	HealthStatus string
	CRL          *crlInfo
	Replica      string
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
		if res := s.certCounts(r, d, now); !res.ok() {
			s.apiFailed(w, r, res, "overview", p)
			return
		}
	}
	if pp.Can("devices:read") {
		for _, st := range []string{"active", "disabled"} {
			d.Devices[st] = s.countList(r, "/api/v1/devices?limit="+strconv.Itoa(countCap)+"&status="+st, "devices")
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

// countTTL is how long the overview reuses its certificate counts. Each
// is a scan of the index (on PostgreSQL with 1,000,000 certificates,
// about 150 ms for "active"), the same for every admin, and a dashboard
// that refreshes does not need them to the second: the page says when
// they were counted.
const countTTL = 30 * time.Second

// certCountSet is the overview's certificate figures, counted together.
type certCountSet struct {
	Active, Expiring7, Expiring30, RevokedMonth count
	At                                          time.Time
}

// countCache holds the last complete certCountSet of this replica.
type countCache struct {
	mu   sync.Mutex
	last *certCountSet
	gen  uint64 // bumped by every forget: a count begun before is not kept
}

// forgetAfterPost drops the cached counts after every state-changing
// request of the dashboard, so an admin who revokes here sees it counted
// on the overview at once (changes made elsewhere show within countTTL).
func (c *countCache) forgetAfterPost(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r)
		if r.Method == http.MethodPost {
			c.mu.Lock()
			c.last, c.gen = nil, c.gen+1
			c.mu.Unlock()
		}
	})
}

// certCounts fills the overview's certificate figures from the cache, or
// counts them (GET /api/v1/certificates/count, the four at once) and
// caches them if all four succeeded. A cached answer still checks the
// session's token (GET /api/v1/whoami), so a revoked token ends the
// session here as on every other page; that check's failure is returned.
func (s *Server) certCounts(r *http.Request, d *overviewPage, now time.Time) result {
	s.counts.mu.Lock()
	last, gen := s.counts.last, s.counts.gen
	s.counts.mu.Unlock()
	if last != nil && now.Sub(last.At) < countTTL && !now.Before(last.At) {
		if res := s.call(r, http.MethodGet, "/api/v1/whoami", nil, nil); !res.ok() {
			return res
		}
		d.Certs = *last
		return result{}
	}
	in := func(days int) string { return now.Add(time.Duration(days) * 24 * time.Hour).Format(time.RFC3339) }
	monthStart := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	c := certCountSet{At: now}
	var wg sync.WaitGroup
	var unauthorized result
	var mu sync.Mutex
	for dst, v := range map[*count]url.Values{
		&c.Active:       {"status": {"active"}},
		&c.Expiring7:    {"status": {"active"}, "expiresBefore": {in(7)}},
		&c.Expiring30:   {"status": {"active"}, "expiresBefore": {in(30)}},
		&c.RevokedMonth: {"revokedSince": {monthStart.Format(time.RFC3339)}},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var res struct {
				Count int `json:"count"`
			}
			call := s.call(r, http.MethodGet, "/api/v1/certificates/count?"+v.Encode(), nil, &res)
			if !call.ok() {
				*dst = count{Err: call.err, Shown: true}
				if call.status == http.StatusUnauthorized {
					mu.Lock()
					unauthorized = call
					mu.Unlock()
				}
				return
			}
			*dst = count{N: res.Count, Shown: true}
		}()
	}
	wg.Wait()
	if !unauthorized.ok() {
		return unauthorized
	}
	d.Certs = c
	if c.Active.Err == "" && c.Expiring7.Err == "" && c.Expiring30.Err == "" && c.RevokedMonth.Err == "" {
		s.counts.mu.Lock()
		if s.counts.gen == gen {
			s.counts.last = &c
		}
		s.counts.mu.Unlock()
	}
	return result{}
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
