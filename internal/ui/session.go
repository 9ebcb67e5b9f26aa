package ui

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"sync"
	"time"
)

// session is one logged-in browser. It holds the admin token the admin
// logged in with, so every page calls the admin API as that token; it
// lives only in this replica's memory and is never written anywhere.
type session struct {
	key       [32]byte // SHA-256 of the cookie value
	csrf      string   // form token, compared on every POST
	token     string   // the admin token's secret
	tokenID   string
	tokenName string
	scopes    []string
	created   time.Time
	lastSeen  time.Time
	flash     string // shown once on the next page
}

// sessions is the bounded in-memory session store. The map is keyed by
// the SHA-256 of the cookie value, so a memory dump or a timing side
// channel on the map does not hand out usable cookies.
type sessions struct {
	mu       sync.Mutex
	byKey    map[[32]byte]*session
	max      int
	idle     time.Duration
	absolute time.Duration
}

func newSessions(max int, idle, absolute time.Duration) *sessions {
	return &sessions{byKey: map[[32]byte]*session{}, max: max, idle: idle, absolute: absolute}
}

// randomString returns n random bytes, base64url: session ids and form
// tokens.
func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand panics instead)
	return base64.RawURLEncoding.EncodeToString(b)
}

// create starts a session with a fresh id (never one the browser sent:
// no session fixation) and returns the cookie value. When the store is
// full it first drops expired sessions, then the one idle longest.
func (s *sessions) create(now time.Time, token, id, name string, scopes []string) (string, *session) {
	cookie := randomString(32)
	sess := &session{key: sha256.Sum256([]byte(cookie)), csrf: randomString(32), token: token,
		tokenID: id, tokenName: name, scopes: scopes, created: now, lastSeen: now}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.byKey) >= s.max {
		s.purgeLocked(now)
	}
	if len(s.byKey) >= s.max {
		var oldest *session
		for _, o := range s.byKey {
			if oldest == nil || o.lastSeen.Before(oldest.lastSeen) {
				oldest = o
			}
		}
		delete(s.byKey, oldest.key)
	}
	s.byKey[sess.key] = sess
	return cookie, sess
}

// get returns the live session of a cookie value and marks it used; an
// expired one is deleted.
func (s *sessions) get(cookie string, now time.Time) *session {
	if cookie == "" || len(cookie) > 128 {
		return nil
	}
	k := sha256.Sum256([]byte(cookie))
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.byKey[k]
	if sess == nil {
		return nil
	}
	if s.expired(sess, now) {
		delete(s.byKey, k)
		return nil
	}
	sess.lastSeen = now
	return sess
}

func (s *sessions) expired(sess *session, now time.Time) bool {
	return now.Sub(sess.lastSeen) >= s.idle || now.Sub(sess.created) >= s.absolute
}

func (s *sessions) purgeLocked(now time.Time) {
	for k, sess := range s.byKey {
		if s.expired(sess, now) {
			delete(s.byKey, k)
		}
	}
}

// remove ends a session (logout, or its token stopped working).
func (s *sessions) remove(sess *session) {
	s.mu.Lock()
	delete(s.byKey, sess.key)
	s.mu.Unlock()
}

// takeFlash returns and clears the one-time message.
func (s *sessions) takeFlash(sess *session) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := sess.flash
	sess.flash = ""
	return f
}

func (s *sessions) setFlash(sess *session, msg string) {
	s.mu.Lock()
	sess.flash = msg
	s.mu.Unlock()
}

// count is the number of sessions held (live or not yet purged).
func (s *sessions) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byKey)
}
