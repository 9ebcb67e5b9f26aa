package ha

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/certstatus"
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
)

const crlLeaseName = "crl-publisher"

// expiredGrace matches upstream: revoked certificates expired longer ago
// than this leave the CRL.
const expiredGrace = time.Hour

// Publisher generates the CRL on exactly one replica at a time (the holder
// of the crl-publisher lease): at start, within PublishDelay of a
// revocation (several revocations in that window make one CRL), and before
// two thirds of the CRL's validity have passed.
type Publisher struct {
	host     plugins.Host
	store    nosql.DB
	leases   *Leases
	replica  string
	idp      string
	validity time.Duration
	delay    time.Duration
	ttl      time.Duration
	log      *slog.Logger

	number, held prometheus.Gauge
	changes      prometheus.Counter
	lastChanges  int64
}

// NewPublisher prepares the tables and metrics.
func NewPublisher(h plugins.Host, replica, idp string, validity, delay, ttl time.Duration) (*Publisher, error) {
	store := h.DB()
	for _, t := range [][]byte{crlTable, crlStateTable} {
		if err := store.CreateTable(t); err != nil {
			return nil, fmt.Errorf("create table %s: %w", t, err)
		}
	}
	leases, err := NewLeases(store, h.Now)
	if err != nil {
		return nil, err
	}
	p := &Publisher{host: h, store: store, leases: leases, replica: replica, idp: idp,
		validity: validity, delay: delay, ttl: ttl, log: h.Logger()}
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

// Run ticks until ctx ends, releasing the lease on the way out.
func (p *Publisher) Run(ctx context.Context) {
	tick := min(time.Second, p.delay/2, p.ttl/3)
	t := time.NewTicker(tick)
	defer t.Stop()
	defer func() { _ = p.leases.Release(crlLeaseName, p.replica) }()
	for {
		p.step()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// step renews or takes the lease and publishes if a CRL is due.
func (p *Publisher) step() {
	held, err := p.leases.TryAcquire(crlLeaseName, p.replica, p.ttl)
	if err != nil {
		p.log.Warn("CRL lease", "error", err)
		held = false
	}
	if l, err := p.leases.Get(crlLeaseName); err == nil && l.Changes != p.lastChanges {
		if p.lastChanges != 0 {
			p.changes.Add(float64(l.Changes - p.lastChanges))
		}
		p.lastChanges = l.Changes
		p.log.Info("CRL publisher lease", "holder", l.Holder, "self", l.Holder == p.replica)
	}
	if !held {
		p.held.Set(0)
		return
	}
	p.held.Set(1)
	due, err := p.due()
	if err != nil {
		p.log.Error("CRL state", "error", err)
		return
	}
	if due {
		if err := p.Publish(); err != nil {
			p.log.Error("publish CRL", "error", err)
		}
	}
}

// due reports whether a new CRL is needed: none yet, a revocation newer than
// the current CRL, or two thirds of its validity gone.
func (p *Publisher) due() (bool, error) {
	info, crl, err := p.current()
	if err != nil || info == nil {
		return true, err
	}
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

// current returns the stored CRL, or nil if none was published.
func (p *Publisher) current() (*db.CertificateRevocationListInfo, *x509.RevocationList, error) {
	b, err := p.store.Get(crlTable, crlKey)
	if database.IsErrNotFound(err) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	var info db.CertificateRevocationListInfo
	if err := json.Unmarshal(b, &info); err != nil {
		return nil, nil, fmt.Errorf("decode stored CRL: %w", err)
	}
	crl, err := x509.ParseRevocationList(info.DER)
	if err != nil {
		return nil, nil, fmt.Errorf("parse stored CRL: %w", err)
	}
	p.number.Set(float64(info.Number))
	return &info, crl, nil
}

// Publish generates and stores the next CRL. The number is the stored one
// plus one, written with a compare-and-swap on the row it was read from.
func (p *Publisher) Publish() error {
	old, err := p.store.Get(crlTable, crlKey)
	if err != nil && !database.IsErrNotFound(err) {
		return err
	}
	var prev db.CertificateRevocationListInfo
	if old != nil {
		if err := json.Unmarshal(old, &prev); err != nil {
			return fmt.Errorf("decode stored CRL: %w", err)
		}
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
	now := p.host.Now().UTC().Truncate(time.Second)
	entries, err := p.revokedEntries(now)
	if err != nil {
		return err
	}
	idp, err := issuingDistributionPoint(p.idp)
	if err != nil {
		return err
	}
	number := prev.Number + 1
	tmpl := &x509.RevocationList{
		Number:                    big.NewInt(number),
		ThisUpdate:                now,
		NextUpdate:                now.Add(p.validity),
		RevokedCertificateEntries: entries,
		ExtraExtensions:           []pkix.Extension{idp},
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, inters[0], signer)
	if err != nil {
		return fmt.Errorf("sign CRL: %w", err)
	}
	b, _ := json.Marshal(&db.CertificateRevocationListInfo{Number: number, ExpiresAt: tmpl.NextUpdate, Duration: p.validity, DER: der})
	_, swapped, err := p.store.CmpAndSwap(crlTable, crlKey, old, b)
	if err != nil {
		return fmt.Errorf("store CRL: %w", err)
	}
	if !swapped {
		return errors.New("another replica published a CRL meanwhile; will retry")
	}
	p.number.Set(float64(number))
	p.log.Info("CRL published", "number", number, "entries", len(entries), "nextUpdate", tmpl.NextUpdate)
	return nil
}

func (p *Publisher) revokedEntries(now time.Time) ([]x509.RevocationListEntry, error) {
	rows, err := p.store.List(certstatus.RevokedCertsTable)
	if err != nil && !database.IsErrNotFound(err) {
		return nil, fmt.Errorf("list revocations: %w", err)
	}
	cutoff := now.Add(-expiredGrace)
	entries := make([]x509.RevocationListEntry, 0, len(rows))
	for _, row := range rows {
		var rci db.RevokedCertificateInfo
		if err := json.Unmarshal(row.Value, &rci); err != nil {
			return nil, fmt.Errorf("decode revocation %s: %w", row.Key, err)
		}
		if !rci.ExpiresAt.IsZero() && rci.ExpiresAt.Before(cutoff) {
			continue
		}
		sn, ok := new(big.Int).SetString(rci.Serial, 10)
		if !ok {
			return nil, fmt.Errorf("revocation with bad serial %q", rci.Serial)
		}
		entries = append(entries, x509.RevocationListEntry{SerialNumber: sn, RevocationTime: rci.RevokedAt, ReasonCode: rci.ReasonCode})
	}
	return entries, nil
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
// with ?pem), plus ETag and Last-Modified.
func (p *Publisher) ServeCRL(w http.ResponseWriter, r *http.Request) {
	info, crl, err := p.current()
	if err != nil {
		http.Error(w, "CRL unavailable", http.StatusServiceUnavailable)
		return
	}
	if info == nil {
		http.Error(w, "no CRL published yet", http.StatusServiceUnavailable)
		return
	}
	sum := sha256.Sum256(info.DER)
	etag := `"` + strconv.FormatInt(info.Number, 10) + "-" + hex.EncodeToString(sum[:8]) + `"`
	h := w.Header()
	h.Set("ETag", etag)
	h.Set("Last-Modified", crl.ThisUpdate.UTC().Format(http.TimeFormat))
	h.Set("Expires", crl.NextUpdate.UTC().Format(http.TimeFormat))
	h.Set("Cache-Control", "max-age="+strconv.Itoa(max(0, int(min(p.delay, time.Until(crl.NextUpdate)).Seconds())))+", public, no-transform, must-revalidate")
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
