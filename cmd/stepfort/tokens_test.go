package main

import (
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/internal/admin"
)

// pagedServer serves the real admin API over TLS, forcing pages of three
// whatever limit a client asks for, with a "*" token and eight more
// created a minute apart (the third revoked). It returns the flags to
// reach it and the tokens' IDs, newest first.
func pagedServer(t *testing.T) ([]string, []string) {
	t.Helper()
	db, err := nosql.New("bbolt", filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	store, err := admin.NewTokenStore(db, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	root, secret, err := store.Create("root", []string{"*"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{root.ID}
	for i := range 8 {
		now = now.Add(time.Minute)
		tok, _, err := store.Create(fmt.Sprintf("t%d", i), []string{"devices:read"}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if i == 2 {
			if _, err := store.Revoke(tok.ID); err != nil {
				t.Fatal(err)
			}
		}
		ids = append([]string{tok.ID}, ids...)
	}
	r := chi.NewRouter()
	(&admin.Server{Tokens: store}).Mount(r, nil)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		q := req.URL.Query()
		if q.Get("limit") != "1000" {
			t.Errorf("the CLI asked for limit %q, want 1000", q.Get("limit"))
		}
		q.Set("limit", "3")
		req.URL.RawQuery = q.Encode()
		r.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	rootFile := filepath.Join(t.TempDir(), "root.crt")
	if err := os.WriteFile(rootFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{"--ca-url", srv.URL, "--root", rootFile, "--token", secret}, ids
}

// stdout runs fn and returns what it printed on os.Stdout.
func stdout(t *testing.T, fn func() error) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "stdout")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	old := os.Stdout
	os.Stdout = f
	err = fn()
	os.Stdout = old
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// `tokens list` follows nextCursor to the last page and prints every
// token once, newest first, in the table it always printed.
func TestTokensListFollowsCursors(t *testing.T) {
	flags, ids := pagedServer(t)
	out := stdout(t, func() error { return runTokens(t, append([]string{"list"}, flags...)...) })
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 1+len(ids) || strings.Join(strings.Fields(lines[0]), " ") != "ID NAME SCOPES CREATED EXPIRES STATUS" {
		t.Fatalf("want a header and %d rows:\n%s", len(ids), out)
	}
	for i, id := range ids {
		f := strings.Fields(lines[1+i])
		if len(f) != 6 || f[0] != id {
			t.Fatalf("row %d = %q, want token %s (newest first):\n%s", i, lines[1+i], id, out)
		}
		want := "active"
		if f[1] == "t2" {
			want = "revoked"
		}
		if f[4] != "never" || f[5] != want {
			t.Errorf("row %q: want expiry never and status %s", lines[1+i], want)
		}
	}

	var js struct {
		Tokens []*admin.Token `json:"tokens"`
	}
	out = stdout(t, func() error { return runTokens(t, append([]string{"list", "--json"}, flags...)...) })
	if err := json.Unmarshal([]byte(out), &js); err != nil || len(js.Tokens) != len(ids) || js.Tokens[0].ID != ids[0] {
		t.Fatalf("--json: %v\n%s", err, out)
	}

	out = stdout(t, func() error {
		return runTokens(t, append([]string{"list", "--status", "revoked"}, flags...)...)
	})
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.Contains(lines[1], " t2 ") {
		t.Fatalf("--status revoked:\n%s", out)
	}
	if err := runTokens(t, append([]string{"list", "--status", "gone"}, flags...)...); err == nil || !strings.HasPrefix(err.Error(), "--status:") {
		t.Fatalf("--status gone = %v, want an error naming --status", err)
	}
}
