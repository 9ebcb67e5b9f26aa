package ha

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
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

	"github.com/stepfort/stepfort/internal/crlchanges"
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

	// own is stepfort's own issuer's series; legacy are added before Run
	// and never change.
	own    *series
	legacy []*legacySeries
	// routes maps decoded request paths to the CRLs served there (the own
	// delta, legacy bases and deltas), rebuilt when a scope is activated.
	routes atomic.Pointer[map[string]http.Handler]

	// failures throttles crl.publish failure records: the same error of a
	// series is recorded again only after crlFailureRecordEvery.
	failMu   sync.Mutex
	failures map[string]crlFailure
}

// crlFailureRecordEvery spaces repeated crl.publish failure records (the
// loop retries every second while a CRL is due).
const crlFailureRecordEvery = 10 * time.Minute

type crlFailure struct {
	reason string
	at     time.Time
}

// crlPublished is what a crl.publish record says about a new CRL.
type crlPublished struct {
	number                 int64
	thisUpdate, nextUpdate time.Time
	entries                int
	delta                  bool
	base                   int64 // a delta's base CRL number
}

// auditCRL records a published CRL (docs/audit.md: crl.publish).
func (p *Publisher) auditCRL(s *series, issuer *x509.Certificate, c crlPublished) {
	det := map[string]string{"series": s.name, "number": strconv.FormatInt(c.number, 10),
		"thisUpdate": c.thisUpdate.UTC().Format(time.RFC3339), "nextUpdate": c.nextUpdate.UTC().Format(time.RFC3339),
		"delta": strconv.FormatBool(c.delta), "entries": strconv.Itoa(c.entries)}
	if c.delta {
		det["baseNumber"] = strconv.FormatInt(c.base, 10)
	}
	var obj plugins.AuditObject
	if issuer != nil {
		obj.Issuer = issuer.Subject.String()
	}
	p.failMu.Lock()
	delete(p.failures, crlFailureKey(s, c.delta))
	p.failMu.Unlock()
	p.record(plugins.AuditRecord{Action: "crl.publish", Outcome: plugins.AuditSuccess, Object: obj, Details: det})
}

// auditCRLFailure records a failed publication (err nil: nothing),
// repeated failures of a series with the same reason at most every
// crlFailureRecordEvery.
func (p *Publisher) auditCRLFailure(s *series, delta bool, err error) {
	if err == nil {
		return
	}
	key, now := crlFailureKey(s, delta), p.host.Now()
	p.failMu.Lock()
	last, seen := p.failures[key]
	if seen && last.reason == err.Error() && now.Sub(last.at) < crlFailureRecordEvery {
		p.failMu.Unlock()
		return
	}
	if p.failures == nil {
		p.failures = map[string]crlFailure{}
	}
	p.failures[key] = crlFailure{reason: err.Error(), at: now}
	p.failMu.Unlock()
	p.record(plugins.AuditRecord{Action: "crl.publish", Outcome: plugins.AuditFailure, Reason: err.Error(),
		Details: map[string]string{"series": s.name, "delta": strconv.FormatBool(delta)}})
}

func crlFailureKey(s *series, delta bool) string { return s.name + "/" + strconv.FormatBool(delta) }

// record appends a record of this replica's revocation plugin.
func (p *Publisher) record(r plugins.AuditRecord) {
	a := p.host.Audit()
	if a == nil {
		return
	}
	r.Actor = plugins.AuditActor{Kind: "system", ID: p.replica, Name: "revocation"}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Record(ctx, r); err != nil {
		p.log.Error("audit record lost", "action", r.Action, "error", err)
	}
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
	if err := crlchanges.Init(store); err != nil {
		return nil, fmt.Errorf("create table %s: %w", crlchanges.Table, err)
	}
	p := &Publisher{host: h, store: store, locker: h.Locker(), replica: h.Replica(),
		delay: delay, ttl: ttl, log: h.Logger(), wake: make(chan struct{}, 1)}
	p.own = p.ownSeries()
	p.number = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "stepfort", Subsystem: "crl", Name: "number", Help: "Number of the CRL this replica last saw published"})
	p.held = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "stepfort", Subsystem: "crl", Name: "lease_held", Help: "1 if this replica holds the CRL publisher lease"})
	p.changes = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "stepfort", Subsystem: "crl", Name: "lease_changes_total", Help: "Changes of the CRL publisher lease holder seen by this replica"})
	age := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "stepfort", Subsystem: "crl", Name: "age_seconds", Help: "Seconds since the current CRL's thisUpdate"}, func() float64 {
		if info, crl, err := p.current(); err == nil && info != nil {
			return h.Now().Sub(crl.ThisUpdate).Seconds()
		}
		return -1
	})
	p.own.base.onSet = func(c *crlCache) { p.number.Set(float64(c.info.Number)) }
	p.routes.Store(&map[string]http.Handler{})
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
		p.rebuildRoutes()
		if old != nil {
			p.log.Info("CRL switched off: upstream's crl.enabled is false")
		}
		return
	}
	p.rebuildRoutes()
	if old.equal(s) {
		return
	}
	p.log.Info("CRL scope activated", "url", s.url, "validity", s.Validity(), "idp", s.idp != nil, "delta", s.delta != nil)
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
	if s == nil && len(p.legacy) == 0 {
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
	if s != nil {
		p.publishSeries(p.own, s)
	}
	// Legacy series do not depend on upstream's crl block: they publish
	// even when stepfort's own CRL is off.
	for _, l := range p.legacy {
		p.publishSeries(l.series, l.series.scope())
	}
}

// publishSeries publishes what of s is due: a base first, then (with
// deltas) a delta over it.
func (p *Publisher) publishSeries(s *series, sc *CRLScope) {
	base, delta, err := p.dueSeries(s, sc)
	if err != nil {
		p.log.Error("CRL state", "series", s.name, "error", err)
		return
	}
	if base {
		if err := p.publishBase(s, sc); err != nil {
			p.log.Error("publish CRL", "series", s.name, "error", err)
			return
		}
	}
	if delta && sc.delta != nil {
		if err := p.publishDelta(s, sc); err != nil {
			p.log.Error("publish delta CRL", "series", s.name, "error", err)
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

// due reports whether a new base CRL of the own series is needed: none
// yet, one of another scope (crl.url, crl.idp or deltas changed), a
// revocation newer than the current CRL (without deltas), its period or
// two thirds of its validity gone, or the fingerprint row not naming it.
func (p *Publisher) due(s *CRLScope) (bool, error) {
	base, _, err := p.dueSeries(p.own, s)
	return base, err
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
	c, err := p.own.base.get()
	if c == nil || err != nil {
		return nil, nil, err
	}
	return c.info, c.crl, nil
}

// currentDelta is current for the own series' delta CRL.
func (p *Publisher) currentDelta() (*db.CertificateRevocationListInfo, *x509.RevocationList, error) {
	c, err := p.own.delta.get()
	if c == nil || err != nil {
		return nil, nil, err
	}
	return c.info, c.crl, nil
}

// crlETag names a CRL for HTTP caches; the publisher also stores it as the
// fingerprint replicas compare their cached CRL with.
func crlETag(number int64, der []byte) string {
	sum := sha256.Sum256(der)
	return `"` + strconv.FormatInt(number, 10) + "-" + hex.EncodeToString(sum[:8]) + `"`
}

// Publish generates and stores the next base CRL of the own series. The
// number is the series' next one, reserved with a compare-and-swap, and
// the CRL is written with a compare-and-swap on the row it was read from.
//
// The revocation table is streamed (storescan) and every entry encoded
// straight into the CRL's buffer (crlEncoder), so memory is a small
// multiple of the CRL's size, not of the table's.
func (p *Publisher) Publish() error {
	s := p.scope.Load()
	if s == nil {
		return errors.New("no CRL scope is active: upstream's crl.enabled is false")
	}
	return p.publishBase(p.own, s)
}

// PublishDelta generates and stores the next delta CRL of the own series.
func (p *Publisher) PublishDelta() error {
	s := p.scope.Load()
	if s == nil || s.delta == nil {
		return errors.New("delta CRLs are not enabled")
	}
	return p.publishDelta(p.own, s)
}

// ownSeries is stepfort's own issuer's series: the base in upstream's
// row, revocations from upstream's table, signed by the intermediate.
func (p *Publisher) ownSeries() *series {
	delta, counter := seriesSlots(p, ownSeriesName)
	return &series{
		name:       ownSeriesName,
		base:       newCRLSlot(p.store, crlTable, crlKey, crlPublishedKey),
		delta:      delta,
		counterKey: counter,
		scope:      p.scope.Load,
		issuer: func() (*x509.Certificate, crypto.Signer, error) {
			auth := p.host.Authority()
			inters := auth.GetIntermediateCertificates()
			if len(inters) == 0 {
				return nil, nil, errors.New("no intermediate to sign the CRL")
			}
			signer, err := auth.GetX509Signer()
			if err != nil {
				return nil, nil, fmt.Errorf("CRL signer: %w", err)
			}
			return inters[0], signer, nil
		},
		source:     ownSource{p.store},
		dirtySince: func(t time.Time) (bool, error) { return dirtySince(p.store, crlDirtyKey, t) },
	}
}

// ownSeriesName is the own series' name in internal/crlchanges.
const ownSeriesName = "own"

// ownSource reads upstream's revoked_x509_certs.
type ownSource struct{ store nosql.DB }

func (o ownSource) forEachRevoked(fn func([]byte, time.Time, int, time.Time) error) error {
	return storage.ForEach(o.store, storage.RevokedCertsTable, func(key, value []byte) error {
		r, err := decodeCRLRow(value)
		if err != nil {
			return fmt.Errorf("decode revocation %s: %w", key, err)
		}
		return fn(r.serial, r.revokedAt, r.reason, r.expiresAt)
	})
}

func (ownSource) state() (int64, int64, error) { return 0, 0, nil }

// dirtySince reports whether the revocation time stored at key is at or
// after t (an unreadable one counts as dirty).
func dirtySince(store nosql.DB, key []byte, t time.Time) (bool, error) {
	b, err := store.Get(crlStateTable, key)
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
	return !dirty.Before(t), nil
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

// ServeCRL answers /crl and /1.0/crl with the own series' base CRL, like
// upstream's api.CRL (DER, or PEM with ?pem), plus ETag and
// Last-Modified. Without an active scope it answers as upstream does with
// the CRL disabled.
func (p *Publisher) ServeCRL(w http.ResponseWriter, r *http.Request) {
	if p.scope.Load() == nil {
		http.Error(w, "Certificate Revocation Lists are not enabled", http.StatusNotFound)
		return
	}
	p.serveSlot(w, r, p.own.base, "crl")
}

// serveSlot writes the CRL of slot, named file in Content-Disposition.
func (p *Publisher) serveSlot(w http.ResponseWriter, r *http.Request, slot *crlSlot, file string) {
	c, err := slot.get()
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
		h.Set("Content-Disposition", `attachment; filename="`+file+`.pem"`)
		_ = pem.Encode(w, &pem.Block{Type: "X509 CRL", Bytes: info.DER})
		return
	}
	h.Set("Content-Type", "application/pkix-crl")
	h.Set("Content-Disposition", `attachment; filename="`+file+`.crl"`)
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(info.DER)
}
