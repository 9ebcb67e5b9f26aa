package attestationca

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/testenv"
)

// openWith opens a session for ek with a fixed secret.
func openWith(t *testing.T, s *SessionStore, ek string, secret []byte, now time.Time, ttl time.Duration) error {
	t.Helper()
	return s.Open(ek, now, func() ([]byte, *AttestationSession, error) {
		return secret, &AttestationSession{EKURN: "urn:ek:" + ek, CreatedAt: now, ExpiresAt: now.Add(ttl)}, nil
	})
}

func TestSessionsSingleUse(t *testing.T) {
	for _, backend := range testenv.Backends {
		t.Run(backend, func(t *testing.T) {
			s, err := NewSessionStore(testenv.OpenStore(t, backend))
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			first := []byte("first-secret-first-secret-first-")
			secret := []byte("0123456789abcdef0123456789abcdef")
			expired := []byte("expired-secret-expired-secret-xx")
			for _, o := range []struct {
				ek     string
				secret []byte
				ttl    time.Duration
			}{{"ek1", first, time.Minute}, {"ek1", secret, time.Minute}, {"ek2", expired, -time.Second}} {
				if err := openWith(t, s, o.ek, o.secret, now, o.ttl); err != nil {
					t.Fatal(err)
				}
			}
			tests := []struct {
				name   string
				secret []byte
				want   error
			}{
				{"replaced", first, ErrUnknownSecret}, // its reference went with the replacement
				{"first use", secret, nil},
				{"replay", secret, ErrReplayed},
				{"unknown", []byte("nope"), ErrUnknownSecret},
				{"expired", expired, ErrExpired},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					if _, err := s.Consume(tt.secret, now); !errors.Is(err, tt.want) {
						t.Fatalf("got %v want %v", err, tt.want)
					}
				})
			}
			if n, err := s.Purge(now.Add(time.Hour), time.Minute); err != nil || n != 2 {
				t.Fatalf("purge: %d %v", n, err)
			}
			if n := rows(t, s.db, SecretsTable); n != 0 {
				t.Fatalf("%d secret references left after the purge", n)
			}
		})
	}
}

// TestSessionReplacedWhileReferenced: a secret whose reference is still
// stored (its deletion after the replacement failed) is refused as
// replaced, not redeemed.
func TestSessionReplacedWhileReferenced(t *testing.T) {
	s, err := NewSessionStore(testenv.OpenStore(t, "bbolt"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	old, cur := []byte("old-secret"), []byte("new-secret")
	if err := openWith(t, s, "ek", old, now, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := openWith(t, s, "ek", cur, now, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := s.putRef(old, "ek", now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Consume(old, now); !errors.Is(err, ErrReplaced) {
		t.Fatalf("old secret: %v, want %v", err, ErrReplaced)
	}
	if _, err := s.Consume(cur, now); err != nil {
		t.Fatalf("current secret: %v", err)
	}
}

// TestPurgeKeepsWhatIsInUse: the purge leaves sessions within grace and
// rows whose rate limit state still counts, and /attest waits for (never
// writes over) a row being purged.
func TestPurgeKeepsWhatIsInUse(t *testing.T) {
	s, err := NewSessionStore(testenv.OpenStore(t, "bbolt"))
	if err != nil {
		t.Fatal(err)
	}
	s.SetEKLimit(EKLimit{Burst: 2, Interval: time.Hour})
	now := time.Now()
	if err := openWith(t, s, "limited", []byte("a"), now, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := openWith(t, s, "fresh", []byte("b"), now, time.Hour); err != nil {
		t.Fatal(err)
	}
	// Expired and past grace, but its rate state runs until now+1h.
	if n, err := s.Purge(now.Add(time.Minute), time.Second); err != nil || n != 0 {
		t.Fatalf("purge within rate state: %d %v", n, err)
	}
	if n, err := s.Purge(now.Add(2*time.Hour+time.Second), time.Second); err != nil || n != 2 {
		t.Fatalf("purge after everything ran out: %d %v", n, err)
	}

	// A purging mark: /attest neither overwrites nor succeeds while it stays.
	mark := now
	b, _ := json.Marshal(AttestationSession{PurgingSince: &mark})
	if err := s.db.Set(SessionsTable, []byte("marked"), b); err != nil {
		t.Fatal(err)
	}
	if err := openWith(t, s, "marked", []byte("c"), now, time.Minute); !errors.Is(err, ErrBusy) {
		t.Fatalf("open over a purging mark: %v, want %v", err, ErrBusy)
	}
	if v, _ := s.db.Get(SessionsTable, []byte("marked")); string(v) != string(b) {
		t.Fatalf("purging mark overwritten: %s", v)
	}
	// Abandoned marks are deleted by a later purge.
	if n, err := s.Purge(now.Add(purgeAbandoned), time.Second); err != nil || n != 1 {
		t.Fatalf("purge of an abandoned mark: %d %v", n, err)
	}
	if err := openWith(t, s, "marked", []byte("c"), now.Add(purgeAbandoned), time.Minute); err != nil {
		t.Fatalf("open after the mark went: %v", err)
	}
}

func TestGCRA(t *testing.T) {
	now := time.Unix(1000, 0)
	var tat time.Time
	for i := range 3 {
		next, wait := gcra(tat, now, time.Minute, 3)
		if wait != 0 {
			t.Fatalf("request %d within burst denied (wait %s)", i, wait)
		}
		tat = next
	}
	if _, wait := gcra(tat, now, time.Minute, 3); wait != time.Minute {
		t.Fatalf("past burst: wait %s, want 1m", wait)
	}
	if _, wait := gcra(tat, now.Add(time.Minute), time.Minute, 3); wait != 0 {
		t.Fatalf("after one interval: wait %s, want 0", wait)
	}
	if got := retryAfterSeconds(1500 * time.Millisecond); got != 2 {
		t.Fatalf("Retry-After for 1.5s: %d", got)
	}
	if got := retryAfterSeconds(time.Millisecond); got != 1 {
		t.Fatalf("Retry-After for 1ms: %d", got)
	}
}
