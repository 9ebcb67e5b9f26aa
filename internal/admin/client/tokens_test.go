package client

import (
	"net/http"
	"strings"
	"testing"
)

func TestListTokensAsksForLargePages(t *testing.T) {
	srv, seen := newServer(t, http.StatusOK, `{"tokens":[
		{"id":"00000000000000aa","name":"old","scopes":["*"],"createdAt":"2026-01-01T00:00:00Z"},
		{"id":"00000000000000bb","name":"new","scopes":["*"],"createdAt":"2026-01-02T00:00:00Z"}]}`)
	ts, err := newClient(t, srv).ListTokens("active")
	if err != nil {
		t.Fatal(err)
	}
	if seen.Path != "/api/v1/tokens" || seen.Query != "limit=1000&status=active" {
		t.Errorf("asked %s?%s", seen.Path, seen.Query)
	}
	if len(ts) != 2 || ts[0].Name != "new" || ts[1].Name != "old" {
		t.Errorf("got %+v, want both, newest first", ts)
	}
}

// A server that hands back a cursor it already gave would make the walk
// endless: it is an error.
func TestListTokensStopsOnARepeatedCursor(t *testing.T) {
	srv, seen := newServer(t, http.StatusOK, `{"tokens":[],"nextCursor":"00000000000000aa"}`)
	_, err := newClient(t, srv).ListTokens("")
	if err == nil || !strings.Contains(err.Error(), "repeated cursor") {
		t.Fatalf("err = %v, want a repeated cursor error", err)
	}
	if seen.Query != "cursor=00000000000000aa&limit=1000" {
		t.Errorf("last request %q, want the cursor followed once", seen.Query)
	}
}

func TestListTokensEmptyIsNotNil(t *testing.T) {
	srv, _ := newServer(t, http.StatusOK, `{"tokens":[]}`)
	ts, err := newClient(t, srv).ListTokens("")
	if err != nil || ts == nil || len(ts) != 0 {
		t.Fatalf("ListTokens = %#v, %v; want an empty, non-nil list", ts, err)
	}
}
