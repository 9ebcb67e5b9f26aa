package inventory

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
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
	ScopeRead  = "devices:read"
	ScopeWrite = "devices:write"
)

// API serves /api/v1/devices and /api/v1/collections.
type API struct {
	Store          *Store
	MaxImportBytes int64
	MaxImportRows  int
	// ImportWait overrides the package's ImportWait (tests).
	ImportWait time.Duration
	Log        *slog.Logger // nil: slog.Default()
	// Audit records every device and collection change (nil: none).
	Audit plugins.Auditor
}

// record appends the audit record of a change through the API: the admin
// token that asked, the object, and how it ended.
func (a *API) record(r *http.Request, action string, obj plugins.AuditObject, err error, details map[string]string) {
	if a.Audit == nil {
		return
	}
	rec := plugins.AuditRecord{Action: action, Outcome: plugins.AuditSuccess, Actor: plugins.AuditActor{Kind: "adminToken", RemoteAddr: r.RemoteAddr}, Object: obj, Details: details}
	if tok := admin.TokenFrom(r); tok != nil {
		rec.Actor.ID, rec.Actor.Name = tok.ID, tok.Name
	}
	if err != nil {
		rec.Outcome, rec.Reason = plugins.AuditFailure, err.Error()
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
	defer cancel()
	if rerr := a.Audit.Record(ctx, rec); rerr != nil {
		a.logger().Error("audit record not written", "action", action, "error", rerr)
	}
}

// Routes lists the admin routes.
func (a *API) Routes() []plugins.AdminRoute {
	return []plugins.AdminRoute{
		{Method: http.MethodGet, Pattern: "/devices", Scope: ScopeRead, Handler: a.listDevices},
		{Method: http.MethodGet, Pattern: "/devices/count", Scope: ScopeRead, Handler: a.countDevices},
		{Method: http.MethodPost, Pattern: "/devices", Scope: ScopeWrite, Handler: a.createDevice()},
		{Method: http.MethodPost, Pattern: "/devices/import", Scope: ScopeWrite, Handler: a.importDevices, MaxBody: a.MaxImportBytes},
		{Method: http.MethodGet, Pattern: "/devices/{id}", Scope: ScopeRead, Handler: a.getDevice()},
		{Method: http.MethodPatch, Pattern: "/devices/{id}", Scope: ScopeWrite, Handler: a.updateDevice()},
		{Method: http.MethodDelete, Pattern: "/devices/{id}", Scope: ScopeWrite, Handler: a.deleteDevice()},
		{Method: http.MethodGet, Pattern: "/collections", Scope: ScopeRead, Handler: a.listCollections},
		{Method: http.MethodPost, Pattern: "/collections", Scope: ScopeWrite, Handler: a.createCollection()},
		{Method: http.MethodGet, Pattern: "/collections/{name}", Scope: ScopeRead, Handler: a.getCollection()},
		{Method: http.MethodPatch, Pattern: "/collections/{name}", Scope: ScopeWrite, Handler: a.updateCollection()},
		{Method: http.MethodDelete, Pattern: "/collections/{name}", Scope: ScopeWrite, Handler: a.deleteCollection()},
	}
}

func (a *API) logger() *slog.Logger {
	if a.Log != nil {
		return a.Log
	}
	return slog.Default()
}

// writeErr maps store errors to statuses.
func writeErr(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		admin.WriteError(w, http.StatusNotFound, "%v", err)
	case errors.Is(err, ErrConflict):
		admin.WriteError(w, http.StatusConflict, "%v", err)
	case errors.Is(err, ErrInvalid):
		admin.WriteError(w, http.StatusBadRequest, "%v", err)
	default:
		admin.WriteError(w, http.StatusServiceUnavailable, "inventory: %v", err)
	}
}

// DeviceList is the answer of GET /devices.
type DeviceList struct {
	Devices    []*Device `json:"devices"`
	NextCursor string    `json:"nextCursor,omitempty"`
}

func (a *API) listDevices(w http.ResponseWriter, r *http.Request) {
	s := a.Store
	q := r.URL.Query()
	o := ListOptions{
		Collection: q.Get("collection"), Status: Status(q.Get("status")), Owner: q.Get("owner"),
		Type: q.Get("type"), Source: q.Get("source"), Query: q.Get("q"), Cursor: q.Get("cursor"),
	}
	if o.Status != "" && !o.Status.Valid() {
		admin.WriteError(w, http.StatusBadRequest, "status: must be active or disabled")
		return
	}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 1000 {
			admin.WriteError(w, http.StatusBadRequest, "limit: must be 1..1000")
			return
		}
		o.Limit = n
	}
	if id := q.Get("identifier"); id != "" {
		d, err := s.ByIdentifier(id)
		if errors.Is(err, ErrNotFound) {
			admin.WriteJSON(w, http.StatusOK, DeviceList{Devices: []*Device{}})
			return
		}
		if err != nil {
			writeErr(w, err)
			return
		}
		admin.WriteJSON(w, http.StatusOK, DeviceList{Devices: []*Device{d}})
		return
	}
	devs, next, err := s.List(o)
	if err != nil {
		writeErr(w, err)
		return
	}
	if devs == nil {
		devs = []*Device{}
	}
	admin.WriteJSON(w, http.StatusOK, DeviceList{Devices: devs, NextCursor: next})
}

// countDevices answers GET /devices/count: {"count": N} for the filters
// of GET /devices (q, status, collection, owner, type, source); paging
// parameters are refused.
func (a *API) countDevices(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	for _, k := range []string{"limit", "cursor", "identifier"} {
		if q.Has(k) {
			admin.WriteError(w, http.StatusBadRequest, "%s: not a parameter of /devices/count", k)
			return
		}
	}
	o := ListOptions{Collection: q.Get("collection"), Status: Status(q.Get("status")), Owner: q.Get("owner"),
		Type: q.Get("type"), Source: q.Get("source"), Query: q.Get("q")}
	if o.Status != "" && !o.Status.Valid() {
		admin.WriteError(w, http.StatusBadRequest, "status: must be active or disabled")
		return
	}
	n, err := a.Store.Count(o)
	if err != nil {
		writeErr(w, err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, map[string]int{"count": n})
}

// lookup accepts a device ID or a permanent identifier in {id}.
// Identifiers with "/" (EK URNs) must be sent percent-encoded; chi then
// routes on the raw path and hands over the escaped value.
func lookup(s *Store, key string) (*Device, error) {
	if k, err := url.PathUnescape(key); err == nil {
		key = k
	}
	if strings.HasPrefix(key, "dev_") {
		return s.Get(key)
	}
	return s.ByIdentifier(key)
}

// ImportWait is how long an import request waits for the one running in
// this process before it is answered 429.
const ImportWait = 2 * time.Minute

// importDevices takes CSV (text/csv, with ?map=field:Column,...) or JSON
// (application/json) and answers with a per-row report. One import at a
// time is parsed and written per process; others wait (ImportWait at
// most, then 429) before reading their body.
func (a *API) importDevices(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), a.importWait())
	release, err := a.Store.AcquireImport(ctx)
	cancel()
	if err != nil {
		w.Header().Set("Retry-After", "30")
		admin.WriteError(w, http.StatusTooManyRequests, "another import is running; retry later")
		return
	}
	defer release()
	a.importLocked(w, r)
}

func (a *API) importWait() time.Duration {
	if a.ImportWait > 0 {
		return a.ImportWait
	}
	return ImportWait
}

// importLocked is importDevices once it holds the import slot.
func (a *API) importLocked(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	source := "import"
	if src := strings.TrimSpace(q.Get("source")); src != "" {
		if len(src) > 64 {
			admin.WriteError(w, http.StatusBadRequest, "source: at most 64 characters")
			return
		}
		source = "import:" + src
	}
	body := io.Reader(http.MaxBytesReader(w, r.Body, a.MaxImportBytes))
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var rows []ImportRow
	var ignored []string
	var err error
	switch ct {
	case "text/csv", "application/csv", "":
		var m Mapping
		if m, err = ParseMapping(q.Get("map")); err != nil {
			admin.WriteError(w, http.StatusBadRequest, "%v", err)
			return
		}
		rows, ignored, err = ParseCSV(body, m, a.MaxImportRows)
	case "application/json":
		rows, err = ParseJSONRows(body, a.MaxImportRows)
	default:
		admin.WriteError(w, http.StatusUnsupportedMediaType, "Content-Type must be text/csv or application/json, got %q", ct)
		return
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			admin.WriteError(w, http.StatusRequestEntityTooLarge, "import larger than %d bytes", a.MaxImportBytes)
			return
		}
		admin.WriteError(w, http.StatusBadRequest, "import: %v", err)
		return
	}
	rep, err := a.Store.Import(rows, source)
	det := map[string]string{"source": source, "rows": strconv.Itoa(len(rows))}
	if rep != nil {
		det["accepted"], det["updated"], det["rejected"] = strconv.Itoa(rep.Accepted), strconv.Itoa(rep.Updated), strconv.Itoa(rep.Rejected)
	}
	a.record(r, "device.import", plugins.AuditObject{}, err, det)
	if err != nil && rep == nil {
		writeErr(w, fmt.Errorf("import: %w", err))
		return
	}
	if err != nil {
		// Part of the import was stored: the report says which rows.
		a.logger().Error("import stopped by a database error", "event", "inventory.import_failed", "source", source, "error", err,
			"accepted", rep.Accepted, "updated", rep.Updated)
	}
	rep.IgnoredColumns = ignored
	if tok := admin.TokenFrom(r); tok != nil {
		a.logger().Info("devices imported", "by", tok.ID, "source", source, "total", rep.Total, "accepted", rep.Accepted, "updated", rep.Updated, "unchanged", rep.Unchanged, "rejected", rep.Rejected)
	}
	admin.WriteJSON(w, http.StatusOK, rep)
}

func (a *API) listCollections(w http.ResponseWriter, _ *http.Request) {
	cs, err := a.Store.ListCollections()
	if err != nil {
		writeErr(w, err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, map[string]any{"collections": cs})
}

// reply is a handler's answer: a value to send as JSON with a status.
type reply struct {
	status int
	body   any
}

// handle wraps fn with what every handler does: answer its result as
// JSON, or map its error to a status (writeErr).
func (a *API) handle(fn func(s *Store, r *http.Request) (reply, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		out, err := fn(a.Store, r)
		answer(w, out, err)
	}
}

// withBody is handle for handlers that take a JSON body (decoded strictly;
// ReadJSON answers a bad body with 400 before fn runs).
func withBody[In any](a *API, fn func(s *Store, r *http.Request, in In) (reply, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var in In
		if !admin.ReadJSON(w, r, &in) {
			return
		}
		out, err := fn(a.Store, r, in)
		answer(w, out, err)
	}
}

func answer(w http.ResponseWriter, out reply, err error) {
	if err != nil {
		writeErr(w, err)
		return
	}
	admin.WriteJSON(w, out.status, out.body)
}

func ok(body any) (reply, error)      { return reply{http.StatusOK, body}, nil }
func created(body any) (reply, error) { return reply{http.StatusCreated, body}, nil }

func (a *API) createDevice() http.HandlerFunc {
	return withBody(a, func(s *Store, r *http.Request, in DeviceInput) (reply, error) {
		d, err := s.Create(in)
		obj := plugins.AuditObject{}
		if d != nil {
			obj.Device = d.ID
		}
		a.record(r, "device.create", obj, err, nil)
		if err != nil {
			return reply{}, err
		}
		return created(d)
	})
}

func (a *API) getDevice() http.HandlerFunc {
	return a.handle(func(s *Store, r *http.Request) (reply, error) {
		d, err := lookup(s, chi.URLParam(r, "id"))
		if err != nil {
			return reply{}, err
		}
		return ok(d)
	})
}

func (a *API) updateDevice() http.HandlerFunc {
	return withBody(a, func(s *Store, r *http.Request, p DevicePatch) (reply, error) {
		if p.Status != nil && !p.Status.Valid() {
			return reply{}, fmt.Errorf("%w: status: must be active or disabled", ErrInvalid)
		}
		d, err := lookup(s, chi.URLParam(r, "id"))
		if err != nil {
			return reply{}, err
		}
		id := d.ID
		d, err = s.Update(id, p)
		a.record(r, "device.update", plugins.AuditObject{Device: id}, err, patchDetails(p))
		if err != nil {
			return reply{}, err
		}
		return ok(d)
	})
}

func (a *API) deleteDevice() http.HandlerFunc {
	return a.handle(func(s *Store, r *http.Request) (reply, error) {
		d, err := lookup(s, chi.URLParam(r, "id"))
		if err != nil {
			return reply{}, err
		}
		id := d.ID
		d, err = s.Delete(id)
		a.record(r, "device.delete", plugins.AuditObject{Device: id}, err, nil)
		if err != nil {
			return reply{}, err
		}
		return ok(d)
	})
}

func (a *API) createCollection() http.HandlerFunc {
	return withBody(a, func(s *Store, r *http.Request, c Collection) (reply, error) {
		out, err := s.CreateCollection(c)
		a.record(r, "collection.create", plugins.AuditObject{}, err, map[string]string{"collection": c.Name})
		if err != nil {
			return reply{}, err
		}
		return created(out)
	})
}

func (a *API) getCollection() http.HandlerFunc {
	return a.handle(func(s *Store, r *http.Request) (reply, error) {
		c, err := s.GetCollection(chi.URLParam(r, "name"))
		if err != nil {
			return reply{}, err
		}
		return ok(c)
	})
}

func (a *API) updateCollection() http.HandlerFunc {
	return withBody(a, func(s *Store, r *http.Request, p CollectionPatch) (reply, error) {
		c, err := s.UpdateCollection(chi.URLParam(r, "name"), p)
		a.record(r, "collection.update", plugins.AuditObject{}, err, map[string]string{"collection": chi.URLParam(r, "name")})
		if err != nil {
			return reply{}, err
		}
		return ok(c)
	})
}

func (a *API) deleteCollection() http.HandlerFunc {
	return a.handle(func(s *Store, r *http.Request) (reply, error) {
		name := chi.URLParam(r, "name")
		err := s.DeleteCollection(name)
		a.record(r, "collection.delete", plugins.AuditObject{}, err, map[string]string{"collection": name})
		if err != nil {
			return reply{}, err
		}
		return ok(map[string]string{"deleted": name})
	})
}

// patchDetails names the fields a device patch changes (not their values:
// identifiers and keys belong in the inventory, not the trail).
func patchDetails(p DevicePatch) map[string]string {
	b, _ := json.Marshal(p)
	var m map[string]json.RawMessage
	_ = json.Unmarshal(b, &m)
	keys := make([]string, 0, len(m))
	for k, v := range m {
		if string(v) != "null" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	out := map[string]string{"fields": strings.Join(keys, ",")}
	if p.Status != nil {
		out["status"] = string(*p.Status)
	}
	return out
}
