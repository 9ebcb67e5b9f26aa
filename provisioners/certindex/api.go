package certindex

import (
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/stepfort/stepfort/internal/admin"
	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
)

// Admin API scopes.
const (
	ScopeRead  = "certificates:read"
	ScopeWrite = "certificates:write"
)

// AdminRoutes implements plugins.AdminRouteProvider.
func (p *Plugin) AdminRoutes() []plugins.AdminRoute {
	return []plugins.AdminRoute{
		{Method: http.MethodGet, Pattern: "/certificates", Scope: ScopeRead, Handler: p.list},
		{Method: http.MethodGet, Pattern: "/certificates/export", Scope: ScopeRead, Handler: p.export},
		{Method: http.MethodGet, Pattern: "/certificates/count", Scope: ScopeRead, Handler: p.count},
		{Method: http.MethodGet, Pattern: "/certificates/{serial}", Scope: ScopeRead, Handler: p.show},
		{Method: http.MethodPost, Pattern: "/certificates/revoke", Scope: ScopeWrite, Handler: p.revoke},
		{Method: http.MethodPost, Pattern: "/certificates/reindex", Scope: ScopeWrite, Handler: p.reindex},
	}
}

func (p *Plugin) list(w http.ResponseWriter, r *http.Request) {
	q, err := ParseQuery(r.URL.Query(), p.host.Now())
	if err != nil {
		admin.WriteError(w, http.StatusBadRequest, "%v", err)
		return
	}
	recs, next, err := p.store.List(q)
	if err != nil {
		p.fail(w, "list certificates", err)
		return
	}
	page := Page{Certificates: make([]View, 0, len(recs))}
	for _, rec := range recs {
		page.Certificates = append(page.Certificates, View{Record: *rec, Status: rec.Status(q.Now)})
	}
	if next != nil {
		page.NextCursor = next.Encode()
	}
	admin.WriteJSON(w, http.StatusOK, page)
}

// CountResult is the answer of GET /certificates/count.
type CountResult struct {
	Count int       `json:"count"`
	At    time.Time `json:"at"` // the time the statuses were computed for
}

// count answers GET /certificates/count: the number of certificates the
// same filter parameters as GET /certificates select (paging parameters
// are refused, so a mistyped URL is not a silent count of everything).
func (p *Plugin) count(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	for _, k := range []string{"limit", "cursor", "sort", "order"} {
		if v.Has(k) {
			admin.WriteError(w, http.StatusBadRequest, "%s: not a parameter of /certificates/count", k)
			return
		}
	}
	f, err := ParseFilter(v)
	if err != nil {
		admin.WriteError(w, http.StatusBadRequest, "%v", err)
		return
	}
	now := p.host.Now()
	n, err := p.store.Count(&f, now)
	if err != nil {
		p.fail(w, "count certificates", err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, CountResult{Count: n, At: now.UTC()})
}

func (p *Plugin) fail(w http.ResponseWriter, what string, err error) {
	p.host.Logger().Error(what, "error", err)
	admin.WriteError(w, http.StatusServiceUnavailable, "%s: %v", what, err)
}

// show answers GET /certificates/{serial}; a serial that reads as both
// decimal and hex must name one certificate.
func (p *Plugin) show(w http.ResponseWriter, r *http.Request) {
	forms, err := SerialForms(chi.URLParam(r, "serial"))
	if err != nil {
		admin.WriteError(w, http.StatusBadRequest, "%v", err)
		return
	}
	var found []*Record
	for _, sn := range forms {
		rec, err := p.store.Get(sn)
		if err != nil {
			p.fail(w, "show certificate", err)
			return
		}
		if rec != nil {
			found = append(found, rec)
		}
	}
	switch len(found) {
	case 0:
		admin.WriteError(w, http.StatusNotFound, "certificate %q not found", chi.URLParam(r, "serial"))
		return
	case 2:
		admin.WriteError(w, http.StatusConflict, "serial %q names %s (decimal) and %s (hex): write it with colons or 0x for hex",
			chi.URLParam(r, "serial"), found[0].Serial, found[1].Serial)
		return
	}
	rec := found[0]
	v := View{Record: *rec, Status: rec.Status(p.host.Now())}
	if c, err := storedCertificate(p.host.DB(), rec.Serial); err != nil {
		p.fail(w, "show certificate", err)
		return
	} else if c != nil {
		v.PEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	admin.WriteJSON(w, http.StatusOK, v)
}

// export streams every match in the table's order; the body is written
// as rows come, so the server holds a few batches of rows at a time.
func (p *Plugin) export(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	format := v.Get("format")
	if format == "" {
		format = "jsonl"
	}
	if format != "csv" && format != "jsonl" {
		admin.WriteError(w, http.StatusBadRequest, "format: must be csv or jsonl, got %q", format)
		return
	}
	for _, k := range []string{"cursor", "limit", "sort", "order"} {
		if v.Has(k) {
			admin.WriteError(w, http.StatusBadRequest, "%s: an export has every match in the table's order; use GET /certificates to page or sort", k)
			return
		}
	}
	q, err := ParseQuery(v, p.host.Now())
	if err != nil {
		admin.WriteError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if format == FormatCSV {
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	} else {
		w.Header().Set("Content-Type", "application/jsonl")
	}
	w.Header().Set("Content-Disposition", `attachment; filename="certificates.`+format+`"`)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	n, err := WriteExport(w, p.store, q, format)
	if err != nil {
		// The status is sent: a truncated body is all we can signal, and
		// the log says why.
		p.host.Logger().Error("export certificates", "rows", n, "error", err)
	}
}

// RevokeRequest is the body of POST /certificates/revoke.
type RevokeRequest struct {
	// Filter uses the parameter names of GET /certificates.
	Filter map[string]string `json:"filter"`
	// All must be true to revoke with an empty filter.
	All        bool   `json:"all,omitempty"`
	ReasonCode int    `json:"reasonCode"`
	Reason     string `json:"reason,omitempty"`
	DryRun     bool   `json:"dryRun,omitempty"`
}

// RevokeResult is the answer of POST /certificates/revoke.
type RevokeResult struct {
	DryRun bool `json:"dryRun"`
	// Matched counts the certificates that matched (and were not revoked)
	// before this request acted.
	Matched int `json:"matched"`
	// Serials are the first of them (dry run) or the ones revoked.
	Serials        []string       `json:"serials"`
	Revoked        int            `json:"revoked"`
	AlreadyRevoked int            `json:"alreadyRevoked"`
	Failed         []RevokeFailed `json:"failed,omitempty"`
	// Remaining counts the matches left after this request: repeat the
	// request while it is not 0 (a request revokes at most revokeBatch).
	Remaining int `json:"remaining"`
}

// RevokeFailed is one certificate that could not be revoked.
type RevokeFailed struct {
	Serial string `json:"serial"`
	Error  string `json:"error"`
}

const (
	dryRunSerials  = 100
	maxReasonLen   = 256
	maxFailedShown = 100
)

var filterKeys = []string{"q", "serial", "provisioner", "status", "expiresBefore", "expiresAfter", "device", "endpoint"}

func parseRevoke(req *RevokeRequest) (*Filter, error) {
	v := url.Values{}
	for k, val := range req.Filter {
		if !contains(filterKeys, k) {
			return nil, fmt.Errorf("filter.%s: unknown filter (known: %v)", k, filterKeys)
		}
		v.Set(k, val)
	}
	f, err := ParseFilter(v)
	if err != nil {
		return nil, fmt.Errorf("filter.%w", err)
	}
	if f.Status == StatusRevoked {
		return nil, errors.New("filter.status: revoked certificates cannot be revoked again")
	}
	if f.Empty() && !req.All {
		return nil, errors.New("filter: empty; it would match every certificate: set \"all\": true to mean it")
	}
	// RFC 5280 CRLReason: 7 is unused and 8 (removeFromCRL) is no reason
	// to revoke.
	if req.ReasonCode < 0 || req.ReasonCode > 10 || req.ReasonCode == 7 || req.ReasonCode == 8 {
		return nil, fmt.Errorf("reasonCode: must be an RFC 5280 reason 0-6, 9 or 10, got %d", req.ReasonCode)
	}
	if len(req.Reason) > maxReasonLen {
		return nil, fmt.Errorf("reason: at most %d bytes", maxReasonLen)
	}
	f.notRevoked = true
	return &f, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func (p *Plugin) revoke(w http.ResponseWriter, r *http.Request) {
	var req RevokeRequest
	if !admin.ReadJSON(w, r, &req) {
		return
	}
	f, err := parseRevoke(&req)
	if err != nil {
		admin.WriteError(w, http.StatusBadRequest, "%v", err)
		return
	}
	now := p.host.Now()
	matched, err := p.store.Count(f, now)
	if err != nil {
		p.fail(w, "revoke certificates", err)
		return
	}
	res := &RevokeResult{DryRun: req.DryRun, Matched: matched, Serials: []string{}}
	limit := p.cfg.RevokeBatch
	if req.DryRun {
		limit = dryRunSerials
	}
	q := &Query{Filter: *f, Sort: SortNotAfter, Limit: min(limit, MaxLimit), Now: now}
	for taken := 0; taken < limit; {
		q.Limit = min(limit-taken, MaxLimit)
		recs, next, err := p.store.List(q)
		if err != nil {
			p.fail(w, "revoke certificates", err)
			return
		}
		for _, rec := range recs {
			taken++
			if req.DryRun {
				res.Serials = append(res.Serials, rec.Serial)
				continue
			}
			p.revokeOne(r, rec.Serial, &req, res)
		}
		if next == nil {
			break
		}
		q.After = next
	}
	res.Remaining = matched
	if !req.DryRun {
		if res.Remaining, err = p.store.Count(f, now); err != nil {
			p.fail(w, "revoke certificates", err)
			return
		}
	}
	admin.WriteJSON(w, http.StatusOK, res)
}

// revokeOne revokes through upstream's path and indexes the stored
// revocation at once (the event will bring the same values), so the next
// request does not match the certificate again.
func (p *Plugin) revokeOne(r *http.Request, serial string, req *RevokeRequest, res *RevokeResult) {
	actor := "token:"
	if tok := admin.TokenFrom(r); tok != nil {
		actor += tok.ID
	}
	err := p.host.Revoke(r.Context(), plugins.RevokeRequest{Serial: serial, ReasonCode: req.ReasonCode, Reason: req.Reason, Actor: actor})
	switch {
	case err == nil:
		res.Revoked++
		res.Serials = append(res.Serials, serial)
	case errors.Is(err, plugins.ErrAlreadyRevoked):
		res.AlreadyRevoked++
	default:
		if len(res.Failed) < maxFailedShown {
			res.Failed = append(res.Failed, RevokeFailed{Serial: serial, Error: err.Error()})
		}
		return
	}
	if err := p.indexRevocation(serial); err != nil {
		p.host.Logger().Warn("index revocation", "serial", serial, "error", err)
	}
}

func (p *Plugin) indexRevocation(serial string) error {
	rci, err := storage.Revocation(p.host.DB(), serial)
	if err != nil || rci == nil {
		return err
	}
	rec, err := stub(serial)
	if err != nil {
		return err
	}
	rec.Revocation = &Revocation{ReasonCode: rci.ReasonCode, Reason: rci.Reason, RevokedAt: rci.RevokedAt.UTC()}
	return p.store.Put([]*Record{rec})
}

func (p *Plugin) reindex(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength > 0 {
		var empty struct{}
		if !admin.ReadJSON(w, r, &empty) {
			return
		}
	}
	start := time.Now() // for the log only
	res, err := Reindex(p.host.DB(), p.store)
	if err != nil {
		p.fail(w, "reindex", err)
		return
	}
	p.host.Logger().Info("certificate index rebuilt", "certificates", res.Certificates, "revocations", res.Revocations,
		"errors", len(res.Errors), "took", time.Since(start).String())
	admin.WriteJSON(w, http.StatusOK, res)
}

// sortedSerials is for tests and tools: the serials of records in order.
func sortedSerials(recs []*Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Serial
	}
	sort.Strings(out)
	return out
}
