package admin

import (
	"errors"
	"testing"
	"time"
)

// FuzzAuthenticate checks that any bearer string is either a known token or
// ErrUnauthenticated, and never panics.
func FuzzAuthenticate(f *testing.F) {
	now := time.Now()
	s := newStore(f, &now)
	_, good, err := s.Create("fuzz", []string{"*"}, 0)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add("sft_")
	f.Add("sft_0123456789abcdef_")
	f.Add("Bearer x")
	f.Fuzz(func(t *testing.T, bearer string) {
		tok, err := s.Authenticate(bearer)
		if err == nil && bearer != good {
			t.Fatalf("accepted %q as %v", bearer, tok)
		}
		if err != nil && !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("unexpected error kind: %v", err)
		}
	})
}
