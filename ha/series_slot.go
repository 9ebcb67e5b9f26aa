package ha

import (
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"math/big"
	"sync"
	"time"

	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"
)

// crlSlot is where one CRL of a series is stored (a row holding JSON
// db.CertificateRevocationListInfo, plus a fingerprint row holding its
// ETag) and this replica's cached copy of it, so that serving, due and
// the metrics do not fetch and decode the whole row (tens of megabytes at
// a million entries) on every call.
type crlSlot struct {
	store             nosql.DB
	table, key, fpKey []byte
	onSet             func(*crlCache) // may be nil

	mu      sync.Mutex // guards cache
	cache   *crlCache
	loading sync.Mutex // held by the one caller refreshing the cache
}

func newCRLSlot(store nosql.DB, table, key, fpKey []byte) *crlSlot {
	return &crlSlot{store: store, table: table, key: key, fpKey: fpKey}
}

// crlRecord is the stored row: upstream's db.CertificateRevocationListInfo
// plus, for a legacy base, the legacy store's version it was built from.
type crlRecord struct {
	Number    int64
	ExpiresAt time.Time
	Duration  time.Duration
	DER       []byte
	Version   int64 `json:",omitempty"`
}

// crlCache is the stored CRL as this replica last read or wrote it. It is
// immutable once built.
type crlCache struct {
	info    *db.CertificateRevocationListInfo
	crl     *x509.RevocationList // header only: no entries
	version int64                // crlRecord.Version
	// baseNumber is the BaseCRLNumber of a delta CRL, -1 for a base.
	baseNumber int64
	etag       string    // also the published fingerprint
	rowSum     uint64    // maphash of the stored row
	checked    time.Time // last comparison with the fingerprint
	loaded     time.Time // last comparison with the row itself
	// confirmed: the fingerprint row names this CRL. When it does not (a
	// CRL from a stepfort without fingerprints, or a publisher that died
	// between the two writes) every refresh reads the row, and due asks
	// for a new CRL, which writes both.
	confirmed bool
}

// get returns the cached CRL, refreshed from the database at most
// crlRecheck apart; nil when none was published.
func (s *crlSlot) get() (*crlCache, error) {
	s.mu.Lock()
	c := s.cache
	s.mu.Unlock()
	if c != nil && time.Since(c.checked) < crlRecheck {
		return c, nil
	}
	// One caller refreshes; the others keep serving what is cached.
	if !s.loading.TryLock() {
		if c != nil {
			return c, nil
		}
		s.loading.Lock()
	}
	defer s.loading.Unlock()
	s.mu.Lock()
	c = s.cache
	s.mu.Unlock()
	if c != nil && time.Since(c.checked) < crlRecheck {
		return c, nil
	}
	n, err := s.refresh(c)
	if err != nil {
		if c != nil {
			// Still valid for clients; the next call tries again.
			return c, nil
		}
		return nil, err
	}
	s.set(n)
	return n, nil
}

// refresh compares c with the database and returns what is current.
func (s *crlSlot) refresh(c *crlCache) (*crlCache, error) {
	now := time.Now()
	fp, err := s.store.Get(crlStateTable, s.fpKey)
	if err != nil && !database.IsErrNotFound(err) {
		return nil, err
	}
	if c != nil && c.confirmed && string(fp) == c.etag && now.Sub(c.loaded) < crlReload {
		return c.touched(now, c.loaded, true), nil
	}
	row, err := s.store.Get(s.table, s.key)
	if database.IsErrNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	sum := maphash.Bytes(crlSeed, row)
	if c != nil && sum == c.rowSum {
		return c.touched(now, now, string(fp) == c.etag), nil
	}
	var rec crlRecord
	if err := json.Unmarshal(row, &rec); err != nil {
		return nil, fmt.Errorf("decode stored CRL %s/%s: %w", s.table, s.key, err)
	}
	if len(rec.DER) == 0 {
		return nil, nil
	}
	n, err := newCRLCache(&rec, sum, now)
	if err != nil {
		return nil, err
	}
	n.confirmed = string(fp) == n.etag
	return n, nil
}

// set replaces the cache; publishers call it under loading, after any
// refresh under way, which may have read the previous row.
func (s *crlSlot) set(c *crlCache) {
	s.mu.Lock()
	s.cache = c
	s.mu.Unlock()
	if c != nil && s.onSet != nil {
		s.onSet(c)
	}
}

// peek is the cache without refreshing it.
func (s *crlSlot) peek() *crlCache {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cache
}

// storedNumber is the Number of the stored row old (0 when there is none),
// from the cache when it holds that row.
func (s *crlSlot) storedNumber(old []byte) (int64, error) {
	if old == nil {
		return 0, nil
	}
	if c := s.peek(); c != nil && c.rowSum == maphash.Bytes(crlSeed, old) {
		return c.info.Number, nil
	}
	var prev struct{ Number int64 } // not the DER: only the number is needed
	if err := json.Unmarshal(old, &prev); err != nil {
		return 0, fmt.Errorf("decode stored CRL %s/%s: %w", s.table, s.key, err)
	}
	return prev.Number, nil
}

// touched is c compared with the database at checked (fingerprint) and
// loaded (row).
func (c *crlCache) touched(checked, loaded time.Time, confirmed bool) *crlCache {
	n := *c
	n.checked, n.loaded, n.confirmed = checked, loaded, confirmed
	return &n
}

var crlSeed = maphash.MakeSeed()

func newCRLCache(rec *crlRecord, rowSum uint64, now time.Time) (*crlCache, error) {
	crl, err := parseCRLHeader(rec.DER)
	if err != nil {
		return nil, fmt.Errorf("parse stored CRL: %w", err)
	}
	info := &db.CertificateRevocationListInfo{Number: rec.Number, ExpiresAt: rec.ExpiresAt, Duration: rec.Duration, DER: rec.DER}
	base := int64(-1)
	for _, e := range crl.Extensions {
		if e.Id.Equal(oidDeltaCRLIndicator) {
			var n *big.Int
			if _, err := asn1.Unmarshal(e.Value, &n); err != nil || !n.IsInt64() {
				return nil, fmt.Errorf("stored delta CRL: bad delta CRL indicator")
			}
			base = n.Int64()
		}
	}
	return &crlCache{info: info, crl: crl, version: rec.Version, baseNumber: base, etag: crlETag(rec.Number, rec.DER),
		rowSum: rowSum, checked: now, loaded: now}, nil
}
