package attestationca

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/storage"
)

// SessionsTable holds the open credential activation of each EK: at most
// one row per EK, keyed by the EK's fingerprint (see ekKey). A new /attest
// for the EK replaces the row with a compare-and-swap, so on every replica
// the previous secret stops redeeming at that instant, and replaying a
// captured /attest body cannot grow the table.
var SessionsTable = []byte("stepfort_attestation_sessions")

// SecretsTable maps the hex SHA-256 of an activation secret (never the
// secret) to the EK row it was issued for, which is how /secret finds the
// session. A row is written once and never changed; /attest deletes the
// one of the session it replaces, and the purge the expired ones.
var SecretsTable = []byte("stepfort_attestation_secrets")

// Session errors; all deny /secret with 403.
var (
	ErrUnknownSecret = errors.New("unknown activation secret: it was not issued by this Attestation CA, or its session was replaced or purged")
	ErrReplaced      = errors.New("activation session replaced by a later /attest for the same EK")
	ErrReplayed      = errors.New("activation secret already used")
	ErrExpired       = errors.New("activation session expired")
)

// ErrBusy is returned when a session row is being purged under /attest, or
// keeps changing under /secret; the request may be retried (503).
var ErrBusy = errors.New("attestation session busy: retry")

// RateLimitedError refuses a new session for an EK that opened too many
// recently.
type RateLimitedError struct {
	RetryAfter time.Duration
}

func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("too many attestations for this EK: retry in %s", e.RetryAfter.Round(time.Second))
}

// AttestationSession is the one credential activation of an EK waiting for
// its secret. It is redeemable once, and only while it is the EK's current
// session: the first /secret flips Consumed with a compare-and-swap, on
// whichever replica it lands; a later /attest replaces the whole row.
type AttestationSession struct {
	EKURN        string    `json:"ekURN"`
	DeviceID     string    `json:"deviceID"`
	AKPublic     []byte    `json:"akPublic"` // TPMT_PUBLIC from the request
	Manufacturer string    `json:"manufacturer"`
	Model        string    `json:"model"`
	Version      string    `json:"version"`
	CreatedAt    time.Time `json:"createdAt"`
	ExpiresAt    time.Time `json:"expiresAt"`
	Consumed     bool      `json:"consumed,omitempty"`
	// SecretHash is the SecretsTable key of the secret that redeems this
	// session.
	SecretHash string `json:"secretHash,omitempty"`
	// RateTAT is the EK's rate limit state (the theoretical arrival time
	// of GCRA): kept in the row so every replica enforces one limit.
	RateTAT time.Time `json:"rateTAT,omitzero"`
	// PurgingSince marks a row the purge is deleting: /attest waits for it
	// to go instead of writing over it (see Purge).
	PurgingSince *time.Time `json:"purgingSince,omitempty"`
}

// secretRef is a SecretsTable row.
type secretRef struct {
	EK        string    `json:"ek"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// EKLimit is the per-EK rate limit: Burst sessions at once, then one per
// Interval.
type EKLimit struct {
	Burst    int
	Interval time.Duration
}

// SessionStore keeps sessions in the shared database.
type SessionStore struct {
	db    nosql.DB
	limit EKLimit
}

// Bounds of the compare-and-swap loops: each lost race means another
// request changed the row, so a handful of turns settle any real load.
const (
	maxSwapAttempts = 8
	purgingWait     = 25 * time.Millisecond // between reads of a row being purged
)

// NewSessionStore creates the tables if needed. The per-EK limit defaults
// to the configuration's default; SetEKLimit changes it.
func NewSessionStore(db nosql.DB) (*SessionStore, error) {
	for _, t := range [][]byte{SessionsTable, SecretsTable} {
		if err := db.CreateTable(t); err != nil {
			return nil, fmt.Errorf("create table %s: %w", t, err)
		}
	}
	d := defaultConfig().RateLimit.PerEK
	return &SessionStore{db: db, limit: EKLimit{Burst: d.Burst, Interval: d.Interval.Duration}}, nil
}

// SetEKLimit sets the per-EK rate limit; call it before serving.
func (s *SessionStore) SetEKLimit(l EKLimit) { s.limit = l }

// ekKey is the SessionsTable key of an EK: the hex SHA-256 of its PKIX DER
// (the digest of its urn:ek:sha256: URN).
func ekKey(ekDER []byte) string {
	sum := sha256.Sum256(ekDER)
	return hex.EncodeToString(sum[:])
}

func secretKey(secret []byte) string {
	sum := sha256.Sum256(secret)
	return hex.EncodeToString(sum[:])
}

// Open makes a new session the one open session of the EK ek, replacing the
// previous one (whose secret stops redeeming when the row is swapped), if
// the EK's rate limit allows it at now. challenge runs at most once, after
// the limit allowed the request, and makes the secret and the session.
// Errors: *RateLimitedError (also when concurrent /attest calls for the
// EK keep winning the compare-and-swap), ErrBusy (the row is being
// purged), challenge's error, or a storage error.
func (s *SessionStore) Open(ek string, now time.Time, challenge func() ([]byte, *AttestationSession, error)) (openErr error) {
	var sess *AttestationSession
	var hash string
	defer func() {
		if openErr != nil && hash != "" {
			_ = s.db.Del(SecretsTable, []byte(hash)) // never referenced; the purge would get it too
		}
	}()
	for attempt := range maxSwapAttempts {
		old, cur, err := s.read(ek)
		if err != nil {
			return err
		}
		if cur != nil && cur.PurgingSince != nil {
			if attempt == maxSwapAttempts-1 {
				return ErrBusy
			}
			time.Sleep(purgingWait)
			continue
		}
		var tat time.Time
		if cur != nil {
			tat = cur.RateTAT
		}
		next, wait := gcra(tat, now, s.limit.Interval, s.limit.Burst)
		if wait > 0 {
			return &RateLimitedError{RetryAfter: wait}
		}
		if sess == nil {
			var secret []byte
			if secret, sess, err = challenge(); err != nil {
				return err
			}
			if hash, err = s.putRef(secret, ek, sess.ExpiresAt); err != nil {
				return err
			}
		}
		row := *sess
		row.SecretHash, row.RateTAT = hash, next
		b, err := json.Marshal(&row)
		if err != nil {
			return err
		}
		_, swapped, err := storage.CmpAndSwap(s.db, SessionsTable, []byte(ek), old, b)
		if err != nil {
			return fmt.Errorf("store attestation session: %w", err)
		}
		if swapped {
			if cur != nil && cur.SecretHash != "" {
				_ = s.db.Del(SecretsTable, []byte(cur.SecretHash)) // dead already; the purge retries a failure
			}
			return nil
		}
	}
	// Every turn lost to another /attest of this EK that succeeded: the
	// EK is attesting concurrently, which only a flood does.
	return &RateLimitedError{RetryAfter: time.Second}
}

// putRef stores the reference from the secret's hash to the EK row.
func (s *SessionStore) putRef(secret []byte, ek string, expires time.Time) (string, error) {
	hash := secretKey(secret)
	b, err := json.Marshal(secretRef{EK: ek, ExpiresAt: expires})
	if err != nil {
		return "", err
	}
	_, ok, err := storage.CmpAndSwap(s.db, SecretsTable, []byte(hash), nil, b)
	if err != nil {
		return "", fmt.Errorf("store attestation secret reference: %w", err)
	}
	if !ok {
		return "", errors.New("store attestation secret reference: secret collision")
	}
	return hash, nil
}

// read returns the EK's stored row (nil when absent) and its session.
func (s *SessionStore) read(ek string) ([]byte, *AttestationSession, error) {
	b, err := s.db.Get(SessionsTable, []byte(ek))
	if database.IsErrNotFound(err) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read attestation session: %w", err)
	}
	var sess AttestationSession
	if err := json.Unmarshal(b, &sess); err != nil {
		return nil, nil, fmt.Errorf("decode attestation session: %w", err)
	}
	return b, &sess, nil
}

// Consume redeems the session of secret exactly once, and only while it
// is its EK's current session. The returned session (also with
// ErrReplaced, ErrReplayed and ErrExpired) names the EK for the audit log.
func (s *SessionStore) Consume(secret []byte, now time.Time) (*AttestationSession, error) {
	hash := secretKey(secret)
	b, err := s.db.Get(SecretsTable, []byte(hash))
	if database.IsErrNotFound(err) {
		return nil, ErrUnknownSecret
	}
	if err != nil {
		return nil, fmt.Errorf("read attestation secret reference: %w", err)
	}
	var ref secretRef
	if err := json.Unmarshal(b, &ref); err != nil {
		return nil, fmt.Errorf("decode attestation secret reference: %w", err)
	}
	for range maxSwapAttempts {
		old, cur, err := s.read(ref.EK)
		switch {
		case err != nil:
			return nil, err
		case cur == nil || cur.PurgingSince != nil:
			return nil, ErrUnknownSecret
		case cur.SecretHash != hash:
			return cur, ErrReplaced
		case cur.Consumed:
			return cur, ErrReplayed
		case !now.Before(cur.ExpiresAt):
			return cur, ErrExpired
		}
		next := *cur
		next.Consumed = true
		nb, err := json.Marshal(&next)
		if err != nil {
			return nil, err
		}
		_, ok, err := s.db.CmpAndSwap(SessionsTable, []byte(ref.EK), old, nb)
		if err != nil {
			return nil, fmt.Errorf("consume attestation session: %w", err)
		}
		if ok {
			return &next, nil
		}
		// Lost to another /secret (replay) or /attest (replaced): read why.
	}
	return nil, ErrBusy
}
