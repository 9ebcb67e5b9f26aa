package certindex

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"math/rand/v2"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
)

func (f *fixture) do(method, target string, body any) *httptest.ResponseRecorder {
	f.t.Helper()
	r := chi.NewRouter()
	for _, rt := range f.p.AdminRoutes() {
		r.Method(rt.Method, rt.Pattern, rt.Handler)
	}
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req := httptest.NewRequest(method, target, rd)
	w := httptest.NewRecorder()
	r.ServeHTTP(w, req)
	return w
}

func TestExportNeutralisesFormulasAndStreamsEveryMatch(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			f := newFixture(t, backend)
			evil := []string{"=cmd|' /C calc'!A0", "+1", "-2", "@SUM(A1)", "\tx", "\rx"}
			for _, cn := range evil {
				f.observe(f.issue(jwk, "", t0, time.Hour, cn))
			}
			f.observe(f.issue(jwk, "", t0, time.Hour, "plain.example"))
			w := f.do("GET", "/certificates/export?format=csv", nil)
			if w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/csv") {
				t.Fatalf("export: %d %s", w.Code, w.Body)
			}
			rows, err := csv.NewReader(w.Body).ReadAll()
			if err != nil || len(rows) != len(evil)+2 || strings.Join(rows[0], ",") != strings.Join(CSVHeader, ",") {
				t.Fatalf("csv rows %d %v", len(rows), err)
			}
			cns := map[string]bool{}
			for _, row := range rows[1:] {
				cns[row[2]] = true
			}
			for _, cn := range evil {
				if !cns["'"+cn] {
					t.Errorf("CN %q not neutralised: %v", cn, cns)
				}
			}
			if !cns["plain.example"] {
				t.Errorf("plain CN changed: %v", cns)
			}
			w = f.do("GET", "/certificates/export?format=jsonl&q=plain", nil)
			sc := bufio.NewScanner(w.Body)
			n := 0
			for sc.Scan() {
				var v View
				if err := json.Unmarshal(sc.Bytes(), &v); err != nil || v.CommonName != "plain.example" || v.Status != StatusActive {
					t.Fatalf("jsonl line %s: %v", sc.Text(), err)
				}
				n++
			}
			if n != 1 {
				t.Fatalf("jsonl lines %d", n)
			}
			if w := f.do("GET", "/certificates/export?format=xml", nil); w.Code != 400 || !strings.Contains(w.Body.String(), "format") {
				t.Fatalf("bad format: %d %s", w.Code, w.Body)
			}
		})
	}
}

func TestRevokeByFilterDryRunFirst(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			f := newFixture(t, backend)
			f.p.cfg.RevokeBatch = 4
			var targets []string
			for i := range 10 {
				ev := f.issue(jwk, "", t0, time.Hour, "lab"+string(rune('a'+i))+".example")
				f.observe(ev)
				targets = append(targets, ev.Serial)
			}
			keep := f.issue(jwk, "", t0, time.Hour, "prod.example")
			f.observe(keep)
			f.observe(f.revokeEvent(f.issue(jwk, "", t0, time.Hour, "lab-old.example"), 1, t0))

			var res RevokeResult
			req := RevokeRequest{Filter: map[string]string{"q": "LAB"}, ReasonCode: 5, Reason: "lab closed", DryRun: true}
			decode(t, f.do("POST", "/certificates/revoke", req), 200, &res)
			if res.Matched != 10 || len(res.Serials) != 10 || res.Revoked != 0 || len(f.host.Revoked()) != 0 {
				t.Fatalf("dry run %+v", res)
			}
			req.DryRun = false
			total := 0
			for round := 0; ; round++ {
				decode(t, f.do("POST", "/certificates/revoke", req), 200, &res)
				total += res.Revoked
				if res.Remaining == 0 {
					break
				}
				if round > 5 || res.Revoked == 0 {
					t.Fatalf("no progress: %+v", res)
				}
			}
			if total != 10 {
				t.Fatalf("revoked %d, want 10", total)
			}
			for _, sn := range targets {
				if r := f.get(sn); r.Status(t0) != StatusRevoked || r.Revocation.ReasonCode != 5 || r.Revocation.Reason != "lab closed" {
					t.Fatalf("%s not revoked in the index: %s", sn, mustJSON(r))
				}
			}
			if f.get(keep.Serial).Revocation != nil {
				t.Fatal("revoked a certificate outside the filter")
			}
			for _, bad := range []struct {
				req   RevokeRequest
				field string
			}{
				{RevokeRequest{ReasonCode: 1}, "filter"},
				{RevokeRequest{Filter: map[string]string{"cn": "x"}}, "filter.cn"},
				{RevokeRequest{Filter: map[string]string{"status": "revoked"}}, "filter.status"},
				{RevokeRequest{Filter: map[string]string{"q": "x"}, ReasonCode: 8}, "reasonCode"},
			} {
				w := f.do("POST", "/certificates/revoke", bad.req)
				if w.Code != 400 || !strings.Contains(w.Body.String(), bad.field) {
					t.Errorf("%+v: %d %s", bad.req, w.Code, w.Body)
				}
			}
		})
	}
}

func TestShowWithPEM(t *testing.T) {
	f := newFixture(t, "bbolt")
	ev := f.issue(jwk, "", t0, time.Hour, "show.example")
	f.observe(ev)
	r := f.get(ev.Serial)
	var v View
	decode(t, f.do("GET", "/certificates/"+r.SerialHex[:2]+":"+r.SerialHex[2:], nil), 200, &v)
	if v.Serial != ev.Serial || !strings.Contains(v.PEM, "BEGIN CERTIFICATE") || v.Status != StatusActive {
		t.Fatalf("show %+v", v)
	}
	if w := f.do("GET", "/certificates/123456", nil); w.Code != 404 {
		t.Fatalf("unknown serial: %d", w.Code)
	}
}

func decode(t *testing.T, w *httptest.ResponseRecorder, status int, v any) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d: %s", w.Code, status, w.Body)
	}
	if err := json.Unmarshal(w.Body.Bytes(), v); err != nil {
		t.Fatalf("decode %s: %v", w.Body, err)
	}
}

// A JSON line is the stored record with its status spliced in: it must be
// what encoding the View gives.
func TestJSONLineIsTheView(t *testing.T) {
	f := newFixture(t, "bbolt")
	ev := f.issue(jwk, "", t0, time.Hour, "line.example", "10.1.2.3", "a@example.com")
	f.observe(ev, f.revokeEvent(ev, 3, t0))
	r := f.get(ev.Serial)
	doc, _ := json.Marshal(r)
	c := convert([]stored{{doc, StatusRevoked}}, FormatJSONL)
	want, _ := json.Marshal(View{Record: *r, Status: StatusRevoked})
	if c.err != nil || string(c.out) != string(want)+"\n" {
		t.Fatalf("line %s %v\nwant %s", c.out, c.err, want)
	}
}

// GET /certificates/count counts what GET /certificates lists, with the
// same filters (revocation time included), and refuses paging parameters
// and bad filters with the field named.
func TestCountMatchesList(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			f := newFixture(t, backend)
			recs := f.population(60, rand.New(rand.NewPCG(5, 6)))
			for _, q := range []string{"", "status=active", "status=revoked", "q=dept2",
				"revokedSince=" + t0.Add(2*time.Hour).Format(time.RFC3339),
				"status=revoked&revokedBefore=" + t0.Add(3*time.Hour).Format(time.RFC3339)} {
				v, _ := url.ParseQuery(q)
				want := len(oracle(recs, mustFilter(t, v), t0))
				w := f.do("GET", "/certificates/count?"+q, nil)
				var res CountResult
				if w.Code != 200 || json.Unmarshal(w.Body.Bytes(), &res) != nil || res.Count != want {
					t.Fatalf("count %q: %d %s, want %d", q, w.Code, w.Body, want)
				}
			}
			for q, field := range map[string]string{"limit=5": "limit", "cursor=x": "cursor", "status=gone": "status",
				"revokedSince=yesterday": "revokedSince"} {
				if w := f.do("GET", "/certificates/count?"+q, nil); w.Code != 400 || !strings.Contains(w.Body.String(), field) {
					t.Fatalf("count %q: %d %s", q, w.Code, w.Body)
				}
			}
		})
	}
}

func mustFilter(t *testing.T, v url.Values) Filter {
	t.Helper()
	f, err := ParseFilter(v)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// A table made before revoked_at existed gets the column, filled from the
// stored records, when the index opens.
func TestRevokedAtAddedToOlderTable(t *testing.T) {
	f := newFixture(t, "postgresql")
	recs := f.population(40, rand.New(rand.NewPCG(7, 8)))
	db := f.p.store.(*sqlStore).db
	if _, err := db.Exec(`ALTER TABLE stepfort_certindex DROP COLUMN revoked_at`); err != nil {
		t.Fatal(err)
	}
	s, err := openSQL(db)
	if err != nil {
		t.Fatal(err)
	}
	since := t0.Add(2 * time.Hour)
	fl := Filter{RevokedSince: &since}
	want := len(oracle(recs, fl, t0))
	if n, err := s.Count(&fl, t0); err != nil || n != want || want == 0 {
		t.Fatalf("count after the upgrade: %d %v, want %d (> 0)", n, err, want)
	}
}
