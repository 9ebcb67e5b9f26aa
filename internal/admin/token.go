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
	"sort"
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

// List returns every token, newest first, without hashes.
func (s *TokenStore) List() ([]*Token, error) {
	entries, err := s.db.List(TokensTable)
	if err != nil && !database.IsErrNotFound(err) {
		return nil, err
	}
	out := make([]*Token, 0, len(entries))
	for _, e := range entries {
		var t Token
		if err := json.Unmarshal(e.Value, &t); err != nil {
			continue
		}
		out = append(out, t.public())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	return out, nil
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
