package ha

import (
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"hash/maphash"
	"strconv"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/crlchanges"
	"github.com/stepfort/stepfort/internal/storage"
)

// CRLScope is what one configuration generation says about a series' CRLs:
// the URL that is the certificates' distribution point, how long a CRL is
// valid, whether the CRL carries an Issuing Distribution Point naming the
// URL, and the delta CRLs. It is immutable, so a publication uses one
// scope from start to end.
type CRLScope struct {
	url      string
	validity time.Duration
	idp      *pkix.Extension // nil: no IDP (the default)
	delta    *DeltaScope     // nil: no delta CRLs
	freshest *pkix.Extension // the base's Freshest CRL, with delta
}

// ScopeOption adds to a CRLScope.
type ScopeOption func(*CRLScope) error

// WithIDP puts a critical Issuing Distribution Point naming the CRL URL
// into the CRLs (NSS refuses such CRLs; docs/ha.md).
func WithIDP() ScopeOption {
	return func(s *CRLScope) error {
		idp, err := issuingDistributionPoint(s.url)
		if err != nil {
			return fmt.Errorf("CRL issuing distribution point %q: %w", s.url, err)
		}
		s.idp = &idp
		return nil
	}
}

// WithDelta turns delta CRLs on; d.URL empty means DeltaURL(url) and zero
// periods the defaults.
func WithDelta(d DeltaScope) ScopeOption {
	return func(s *CRLScope) error {
		if d.URL == "" {
			d.URL = DeltaURL(s.url)
		}
		if d.BasePeriod == 0 {
			d.BasePeriod = DefaultBasePeriod
		}
		if d.DeltaPeriod == 0 {
			d.DeltaPeriod = DefaultDeltaPeriod
		}
		if d.DeltaPeriod >= d.BasePeriod {
			return fmt.Errorf("delta period %s must be shorter than the base period %s", d.DeltaPeriod, d.BasePeriod)
		}
		f, err := freshestCRL(d.URL)
		if err != nil {
			return fmt.Errorf("freshest CRL %q: %w", d.URL, err)
		}
		s.delta, s.freshest = &d, &f
		return nil
	}
}

// NewCRLScope returns the scope of CRLs published at url and valid for
// validity (without deltas; with them, the periods decide).
func NewCRLScope(url string, validity time.Duration, opts ...ScopeOption) (*CRLScope, error) {
	s := &CRLScope{url: url, validity: validity}
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// URL is the CRL distribution point (and the IDP's URL when there is one).
func (s *CRLScope) URL() string { return s.url }

// Validity is how long a published base CRL is valid (thisUpdate to
// nextUpdate).
func (s *CRLScope) Validity() time.Duration {
	if s.delta != nil {
		return s.delta.BasePeriod + overlap(s.delta.BasePeriod)
	}
	return s.validity
}

// Delta is the scope's delta configuration, nil without deltas.
func (s *CRLScope) Delta() *DeltaScope { return s.delta }

// equal reports whether s and o publish the same CRLs.
func (s *CRLScope) equal(o *CRLScope) bool {
	if s == nil || o == nil {
		return s == o
	}
	return s.url == o.url && s.validity == o.validity && (s.idp == nil) == (o.idp == nil) &&
		((s.delta == nil && o.delta == nil) || (s.delta != nil && o.delta != nil && *s.delta == *o.delta))
}

// names reports whether the base crl carries what this scope puts into a
// base now: the IDP (present or absent, and equal) and the Freshest CRL
// (present or absent, and equal). Relying parties compare the IDP with the
// certificate's distribution point and follow the Freshest CRL.
func (s *CRLScope) names(crl *x509.RevocationList) bool {
	return sameExtension(crl, oidIDP, s.idp) && sameExtension(crl, oidFreshestCRL, s.freshest)
}

// namesDelta is names for a delta: the same IDP as the base, and no
// Freshest CRL (RFC 5280 5.2.6).
func (s *CRLScope) namesDelta(crl *x509.RevocationList) bool {
	return sameExtension(crl, oidIDP, s.idp) && findExtension(crl.Extensions, oidFreshestCRL) == nil
}

// baseExtensions are the extensions after AKI and CRL number of a base.
func (s *CRLScope) baseExtensions() []pkix.Extension {
	var out []pkix.Extension
	if s.idp != nil {
		out = append(out, *s.idp)
	}
	if s.freshest != nil {
		out = append(out, *s.freshest)
	}
	return out
}

// revocationSource is where a series' revoked certificates come from.
type revocationSource interface {
	// forEachRevoked calls fn for every revoked certificate (serial in
	// decimal; fn must not keep it).
	forEachRevoked(fn func(serialDec []byte, revokedAt time.Time, reason int, notAfter time.Time) error) error
	// state returns a version whose change since the last base makes a
	// base due (0: none) and the floor of the series' CRL numbers.
	state() (version, floor int64, err error)
}

// series is the CRLs of one issuer key: stepfort's own ("own", the base
// in upstream's x509_crl row) or a legacy issuer's ("legacy/<name>"). One
// numbering sequence across base and delta (RFC 5280 5.2.3): the counter
// row holds the last number used, taken with a compare-and-swap before
// each CRL is stored with a compare-and-swap on its own row.
type series struct {
	name        string
	base, delta *crlSlot
	counterKey  []byte // in crlStateTable
	scope       func() *CRLScope
	issuer      func() (*x509.Certificate, crypto.Signer, error)
	source      revocationSource
	// dirtySince reports a revocation at or after t not yet in a CRL.
	dirtySince func(t time.Time) (bool, error)
}

func seriesSlots(p *Publisher, name string) (delta *crlSlot, counter []byte) {
	return newCRLSlot(p.store, crlStateTable, []byte(name+"/delta"), []byte(name+"/delta/published")), []byte(name + "/number")
}

// due reports which CRLs of s are due now.
func (p *Publisher) dueSeries(s *series, sc *CRLScope) (base, delta bool, err error) {
	b, err := s.base.get()
	if err != nil || b == nil {
		return true, sc.delta != nil, err
	}
	if !b.confirmed || !sc.names(b.crl) {
		return true, sc.delta != nil, nil
	}
	// An import changed the legacy issuer's rows: a new base.
	if v, _, err := s.source.state(); err != nil {
		return false, false, err
	} else if v != b.version {
		return true, sc.delta != nil, nil
	}
	now := p.host.Now()
	crl := b.crl
	if sc.delta == nil {
		if now.After(crl.ThisUpdate.Add(crl.NextUpdate.Sub(crl.ThisUpdate) * 2 / 3)) {
			return true, false, nil
		}
		dirty, err := s.dirtySince(crl.ThisUpdate)
		return dirty, false, err
	}
	if !now.Before(crl.ThisUpdate.Add(sc.delta.BasePeriod)) {
		return true, true, nil
	}
	d, err := s.delta.get()
	if err != nil || d == nil {
		return false, true, err
	}
	if !d.confirmed || d.baseNumber != b.info.Number || !sc.namesDelta(d.crl) ||
		!now.Before(d.crl.ThisUpdate.Add(sc.delta.DeltaPeriod)) {
		return false, true, nil
	}
	dirty, err := s.dirtySince(d.crl.ThisUpdate)
	return false, dirty, err
}

// nextNumber reserves the series' next CRL number: above the counter,
// above seen (the numbers of the stored rows, which an older stepfort or
// upstream may have written without the counter) and above the floor.
// The compare-and-swap on the counter row makes two publishers never use
// one number.
func (p *Publisher) nextNumber(s *series, seen ...int64) (int64, error) {
	old, err := p.store.Get(crlStateTable, s.counterKey)
	if err != nil && !database.IsErrNotFound(err) {
		return 0, err
	}
	var last int64
	if len(old) > 0 {
		if last, err = strconv.ParseInt(string(old), 10, 64); err != nil {
			return 0, fmt.Errorf("CRL number counter %s: %w", s.counterKey, err)
		}
	}
	_, floor, err := s.source.state()
	if err != nil {
		return 0, err
	}
	n := max(last, floor, 0)
	for _, v := range seen {
		n = max(n, v)
	}
	n++
	_, swapped, err := storage.CmpAndSwap(p.store, crlStateTable, s.counterKey, old, []byte(strconv.FormatInt(n, 10)))
	if err != nil {
		return 0, fmt.Errorf("reserve CRL number: %w", err)
	}
	if !swapped {
		return 0, errors.New("another replica took a CRL number meanwhile; will retry")
	}
	return n, nil
}

// signerFor returns the issuer and its CRL signer.
func signerFor(s *series) (*x509.Certificate, *crlSigner, error) {
	cert, signer, err := s.issuer()
	if err != nil {
		return nil, nil, err
	}
	sig, err := newCRLSigner(signer)
	if err != nil {
		return nil, nil, err
	}
	return cert, sig, nil
}

// publishBase publishes one base (complete) CRL of s: it lists the
// series' change entries, scans the revocation source, stores the CRL,
// then removes exactly the entries it listed (internal/crlchanges).
func (p *Publisher) publishBase(s *series, sc *CRLScope) (err error) {
	defer func() { p.auditCRLFailure(s, false, err) }()
	t0 := time.Now()
	slot := s.base
	prev, err := slot.read(p.store)
	if err != nil {
		return err
	}
	version, _, err := s.source.state()
	if err != nil {
		return err
	}
	_, listed, err := crlchanges.List(p.store, s.name)
	if err != nil {
		return fmt.Errorf("list CRL changes: %w", err)
	}
	issuer, sig, err := signerFor(s)
	if err != nil {
		return err
	}
	now := p.host.Now().UTC().Truncate(time.Second)
	validity := sc.Validity()
	nextUpdate := now.Add(validity)
	// The previous CRL's size (three quarters of its base64 row) is the
	// best guess of this one's.
	enc, err := newCRLEncoder(issuer, sig, now, nextUpdate, len(prev.row)*3/4+len(prev.row)/64)
	if err != nil {
		return err
	}
	cutoff := now.Add(-expiredGrace)
	err = s.source.forEachRevoked(func(serial []byte, revokedAt time.Time, reason int, notAfter time.Time) error {
		if !notAfter.IsZero() && notAfter.Before(cutoff) {
			return nil
		}
		return enc.add(serial, revokedAt, reason)
	})
	if err != nil {
		return fmt.Errorf("read revocations: %w", err)
	}
	tScan := time.Since(t0)
	var deltaNumber int64
	if d := s.delta.peek(); d != nil {
		deltaNumber = d.info.Number
	}
	number, err := p.nextNumber(s, prev.number, deltaNumber)
	if err != nil {
		return err
	}
	der, err := enc.finish(number, sc.baseExtensions()...)
	if err != nil {
		return err
	}
	tSign := time.Since(t0)
	if err := p.store1(slot, prev, &crlRecord{Number: number, ExpiresAt: nextUpdate, Duration: validity, DER: der, Version: version}); err != nil {
		return err
	}
	if err := crlchanges.Remove(p.store, listed); err != nil {
		// The entries stay on the deltas until the next base: harmless.
		p.log.Warn("prune CRL changes", "series", s.name, "error", err)
	}
	p.log.Info("CRL published", "series", s.name, "number", number, "entries", enc.entries, "bytes", len(der), "nextUpdate", nextUpdate,
		"scanSeconds", tScan.Seconds(), "signSeconds", (tSign - tScan).Seconds(), "storeSeconds", (time.Since(t0) - tSign).Seconds())
	p.auditCRL(s, issuer, crlPublished{number: number, thisUpdate: now, nextUpdate: nextUpdate, entries: enc.entries})
	return nil
}

// publishDelta publishes one delta CRL of s over the stored base: the
// latest change per certificate recorded since that base was scanned. It
// reads the change entries and the small delta row, never the base's
// entries, so it costs what changed.
func (p *Publisher) publishDelta(s *series, sc *CRLScope) (err error) {
	defer func() { p.auditCRLFailure(s, true, err) }()
	t0 := time.Now()
	b, err := s.base.get()
	if err != nil {
		return err
	}
	if b == nil || !b.confirmed {
		return errors.New("no confirmed base CRL to build a delta on")
	}
	slot := s.delta
	prev, err := slot.read(p.store)
	if err != nil {
		return err
	}
	changes, _, err := crlchanges.List(p.store, s.name)
	if err != nil {
		return fmt.Errorf("list CRL changes: %w", err)
	}
	issuer, sig, err := signerFor(s)
	if err != nil {
		return err
	}
	now := p.host.Now().UTC().Truncate(time.Second)
	validity := sc.delta.DeltaPeriod + overlap(sc.delta.DeltaPeriod)
	nextUpdate := now.Add(validity)
	enc, err := newCRLEncoder(issuer, sig, now, nextUpdate, len(changes)*48)
	if err != nil {
		return err
	}
	cutoff := now.Add(-expiredGrace)
	for _, c := range changes {
		if !c.NotAfter.IsZero() && c.NotAfter.Before(cutoff) {
			continue // the base leaves it out too
		}
		if err := enc.add([]byte(c.Serial), c.RevokedAt, c.Reason); err != nil {
			return err
		}
	}
	number, err := p.nextNumber(s, b.info.Number, prev.number)
	if err != nil {
		return err
	}
	ind, err := deltaIndicator(b.info.Number)
	if err != nil {
		return err
	}
	extra := []pkix.Extension{ind}
	if sc.idp != nil {
		extra = []pkix.Extension{*sc.idp, ind}
	}
	der, err := enc.finish(number, extra...)
	if err != nil {
		return err
	}
	if err := p.store1(slot, prev, &crlRecord{Number: number, ExpiresAt: nextUpdate, Duration: validity, DER: der}); err != nil {
		return err
	}
	p.log.Info("delta CRL published", "series", s.name, "number", number, "base", b.info.Number, "entries", enc.entries,
		"bytes", len(der), "nextUpdate", nextUpdate, "seconds", time.Since(t0).Seconds())
	p.auditCRL(s, issuer, crlPublished{number: number, thisUpdate: now, nextUpdate: nextUpdate, entries: enc.entries, delta: true, base: b.info.Number})
	return nil
}

// slotRow is a slot's stored row as a publisher read it before
// replacing it: the row and fingerprint its compare-and-swaps start from,
// and the row's CRL number.
type slotRow struct {
	row, fp []byte // nil when absent
	number  int64  // 0 when there is no row
}

// read reads the slot's row, its fingerprint and its number from store.
func (s *crlSlot) read(store nosql.DB) (slotRow, error) {
	row, err := store.Get(s.table, s.key)
	if err != nil && !database.IsErrNotFound(err) {
		return slotRow{}, err
	}
	fp, err := store.Get(crlStateTable, s.fpKey)
	if err != nil && !database.IsErrNotFound(err) {
		return slotRow{}, err
	}
	number, err := s.storedNumber(row)
	if err != nil {
		return slotRow{}, err
	}
	return slotRow{row: row, fp: fp, number: number}, nil
}

// store1 stores rec in slot with a compare-and-swap against the row prev
// read, then its fingerprint against prev's, and caches it.
func (p *Publisher) store1(slot *crlSlot, prev slotRow, rec *crlRecord) error {
	row, err := encodeCRLInfo(rec.Number, rec.ExpiresAt, rec.Duration, rec.DER, rec.Version)
	if err != nil {
		return err
	}
	_, swapped, err := storage.CmpAndSwap(p.store, slot.table, slot.key, prev.row, row)
	if err != nil {
		return fmt.Errorf("store CRL: %w", err)
	}
	if !swapped {
		return errors.New("another replica published a CRL meanwhile; will retry")
	}
	c, err := newCRLCache(rec, maphash.Bytes(crlSeed, row), time.Now())
	if err != nil {
		return err
	}
	// Only from the fingerprint this publisher read: a late write of an
	// older publisher must not replace a newer one's.
	_, c.confirmed, err = storage.CmpAndSwap(p.store, crlStateTable, slot.fpKey, prev.fp, []byte(c.etag))
	if err != nil || !c.confirmed {
		p.log.Warn("CRL fingerprint not updated; replicas read the whole CRL until the next one", "row", string(slot.key), "error", err)
	}
	// After any refresh under way, which may have read the previous row.
	slot.loading.Lock()
	slot.set(c)
	slot.loading.Unlock()
	return nil
}
