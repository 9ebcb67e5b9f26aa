package admin

// The scoped bearer tokens of the admin API. Only a SHA-256 of each token's
// secret is stored; the secret is shown once, at creation.

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"
	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
)

// TokensTable holds one row per token, keyed by token ID.
var TokensTable = []byte("stepfort_admin_tokens")

// prefix marks stepfort admin tokens so secret scanners can find leaked ones.
const prefix = "sft_"

// Scopes known to the daemon. A scope "x" also grants "x:read" and
// "x:write"; "*" grants everything.
const (
	ScopeAll    = "*"
	ScopeTokens = "tokens"
)

// Errors a caller maps to HTTP statuses: ErrUnauthenticated is 401,
// ErrForbidden is 403.
var (
	ErrUnauthenticated = errors.New("missing, malformed, unknown, expired or revoked token")
	ErrForbidden       = errors.New("token lacks the required scope")
	ErrNotFound        = errors.New("token not found")
)

// Token is a stored token. Hash is never returned by the API.
type Token struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	Scopes    []string   `json:"scopes"`
	Hash      string     `json:"hash,omitempty"`
	CreatedAt time.Time  `json:"createdAt"`
	ExpiresAt *time.Time `json:"expiresAt,omitempty"`
	RevokedAt *time.Time `json:"revokedAt,omitempty"`
}

// Active reports whether the token can authenticate at time now.
func (t *Token) Active(now time.Time) bool {
	return t.RevokedAt == nil && (t.ExpiresAt == nil || now.Before(*t.ExpiresAt))
}

// Allows reports whether the token's scopes grant scope.
func (t *Token) Allows(scope string) bool {
	return Grants(t.Scopes, scope)
}

// Grants reports whether a set of scopes grants scope.
func Grants(scopes []string, scope string) bool {
	base, _, _ := strings.Cut(scope, ":")
	for _, s := range scopes {
		if s == ScopeAll || s == scope || s == base {
			return true
		}
	}
	return false
}

// ValidScope reports whether s is a well-formed scope: "*", or a lower-case
// name optionally followed by ":read" or ":write".
func ValidScope(s string) bool {
	if s == ScopeAll {
		return true
	}
	base, action, hasAction := strings.Cut(s, ":")
	if base == "" || strings.Trim(base, "abcdefghijklmnopqrstuvwxyz-") != "" {
		return false
	}
	return !hasAction || action == "read" || action == "write"
}

// MaxNameLen bounds token names in characters: names are logged with every
// creation, revocation and refusal, and listed.
const MaxNameLen = 64

// ValidName checks a token name: 1 to MaxNameLen printable characters,
// not beginning or ending with a space. Errors start with "name:".
func ValidName(name string) error {
	switch {
	case name == "":
		return errors.New("name: must not be empty")
	case !utf8.ValidString(name):
		return errors.New("name: must be valid UTF-8")
	case utf8.RuneCountInString(name) > MaxNameLen:
		return fmt.Errorf("name: must be at most %d characters, got %d", MaxNameLen, utf8.RuneCountInString(name))
	case strings.TrimSpace(name) != name:
		return errors.New("name: must not begin or end with white space")
	}
	for _, r := range name {
		// Control characters would let a name forge log lines.
		if !unicode.IsPrint(r) {
			return fmt.Errorf("name: character %U is not printable", r)
		}
	}
	return nil
}

// TokenStore keeps tokens in the shared database, so every replica accepts them
// and a revocation on one replica holds on all.
type TokenStore struct {
	db  nosql.DB
	now func() time.Time
	// Audit receives a record of every admin API call and of every token
	// created or revoked through it (nil: none). The daemon sets it once
	// the audit trail is built, before serving.
	Audit plugins.Auditor
}

// NewTokenStore creates the token table if needed. now is the clock
// (time.Now if nil).
func NewTokenStore(db nosql.DB, now func() time.Time) (*TokenStore, error) {
	if now == nil {
		now = time.Now
	}
	if err := db.CreateTable(TokensTable); err != nil {
		return nil, fmt.Errorf("create table %s: %w", TokensTable, err)
	}
	return &TokenStore{db: db, now: now}, nil
}

// Create makes a token and returns it with its one-time plaintext secret.
// ttl 0 means no expiry.
func (s *TokenStore) Create(name string, scopes []string, ttl time.Duration) (*Token, string, error) {
	return s.create(name, scopes, ttl, nil)
}

// create is Create with an optional latest expiry, notAfter, that wins
// over ttl (the API's "a token may not outlive its creator").
func (s *TokenStore) create(name string, scopes []string, ttl time.Duration, notAfter *time.Time) (*Token, string, error) {
	if err := ValidName(name); err != nil {
		return nil, "", err
	}
	if len(scopes) == 0 {
		return nil, "", errors.New("scopes: at least one scope is required")
	}
	for _, sc := range scopes {
		if !ValidScope(sc) {
			return nil, "", fmt.Errorf("scopes: invalid scope %q (use \"*\", \"name\", \"name:read\" or \"name:write\")", sc)
		}
	}
	if ttl < 0 {
		return nil, "", errors.New("ttl: must not be negative")
	}
	var idb [8]byte
	var secret [32]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return nil, "", err
	}
	if _, err := rand.Read(secret[:]); err != nil {
		return nil, "", err
	}
	id := hex.EncodeToString(idb[:])
	secretStr := base64.RawURLEncoding.EncodeToString(secret[:])
	now := s.now().UTC()
	t := &Token{ID: id, Name: name, Scopes: slices.Clone(scopes), Hash: hash(secretStr), CreatedAt: now}
	if ttl > 0 {
		exp := now.Add(ttl)
		t.ExpiresAt = &exp
	}
	if notAfter != nil && (t.ExpiresAt == nil || t.ExpiresAt.After(*notAfter)) {
		exp := notAfter.UTC()
		t.ExpiresAt = &exp
	}
	b, err := json.Marshal(t)
	if err != nil {
		return nil, "", err
	}
	if _, swapped, err := storage.CmpAndSwap(s.db, TokensTable, []byte(id), nil, b); err != nil {
		return nil, "", fmt.Errorf("store token: %w", err)
	} else if !swapped {
		return nil, "", errors.New("token id collision; try again")
	}
	return t.public(), prefix + id + "_" + secretStr, nil
}

// Authenticate checks a bearer token and returns the stored token. Every
// failure is ErrUnauthenticated so callers cannot tell which part was wrong.
func (s *TokenStore) Authenticate(bearer string) (*Token, error) {
	rest, ok := strings.CutPrefix(bearer, prefix)
	if !ok {
		return nil, ErrUnauthenticated
	}
	id, secret, ok := strings.Cut(rest, "_")
	if !ok || len(id) != 16 || secret == "" {
		return nil, ErrUnauthenticated
	}
	t, err := s.get(id)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, ErrUnauthenticated
		}
		return nil, err // a backend error is not the caller's fault: 5xx, still denied
	}
	if subtle.ConstantTimeCompare([]byte(hash(secret)), []byte(t.Hash)) != 1 || !t.Active(s.now()) {
		return nil, ErrUnauthenticated
	}
	return t.public(), nil
}

// Revoke marks a token revoked; revoking twice is not an error.
func (s *TokenStore) Revoke(id string) (*Token, error) {
	for {
		old, err := s.db.Get(TokensTable, []byte(id))
		if err != nil {
			if database.IsErrNotFound(err) {
				return nil, ErrNotFound
			}
			return nil, err
		}
		var t Token
		if err := json.Unmarshal(old, &t); err != nil {
			return nil, err
		}
		if t.RevokedAt != nil {
			return t.public(), nil
		}
		now := s.now().UTC()
		t.RevokedAt = &now
		b, _ := json.Marshal(&t)
		if _, swapped, err := s.db.CmpAndSwap(TokensTable, []byte(id), old, b); err != nil {
			return nil, err
		} else if swapped {
			return t.public(), nil
		}
	}
}

// Token statuses, as listings show and filter them.
const (
	StatusActive  = "active"
	StatusExpired = "expired"
	StatusRevoked = "revoked"
)

// Status is StatusRevoked, StatusExpired or StatusActive at time now.
func (t *Token) Status(now time.Time) string {
	switch {
	case t.RevokedAt != nil:
		return StatusRevoked
	case !t.Active(now):
		return StatusExpired
	}
	return StatusActive
}

// Page sizes of a token listing.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// TokenQuery selects one page of a token listing.
type TokenQuery struct {
	// Status keeps only tokens of this status ("": all).
	Status string
	// Cursor is the previous page's next cursor ("": the first page). It
	// is opaque to clients; today it is the last token ID of that page.
	Cursor string
	// Limit is the page size, 1..MaxPageSize (0: DefaultPageSize).
	Limit int
}

// Validate checks a query; errors start with the field's name.
func (q TokenQuery) Validate() error {
	switch q.Status {
	case "", StatusActive, StatusExpired, StatusRevoked:
	default:
		return fmt.Errorf("status: must be %s, %s or %s", StatusActive, StatusExpired, StatusRevoked)
	}
	if q.Limit < 0 || q.Limit > MaxPageSize {
		return fmt.Errorf("limit: must be from 1 to %d, got %d", MaxPageSize, q.Limit)
	}
	if q.Cursor != "" && !validID(q.Cursor) {
		return errors.New("cursor: not a cursor of this listing (pass nextCursor of the previous page as is)")
	}
	return nil
}

// validID reports whether id has the form of a token ID: 16 lower-case
// hex digits.
func validID(id string) bool {
	if len(id) != 16 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Page returns one page of tokens, without hashes, in token ID order (the
// table's key order), and the cursor of the next page ("" at the end).
//
// The key order lets a page read only its own rows: the scan starts after
// the cursor (storage.ForEachPageMatch), so memory and work are bounded by
// the page, not the table. Token IDs are random, so the order is stable but
// unrelated to creation time. A token created while a client walks the
// pages appears once if its ID sorts after the client's cursor, not at all
// otherwise; no token appears twice and none that existed throughout is
// skipped.
func (s *TokenStore) Page(q TokenQuery) ([]*Token, string, error) {
	if err := q.Validate(); err != nil {
		return nil, "", err
	}
	if q.Limit == 0 {
		q.Limit = DefaultPageSize
	}
	var after []byte
	if q.Cursor != "" {
		after = []byte(q.Cursor)
	}
	var m storage.Match
	if q.Status == StatusRevoked {
		// Only revoked tokens store a revokedAt (omitempty): the store
		// skips the others without decoding them.
		m.Contains = [][]byte{[]byte(`"revokedAt":`)}
	}
	now := s.now()
	out, next, err := storage.CollectPage(s.db, TokensTable, after, q.Limit, m, func(_, v []byte) (*Token, bool, error) {
		var t Token
		if err := json.Unmarshal(v, &t); err != nil {
			return nil, false, nil // an undecodable row is not listed, as before paging
		}
		return t.public(), q.Status == "" || t.Status(now) == q.Status, nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("list tokens: %w", err)
	}
	return out, string(next), nil
}

// List returns every token, newest first, without hashes. It holds them
// all in memory: it is for tests that need the whole set; the API pages
// with Page.
func (s *TokenStore) List() ([]*Token, error) {
	var all []*Token
	q := TokenQuery{Limit: MaxPageSize}
	for {
		page, next, err := s.Page(q)
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if next == "" {
			break
		}
		q.Cursor = next
	}
	SortNewestFirst(all)
	return all, nil
}

// SortNewestFirst orders tokens by creation time, newest first, then by
// ID: the order listings had before they were paged.
func SortNewestFirst(ts []*Token) {
	slices.SortStableFunc(ts, func(a, b *Token) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}

func (s *TokenStore) get(id string) (*Token, error) {
	b, err := s.db.Get(TokensTable, []byte(id))
	if err != nil {
		if database.IsErrNotFound(err) {
			return nil, ErrNotFound
		}
		return nil, err
	}
	var t Token
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("decode token %s: %w", id, err)
	}
	return &t, nil
}

func (t *Token) public() *Token {
	c := *t
	c.Hash = ""
	return &c
}

func hash(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}
