package dynamicscep

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/storage"
)

// Tables; the key layout is documented in docs/scep.md.
var (
	// ChallengesTable maps the lower-case hex SHA-256 of a challenge to
	// its JSON Challenge. The challenge itself is never stored.
	ChallengesTable = []byte("stepfort_scep_challenges")
	// ChallengeIDsTable maps a challenge's ID to its ChallengesTable key,
	// for withdrawal by ID.
	ChallengeIDsTable = []byte("stepfort_scep_challenge_ids")
)

// Challenge states. Expired is computed from ExpiresAt, never stored.
const (
	StateOutstanding = "outstanding"
	StateConsumed    = "consumed"
	StateWithdrawn   = "withdrawn"
	StateExpired     = "expired"
)

// Sources of challenges. Only the admin API exists today.
const SourceAPI = "api"

// Bindings restrict what a challenge may enroll. Every field is optional.
type Bindings struct {
	Device         string   `json:"device,omitempty"` // inventory device ID
	CommonName     string   `json:"commonName,omitempty"`
	DNSNames       []string `json:"dnsNames,omitempty"`
	IPAddresses    []string `json:"ipAddresses,omitempty"`
	EmailAddresses []string `json:"emailAddresses,omitempty"`
	URIs           []string `json:"uris,omitempty"`
}

// Challenge is the stored record of one challenge: everything but the
// challenge, which is shown once, to its creator.
type Challenge struct {
	// Hash is the hex SHA-256 of the challenge (also the row key).
	Hash        string    `json:"hash"`
	ID          string    `json:"id"`
	Provisioner string    `json:"provisioner"`
	Source      string    `json:"source"`
	CreatedAt   time.Time `json:"createdAt"`
	ExpiresAt   time.Time `json:"expiresAt"`
	CreatedBy   string    `json:"createdBy,omitempty"`
	Bindings
	State         string     `json:"state"`
	ConsumedAt    *time.Time `json:"consumedAt,omitempty"`
	TransactionID string     `json:"transactionID,omitempty"`
	WithdrawnAt   *time.Time `json:"withdrawnAt,omitempty"`
}

// StateAt is the challenge's state at time now: an outstanding challenge
// past its expiry is expired.
func (c *Challenge) StateAt(now time.Time) string {
	if c.State == StateOutstanding && !now.Before(c.ExpiresAt) {
		return StateExpired
	}
	return c.State
}

// challengeBytes is the challenge's entropy: 128 bits, as 32 upper-case
// hex digits, which every SCEP client can carry (a PrintableString).
const challengeBytes = 16

// maxChallengeLen bounds what is hashed from a request. Ours are 32
// characters; a longer value is never ours.
const maxChallengeLen = 256

// newSecret returns a fresh challenge.
func newSecret(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random challenge: %w", err)
	}
	return strings.ToUpper(hex.EncodeToString(b)), nil
}

// newID returns a short random challenge ID, shown in lists.
func newID() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random challenge id: %w", err)
	}
	return "sc_" + hex.EncodeToString(b), nil
}

// validID reports whether id has the form newID makes, so a path
// parameter never reaches the database otherwise.
func validID(id string) bool {
	rest, ok := strings.CutPrefix(id, "sc_")
	if !ok || len(rest) != 16 {
		return false
	}
	_, err := hex.DecodeString(rest)
	return err == nil && strings.ToLower(rest) == rest
}

// hashChallenge is the row key of a challenge: its SHA-256, exact bytes.
func hashChallenge(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// Errors of the store.
var (
	ErrNotFound = errors.New("challenge not found")
	ErrConsumed = errors.New("challenge already consumed")
)

// Challenges keeps challenges in the shared database. Every state change
// is a compare-and-swap against the bytes read, so exactly one of several
// replicas consuming (or withdrawing) one challenge succeeds.
type Challenges struct {
	db      nosql.DB
	creates createBatcher // group commit of new challenges
}

// NewChallenges creates the tables if needed.
func NewChallenges(db nosql.DB) (*Challenges, error) {
	for _, t := range [][]byte{ChallengesTable, ChallengeIDsTable} {
		if err := db.CreateTable(t); err != nil {
			return nil, fmt.Errorf("create table %s: %w", t, err)
		}
	}
	return &Challenges{db: db, creates: createBatcher{db: db}}, nil
}

// Create stores a new outstanding challenge built from c (ID, Hash and
// State are filled in) and returns the challenge itself, which exists
// nowhere else.
func (s *Challenges) Create(c *Challenge) (string, error) {
	return s.CreateSized(c, challengeBytes)
}

// CreateSized is Create with a challenge of n random bytes (NDES's are 8,
// shown as 16 hex digits; ours are challengeBytes). Concurrent calls share
// one write transaction (see createBatcher); each returns only once its
// rows are committed.
func (s *Challenges) CreateSized(c *Challenge, n int) (string, error) {
	for range 4 { // a collision of 64 random bits means a broken RNG; retry a few times anyway
		secret, err := newSecret(n)
		if err != nil {
			return "", err
		}
		id, err := newID()
		if err != nil {
			return "", err
		}
		c.ID, c.Hash, c.State = id, hashChallenge(secret), StateOutstanding
		b, err := json.Marshal(c)
		if err != nil {
			return "", err
		}
		row := &database.TxEntry{Bucket: ChallengesTable, Key: []byte(c.Hash), Value: b, Cmd: database.CmpAndSwap}
		idx := &database.TxEntry{Bucket: ChallengeIDsTable, Key: []byte(id), Value: []byte(c.Hash), Cmd: database.CmpAndSwap}
		if err := s.creates.store(row, idx); err != nil {
			return "", fmt.Errorf("store challenge: %w", err)
		}
		if row.Swapped && idx.Swapped {
			return secret, nil
		}
	}
	return "", errors.New("store challenge: key collision")
}

// Lookup returns the stored record of a challenge and its bytes (for
// Consume). The row is found by the challenge's hash; the stored hash is
// compared again in constant time, so what decides is a comparison of
// equal-length digests, never of the challenge.
func (s *Challenges) Lookup(secret string) (*Challenge, []byte, error) {
	if secret == "" || len(secret) > maxChallengeLen {
		return nil, nil, ErrNotFound
	}
	key := hashChallenge(secret)
	c, b, err := s.get(key)
	if err != nil {
		return nil, nil, err
	}
	if subtle.ConstantTimeCompare([]byte(c.Hash), []byte(key)) != 1 {
		return nil, nil, ErrNotFound
	}
	return c, b, nil
}

func (s *Challenges) get(key string) (*Challenge, []byte, error) {
	b, err := s.db.Get(ChallengesTable, []byte(key))
	if database.IsErrNotFound(err) {
		return nil, nil, ErrNotFound
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read challenge: %w", err)
	}
	var c Challenge
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, nil, fmt.Errorf("decode challenge: %w", err)
	}
	return &c, b, nil
}

// ByID returns a challenge by its ID.
func (s *Challenges) ByID(id string) (*Challenge, []byte, error) {
	if !validID(id) {
		return nil, nil, ErrNotFound
	}
	key, err := s.db.Get(ChallengeIDsTable, []byte(id))
	if database.IsErrNotFound(err) {
		return nil, nil, ErrNotFound
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read challenge %s: %w", id, err)
	}
	return s.get(string(key))
}

// transition writes next in place of the record whose stored bytes are
// old. swapped is false when another writer changed the record first;
// current is then what it wrote.
func (s *Challenges) transition(old []byte, next *Challenge) (current *Challenge, swapped bool, err error) {
	b, err := json.Marshal(next)
	if err != nil {
		return nil, false, err
	}
	// The row exists (old is not empty), so nosql's compare-and-swap
	// locks it on SQL backends and is serialised on bbolt: one winner.
	cur, swapped, err := storage.CmpAndSwap(s.db, ChallengesTable, []byte(next.Hash), old, b)
	if err != nil {
		return nil, false, fmt.Errorf("update challenge %s: %w", next.ID, err)
	}
	if swapped {
		return next, true, nil
	}
	var c Challenge
	if len(cur) == 0 {
		return nil, false, ErrNotFound
	}
	if err := json.Unmarshal(cur, &c); err != nil {
		return nil, false, fmt.Errorf("decode challenge %s: %w", next.ID, err)
	}
	return &c, false, nil
}

// Consume marks the challenge read as old consumed by the enrollment
// transactionID. Exactly one caller wins; the others get ErrConsumed (or
// the state another writer left).
func (s *Challenges) Consume(c *Challenge, old []byte, transactionID string, now time.Time) error {
	next := *c
	at := now.UTC()
	next.State, next.ConsumedAt, next.TransactionID = StateConsumed, &at, transactionID
	cur, swapped, err := s.transition(old, &next)
	switch {
	case err != nil:
		return err
	case swapped:
		return nil
	case cur.State == StateWithdrawn:
		return errWithdrawn
	}
	return ErrConsumed
}

var errWithdrawn = errors.New("challenge withdrawn")

// Withdraw marks an outstanding (or expired) challenge withdrawn so it can
// never be consumed. ErrConsumed if it was consumed first, ErrNotFound if
// it is unknown or withdrawn already.
func (s *Challenges) Withdraw(id string, now time.Time) (*Challenge, error) {
	for range 8 {
		c, old, err := s.ByID(id)
		if err != nil {
			return nil, err
		}
		switch c.State {
		case StateConsumed:
			return c, ErrConsumed
		case StateWithdrawn:
			return nil, ErrNotFound
		}
		next := *c
		at := now.UTC()
		next.State, next.WithdrawnAt = StateWithdrawn, &at
		_, swapped, err := s.transition(old, &next)
		if err != nil || swapped {
			return &next, err
		}
	}
	return nil, fmt.Errorf("withdraw challenge %s: too many concurrent writers", id)
}

// ForEach calls fn with every stored challenge, streamed. fn must not
// write to the database (bbolt runs it inside a read transaction).
func (s *Challenges) ForEach(fn func(c *Challenge) error) error {
	return storage.ForEach(s.db, ChallengesTable, func(_, v []byte) error {
		var c Challenge
		if err := json.Unmarshal(v, &c); err != nil {
			return nil // a record we cannot read is skipped, not fatal to a listing
		}
		return fn(&c)
	})
}

// purgeBatch bounds the rows one purge round collects and deletes.
const purgeBatch = 500

// errBatchFull stops a scan once a batch is collected.
var errBatchFull = errors.New("batch full")

// Purge deletes challenges (and their ID rows) that ended more than
// retention ago: consumed or withdrawn ones from when they ended, expired
// ones from their expiry. It streams the table and deletes in batches of
// at most purgeBatch rows, after each scan (bbolt forbids writing during
// one). Those rows are final (nothing changes a consumed, withdrawn or
// long-expired challenge), so they are deleted unconditionally.
func (s *Challenges) Purge(ctx context.Context, now time.Time, retention time.Duration) (int, error) {
	cutoff := now.Add(-retention)
	total := 0
	for ctx.Err() == nil {
		var batch []*Challenge
		err := s.ForEach(func(c *Challenge) error {
			if ended(c).Before(cutoff) {
				batch = append(batch, c)
				if len(batch) >= purgeBatch {
					return errBatchFull
				}
			}
			return nil
		})
		if err != nil && !errors.Is(err, errBatchFull) {
			return total, fmt.Errorf("scan %s: %w", ChallengesTable, err)
		}
		if len(batch) == 0 {
			return total, nil
		}
		ops := make([]*database.TxEntry, 0, 2*len(batch))
		for _, c := range batch {
			ops = append(ops,
				&database.TxEntry{Bucket: ChallengesTable, Key: []byte(c.Hash), Cmd: database.Delete},
				&database.TxEntry{Bucket: ChallengeIDsTable, Key: []byte(c.ID), Cmd: database.Delete})
		}
		if err := s.db.Update(&database.Tx{Operations: ops}); err != nil {
			return total, fmt.Errorf("purge challenges: %w", err)
		}
		total += len(batch)
		if len(batch) < purgeBatch {
			return total, nil
		}
	}
	return total, ctx.Err()
}

// ended is when a challenge stopped being usable.
func ended(c *Challenge) time.Time {
	switch {
	case c.State == StateConsumed && c.ConsumedAt != nil:
		return *c.ConsumedAt
	case c.State == StateWithdrawn && c.WithdrawnAt != nil:
		return *c.WithdrawnAt
	}
	return c.ExpiresAt
}
