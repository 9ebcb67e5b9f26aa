package admin

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/nosql"
)

func newStore(t testing.TB, now *time.Time) *TokenStore {
	t.Helper()
	db, err := nosql.New("bbolt", filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := NewTokenStore(db, func() time.Time { return *now })
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCreateAuthenticateRevoke(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newStore(t, &now)
	tok, secret, err := s.Create("ci", []string{"devices:read"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(secret, "sft_"+tok.ID+"_") || tok.Hash != "" {
		t.Fatalf("bad token %q / %+v", secret, tok)
	}
	got, err := s.Authenticate(secret)
	if err != nil || got.ID != tok.ID {
		t.Fatalf("Authenticate = %v, %v", got, err)
	}
	if !got.Allows("devices:read") || got.Allows("devices:write") || got.Allows("tokens:read") {
		t.Fatalf("scope check wrong for %v", got.Scopes)
	}
	for name, bad := range map[string]string{
		"empty":         "",
		"no prefix":     strings.TrimPrefix(secret, "sft_"),
		"wrong secret":  secret[:len(secret)-2] + "xx",
		"unknown id":    "sft_0000000000000000_abc",
		"short id":      "sft_00_abc",
		"missing parts": "sft_",
	} {
		if _, err := s.Authenticate(bad); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("%s: err = %v, want ErrUnauthenticated", name, err)
		}
	}
	now = now.Add(2 * time.Hour)
	if _, err := s.Authenticate(secret); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("expired token accepted: %v", err)
	}
	now = now.Add(-2 * time.Hour)
	if _, err := s.Revoke(tok.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(secret); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("revoked token accepted: %v", err)
	}
	if _, err := s.Revoke("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke unknown = %v", err)
	}
	list, err := s.List()
	if err != nil || len(list) != 1 || list[0].RevokedAt == nil || list[0].Hash != "" {
		t.Fatalf("List = %+v, %v", list, err)
	}
}

func TestGrantsAndValidScope(t *testing.T) {
	tests := []struct {
		scopes []string
		want   string
		ok     bool
	}{
		{[]string{"*"}, "tokens:write", true},
		{[]string{"devices"}, "devices:write", true},
		{[]string{"devices:read"}, "devices", false},
		{[]string{"devices:read"}, "devices:read", true},
		{[]string{"billing"}, "devices:read", false},
		{nil, "devices:read", false},
	}
	for _, tt := range tests {
		if got := Grants(tt.scopes, tt.want); got != tt.ok {
			t.Errorf("Grants(%v, %q) = %v", tt.scopes, tt.want, got)
		}
	}
	for s, ok := range map[string]bool{"*": true, "devices": true, "devices:read": true, "devices:delete": false, "Dev": false, "": false, ":read": false} {
		if ValidScope(s) != ok {
			t.Errorf("ValidScope(%q) != %v", s, ok)
		}
	}
	now := time.Now()
	s := newStore(t, &now)
	if _, _, err := s.Create("x", []string{"bad scope"}, 0); err == nil {
		t.Fatal("invalid scope accepted")
	}
	if _, _, err := s.Create("", []string{"*"}, 0); err == nil {
		t.Fatal("empty name accepted")
	}
}
