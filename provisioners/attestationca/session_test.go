package attestationca

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/smallstep/nosql"
)

func TestSessionsSingleUse(t *testing.T) {
	db, err := nosql.New("bbolt", filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s, err := NewSessionStore(db)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	secret := []byte("0123456789abcdef0123456789abcdef")
	if err := s.Put(secret, &AttestationSession{EKURN: "urn:ek:x", ExpiresAt: now.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	expired := []byte("expired-secret-expired-secret-xx")
	_ = s.Put(expired, &AttestationSession{ExpiresAt: now.Add(-time.Second)})
	tests := []struct {
		name   string
		secret []byte
		want   error
	}{
		{"first use", secret, nil},
		{"replay", secret, ErrReplayed},
		{"unknown", []byte("nope"), ErrUnknownSecret},
		{"expired", expired, ErrExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.Consume(tt.secret, now); err != tt.want {
				t.Fatalf("got %v want %v", err, tt.want)
			}
		})
	}
	if n, err := s.Purge(now.Add(time.Hour), time.Minute); err != nil || n != 2 {
		t.Fatalf("purge: %d %v", n, err)
	}
}
