package ui

import (
	"crypto/x509"
	"encoding/json"
	"net/http"
	"slices"
	"sync"
	"time"
)

// count is a figure on the overview.
type count struct {
	N     int
	Err   string
	Shown bool
}

type overviewPage struct {
	Certs        figures // active, exp7, exp30, revokedMonth
	Devices      figures // active, disabled
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
	d := &overviewPage{Month: now.Format("2006-01"), Replica: s.opts.Replica}
	p := &page{Title: "Overview", Nav: "overview", Data: d}
	pp := &page{scopes: sessionOf(r).scopes}
	in := func(days int) string { return now.Add(time.Duration(days) * 24 * time.Hour).Format(time.RFC3339) }
	monthStart := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	sets := []struct {
		scope, kind string
		dst         *figures
		paths       map[string]string
	}{
		{"certificates:read", "certificates", &d.Certs, map[string]string{
			"active":       "/api/v1/certificates/count?status=active",
			"exp7":         "/api/v1/certificates/count?status=active&expiresBefore=" + in(7),
			"exp30":        "/api/v1/certificates/count?status=active&expiresBefore=" + in(30),
			"revokedMonth": "/api/v1/certificates/count?revokedSince=" + monthStart.Format(time.RFC3339),
		}},
		{"devices:read", "devices", &d.Devices, map[string]string{
			"active":   "/api/v1/devices/count?status=active",
			"disabled": "/api/v1/devices/count?status=disabled",
		}},
	}
	// The sets are counted at once; a set answered from the cache made no
	// call with the session's token, so the token is checked once
	// (GET /api/v1/whoami) and a revoked one ends the session here as on
	// every other page.
	results := make([]result, len(sets))
	cached := make([]bool, len(sets))
	var wg sync.WaitGroup
	for i, set := range sets {
		if !pp.Can(set.scope) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			*set.dst, cached[i], results[i] = s.cachedCounts(r, set.kind, set.paths, now)
		}()
	}
	wg.Wait()
	if slices.Contains(cached, true) {
		results = append(results, s.call(r, http.MethodGet, "/api/v1/whoami", nil, nil))
	}
	for _, res := range results {
		if !res.ok() {
			s.apiFailed(w, r, res, "overview", p)
			return
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

// countTTL is how long the overview reuses its counts. Each is a scan
// (on PostgreSQL with 1,000,000 certificates, about 150 ms for "active";
// 100 ms per 100,000 devices), the same for every admin, and a dashboard
// that refreshes does not need them to the second: the page says when
// they were counted.
const countTTL = 30 * time.Second

// figures is a set of counts made together (and cached together).
type figures struct {
	Counts map[string]count
	At     time.Time
}

// countCache holds this replica's last complete figures of each kind.
type countCache struct {
	mu   sync.Mutex
	last map[string]*figures
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

// cachedCounts returns the figures of kind from the cache (cached: the
// caller checks the session's token, which no call here used), or counts
// them (each path a count endpoint answering {"count": N}, all at once)
// and caches them if every count succeeded. failed is a failure that ends
// the page (a token that stopped working); a count that failed otherwise
// is shown in its place.
func (s *Server) cachedCounts(r *http.Request, kind string, paths map[string]string, now time.Time) (f figures, cached bool, failed result) {
	s.counts.mu.Lock()
	last, gen := s.counts.last[kind], s.counts.gen
	s.counts.mu.Unlock()
	if last != nil && now.Sub(last.At) < countTTL && !now.Before(last.At) {
		return *last, true, result{}
	}
	f = figures{Counts: make(map[string]count, len(paths)), At: now}
	var mu sync.Mutex
	var wg sync.WaitGroup
	complete := true
	for name, path := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var res struct {
				Count int `json:"count"`
			}
			call := s.call(r, http.MethodGet, path, nil, &res)
			mu.Lock()
			defer mu.Unlock()
			if !call.ok() {
				f.Counts[name] = count{Err: call.err, Shown: true}
				complete = false
				if call.status == http.StatusUnauthorized {
					failed = call
				}
				return
			}
			f.Counts[name] = count{N: res.Count, Shown: true}
		}()
	}
	wg.Wait()
	if !failed.ok() {
		return figures{}, false, failed
	}
	if complete {
		s.counts.mu.Lock()
		if s.counts.gen == gen {
			if s.counts.last == nil {
				s.counts.last = map[string]*figures{}
			}
			s.counts.last[kind] = &f
		}
		s.counts.mu.Unlock()
	}
	return f, false, result{}
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
