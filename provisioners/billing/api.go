package billing

import (
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/stepfort/stepfort/internal/admin"
	"github.com/stepfort/stepfort/plugins"
)

// Admin API scopes.
const (
	ScopeEndpointsRead = "endpoints:read"
	ScopeBillingRead   = "billing:read"
	ScopeBillingWrite  = "billing:write"
)

// Page size limits of GET /endpoints.
const (
	defaultLimit = 100
	maxLimit     = 1000
)

// EndpointView is an Endpoint as the API shows it: its state at the time of
// the request and no internal usage summary.
type EndpointView struct {
	ID                 string                 `json:"id"`
	State              string                 `json:"state"`
	EndedAt            *time.Time             `json:"endedAt,omitempty"`
	EndReason          string                 `json:"endReason,omitempty"`
	Provisioner        plugins.ProvisionerRef `json:"provisioner"`
	Grouping           string                 `json:"grouping"`
	SubjectKey         string                 `json:"subjectKey"`
	CreatedAt          time.Time              `json:"createdAt"`
	EndsAt             time.Time              `json:"endsAt"`
	LastSerial         string                 `json:"lastSerial"`
	Certificates       int                    `json:"certificates"`
	ActiveCertificates int                    `json:"activeCertificates"`
	Renewals           int                    `json:"renewals"`
	Rekeys             int                    `json:"rekeys"`
	Revocations        int                    `json:"revocations"`
	Alert              *Alert                 `json:"alert,omitempty"`
}

// View is the Endpoint at now.
func (e *Endpoint) View(now time.Time) EndpointView {
	v := EndpointView{ID: e.ID, State: e.State(now), Provisioner: e.Provisioner, Grouping: e.Grouping, SubjectKey: e.SubjectKey,
		CreatedAt: e.CreatedAt, EndsAt: e.EndsAt, LastSerial: e.LastSerial, Certificates: e.Certificates,
		ActiveCertificates: e.ActiveCertificates(now), Renewals: e.Renewals, Rekeys: e.Rekeys, Revocations: e.Revocations, Alert: e.Alert}
	if v.State == StateEnded {
		t := e.EndsAt
		v.EndedAt, v.EndReason = &t, e.EndReason
	}
	return v
}

// LineageEntry is one certificate of an Endpoint as the API shows it.
type LineageEntry struct {
	CertRecord
	Status string `json:"status"`
}

// EndpointDetail is GET /endpoints/{id}.
type EndpointDetail struct {
	EndpointView
	Lineage []LineageEntry `json:"lineage"`
}

// EndpointList is GET /endpoints.
type EndpointList struct {
	Endpoints  []EndpointView `json:"endpoints"`
	NextCursor string         `json:"nextCursor,omitempty"`
}

// AdminRoutes implements plugins.AdminRouteProvider.
func (p *Plugin) AdminRoutes() []plugins.AdminRoute {
	return []plugins.AdminRoute{
		{Method: http.MethodGet, Pattern: "/endpoints", Scope: ScopeEndpointsRead, Handler: p.listEndpoints},
		{Method: http.MethodGet, Pattern: "/endpoints/{id}", Scope: ScopeEndpointsRead, Handler: p.showEndpoint},
		{Method: http.MethodGet, Pattern: "/billing/report", Scope: ScopeBillingRead, Handler: p.report},
		{Method: http.MethodPost, Pattern: "/billing/rebuild", Scope: ScopeBillingWrite, Handler: p.rebuild},
	}
}

// ListQuery filters GET /endpoints.
type ListQuery struct {
	State       string // "", active, ended
	Provisioner string // name or ID
	Q           string // substring of the subject key or ID, case-insensitive
	Limit       int
	Cursor      string // list IDs after this one
}

// List returns one page of Endpoints ordered by ID.
func (s *Store) List(q ListQuery, now time.Time) (*EndpointList, error) {
	needle := strings.ToLower(q.Q)
	var all []EndpointView
	err := s.Endpoints(func(e *Endpoint) error {
		if e.Certificates == 0 || (q.Cursor != "" && e.ID <= q.Cursor) {
			return nil
		}
		if q.Provisioner != "" && e.Provisioner.Name != q.Provisioner && e.Provisioner.ID != q.Provisioner {
			return nil
		}
		if needle != "" && !strings.Contains(e.SubjectKey, needle) && !strings.Contains(e.ID, needle) {
			return nil
		}
		v := e.View(now)
		if q.State != "" && v.State != q.State {
			return nil
		}
		all = append(all, v)
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(all, func(i, j int) bool { return all[i].ID < all[j].ID })
	out := &EndpointList{Endpoints: all}
	if len(all) > q.Limit {
		out.Endpoints = all[:q.Limit]
		out.NextCursor = all[q.Limit-1].ID
	}
	if out.Endpoints == nil {
		out.Endpoints = []EndpointView{}
	}
	return out, nil
}

func (p *Plugin) listEndpoints(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	q := ListQuery{State: v.Get("state"), Provisioner: v.Get("provisioner"), Q: v.Get("q"), Cursor: v.Get("cursor"), Limit: defaultLimit}
	if q.State != "" && q.State != StateActive && q.State != StateEnded {
		admin.WriteError(w, http.StatusBadRequest, "state: must be %q or %q, got %q", StateActive, StateEnded, q.State)
		return
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxLimit {
			admin.WriteError(w, http.StatusBadRequest, "limit: must be an integer from 1 to %d, got %q", maxLimit, s)
			return
		}
		q.Limit = n
	}
	if q.Cursor != "" && !validID(q.Cursor) {
		admin.WriteError(w, http.StatusBadRequest, "cursor: invalid cursor %q", q.Cursor)
		return
	}
	list, err := p.store.List(q, p.host.Now())
	if err != nil {
		p.host.Logger().Error("list endpoints", "error", err)
		admin.WriteError(w, http.StatusServiceUnavailable, "list endpoints: %v", err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, list)
}

// Detail returns an Endpoint with its lineage, or nil if unknown.
func (s *Store) Detail(id string, now time.Time) (*EndpointDetail, error) {
	e, err := s.Endpoint(id)
	if err != nil || e == nil {
		return nil, err
	}
	certs, err := s.Lineage(e)
	if err != nil {
		return nil, err
	}
	d := &EndpointDetail{EndpointView: e.View(now), Lineage: make([]LineageEntry, 0, len(certs))}
	for _, c := range certs {
		d.Lineage = append(d.Lineage, LineageEntry{CertRecord: *c, Status: c.Status(now)})
	}
	return d, nil
}

func (p *Plugin) showEndpoint(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	if !validID(id) {
		admin.WriteError(w, http.StatusBadRequest, "id: invalid endpoint ID %q", id)
		return
	}
	d, err := p.store.Detail(id, p.host.Now())
	if err != nil {
		p.host.Logger().Error("show endpoint", "endpoint", id, "error", err)
		admin.WriteError(w, http.StatusServiceUnavailable, "show endpoint: %v", err)
		return
	}
	if d == nil {
		admin.WriteError(w, http.StatusNotFound, "endpoint %q not found", id)
		return
	}
	admin.WriteJSON(w, http.StatusOK, d)
}

func (p *Plugin) report(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	ms := v.Get("month")
	if ms == "" {
		admin.WriteError(w, http.StatusBadRequest, "month: required (YYYY-MM)")
		return
	}
	m, err := ParseMonth(ms)
	if err != nil {
		admin.WriteError(w, http.StatusBadRequest, "month: %v", err)
		return
	}
	format := v.Get("format")
	if format == "" {
		format = "json"
	}
	if format != "json" && format != "csv" {
		admin.WriteError(w, http.StatusBadRequest, "format: must be \"json\" or \"csv\", got %q", format)
		return
	}
	rep, err := p.store.Report(m, p.cfg.Mode, p.host.Now())
	if err != nil {
		p.host.Logger().Error("billing report", "month", ms, "error", err)
		admin.WriteError(w, http.StatusServiceUnavailable, "billing report: %v", err)
		return
	}
	if format == "csv" {
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		_ = rep.WriteCSV(w)
		return
	}
	admin.WriteJSON(w, http.StatusOK, rep)
}

func (p *Plugin) rebuild(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength > 0 {
		var empty struct{}
		if !admin.ReadJSON(w, r, &empty) {
			return
		}
	}
	start := time.Now() // measures the rebuild for the log; decisions use the host clock
	res, err := p.store.Rebuild(p.host.Now())
	if err != nil {
		p.host.Logger().Error("billing rebuild", "error", err)
		admin.WriteError(w, http.StatusServiceUnavailable, "rebuild: %v", err)
		return
	}
	tok := admin.TokenFrom(r)
	by := ""
	if tok != nil {
		by = tok.ID
	}
	p.host.Logger().Info("billing rebuilt", "scanned", res.Scanned, "recorded", res.Recorded, "inferredRenewals", res.InferredLinks,
		"errors", len(res.Errors), "took", time.Since(start).String(), "by", by)
	admin.WriteJSON(w, http.StatusOK, res)
}

// validID accepts the shape of Endpoint IDs: "ep_" and base32 letters.
func validID(id string) bool {
	if !strings.HasPrefix(id, "ep_") || len(id) > 64 {
		return false
	}
	for _, c := range id[3:] {
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return len(id) > 3
}
