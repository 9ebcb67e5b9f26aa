package ha

import (
	"sync"
	"time"

	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"
	"golang.org/x/crypto/ocsp"
)

const (
	statusGood    = ocsp.Good
	statusRevoked = ocsp.Revoked
	statusUnknown = ocsp.Unknown
)

// Bounds of the in-memory caches in entries; past them an arbitrary entry
// is dropped and read again from the database when asked. Their keys are
// serials of at most maxSerialDigits (longer ones are never cached, and
// requests carrying them are refused), so they are bounded in bytes too:
// about 100 bytes an entry with the map's overhead, 100 MiB for issued
// serials (which only this CA's issuances fill) and 6.5 MiB for unknown
// ones (which anyone can fill).
const (
	maxIssuedCached  = 1 << 20
	maxUnknownCached = 1 << 16
)

// evictOne makes room for one entry in a map bounded to limit by deleting
// an arbitrary one (Go randomises where iteration starts), so a full cache
// degrades gradually instead of being emptied at once.
func evictOne[K comparable, V any](m map[K]V, limit int) {
	for k := range m {
		if len(m) < limit {
			return
		}
		delete(m, k)
	}
}

// revocation is what an OCSP response says about a revoked serial.
type revocation struct {
	at     time.Time
	reason int
}

// certStatus is the OCSP status of a serial.
type certStatus struct {
	code int // ocsp.Good, ocsp.Revoked or ocsp.Unknown
	rev  revocation
}

// statusIndex answers "is this serial revoked, issued or unknown?" from
// memory while it is live: its revoked set was loaded completely and every
// later change is being fed to it (this replica's own writes through
// CertificateWatcher, other replicas' through PostgreSQL notifications). When
// it is not live, callers read the database, as every replica always may.
//
// Issued and unknown serials are cached, bounded: an issuance is never
// undone, and an unknown serial leaves the unknown set when the feed
// announces its issuance. issueSeq guards the race where an issuance is
// announced between a database read that found nothing and caching that
// result.
type statusIndex struct {
	mu       sync.RWMutex
	live     bool
	revoked  map[string]revocation
	issued   map[string]struct{}
	unknown  map[string]struct{}
	issueSeq uint64
	// pending collects revocations announced while a load runs, so reset
	// does not drop them.
	pending map[string]revocation
}

func newStatusIndex() *statusIndex {
	return &statusIndex{revoked: map[string]revocation{}, issued: map[string]struct{}{}, unknown: map[string]struct{}{}}
}

// lookup returns the status of serial when the index knows it; ok is false
// when the database must be read (not live, or a serial not seen yet). seq
// is to be handed back to learn.
func (x *statusIndex) lookup(serial string) (st certStatus, seq uint64, ok bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if !x.live {
		return certStatus{}, x.issueSeq, false
	}
	if r, found := x.revoked[serial]; found {
		return certStatus{code: statusRevoked, rev: r}, x.issueSeq, true
	}
	if _, found := x.issued[serial]; found {
		return certStatus{code: statusGood}, x.issueSeq, true
	}
	if _, found := x.unknown[serial]; found {
		return certStatus{code: statusUnknown}, x.issueSeq, true
	}
	return certStatus{}, x.issueSeq, false
}

// learn caches what a database read found. A revocation the read found but
// the live index lacks means the feed is behind; it is recorded anyway.
func (x *statusIndex) learn(serial string, st certStatus, seq uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if !x.live || len(serial) > maxSerialDigits {
		return
	}
	switch st.code {
	case statusRevoked:
		x.revoked[serial] = st.rev
	case statusGood:
		x.addIssued(serial)
	case statusUnknown:
		if seq != x.issueSeq {
			return // an issuance was announced meanwhile; it may be this one
		}
		evictOne(x.unknown, maxUnknownCached)
		x.unknown[serial] = struct{}{}
	}
}

func (x *statusIndex) addIssued(serial string) {
	if len(serial) > maxSerialDigits {
		return // not a valid serial; read from the database when asked
	}
	evictOne(x.issued, maxIssuedCached)
	x.issued[serial] = struct{}{}
}

// issuedNow records an issuance announced by the feed.
func (x *statusIndex) issuedNow(serial string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.issueSeq++
	delete(x.unknown, serial)
	x.addIssued(serial)
}

// revokedNow records a revocation announced by the feed (it is also issued:
// upstream only revokes certificates it knows, or by serial alone, which
// OCSP then reports as revoked too).
func (x *statusIndex) revokedNow(serial string, r revocation) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.revoked[serial] = r
	delete(x.unknown, serial)
	if x.pending != nil {
		x.pending[serial] = r
	}
}

// unrevokedNow records a deleted revocation row (not something upstream
// does, but an operator might).
func (x *statusIndex) unrevokedNow(serial string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.revoked, serial)
	delete(x.pending, serial)
}

// beginLoad starts collecting revocations announced during a load.
func (x *statusIndex) beginLoad() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.pending = map[string]revocation{}
}

// load reads the complete revoked set from store, keeping revocations
// announced meanwhile, and makes the index live; it returns the set's size.
func (x *statusIndex) load(store nosql.DB) (int, error) {
	x.beginLoad()
	revoked, err := loadRevoked(store)
	if err != nil {
		return 0, err
	}
	x.reset(revoked, true)
	return len(revoked), nil
}

// reset replaces the revoked set with a complete one and forgets cached
// unknown serials; live says whether a feed keeps it current from now on.
func (x *statusIndex) reset(revoked map[string]revocation, live bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for serial, r := range x.pending {
		revoked[serial] = r
	}
	x.pending = nil
	x.revoked = revoked
	clear(x.unknown)
	x.issueSeq++
	x.live = live
}

// setLive marks the index stale (the feed broke) or live.
func (x *statusIndex) setLive(live bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.live = live
}

func (x *statusIndex) isLive() bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.live
}

func fromInfo(rci *db.RevokedCertificateInfo) revocation {
	return revocation{at: rci.RevokedAt, reason: rci.ReasonCode}
}
