package authority

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stepfort/stepfort/plugins"
)

// chunked hides the length of r so the server sees a chunked body.
type chunked struct{ io.Reader }

func TestBodyLimitAnswers413(t *testing.T) {
	var called bool
	var got []byte
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		called = true
		got, _ = io.ReadAll(r.Body)
	})
	h := bodyLimit{next: next, adminMax: 4 << 20}
	big := bytes.Repeat([]byte("x"), plugins.DefaultMaxBody+1)
	for _, tt := range []struct {
		name, path string
		body       io.Reader
		want       int
		problem    bool
	}{
		{"declared length over the limit", "/sign", bytes.NewReader(big), 413, false},
		{"chunked body over the limit", "/sign", chunked{bytes.NewReader(big)}, 413, false},
		{"ACME answers a problem document", "/acme/acme/new-account", chunked{bytes.NewReader(big)}, 413, true},
		{"ACME under /2.0", "/2.0/acme/acme/new-order", bytes.NewReader(big), 413, true},
		{"SCEP", "/scep/scep", chunked{bytes.NewReader(big)}, 413, false},
		{"body at the limit passes", "/sign", bytes.NewReader(big[:plugins.DefaultMaxBody]), 200, false},
		{"admin routes may declare more", "/api/v1/devices/import", chunked{bytes.NewReader(big)}, 200, false},
		{"but not unbounded", "/api/v1/devices/import", bytes.NewReader(make([]byte, 4<<20+1)), 413, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			called, got = false, nil
			req := httptest.NewRequest(http.MethodPost, tt.path, tt.body)
			if _, ok := tt.body.(chunked); ok {
				req.ContentLength = -1
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tt.want {
				t.Fatalf("status %d, want %d (%s)", rec.Code, tt.want, rec.Body.String())
			}
			if tt.want == 413 {
				if called {
					t.Fatal("the handler ran for an oversized body")
				}
				ct := rec.Header().Get("Content-Type")
				if tt.problem != strings.HasPrefix(ct, "application/problem+json") {
					t.Fatalf("content type %q", ct)
				}
				var body map[string]any
				if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body["status"] != float64(413) {
					t.Fatalf("body %s", rec.Body.String())
				}
				return
			}
			if !called || len(got) == 0 {
				t.Fatal("the handler did not get the body")
			}
		})
	}
}

// On a running daemon, an oversized unauthenticated POST to upstream's
// routes is refused before upstream reads it.
func TestDaemonRefusesOversizedBodies(t *testing.T) {
	d := startDaemon(t)
	hc := rootClient(t, d.res.RootFile)
	big := bytes.Repeat([]byte("A"), 8<<20)
	for _, u := range []string{d.https + "/acme/acme/new-account", d.https + "/1.0/sign", d.https + "/revoke", d.insecure + "/scep/scep?operation=PKIOperation"} {
		resp, err := hc.Post(u, "application/jose+json", chunked{bytes.NewReader(big)})
		if err != nil {
			// The server may close the connection before the client has
			// sent everything; that is a refusal too, but the status must
			// have been written first, so retry with a declared length.
			resp, err = hc.Post(u, "application/jose+json", bytes.NewReader(big))
			if err != nil {
				t.Fatalf("%s: %v", u, err)
			}
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("%s: status %d, want 413", u, resp.StatusCode)
		}
	}
}
