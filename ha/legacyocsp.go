package ha

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"sync/atomic"
	"time"

	"go.step.sm/crypto/keyutil"

	"github.com/stepfort/stepfort/internal/legacy"
)

// ownIssuerName names stepfort's own issuer in logs.
const ownIssuerName = "stepfort"

// legacyStatusMaxAge bounds how long a legacy issuer's cached response is
// served without looking at the store: a status changed by another
// process (an import on PostgreSQL) or another replica (a revocation) is
// answered within this time. The responder reads the issuer's change
// counter (legacy.State.Changes) at most once per interval, and a cached
// response's status again only when that counter moved since the status
// was read: one store read per issuer and interval while nothing changes,
// whatever the request rate or the number of serials asked about.
const legacyStatusMaxAge = time.Second

// ocspIssuer is one CA the responder answers for: stepfort's own issuing
// CA (id 0, status from the status index, CA from the authority) or a
// legacy issuer (status from its store, CA loaded at start).
type ocspIssuer struct {
	id   uint32
	name string
	// Legacy issuers only; nil for stepfort's own.
	cert     *x509.Certificate
	caSigner crypto.Signer
	status   func(serial *big.Int) (certStatus, error)
	// changesOf reads the issuer's change counter; changes is its last
	// value (-1 after a failed read: every cached status is then read
	// again) and changesAt when it was read (UnixNano).
	changesOf func() (int64, error)
	changes   atomic.Int64
	changesAt atomic.Int64
	// key signs responses; guarded by Responder.mu, replaced by keyFor.
	key *responderKey
}

// refreshChanges reads legacy issuer iss's change counter if it was last
// read legacyStatusMaxAge ago or more (one caller at a time does).
func (r *Responder) refreshChanges(iss *ocspIssuer, now time.Time) {
	at := iss.changesAt.Load()
	if now.UnixNano()-at < int64(legacyStatusMaxAge) || !iss.changesAt.CompareAndSwap(at, now.UnixNano()) {
		return
	}
	n, err := iss.changesOf()
	if err != nil {
		r.log.Warn("OCSP legacy issuer state", "issuer", iss.name, "error", err)
		n = -1
	}
	iss.changes.Store(n)
}

// legacyFresh reports whether c, a cached response of legacy issuer iss,
// may be served without reading its status: the issuer's change counter
// (refreshed by refreshChanges) has not moved since c's status was read.
func legacyFresh(iss *ocspIssuer, c *cachedResponse) bool {
	seen := c.seen.Load()
	return seen >= 0 && seen == iss.changes.Load()
}

// routeKey is a CertID's issuer part: hash algorithm, issuer name hash and
// issuer key hash (each exactly the algorithm's size, so arrays compare
// them without ambiguity or allocation).
type routeKey struct {
	hash          crypto.Hash
	name, keyHash [64]byte
}

// legacyRoutes routes CertIDs to legacy issuers. It is never changed once
// published: AddLegacyIssuer publishes a copy.
type legacyRoutes struct {
	byKey  map[routeKey]*ocspIssuer
	byID   map[uint32]*ocspIssuer
	byName map[string]*ocspIssuer
}

// digestSize is the size of the CertID hashes the responder accepts.
func digestSize(h crypto.Hash) int {
	switch h {
	case crypto.SHA1:
		return 20
	case crypto.SHA256:
		return 32
	case crypto.SHA384:
		return 48
	case crypto.SHA512:
		return 64
	}
	return 0
}

// makeRouteKey builds the route key of a CertID; ok is false for a hash
// algorithm the responder does not accept or hashes of the wrong size.
func makeRouteKey(h crypto.Hash, nameHash, keyHash []byte) (k routeKey, ok bool) {
	n := digestSize(h)
	if n == 0 || len(nameHash) != n || len(keyHash) != n {
		return k, false
	}
	k.hash = h
	copy(k.name[:], nameHash)
	copy(k.keyHash[:], keyHash)
	return k, true
}

// route finds the request's issuer and its current signing key. Stepfort's
// own issuer is tried first, with the same compare as before there were
// several issuers (the hot path); then the legacy issuers, in one map
// lookup. A request naming no known issuer gets errNotOurIssuer; when
// stepfort's own key is not available (no authority yet) that error is
// returned instead, as before.
func (r *Responder) route(q *parsedRequest) (*ocspIssuer, *responderKey, error) {
	key, ownErr := r.currentSigner()
	if ownErr == nil && key.issuedBy(q.hash, q.issuerName, q.issuerKey) {
		return r.own, key, nil
	}
	if iss := r.legacyIssuer(q.hash, q.issuerName, q.issuerKey); iss != nil {
		k, err := r.keyFor(iss)
		return iss, k, err
	}
	if ownErr != nil {
		return nil, nil, ownErr
	}
	return nil, nil, errNotOurIssuer
}

// routable reports whether the request names a known issuer (only such
// requests are kept in the parsed-request cache).
func (r *Responder) routable(q *parsedRequest) bool {
	if key, err := r.currentSigner(); err == nil && key.issuedBy(q.hash, q.issuerName, q.issuerKey) {
		return true
	}
	return r.legacyIssuer(q.hash, q.issuerName, q.issuerKey) != nil
}

// legacyIssuer returns the legacy issuer a CertID names, or nil.
func (r *Responder) legacyIssuer(h crypto.Hash, nameHash, keyHash []byte) *ocspIssuer {
	routes := r.legacy.Load()
	if routes == nil {
		return nil
	}
	k, ok := makeRouteKey(h, nameHash, keyHash)
	if !ok {
		return nil
	}
	return routes.byKey[k]
}

// issuerByID returns the issuer of a cache entry.
func (r *Responder) issuerByID(id uint32) *ocspIssuer {
	if id == r.own.id {
		return r.own
	}
	if routes := r.legacy.Load(); routes != nil {
		return routes.byID[id]
	}
	return nil
}

// AddLegacyIssuer makes the responder answer for a legacy issuer: requests
// whose CertID names iss.Cert get the serial's status in store (good for
// an imported certificate, revoked with its time and reason, unknown for a
// serial never imported), signed by a delegated responder certificate
// issued with iss.Signer (RFC 6960 4.2.2.2). Statuses are re-read at most
// legacyStatusMaxAge after they were last read. Call it before serving.
func (r *Responder) AddLegacyIssuer(iss *legacy.Issuer, store *legacy.Store) error {
	if iss == nil || store == nil {
		return errors.New("legacy issuer: issuer and store are required")
	}
	name := iss.Config.Name
	changes := func() (int64, error) {
		st, err := store.State(name)
		return st.Changes, err
	}
	return r.addIssuer(name, iss.Cert, iss.Signer, changes, func(serial *big.Int) (certStatus, error) {
		st, err := store.Status(name, serial)
		if err != nil {
			return certStatus{}, err
		}
		out := certStatus{code: st.Code}
		if st.Code == statusRevoked {
			out.rev = revocation{at: st.RevokedAt, reason: st.Reason}
		}
		return out, nil
	})
}

// addIssuer makes the responder answer for another CA: requests whose
// CertID names cert (by any accepted hash algorithm) are answered with
// status, signed by a delegated responder certificate issued with caSigner
// (or caSigner itself with ocsp.signer "ca").
func (r *Responder) addIssuer(name string, cert *x509.Certificate, caSigner crypto.Signer, changes func() (int64, error), status func(*big.Int) (certStatus, error)) error {
	switch {
	case name == "" || name == ownIssuerName:
		return fmt.Errorf("legacy issuer name %q: reserved or empty", name)
	case cert == nil || caSigner == nil || status == nil || changes == nil:
		return fmt.Errorf("legacy issuer %s: certificate, key and store are required", name)
	case !cert.IsCA:
		return fmt.Errorf("legacy issuer %s: certificate %q is not a CA", name, cert.Subject)
	}
	if !keyutil.Equal(caSigner.Public(), cert.PublicKey) {
		return fmt.Errorf("legacy issuer %s: key does not match certificate %q", name, cert.Subject)
	}
	hashes := &responderKey{issuer: cert}
	if err := hashes.hashIssuer(); err != nil {
		return fmt.Errorf("legacy issuer %s: %w", name, err)
	}
	if own, err := r.currentSigner(); err == nil && own.issuedBy(crypto.SHA256, hashes.nameHash[crypto.SHA256], hashes.keyHash[crypto.SHA256]) {
		return fmt.Errorf("legacy issuer %s: certificate %q is stepfort's own issuing CA", name, cert.Subject)
	}

	r.mu.Lock() // serialises additions; routing reads the published copy
	defer r.mu.Unlock()
	old := r.legacy.Load()
	next := &legacyRoutes{byKey: map[routeKey]*ocspIssuer{}, byID: map[uint32]*ocspIssuer{}, byName: map[string]*ocspIssuer{}}
	if old != nil {
		maps.Copy(next.byKey, old.byKey)
		maps.Copy(next.byID, old.byID)
		maps.Copy(next.byName, old.byName)
	}
	if _, dup := next.byName[name]; dup {
		return fmt.Errorf("legacy issuer %s: added twice", name)
	}
	iss := &ocspIssuer{id: uint32(len(next.byID) + 1), name: name, cert: cert, caSigner: caSigner, status: status, changesOf: changes}
	iss.changes.Store(-1) // read at the first request
	for h, nh := range hashes.nameHash {
		k, ok := makeRouteKey(h, nh, hashes.keyHash[h])
		if !ok {
			return fmt.Errorf("legacy issuer %s: no %s hashes", name, h)
		}
		if other := next.byKey[k]; other != nil {
			return fmt.Errorf("legacy issuer %s: same certificate subject and key as legacy issuer %s", name, other.name)
		}
		next.byKey[k] = iss
	}
	next.byID[iss.id], next.byName[name] = iss, iss
	r.legacy.Store(next)
	return nil
}

// ForgetLegacyStatus makes the next request about serial of the legacy
// issuer read its status again, for a change made through this replica
// (read-your-writes without waiting for legacyStatusMaxAge).
func (r *Responder) ForgetLegacyStatus(issuer string, serial *big.Int) {
	routes := r.legacy.Load()
	if routes == nil || routes.byName[issuer] == nil {
		return
	}
	id, s := routes.byName[issuer].id, serial.String()
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, m := range []map[cacheKey]*cachedResponse{r.cache, r.unknown} {
		for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256, crypto.SHA384, crypto.SHA512} {
			if c := m[cacheKey{id, s, h}]; c != nil {
				c.seen.Store(-1)
			}
		}
	}
}
