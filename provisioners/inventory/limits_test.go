package inventory

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

// TestIdentifierLengthEveryBackend: an identifier is a database key, and
// PostgreSQL refuses keys over 255 bytes. Both backends take 255 bytes
// and reject 256 as invalid input naming the field, and an import rejects
// that row alone instead of failing with a database error.
func TestIdentifierLengthEveryBackend(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			s, err := NewStore(openDB(t, backend), nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Create(DeviceInput{Identifiers: []string{strings.Repeat("a", 255)}}); err != nil {
				t.Fatalf("255-byte identifier: %v", err)
			}
			_, err = s.Create(DeviceInput{Identifiers: []string{"ok", strings.Repeat("b", 256)}})
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "identifiers[1]") {
				t.Fatalf("256-byte identifier: %v, want ErrInvalid naming identifiers[1]", err)
			}
			rows := []ImportRow{
				{Line: 2, Input: DeviceInput{Serial: "S-1"}},
				{Line: 3, Input: DeviceInput{Identifiers: []string{strings.Repeat("c", 256)}}},
				{Line: 4, Input: DeviceInput{Serial: "S-2"}},
			}
			rep, err := s.Import(rows, "")
			if err != nil {
				t.Fatalf("import: %v", err)
			}
			if rep.Accepted != 2 || rep.Rejected != 1 || rep.Rows[1].Status != RowRejected || !strings.Contains(rep.Rows[1].Reason, "identifiers[0]") {
				t.Fatalf("report %+v", rep)
			}
		})
	}
}

// failingUpdates fails the n-th and later transactions, as a database
// that goes away in the middle of an import.
type failingUpdates struct {
	innerDB
	n     int
	calls int
}

func (f *failingUpdates) Update(tx *database.Tx) error {
	f.calls++
	if f.calls >= f.n {
		return errors.New("connection reset by peer")
	}
	return f.innerDB.Update(tx)
}

// TestImportReportsWhatWasStored: a database error after the first batch
// was committed still answers with the report: the committed rows as
// accepted, every other row rejected as not stored, and the error.
func TestImportReportsWhatWasStored(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			db := &failingUpdates{innerDB: openDB(t, backend), n: 2}
			s, err := NewStore(db, nil)
			if err != nil {
				t.Fatal(err)
			}
			api := &API{Store: s, MaxImportBytes: 1 << 20, MaxImportRows: 1000}
			var csv strings.Builder
			csv.WriteString("serial\n")
			n := importBatch + 20
			for i := range n {
				fmt.Fprintf(&csv, "S-%04d\n", i)
			}
			code, rep := postImport(t, api, csv.String())
			if code != http.StatusOK {
				t.Fatalf("status %d, want 200 with the report", code)
			}
			if rep.Accepted != importBatch || rep.Rejected != n-importBatch || rep.Total != n {
				t.Fatalf("counts: accepted %d rejected %d total %d", rep.Accepted, rep.Rejected, rep.Total)
			}
			if !strings.Contains(rep.Error, fmt.Sprintf("line %d", importBatch+2)) || !strings.Contains(rep.Error, "connection reset") {
				t.Fatalf("error %q does not say where the import stopped and why", rep.Error)
			}
			for i, r := range rep.Rows {
				stored := i < importBatch
				if (r.Status == RowAccepted) != stored || !stored && !strings.HasPrefix(r.Reason, "not stored") {
					t.Fatalf("row %d: %+v", i, r)
				}
				_, err := s.ByIdentifier(fmt.Sprintf("S-%04d", i))
				if (err == nil) != stored {
					t.Fatalf("row %d: reported %s, lookup %v", i, r.Status, err)
				}
			}
		})
	}
}

// importAnswer is the answer of an import as a client decodes it.
type importAnswer struct {
	ImportReport
	Error string `json:"error"`
}

// postImport posts a CSV import to api and decodes the report.
func postImport(t *testing.T, api *API, body string) (int, importAnswer) {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/devices/import", strings.NewReader(body))
	req.Header.Set("Content-Type", "text/csv")
	api.importDevices(rec, req)
	var rep importAnswer
	_ = json.Unmarshal(rec.Body.Bytes(), &rep)
	return rec.Code, rep
}

// endlessField is a body whose prefix is followed by an endless cell; it
// counts what the parser read.
type endlessField struct {
	prefix string
	read   atomic.Int64
}

func (e *endlessField) Read(p []byte) (int, error) {
	off := e.read.Load()
	const end = 16 << 20 // a limitless parser reads it all; end the test anyway
	if off >= end {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && off < end {
		if off < int64(len(e.prefix)) {
			p[n] = e.prefix[off]
		} else {
			p[n] = 'a'
		}
		n++
		off++
	}
	e.read.Store(off)
	return n, nil
}

// TestParsersBoundRows: a row longer than MaxImportRowBytes ends the parse
// with an error naming its line after reading little more than the row,
// and a mapped cell over MaxImportFieldBytes rejects its row alone.
func TestParsersBoundRows(t *testing.T) {
	for _, tt := range []struct {
		name   string
		prefix string
		parse  func(io.Reader) error
	}{
		{"csv", "serial,name\nA-1,x\nA-2,", func(r io.Reader) error { _, _, err := ParseCSV(r, nil, 10); return err }},
		{"csv quoted", "serial,name\nA-1,x\nA-2,\"", func(r io.Reader) error { _, _, err := ParseCSV(r, nil, 10); return err }},
		{"json", `[{"serial":"A-1"},{"serial":"`, func(r io.Reader) error { _, err := ParseJSONRows(r, 10); return err }},
		{"json wrapped", `{"devices":[{"serial":"A-1"},{"serial":"`, func(r io.Reader) error { _, err := ParseJSONRows(r, 10); return err }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := &endlessField{prefix: tt.prefix}
			err := tt.parse(body)
			want := "line 3"
			if strings.HasPrefix(tt.name, "json") {
				want = "line 2"
			}
			if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "longer than") {
				t.Fatalf("error %v, want one naming %s", err, want)
			}
			if n := body.read.Load(); n > 2*MaxImportRowBytes {
				t.Fatalf("read %d bytes for a row limit of %d", n, MaxImportRowBytes)
			}
		})
	}
	big := strings.Repeat("x", MaxImportFieldBytes+1)
	rows, _, err := ParseCSV(strings.NewReader("serial,name\nA-1,"+big+"\nA-2,y\n"), nil, 10)
	if err != nil || len(rows) != 2 || rows[0].Err == nil || !strings.Contains(rows[0].Err.Error(), `column "name"`) || rows[1].Err != nil {
		t.Fatalf("CSV field: %v %+v", err, rows)
	}
	jrows, err := ParseJSONRows(strings.NewReader(`[{"serial":"A-1","owner":"`+big+`"},{"serial":"A-2"}]`), 10)
	if err != nil || len(jrows) != 2 || jrows[0].Err == nil || !strings.Contains(jrows[0].Err.Error(), "owner") || jrows[1].Err != nil {
		t.Fatalf("JSON field: %v %+v", err, jrows)
	}
}

// TestParseJSONRowsShapes: the streaming parser accepts what the
// whole-document one did and refuses trailing data.
func TestParseJSONRowsShapes(t *testing.T) {
	for _, tt := range []struct {
		in   string
		rows int
		ok   bool
	}{
		{`[{"serial":"A"},{"serial":"B"}]`, 2, true},
		{` {"devices":[{"serial":"A"}], "generatedBy":"jamf"} `, 1, true},
		{`{"devices":null}`, 0, true},
		{`[]`, 0, true},
		{`[{"serial":"A"}] x`, 0, false},
		{`[{"serial":"A"}`, 0, false},
		{`"devices"`, 0, false},
		{`[{"serial":"A"},{"serial":"B"},{"serial":"C"}]`, 0, false}, // over maxRows
	} {
		rows, err := ParseJSONRows(strings.NewReader(tt.in), 2)
		if (err == nil) != tt.ok || len(rows) != tt.rows {
			t.Errorf("%s: %d rows, %v; want %d rows, ok=%v", tt.in, len(rows), err, tt.rows, tt.ok)
		}
	}
}

// TestImportRouteDeclaresMaxBody: the daemon bounds every admin body by
// the route's MaxBody; the import declares its configured limit, the
// other routes keep the default.
func TestImportRouteDeclaresMaxBody(t *testing.T) {
	f, _ := plugins.Lookup(Name)
	p, err := New(f.NewConfig().(*Config), plugintest.NewHost(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, rt := range p.AdminRoutes() {
		want := int64(0)
		if rt.Pattern == "/devices/import" {
			want = DefaultMaxImportBytes
		}
		if rt.MaxBody != want {
			t.Errorf("%s %s: MaxBody %d, want %d", rt.Method, rt.Pattern, rt.MaxBody, want)
		}
	}
}

// signalReader closes started at the first Read and then reads from r.
type signalReader struct {
	once    sync.Once
	started chan struct{}
	r       io.Reader
}

func (s *signalReader) Read(p []byte) (int, error) {
	s.once.Do(func() { close(s.started) })
	return s.r.Read(p)
}

// importPoster returns a function that posts a CSV import to api's routes
// in the background and delivers the status.
func importPoster(api *API) func(body io.Reader) chan int {
	r := chi.NewRouter()
	for _, rt := range api.Routes() {
		r.Method(rt.Method, rt.Pattern, rt.Handler)
	}
	return func(body io.Reader) chan int {
		done := make(chan int, 1)
		go func() {
			req := httptest.NewRequest(http.MethodPost, "/devices/import", body)
			req.Header.Set("Content-Type", "text/csv")
			rec := httptest.NewRecorder()
			r.ServeHTTP(rec, req)
			done <- rec.Code
		}()
		return done
	}
}

// TestImportsOneAtATime: a second import does not start reading its body
// while the first is being parsed, and runs once the first is done.
func TestImportsOneAtATime(t *testing.T) {
	api := &API{Store: newTestStore(t), MaxImportBytes: 1 << 20, MaxImportRows: 100}
	post := importPoster(api)
	pr, pw := io.Pipe()
	first := &signalReader{started: make(chan struct{}), r: pr}
	firstDone := post(first)
	<-first.started
	second := &signalReader{started: make(chan struct{}), r: strings.NewReader("serial\nB-1\n")}
	secondDone := post(second)
	select {
	case <-second.started:
		t.Fatal("the second import was read while the first was being parsed")
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := pw.Write([]byte("serial\nA-1\n")); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if code := <-firstDone; code != http.StatusOK {
		t.Fatalf("first import: %d", code)
	}
	if code := <-secondDone; code != http.StatusOK {
		t.Fatalf("second import: %d", code)
	}
}

// TestImportWaitBounded: an import that waited ImportWait for the running
// one is told to come back (429) instead of queueing without end.
func TestImportWaitBounded(t *testing.T) {
	api := &API{Store: newTestStore(t), MaxImportBytes: 1 << 20, MaxImportRows: 100, ImportWait: 50 * time.Millisecond}
	post := importPoster(api)
	pr, pw := io.Pipe()
	defer pw.Close()
	blocker := &signalReader{started: make(chan struct{}), r: pr}
	post(blocker)
	<-blocker.started
	late := post(strings.NewReader("serial\nC-1\n"))
	select {
	case code := <-late:
		if code != http.StatusTooManyRequests {
			t.Fatalf("waiting import: %d, want 429", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting import was not answered")
	}
}

// TestImportBodyLimit: a body over MaxImportBytes is answered 413 in both
// formats, through the row-by-row parsers.
func TestImportBodyLimit(t *testing.T) {
	api := &API{Store: newTestStore(t), MaxImportBytes: 4096, MaxImportRows: 1000}
	for ct, body := range map[string]string{
		"text/csv":         "serial\n" + strings.Repeat("S-0000000001\n", 1000),
		"application/json": "[" + strings.Repeat(`{"serial":"S-0000000001"},`, 1000) + `{"serial":"x"}]`,
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/devices/import", strings.NewReader(body))
		req.Header.Set("Content-Type", ct)
		api.importDevices(rec, req)
		if rec.Code != http.StatusRequestEntityTooLarge {
			t.Errorf("%s: %d %s, want 413", ct, rec.Code, rec.Body)
		}
	}
}
