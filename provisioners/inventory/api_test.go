package inventory

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/stepfort/stepfort/plugins/plugintest"
)

// TestAPIHandlers drives the device and collection handlers through a chi
// router, as the admin API mounts them (authentication is the admin API's
// job and tested there).
func TestAPIHandlers(t *testing.T) {
	api := &API{Store: newTestStore(t)}
	r := chi.NewRouter()
	for _, rt := range api.Routes() {
		r.Method(rt.Method, rt.Pattern, rt.Handler)
	}
	do := func(method, path, body string) (int, map[string]any) {
		t.Helper()
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		var out map[string]any
		_ = json.Unmarshal(rec.Body.Bytes(), &out)
		return rec.Code, out
	}

	tests := []struct {
		method, path, body string
		want               int
		message            string // substring of the error message
	}{
		{"POST", "/collections", `{"name":"laptops"}`, http.StatusCreated, ""},
		{"POST", "/collections", `{"name":"laptops"}`, http.StatusConflict, ""},
		{"POST", "/collections", `{"name":`, http.StatusBadRequest, "invalid request body"},
		{"PATCH", "/collections/laptops", `{"description":"engineering"}`, http.StatusOK, ""},
		{"GET", "/collections/laptops", "", http.StatusOK, ""},
		{"GET", "/collections/nope", "", http.StatusNotFound, ""},
		{"POST", "/devices", `{"identifiers":["SERIAL-1"],"name":"a","collection":"laptops"}`, http.StatusCreated, ""},
		{"POST", "/devices", `{"identifiers":["SERIAL-1"]}`, http.StatusConflict, ""},
		{"POST", "/devices", `{"identifiers":["SERIAL-2"],"unknown":1}`, http.StatusBadRequest, "unknown field"},
		{"GET", "/devices/SERIAL-1", "", http.StatusOK, ""},
		{"GET", "/devices/count?status=active&collection=laptops", "", http.StatusOK, ""},
		{"GET", "/devices/count?limit=5", "", http.StatusBadRequest, "limit: not a parameter"},
		{"GET", "/devices/count?status=asleep", "", http.StatusBadRequest, "status: must be active or disabled"},
		{"PATCH", "/devices/SERIAL-1", `{"status":"sleeping"}`, http.StatusBadRequest, "status: must be active or disabled"},
		{"PATCH", "/devices/SERIAL-1", `{"status":"disabled"}`, http.StatusOK, ""},
		{"DELETE", "/devices/SERIAL-1", "", http.StatusOK, ""},
		{"GET", "/devices/SERIAL-1", "", http.StatusNotFound, ""},
		{"DELETE", "/collections/laptops", "", http.StatusOK, ""},
	}
	counts := map[string]float64{}
	for _, tt := range tests {
		code, body := do(tt.method, tt.path, tt.body)
		if strings.HasPrefix(tt.path, "/devices/count?status=active") && code == http.StatusOK {
			counts[tt.path], _ = body["count"].(float64)
		}
		if code != tt.want {
			t.Fatalf("%s %s %s: %d %v, want %d", tt.method, tt.path, tt.body, code, body, tt.want)
		}
		if tt.message != "" && !strings.Contains(body["message"].(string), tt.message) {
			t.Fatalf("%s %s: message %q lacks %q", tt.method, tt.path, body["message"], tt.message)
		}
	}
	if got := counts["/devices/count?status=active&collection=laptops"]; got != 1 {
		t.Fatalf("count of active laptops: %v, want 1", got)
	}
}

// TestPluginRecordsDeviceEvents: the plugin is ready when New returns, and
// a device disabled or removed through its admin routes records a device
// event through the host.
func TestPluginRecordsDeviceEvents(t *testing.T) {
	h := plugintest.NewHost(t)
	p, err := New(&Config{MaxImportBytes: 1 << 20, MaxImportRows: 10}, h)
	if err != nil {
		t.Fatal(err)
	}
	r := chi.NewRouter()
	for _, rt := range p.AdminRoutes() {
		r.Method(rt.Method, rt.Pattern, rt.Handler)
	}
	for _, step := range []struct{ method, path, body string }{
		{"POST", "/devices", `{"identifiers":["SERIAL-1"]}`},
		{"PATCH", "/devices/SERIAL-1", `{"status":"disabled"}`},
		{"DELETE", "/devices/SERIAL-1", ""},
	} {
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, httptest.NewRequest(step.method, step.path, strings.NewReader(step.body)))
		if rec.Code >= 300 {
			t.Fatalf("%s %s: %d %s", step.method, step.path, rec.Code, rec.Body)
		}
	}
	events := h.Recorder.(*plugintest.Recorder)
	var kinds []string
	for _, ev := range events.Added {
		kinds = append(kinds, string(ev.Kind))
	}
	if strings.Join(kinds, ",") != "device.disabled,device.removed" || len(events.Announced) != 2 {
		t.Fatalf("events %v, announced %v", kinds, events.Announced)
	}
}
