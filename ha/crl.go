package ha

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
)

// Upstream keeps the CRL in x509_crl under the key "crl" as JSON
// db.CertificateRevocationListInfo; the publisher writes the same row, with a
// compare-and-swap, so the number can only go up.
var (
	crlTable = []byte("x509_crl")
	crlKey   = []byte("crl")
	// crlDirty holds the time of the latest revocation the publisher has not
	// necessarily included yet (written by the revoked-event observer).
	crlStateTable = []byte("stepfort_crl_state")
	crlDirtyKey   = []byte("dirty")
	// crlPublishedKey holds the ETag of the CRL last published, so
	// replicas can tell whether their cached copy is current without
	// reading the CRL.
	crlPublishedKey = []byte("published")
)

const crlLeaseName = "crl-publisher"

// expiredGrace matches upstream: revoked certificates expired longer ago
// than this leave the CRL.
const expiredGrace = time.Hour

// CRLScope is what one configuration generation says about the CRL: the
// URL that is both the certificates' distribution point and the CRL's
// Issuing Distribution Point, and how long a CRL is valid. It is immutable,
// so a publication uses one scope from start to end.
type CRLScope struct {
	url      string
	validity time.Duration
	idp      pkix.Extension
}

// NewCRLScope returns the scope of CRLs published at url and valid for
// validity.
func NewCRLScope(url string, validity time.Duration) (*CRLScope, error) {
	idp, err := issuingDistributionPoint(url)
	if err != nil {
		return nil, fmt.Errorf("CRL issuing distribution point %q: %w", url, err)
	}
	return &CRLScope{url: url, validity: validity, idp: idp}, nil
}

// URL is the CRL distribution point and Issuing Distribution Point.
func (s *CRLScope) URL() string { return s.url }

// Validity is how long a published CRL is valid (thisUpdate to nextUpdate).
func (s *CRLScope) Validity() time.Duration { return s.validity }

// names reports whether crl carries this scope's Issuing Distribution
// Point, the one relying parties compare with the certificate's
// distribution point.
func (s *CRLScope) names(crl *x509.RevocationList) bool {
	for _, e := range crl.Extensions {
		if e.Id.Equal(s.idp.Id) {
			return bytes.Equal(e.Value, s.idp.Value)
		}
	}
	return false
}

// Publisher generates the CRL on exactly one replica at a time (the holder
// of the crl-publisher lease): at start, within PublishDelay of a
// revocation (several revocations in that window make one CRL), before
// two thirds of the CRL's validity have passed, and at once when the
// active generation's scope is not the stored CRL's (a reload changed
// crl.url).
type Publisher struct {
	host    plugins.Host
	store   nosql.DB
	locker  plugins.Locker
	replica string
	delay   time.Duration
	ttl     time.Duration
	log     *slog.Logger

	// scope is the active generation's, nil while no generation with a CRL
	// is active. Activate swaps it while requests and the loop read it.
	scope atomic.Pointer[CRLScope]
	// wake makes the loop act at once after a scope change instead of at
	// its next tick.
	wake chan struct{}

	number, held prometheus.Gauge
	changes      prometheus.Counter
	lastChanges  int64 // only the Run goroutine touches it
	holding      bool  // ditto: whether the last step held the lease

	mu      sync.Mutex // guards cache
	cache   *crlCache
	loading sync.Mutex // held by the one caller refreshing the cache
}

// NewPublisher prepares the tables and metrics. It publishes nothing until
// a scope is activated.
func NewPublisher(h plugins.Host, delay, ttl time.Duration) (*Publisher, error) {
	store := h.DB()
	for _, t := range [][]byte{crlTable, crlStateTable} {
		if err := store.CreateTable(t); err != nil {
			return nil, fmt.Errorf("create table %s: %w", t, err)
		}
	}
	p := &Publisher{host: h, store: store, locker: h.Locker(), replica: h.Replica(),
		delay: delay, ttl: ttl, log: h.Logger(), wake: make(chan struct{}, 1)}
	p.number = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "stepfort", Subsystem: "crl", Name: "number", Help: "Number of the CRL this replica last saw published"})
	p.held = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "stepfort", Subsystem: "crl", Name: "lease_held", Help: "1 if this replica holds the CRL publisher lease"})
	p.changes = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "stepfort", Subsystem: "crl", Name: "lease_changes_total", Help: "Changes of the CRL publisher lease holder seen by this replica"})
	age := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "stepfort", Subsystem: "crl", Name: "age_seconds", Help: "Seconds since the current CRL's thisUpdate"}, func() float64 {
		if info, crl, err := p.current(); err == nil && info != nil {
			return h.Now().Sub(crl.ThisUpdate).Seconds()
		}
		return -1
	})
	for _, c := range []prometheus.Collector{p.number, p.held, p.changes, age} {
		if err := h.Metrics().Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return nil, err
			}
		}
	}
	return p, nil
}

// Activate makes s the scope of every later publication; nil stops
// publishing (a generation without a CRL). When the URL changed, the loop
// publishes at once, so the CRL's IDP follows the distribution point the
// new generation puts into certificates.
func (p *Publisher) Activate(s *CRLScope) {
	old := p.scope.Swap(s)
	if s == nil {
		if old != nil {
			p.log.Info("CRL switched off: upstream's crl.enabled is false")
		}
		return
	}
	if old != nil && old.url == s.url {
		return
	}
	p.log.Info("CRL scope activated", "url", s.url, "validity", s.validity)
	select {
	case p.wake <- struct{}{}:
	default: // a wake-up is pending already
	}
}

// Scope returns the active scope, nil when there is no CRL.
func (p *Publisher) Scope() *CRLScope { return p.scope.Load() }

// Run ticks until ctx ends. It does not release the lease: the plugin's
// Stop does, after every loop has returned.
func (p *Publisher) Run(ctx context.Context) {
	tick := min(time.Second, p.delay/2, p.ttl/3)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		p.step(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.wake:
		}
	}
}

// step renews or takes the lease and publishes if a CRL is due.
func (p *Publisher) step(ctx context.Context) {
	s := p.scope.Load()
	if s == nil {
		p.standDown(ctx)
		return
	}
	held, err := p.locker.TryLock(ctx, crlLeaseName, p.ttl)
	if err != nil {
		p.log.Warn("CRL lease", "error", err)
		held = false
	}
	p.holding = held
	p.noteHolder(ctx)
	if !held {
		p.held.Set(0)
		return
	}
	p.held.Set(1)
	due, err := p.due(s)
	if err != nil {
		p.log.Error("CRL state", "error", err)
		return
	}
	if due {
		if err := p.publish(s); err != nil {
			p.log.Error("publish CRL", "error", err)
		}
	}
}

// standDown gives the lease up when the active generation has no CRL, so a
// replica whose generation has one can publish.
func (p *Publisher) standDown(ctx context.Context) {
	p.held.Set(0)
	if !p.holding {
		return
	}
	if err := p.locker.Unlock(ctx, crlLeaseName); err != nil {
		p.log.Warn("release CRL lease", "error", err)
		return
	}
	p.holding = false
}

// noteHolder logs and counts changes of the lease holder.
func (p *Publisher) noteHolder(ctx context.Context) {
	l, err := p.locker.Lease(ctx, crlLeaseName)
	if err != nil || l.Changes == p.lastChanges {
		return
	}
	if p.lastChanges != 0 {
		p.changes.Add(float64(l.Changes - p.lastChanges))
	}
	p.lastChanges = l.Changes
	p.log.Info("CRL publisher lease", "holder", l.Holder, "self", l.Holder == p.replica)
}

// due reports whether a new CRL is needed: none yet, one of another scope
// (crl.url changed), a revocation newer than the current CRL, two thirds
// of its validity gone, or the fingerprint row not naming it.
func (p *Publisher) due(s *CRLScope) (bool, error) {
	c, err := p.cached()
	if err != nil || c == nil {
		return true, err
	}
	if !c.confirmed || !s.names(c.crl) {
		return true, nil
	}
	crl := c.crl
	now := p.host.Now()
	if now.After(crl.ThisUpdate.Add(crl.NextUpdate.Sub(crl.ThisUpdate) * 2 / 3)) {
		return true, nil
	}
	b, err := p.store.Get(crlStateTable, crlDirtyKey)
	if database.IsErrNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var dirty time.Time
	if err := dirty.UnmarshalText(b); err != nil {
		return true, nil
	}
	return !dirty.Before(crl.ThisUpdate), nil
}

// crlCache is the current CRL as this replica last read or wrote it, so
// that ServeCRL, due and the age metric do not fetch and decode the whole
// row (tens of megabytes at a million entries) on every call. It is
// immutable once built.
type crlCache struct {
	info    *db.CertificateRevocationListInfo
	crl     *x509.RevocationList // header only: no entries
	etag    string               // also the published fingerprint
	rowSum  uint64               // maphash of the stored row
	checked time.Time            // last comparison with the fingerprint
	loaded  time.Time            // last comparison with the row itself
	// confirmed: the fingerprint row names this CRL. When it does not (a
	// CRL from a stepfort without fingerprints, or a publisher that died
	// between the two writes) every refresh reads the row, and due asks
	// for a new CRL, which writes both.
	confirmed bool
}

// How long a cached CRL is used without looking at the database: the
// fingerprint row at most crlRecheck apart (the staleness a replica that
// is not the publisher may serve), the whole row at most crlReload apart
// (in case the fingerprint was not updated, e.g. a crash between the two
// writes). They pace database reads, not certificate or CRL validity, so
// they are measured on the process clock rather than the host's.
const (
	crlRecheck = time.Second
	crlReload  = time.Minute
)

// current returns the stored CRL, or nil if none was published. The
// *x509.RevocationList has every field of the CRL but its entries
// (RevokedCertificateEntries is empty; parse info.DER for them). Both are
// shared: callers must not modify them.
func (p *Publisher) current() (*db.CertificateRevocationListInfo, *x509.RevocationList, error) {
	c, err := p.cached()
	if c == nil || err != nil {
		return nil, nil, err
	}
	return c.info, c.crl, nil
}

func (p *Publisher) cached() (*crlCache, error) {
	p.mu.Lock()
	c := p.cache
	p.mu.Unlock()
	if c != nil && time.Since(c.checked) < crlRecheck {
		return c, nil
	}
	// One caller refreshes; the others keep serving what is cached.
	if !p.loading.TryLock() {
		if c != nil {
			return c, nil
		}
		p.loading.Lock()
	}
	defer p.loading.Unlock()
	p.mu.Lock()
	c = p.cache
	p.mu.Unlock()
	if c != nil && time.Since(c.checked) < crlRecheck {
		return c, nil
	}
	n, err := p.refresh(c)
	if err != nil {
		if c != nil {
			// Still valid for clients; the next call tries again.
			return c, nil
		}
		return nil, err
	}
	p.setCache(n)
	return n, nil
}

// refresh compares c with the database and returns what is current.
func (p *Publisher) refresh(c *crlCache) (*crlCache, error) {
	now := time.Now()
	fp, err := p.store.Get(crlStateTable, crlPublishedKey)
	if err != nil && !database.IsErrNotFound(err) {
		return nil, err
	}
	if c != nil && c.confirmed && string(fp) == c.etag && now.Sub(c.loaded) < crlReload {
		return c.touched(now, c.loaded, true), nil
	}
	row, err := p.store.Get(crlTable, crlKey)
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
	var info db.CertificateRevocationListInfo
	if err := json.Unmarshal(row, &info); err != nil {
		return nil, fmt.Errorf("decode stored CRL: %w", err)
	}
	n, err := newCRLCache(&info, sum, now)
	if err != nil {
		return nil, err
	}
	n.confirmed = string(fp) == n.etag
	return n, nil
}

// touched is c compared with the database at checked (fingerprint) and
// loaded (row).
func (c *crlCache) touched(checked, loaded time.Time, confirmed bool) *crlCache {
	n := *c
	n.checked, n.loaded, n.confirmed = checked, loaded, confirmed
	return &n
}

var crlSeed = maphash.MakeSeed()

func newCRLCache(info *db.CertificateRevocationListInfo, rowSum uint64, now time.Time) (*crlCache, error) {
	crl, err := parseCRLHeader(info.DER)
	if err != nil {
		return nil, fmt.Errorf("parse stored CRL: %w", err)
	}
	return &crlCache{info: info, crl: crl, etag: crlETag(info.Number, info.DER), rowSum: rowSum, checked: now, loaded: now}, nil
}

func (p *Publisher) setCache(c *crlCache) {
	p.mu.Lock()
	p.cache = c
	p.mu.Unlock()
	if c != nil {
		p.number.Set(float64(c.info.Number))
	}
}

// crlETag names a CRL for HTTP caches; the publisher also stores it as the
// fingerprint replicas compare their cached CRL with.
func crlETag(number int64, der []byte) string {
	sum := sha256.Sum256(der)
	return `"` + strconv.FormatInt(number, 10) + "-" + hex.EncodeToString(sum[:8]) + `"`
}

// Publish generates and stores the next CRL. The number is the stored one
// plus one, written with a compare-and-swap on the row it was read from.
//
// The revocation table is streamed (storescan) and every entry encoded
// straight into the CRL's buffer (crlEncoder), so memory is a small
// multiple of the CRL's size, not of the table's.
func (p *Publisher) Publish() error {
	s := p.scope.Load()
	if s == nil {
		return errors.New("no CRL scope is active: upstream's crl.enabled is false")
	}
	return p.publish(s)
}

// publish publishes one CRL of scope s.
func (p *Publisher) publish(s *CRLScope) error {
	t0 := time.Now()
	old, err := p.store.Get(crlTable, crlKey)
	if err != nil && !database.IsErrNotFound(err) {
		return err
	}
	oldFP, err := p.store.Get(crlStateTable, crlPublishedKey)
	if err != nil && !database.IsErrNotFound(err) {
		return err
	}
	prevNumber, err := p.storedNumber(old)
	if err != nil {
		return err
	}
	auth := p.host.Authority()
	inters := auth.GetIntermediateCertificates()
	if len(inters) == 0 {
		return errors.New("no intermediate to sign the CRL")
	}
	signer, err := auth.GetX509Signer()
	if err != nil {
		return fmt.Errorf("CRL signer: %w", err)
	}
	sig, err := newCRLSigner(signer)
	if err != nil {
		return err
	}
	now := p.host.Now().UTC().Truncate(time.Second)
	nextUpdate := now.Add(s.validity)
	// The previous CRL's size (three quarters of its base64 row) is the
	// best guess of this one's.
	enc, err := newCRLEncoder(inters[0], sig, now, nextUpdate, len(old)*3/4+len(old)/64)
	if err != nil {
		return err
	}
	cutoff := now.Add(-expiredGrace)
	err = storage.ForEach(p.store, storage.RevokedCertsTable, func(key, value []byte) error {
		r, err := decodeCRLRow(value)
		if err != nil {
			return fmt.Errorf("decode revocation %s: %w", key, err)
		}
		if !r.expiresAt.IsZero() && r.expiresAt.Before(cutoff) {
			return nil
		}
		return enc.add(r.serial, r.revokedAt, r.reason)
	})
	if err != nil {
		return fmt.Errorf("read revocations: %w", err)
	}
	tScan := time.Since(t0)
	number := prevNumber + 1
	der, err := enc.finish(number, s.idp)
	if err != nil {
		return err
	}
	tSign := time.Since(t0)
	row, err := encodeCRLInfo(number, nextUpdate, s.validity, der)
	if err != nil {
		return err
	}
	_, swapped, err := storage.CmpAndSwap(p.store, crlTable, crlKey, old, row)
	if err != nil {
		return fmt.Errorf("store CRL: %w", err)
	}
	if !swapped {
		return errors.New("another replica published a CRL meanwhile; will retry")
	}
	info := &db.CertificateRevocationListInfo{Number: number, ExpiresAt: nextUpdate, Duration: s.validity, DER: der}
	c, err := newCRLCache(info, maphash.Bytes(crlSeed, row), time.Now())
	if err != nil {
		return err
	}
	// Only from the fingerprint this publisher read: a late write of an
	// older publisher must not replace a newer one's.
	_, c.confirmed, err = storage.CmpAndSwap(p.store, crlStateTable, crlPublishedKey, oldFP, []byte(c.etag))
	if err != nil || !c.confirmed {
		p.log.Warn("CRL fingerprint not updated; replicas read the whole CRL until the next one", "error", err)
	}
	// After any refresh under way, which may have read the previous row.
	p.loading.Lock()
	p.setCache(c)
	p.loading.Unlock()
	p.log.Info("CRL published", "number", number, "entries", enc.entries, "bytes", len(der), "nextUpdate", nextUpdate,
		"scanSeconds", tScan.Seconds(), "signSeconds", (tSign - tScan).Seconds(), "storeSeconds", (time.Since(t0) - tSign).Seconds())
	return nil
}

// storedNumber is the Number of the stored row old (0 when there is none),
// from the cache when it holds that row.
func (p *Publisher) storedNumber(old []byte) (int64, error) {
	if old == nil {
		return 0, nil
	}
	p.mu.Lock()
	c := p.cache
	p.mu.Unlock()
	if c != nil && c.rowSum == maphash.Bytes(crlSeed, old) {
		return c.info.Number, nil
	}
	var prev struct{ Number int64 } // not the DER: only the number is needed
	if err := json.Unmarshal(old, &prev); err != nil {
		return 0, fmt.Errorf("decode stored CRL: %w", err)
	}
	return prev.Number, nil
}

// MarkDirty records that a revocation happened, for the lease holder.
func MarkDirty(store nosql.DB, at time.Time) error {
	b, _ := at.UTC().MarshalText()
	return store.Set(crlStateTable, crlDirtyKey, b)
}

// issuingDistributionPoint builds the critical IDP extension holding only
// the full name URI, as upstream does.
func issuingDistributionPoint(uri string) (pkix.Extension, error) {
	type distributionPointName struct {
		FullName []asn1.RawValue `asn1:"optional,tag:0"`
	}
	type idp struct {
		DistributionPoint distributionPointName `asn1:"optional,tag:0"`
	}
	b, err := asn1.Marshal(idp{DistributionPoint: distributionPointName{
		FullName: []asn1.RawValue{{Tag: 6, Class: 2, Bytes: []byte(uri)}},
	}})
	if err != nil {
		return pkix.Extension{}, err
	}
	return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 28}, Critical: true, Value: b}, nil
}

// ServeCRL answers /crl and /1.0/crl like upstream's api.CRL (DER, or PEM
// with ?pem), plus ETag and Last-Modified. Without an active scope it
// answers as upstream does with the CRL disabled.
func (p *Publisher) ServeCRL(w http.ResponseWriter, r *http.Request) {
	if p.scope.Load() == nil {
		http.Error(w, "Certificate Revocation Lists are not enabled", http.StatusNotFound)
		return
	}
	c, err := p.cached()
	if err != nil {
		http.Error(w, "CRL unavailable", http.StatusServiceUnavailable)
		return
	}
	if c == nil {
		http.Error(w, "no CRL published yet", http.StatusServiceUnavailable)
		return
	}
	info, crl, etag := c.info, c.crl, c.etag
	h := w.Header()
	h.Set("ETag", etag)
	h.Set("Last-Modified", crl.ThisUpdate.UTC().Format(http.TimeFormat))
	h.Set("Expires", crl.NextUpdate.UTC().Format(http.TimeFormat))
	h.Set("Cache-Control", "max-age="+strconv.Itoa(max(0, int(min(p.delay, crl.NextUpdate.Sub(p.host.Now())).Seconds())))+", public, no-transform, must-revalidate")
	if r.Header.Get("If-None-Match") == etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	if _, ok := r.URL.Query()["pem"]; ok {
		h.Set("Content-Type", "application/x-pem-file")
		h.Set("Content-Disposition", `attachment; filename="crl.pem"`)
		_ = pem.Encode(w, &pem.Block{Type: "X509 CRL", Bytes: info.DER})
		return
	}
	h.Set("Content-Type", "application/pkix-crl")
	h.Set("Content-Disposition", `attachment; filename="crl.crl"`)
	_, _ = w.Write(info.DER)
}
