package audit

import (
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/stepfort/stepfort/internal/admin"
	"github.com/stepfort/stepfort/plugins"
)

// Filter selects records; empty fields match everything.
type Filter struct {
	Since, Until time.Time // record time, inclusive / exclusive
	Action       string    // exact, or a prefix ending in ".": "admin."
	Outcome      string
	Actor        string // actor id, name or subject
	Serial       string // decimal
	Device       string
}

// Page bounds: a query returns at most MaxLimit records and scans at most
// maxScan records before it answers with a cursor to continue from.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
	maxScan      = 100_000
)

// Page is one answer of Query.
type Page struct {
	Records []json.RawMessage `json:"records"`
	// Next is the cursor of the next page ("after"); absent at the end.
	Next *int64 `json:"next,omitempty"`
}

func (f *Filter) match(r *Record, t time.Time) bool {
	switch {
	case !f.Since.IsZero() && t.Before(f.Since), !f.Until.IsZero() && !t.Before(f.Until):
		return false
	case f.Action != "" && r.Action != f.Action && !(strings.HasSuffix(f.Action, ".") && strings.HasPrefix(r.Action, f.Action)):
		return false
	case f.Outcome != "" && string(r.Outcome) != f.Outcome:
		return false
	case f.Actor != "" && r.Actor.ID != f.Actor && r.Actor.Name != f.Actor && r.Actor.Subject != f.Actor:
		return false
	case f.Serial != "" && r.Object.Serial != f.Serial:
		return false
	case f.Device != "" && r.Object.Device != f.Device:
		return false
	}
	return true
}

// Query returns records after the cursor (a sequence number; -1 = from the
// start) that match f, in sequence order.
func (t *Trail) Query(f Filter, after int64, limit int) (*Page, error) {
	first, size, err := t.Bounds()
	if err != nil {
		return nil, err
	}
	from := max(after+1, first)
	page := &Page{Records: []json.RawMessage{}}
	const chunk = 1000
	for lo := from; lo < size; lo += chunk {
		hi := min(lo+chunk, size)
		es, err := t.st.readRange(lo, hi)
		if err != nil {
			return nil, err
		}
		for i, e := range es {
			var r Record
			if err := json.Unmarshal(e.Record, &r); err != nil {
				return nil, fmt.Errorf("audit record %d: %w", lo+int64(i), err)
			}
			tm, _ := time.Parse(time.RFC3339Nano, r.Time)
			if f.match(&r, tm) {
				page.Records = append(page.Records, withHash(e))
				if len(page.Records) == limit {
					next := lo + int64(i)
					if next+1 < size {
						page.Next = &next
					}
					return page, nil
				}
			}
		}
		if hi-from >= maxScan && hi < size {
			next := hi - 1
			page.Next = &next
			return page, nil
		}
	}
	return page, nil
}

// withHash is the record with its hash, as the API shows it.
func withHash(e Entry) json.RawMessage {
	b := make([]byte, 0, len(e.Record)+80)
	b = append(b, e.Record[:len(e.Record)-1]...)
	b = append(b, `,"hash":"`...)
	b = append(b, e.Hash...)
	return append(b, `"}`...)
}

// ParseFilter reads the query string of GET /api/v1/audit; errors name the
// parameter.
func ParseFilter(q url.Values) (f Filter, after int64, limit int, err error) {
	after, limit = -1, DefaultLimit
	for _, p := range []struct {
		name string
		dst  *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		if v := q.Get(p.name); v != "" {
			if *p.dst, err = time.Parse(time.RFC3339, v); err != nil {
				return f, 0, 0, fmt.Errorf("%s: want RFC 3339 time, got %q", p.name, v)
			}
		}
	}
	f.Action, f.Outcome, f.Actor, f.Device = q.Get("action"), q.Get("outcome"), q.Get("actor"), q.Get("device")
	if f.Outcome != "" && f.Outcome != string(plugins.AuditSuccess) && f.Outcome != string(plugins.AuditDenied) && f.Outcome != string(plugins.AuditFailure) {
		return f, 0, 0, fmt.Errorf("outcome: want success, denied or failure, got %q", f.Outcome)
	}
	if v := q.Get("serial"); v != "" {
		if f.Serial, err = decimalSerial(v); err != nil {
			return f, 0, 0, err
		}
	}
	if v := q.Get("after"); v != "" {
		if after, err = strconv.ParseInt(v, 10, 64); err != nil || after < -1 {
			return f, 0, 0, fmt.Errorf("after: want a sequence number, got %q", v)
		}
	}
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > MaxLimit {
			return f, 0, 0, fmt.Errorf("limit: want 1 to %d, got %q", MaxLimit, v)
		}
	}
	return f, after, limit, nil
}

// decimalSerial accepts a serial in decimal or hex ("0x…" or with colons).
func decimalSerial(v string) (string, error) {
	n := new(big.Int)
	s := strings.ReplaceAll(strings.ToLower(v), ":", "")
	ok := false
	if h, isHex := strings.CutPrefix(s, "0x"); isHex || strings.Contains(v, ":") {
		_, ok = n.SetString(h, 16)
	} else {
		_, ok = n.SetString(s, 10)
	}
	if !ok || n.Sign() < 0 || len(v) > 128 {
		return "", fmt.Errorf("serial: want decimal or 0x-prefixed hex, got %q", v)
	}
	return n.String(), nil
}

// AdminRoutes are the trail's admin API routes (scope audit:read).
func (t *Trail) AdminRoutes() []plugins.AdminRoute {
	return []plugins.AdminRoute{
		{Method: http.MethodGet, Pattern: "/audit", Scope: "audit:read", Handler: http.HandlerFunc(t.serveQuery)},
		{Method: http.MethodGet, Pattern: "/audit/export", Scope: "audit:read", Handler: http.HandlerFunc(t.serveExport)},
		{Method: http.MethodGet, Pattern: "/audit/key", Scope: "audit:read", Handler: http.HandlerFunc(t.serveKey)},
		{Method: http.MethodGet, Pattern: "/audit/status", Scope: "audit:read", Handler: http.HandlerFunc(t.serveStatus)},
	}
}

// serveStatus answers the cached chain verification and the latest
// checkpoint (ChainStatus); it does not verify (that is the background
// job's), so it costs one read of the latest checkpoint at most.
func (t *Trail) serveStatus(w http.ResponseWriter, _ *http.Request) {
	admin.WriteJSON(w, http.StatusOK, t.ChainStatus())
}

func (t *Trail) serveQuery(w http.ResponseWriter, r *http.Request) {
	f, after, limit, err := ParseFilter(r.URL.Query())
	if err != nil {
		admin.WriteError(w, http.StatusBadRequest, "%v", err)
		return
	}
	p, err := t.Query(f, after, limit)
	if err != nil {
		admin.WriteError(w, http.StatusServiceUnavailable, "query audit trail: %v", err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, p)
}

func (t *Trail) serveExport(w http.ResponseWriter, r *http.Request) {
	var from, to int64
	for _, p := range []struct {
		name string
		dst  *int64
	}{{"from", &from}, {"to", &to}} {
		v := r.URL.Query().Get(p.name)
		if v == "" {
			continue
		}
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			*p.dst = n
			continue
		}
		tm, err := time.Parse(time.RFC3339, v)
		if err != nil {
			admin.WriteError(w, http.StatusBadRequest, "%s: want a sequence number or an RFC 3339 time, got %q", p.name, v)
			return
		}
		if *p.dst, err = t.seqAt(tm); err != nil {
			admin.WriteError(w, http.StatusServiceUnavailable, "%s: %v", p.name, err)
			return
		}
	}
	hd, err := t.ExportHeader(from, to)
	if err != nil {
		admin.WriteError(w, http.StatusBadRequest, "export: %v", err)
		return
	}
	w.Header().Set("Content-Type", "application/jsonl")
	w.Header().Set("Cache-Control", "no-store")
	if err := t.WriteExport(w, hd); err != nil {
		t.o.Log.Error("audit export", "error", err)
	}
}

func (t *Trail) serveKey(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/x-pem-file")
	_, _ = w.Write(PublicPEM(t.PublicKey()))
}

// seqAt is the sequence number of the first record at or after tm (the
// trail's size when none is): records are appended in time order, give or
// take the clock skew between replicas.
func (t *Trail) seqAt(tm time.Time) (int64, error) {
	first, size, err := t.Bounds()
	if err != nil {
		return 0, err
	}
	const chunk = 1000
	for lo := first; lo < size; lo += chunk {
		es, err := t.st.readRange(lo, min(lo+chunk, size))
		if err != nil {
			return 0, err
		}
		for i, e := range es {
			var r struct {
				Time string `json:"time"`
			}
			_ = json.Unmarshal(e.Record, &r)
			if rt, err := time.Parse(time.RFC3339Nano, r.Time); err == nil && !rt.Before(tm) {
				return lo + int64(i), nil
			}
		}
	}
	return size, nil
}
