package ui

import (
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
)

type deviceView struct {
	ID          string     `json:"id"`
	Identifiers []string   `json:"identifiers"`
	Name        string     `json:"name"`
	Type        string     `json:"type"`
	OS          string     `json:"os"`
	Serial      string     `json:"serial"`
	Collection  string     `json:"collection"`
	Owner       string     `json:"owner"`
	Source      string     `json:"source"`
	Status      string     `json:"status"`
	CreatedAt   time.Time  `json:"createdAt"`
	UpdatedAt   time.Time  `json:"updatedAt"`
	LastSeenAt  *time.Time `json:"lastSeenAt"`
}

type devicesPage struct {
	Devices               []deviceView
	NextCursor            string
	Q, Status, Collection string
	FirstPage             bool
	Collections           []string
}

func (s *Server) devices(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	d := &devicesPage{Q: q.Get("q"), Status: q.Get("status"), Collection: q.Get("collection"), FirstPage: q.Get("cursor") == ""}
	p := &page{Title: "Devices", Nav: "devices", Data: d}
	v := url.Values{"limit": {strconv.Itoa(pageSize)}}
	for k, val := range map[string]string{"q": d.Q, "status": d.Status, "collection": d.Collection, "cursor": q.Get("cursor")} {
		if val != "" {
			v.Set(k, val)
		}
	}
	var list struct {
		Devices    []deviceView `json:"devices"`
		NextCursor string       `json:"nextCursor"`
	}
	if res := s.call(r, http.MethodGet, "/api/v1/devices?"+v.Encode(), nil, &list); !res.ok() {
		s.apiFailed(w, r, res, "devices", p)
		return
	}
	d.Devices, d.NextCursor = list.Devices, list.NextCursor
	var cols struct {
		Collections []struct {
			Name string `json:"name"`
		} `json:"collections"`
	}
	if s.call(r, http.MethodGet, "/api/v1/collections", nil, &cols).ok() {
		for _, c := range cols.Collections {
			d.Collections = append(d.Collections, c.Name)
		}
	}
	s.render(w, r, http.StatusOK, "devices", p)
}

// splitList reads a comma- or newline-separated form field.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' || r == '\r' }) {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func (s *Server) addDevice(w http.ResponseWriter, r *http.Request) {
	body := map[string]any{"identifiers": splitList(r.PostFormValue("identifiers"))}
	for _, k := range []string{"name", "type", "os", "serial", "collection", "owner"} {
		if v := strings.TrimSpace(r.PostFormValue(k)); v != "" {
			body[k] = v
		}
	}
	body["source"] = "manual"
	var d deviceView
	res := s.call(r, http.MethodPost, "/api/v1/devices", body, &d)
	if !res.ok() {
		if res.status == http.StatusUnauthorized {
			s.apiFailed(w, r, res, "devices", &page{})
			return
		}
		s.redirectFlash(w, r, Prefix+"/devices", "Device not added: "+res.err)
		return
	}
	s.redirectFlash(w, r, Prefix+"/devices/"+url.PathEscape(d.ID), "Device "+d.ID+" added.")
}

type deviceDetail struct {
	D            deviceView
	Certificates []certView
	More         bool
	CertsShown   bool
}

func (s *Server) device(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	dd := &deviceDetail{}
	p := &page{Title: "Device", Nav: "devices", Data: dd}
	if res := s.call(r, http.MethodGet, "/api/v1/devices/"+url.PathEscape(id), nil, &dd.D); !res.ok() {
		s.apiFailed(w, r, res, "device", p)
		return
	}
	p.Title = "Device " + dd.D.Name
	if (&page{scopes: sessionOf(r).scopes}).Can("certificates:read") {
		dd.Certificates, dd.More, dd.CertsShown = s.deviceCertificates(r, dd.D.Identifiers)
	}
	s.render(w, r, http.StatusOK, "device", p)
}

// maxIdentifierQueries bounds the certificate queries of a device page.
const maxIdentifierQueries = 5

// deviceCertificates lists the active certificates the index ties to the
// device: its "device" field is the attested permanent identifier (ACME
// device-attest-01), one of the device's identifiers.
func (s *Server) deviceCertificates(r *http.Request, identifiers []string) (certs []certView, more, ok bool) {
	for i, id := range identifiers {
		if i == maxIdentifierQueries {
			return certs, true, ok
		}
		var list struct {
			Certificates []certView `json:"certificates"`
			NextCursor   string     `json:"nextCursor"`
		}
		v := url.Values{"device": {id}, "status": {"active"}, "limit": {strconv.Itoa(pageSize)}}
		if !s.call(r, http.MethodGet, "/api/v1/certificates?"+v.Encode(), nil, &list).ok() {
			return certs, more, false
		}
		ok = true
		certs = append(certs, list.Certificates...)
		more = more || list.NextCursor != ""
	}
	return certs, more, ok
}

func (s *Server) deviceStatus(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	st := r.PostFormValue("status")
	if st != "active" && st != "disabled" {
		http.Error(w, "status: must be active or disabled", http.StatusBadRequest)
		return
	}
	res := s.call(r, http.MethodPatch, "/api/v1/devices/"+url.PathEscape(id), map[string]any{"status": st}, nil)
	if !res.ok() {
		s.apiFailed(w, r, res, "device", &page{Title: "Device", Nav: "devices", Data: &deviceDetail{}})
		return
	}
	msg := "Device enabled."
	if st == "disabled" {
		msg = "Device disabled: its certificates are being revoked."
	}
	s.redirectFlash(w, r, Prefix+"/devices/"+url.PathEscape(id), msg)
}

func (s *Server) removeDevice(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	res := s.call(r, http.MethodDelete, "/api/v1/devices/"+url.PathEscape(id), nil, nil)
	if !res.ok() {
		s.apiFailed(w, r, res, "device", &page{Title: "Device", Nav: "devices", Data: &deviceDetail{}})
		return
	}
	s.redirectFlash(w, r, Prefix+"/devices", "Device "+id+" removed: its certificates are being revoked.")
}

type importReport struct {
	Accepted  int    `json:"accepted"`
	Updated   int    `json:"updated"`
	Unchanged int    `json:"unchanged"`
	Rejected  int    `json:"rejected"`
	Total     int    `json:"total"`
	Error     string `json:"error"`
	Rows      []struct {
		Line       int    `json:"line"`
		Status     string `json:"status"`
		DeviceID   string `json:"deviceId"`
		Identifier string `json:"identifier"`
		Reason     string `json:"reason"`
	} `json:"rows"`
}

func (s *Server) importForm(w http.ResponseWriter, r *http.Request) {
	s.render(w, r, http.StatusOK, "import", &page{Title: "Import devices", Nav: "devices"})
}

// importDevices sends an uploaded CSV to POST /api/v1/devices/import and
// shows the per-row report.
func (s *Server) importDevices(w http.ResponseWriter, r *http.Request) {
	p := &page{Title: "Import devices", Nav: "devices"}
	f, _, err := r.FormFile("file")
	if err != nil {
		p.Error = "file: choose a CSV file to import"
		s.render(w, r, http.StatusBadRequest, "import", p)
		return
	}
	defer f.Close()
	v := url.Values{}
	for _, k := range []string{"map", "source"} {
		if val := strings.TrimSpace(r.FormValue(k)); val != "" {
			v.Set(k, val)
		}
	}
	var rep importReport
	res := s.callToken(r, sessionOf(r).token, http.MethodPost, "/api/v1/devices/import?"+v.Encode(), io.LimitReader(f, maxImportBody), "text/csv", &rep)
	if !res.ok() && res.status != http.StatusUnprocessableEntity {
		s.apiFailed(w, r, res, "import", p)
		return
	}
	p.Data = &rep
	s.render(w, r, http.StatusOK, "import", p)
}
