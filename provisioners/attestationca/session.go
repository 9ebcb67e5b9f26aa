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
)

// SessionsTable holds pending credential activations, keyed by the hex
// SHA-256 of the activation secret (the secret itself is never stored).
var SessionsTable = []byte("stepfort_attestation_sessions")

// Session errors; all deny /secret with 403.
var (
	ErrUnknownSecret = errors.New("unknown activation secret: it was not issued by this Attestation CA or its session was purged")
	ErrReplayed      = errors.New("activation secret already used")
	ErrExpired       = errors.New("activation session expired")
)

// AttestationSession is one credential activation waiting for its secret.
// It is redeemable once: the first /secret flips Consumed with a
// compare-and-swap, on whichever replica it lands, and every later attempt
// sees Consumed (or nothing, once the record is purged).
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
}

// SessionStore keeps sessions in the shared database.
type SessionStore struct {
	db nosql.DB
}

// NewSessionStore creates the table if needed.
func NewSessionStore(db nosql.DB) (*SessionStore, error) {
	if err := db.CreateTable(SessionsTable); err != nil {
		return nil, fmt.Errorf("create table %s: %w", SessionsTable, err)
	}
	return &SessionStore{db: db}, nil
}

func sessionKey(secret []byte) []byte {
	sum := sha256.Sum256(secret)
	return []byte(hex.EncodeToString(sum[:]))
}

// Put stores a new session under the secret's hash.
func (s *SessionStore) Put(secret []byte, sess *AttestationSession) error {
	b, err := json.Marshal(sess)
	if err != nil {
		return err
	}
	_, ok, err := s.db.CmpAndSwap(SessionsTable, sessionKey(secret), nil, b)
	if err != nil {
		return fmt.Errorf("store attestation session: %w", err)
	}
	if !ok {
		return errors.New("store attestation session: secret collision")
	}
	return nil
}

// Consume redeems the session of secret exactly once.
func (s *SessionStore) Consume(secret []byte, now time.Time) (*AttestationSession, error) {
	key := sessionKey(secret)
	old, err := s.db.Get(SessionsTable, key)
	if database.IsErrNotFound(err) {
		return nil, ErrUnknownSecret
	}
	if err != nil {
		return nil, fmt.Errorf("read attestation session: %w", err)
	}
	var sess AttestationSession
	if err := json.Unmarshal(old, &sess); err != nil {
		return nil, fmt.Errorf("decode attestation session: %w", err)
	}
	if sess.Consumed {
		return &sess, ErrReplayed
	}
	if !now.Before(sess.ExpiresAt) {
		return &sess, ErrExpired
	}
	sess.Consumed = true
	b, _ := json.Marshal(&sess)
	_, ok, err := s.db.CmpAndSwap(SessionsTable, key, old, b)
	if err != nil {
		return nil, fmt.Errorf("consume attestation session: %w", err)
	}
	if !ok {
		return &sess, ErrReplayed // another request won the race
	}
	return &sess, nil
}

// Purge deletes sessions that expired more than grace ago; consumed ones
// are kept until then so a replay is reported as such.
func (s *SessionStore) Purge(now time.Time, grace time.Duration) (int, error) {
	entries, err := s.db.List(SessionsTable)
	if err != nil && !database.IsErrNotFound(err) {
		return 0, fmt.Errorf("list attestation sessions: %w", err)
	}
	n := 0
	for _, e := range entries {
		var sess AttestationSession
		if json.Unmarshal(e.Value, &sess) == nil && now.Before(sess.ExpiresAt.Add(grace)) {
			continue
		}
		if err := s.db.Del(SessionsTable, e.Key); err != nil {
			return n, fmt.Errorf("purge attestation session: %w", err)
		}
		n++
	}
	return n, nil
}
