package billing

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
)

// Key layout of the billing tables (the one place it is written down; see
// also docs/billing.md). Values are JSON.
//
//	stepfort_billing_endpoints  <endpoint id>                 -> Endpoint
//	stepfort_billing_certs      <decimal serial>              -> CertRecord (serial -> endpoint index)
//	stepfort_billing_lineage    <endpoint id>/<seq, 10 digits> -> decimal serial
//
// The alert job's lease is the host's (plugins.Locker, table
// stepfort_leases); stepfort_billing_leases is no longer used.
//
// Endpoint IDs are derived from what identifies the Endpoint (the first
// serial of a lineage, or provisioner + subject key), so the subject index
// is the ID itself and needs no table of its own.
var (
	endpointsTable = []byte("stepfort_billing_endpoints")
	certsTable     = []byte("stepfort_billing_certs")
	lineageTable   = []byte("stepfort_billing_lineage")
	tables         = [][]byte{endpointsTable, certsTable, lineageTable}
)

// maxSwapAttempts bounds compare-and-swap retry loops; contention on one
// Endpoint is a handful of replicas renewing at once.
const maxSwapAttempts = 100

// ingestGrace is how young an unknown certificate may be before a renewal
// or revocation referring to it waits for its own event instead of
// importing it from upstream's tables (events are not ordered).
const ingestGrace = 10 * time.Minute

// errRetry marks an event that must be delivered again later.
var errRetry = errors.New("retry later")

// errUnknownCertificate: neither billing nor upstream's x509_certs holds the
// certificate (revoked by serial only, or issued by a CA whose database was
// not carried over).
var errUnknownCertificate = errors.New("not in the database")

// Store records certificates into Endpoints. Every method is safe to call
// concurrently from several replicas sharing the database: each write is a
// compare-and-swap on one key, and every step is idempotent, so a step
// interrupted by a crash is completed by the redelivered event.
//
// Compare-and-swaps go through storage.CmpAndSwap and storage.Update, never
// nosql's own: on PostgreSQL nosql lets two writers both "create" an absent
// row, and a replica creating an Endpoint late would overwrite the
// certificates another replica had added to it meanwhile.
type Store struct {
	db     nosql.DB
	policy RenewalPolicy
	log    *slog.Logger
}

// NewStore creates the tables if needed.
func NewStore(db nosql.DB, policy RenewalPolicy, log *slog.Logger) (*Store, error) {
	if db == nil {
		return nil, errors.New("billing needs a database (ca.json \"db\")")
	}
	for _, t := range tables {
		if err := db.CreateTable(t); err != nil {
			return nil, fmt.Errorf("create table %s: %w", t, err)
		}
	}
	if log == nil {
		log = slog.Default()
	}
	return &Store{db: db, policy: policy, log: log}, nil
}

// certFacts is what recording needs to know about a certificate.
type certFacts struct {
	serial      string
	cert        *x509.Certificate
	provisioner plugins.ProvisionerRef
	obtainedBy  string
	parent      string
	inferred    bool
	at          time.Time // when it happened, for compaction
}

// Record applies one certificate event. It is idempotent. Events of
// certificates that are not subscriber certificates (the Attestation CA's
// AK certificates) are ignored: they are no Endpoint.
func (s *Store) Record(ev plugins.CertificateEvent) error {
	if !subscriber(ev) {
		return nil
	}
	switch ev.Kind {
	case plugins.EventIssued, plugins.EventRenewed:
		cert, err := ev.Certificate()
		if err != nil {
			return fmt.Errorf("event %s: parse certificate: %w", ev.ID, err)
		}
		f := certFacts{serial: ev.Serial, cert: cert, obtainedBy: ObtainedSign, at: ev.OccurredAt}
		if ev.Provisioner != nil {
			f.provisioner = *ev.Provisioner
		}
		if ev.Kind == plugins.EventRenewed {
			if ev.ParentSerial == "" {
				return fmt.Errorf("event %s: renewal without parent serial", ev.ID)
			}
			f.obtainedBy, f.parent = ObtainedRenew, ev.ParentSerial
			if ev.Rekey {
				f.obtainedBy = ObtainedRekey
			}
		}
		if f.at.IsZero() {
			f.at = cert.NotBefore
		}
		return s.add(f)
	case plugins.EventRevoked:
		if ev.Revocation == nil {
			return fmt.Errorf("event %s: revocation without details", ev.ID)
		}
		return s.revoke(ev.Serial, *ev.Revocation, ev.OccurredAt)
	default:
		return fmt.Errorf("event %s: unknown kind %q", ev.ID, ev.Kind)
	}
}

// add records a certificate in its Endpoint with a constant number of keyed
// reads and two write transactions, whatever the number of Endpoints or
// certificates:
//
//  1. The Endpoint ID is derived from the event (the first serial of a
//     lineage, the parent's Endpoint, or provisioner + subject), so every
//     replica handling the event picks the same Endpoint.
//  2. Compare-and-swap on the Endpoint record adds the certificate's interval
//     and assigns its lineage position; a certificate already there keeps
//     its position, so redelivery changes nothing.
//  3. One transaction writes the certificate record (compare-and-swap
//     against what step 1 read) and the lineage row. If another writer
//     recorded the certificate in a different Endpoint first (only possible
//     when a very late event races the import of the same certificate), the
//     interval added in step 2 is withdrawn and the first decision stands.
func (s *Store) add(f certFacts) error {
	oldRec, rec, err := s.getCertRaw(f.serial)
	if err != nil {
		return err
	}
	if rec != nil && rec.Recorded {
		return nil
	}
	if rec == nil {
		if rec, err = s.decide(f); err != nil {
			return err
		}
		if rec.EndpointID == lineageEndpointID(f.serial) {
			done, err := s.addFirst(rec, f)
			if err != nil || done {
				return err
			}
		}
	}
	for range maxSwapAttempts {
		seq, err := s.addToEndpoint(rec, f)
		if err != nil {
			return err
		}
		done := *rec
		done.Seq, done.Recorded = seq, true
		b, err := json.Marshal(&done)
		if err != nil {
			return err
		}
		// nosql's Tx.Cas cannot set the compared value: build the entry.
		tx := &database.Tx{Operations: []*database.TxEntry{
			{Cmd: database.CmpAndSwap, Bucket: certsTable, Key: []byte(f.serial), CmpValue: oldRec, Value: b},
			{Cmd: database.Set, Bucket: lineageTable, Key: lineageKey(rec.EndpointID, seq), Value: []byte(f.serial)},
		}}
		if err := storage.Update(s.db, tx); err != nil {
			return fmt.Errorf("record certificate %s: %w", f.serial, err)
		}
		if tx.Operations[0].Swapped {
			return nil
		}
		// Someone else wrote the certificate record meanwhile.
		curRaw, cur, err := s.getCertRaw(f.serial)
		if err != nil {
			return err
		}
		if cur == nil {
			return fmt.Errorf("certificate %s: record vanished", f.serial)
		}
		if cur.EndpointID != rec.EndpointID {
			s.log.Warn("certificate recorded in another Endpoint concurrently; withdrawing it", "serial", f.serial,
				"endpoint", rec.EndpointID, "kept", cur.EndpointID)
			return s.withdraw(rec.EndpointID, f.serial)
		}
		if cur.Recorded {
			return nil // a duplicate delivery finished first
		}
		oldRec, rec = curRaw, cur
	}
	return fmt.Errorf("record certificate %s: too much contention", f.serial)
}

// addFirst records the certificate that starts a lineage Endpoint (the
// common /sign case) in one transaction. Everything it writes is determined
// by the certificate: the Endpoint is new, named after this serial, and the
// certificate is its position 0. Each write is a compare-and-swap from
// nothing, so a redelivery or a concurrent writer leaves the same values.
// It reports false when another writer recorded the certificate first; add
// then resolves that.
func (s *Store) addFirst(rec *CertRecord, f certFacts) (bool, error) {
	e := newEndpoint(rec, f)
	e.add(rec, f)
	eb, err := json.Marshal(e)
	if err != nil {
		return false, err
	}
	done := *rec
	done.Seq, done.Recorded = 0, true
	cb, err := json.Marshal(&done)
	if err != nil {
		return false, err
	}
	tx := &database.Tx{Operations: []*database.TxEntry{
		{Cmd: database.CmpAndSwap, Bucket: endpointsTable, Key: []byte(e.ID), Value: eb},
		{Cmd: database.CmpAndSwap, Bucket: certsTable, Key: []byte(f.serial), Value: cb},
		{Cmd: database.Set, Bucket: lineageTable, Key: lineageKey(e.ID, 0), Value: []byte(f.serial)},
	}}
	if err := storage.Update(s.db, tx); err != nil {
		return false, fmt.Errorf("record certificate %s: %w", f.serial, err)
	}
	return tx.Operations[1].Swapped, nil
}

func newEndpoint(rec *CertRecord, f certFacts) *Endpoint {
	grouping := GroupingLineage
	if rec.EndpointID == subjectEndpointID(f.provisioner, SubjectKey(f.cert)) {
		grouping = GroupingSubject
	}
	return &Endpoint{ID: rec.EndpointID, Provisioner: f.provisioner, Grouping: grouping,
		SubjectKey: SubjectKey(f.cert), CreatedAt: rec.NotBefore, FirstSerial: rec.Serial}
}

// add appends the certificate's interval at the next position and returns
// the position.
func (e *Endpoint) add(rec *CertRecord, f certFacts) int {
	seq := e.NextSeq
	e.NextSeq++
	e.Certificates++
	switch rec.ObtainedBy {
	case ObtainedRenew:
		e.Renewals++
	case ObtainedRekey:
		e.Rekeys++
	}
	if rec.NotBefore.Before(e.CreatedAt) {
		e.CreatedAt = rec.NotBefore
	}
	e.Intervals = append(e.Intervals, Interval{Serial: rec.Serial, Seq: seq, Start: rec.NotBefore.Unix(), End: rec.NotAfter.Unix()})
	e.refresh()
	e.compact(f.at)
	e.UpdatedAt = f.at.UTC()
	return seq
}

// decide computes the certificate's Endpoint (and its record, not yet
// written).
func (s *Store) decide(f certFacts) (*CertRecord, error) {
	rec := &CertRecord{
		Serial: f.serial, Seq: -1, ObtainedBy: f.obtainedBy, ParentSerial: f.parent, Inferred: f.inferred,
		Subject: f.cert.Subject.CommonName, NotBefore: f.cert.NotBefore.UTC(), NotAfter: f.cert.NotAfter.UTC(),
	}
	if f.parent != "" {
		parent, err := s.getCert(f.parent)
		if err != nil {
			return nil, err
		}
		if parent == nil || !parent.Recorded {
			parent, err = s.ingest(f.parent, f.at)
			if errors.Is(err, errUnknownCertificate) {
				// The parent cannot be billed; its renewals form the
				// lineage it would have started.
				s.log.Warn("renewal of a certificate the database does not hold", "serial", f.serial, "parent", f.parent)
				rec.EndpointID = lineageEndpointID(f.parent)
				return rec, nil
			}
			if err != nil {
				return nil, fmt.Errorf("parent %s of %s: %w", f.parent, f.serial, err)
			}
		}
		rec.EndpointID = parent.EndpointID
		return rec, nil
	}
	grouping, err := s.policy.Grouping(f.provisioner)
	if err != nil {
		return nil, fmt.Errorf("grouping for provisioner %q: %w", f.provisioner.Name, err)
	}
	rec.EndpointID = lineageEndpointID(f.serial)
	if key := SubjectKey(f.cert); grouping == GroupingSubject && key != "" {
		rec.EndpointID = subjectEndpointID(f.provisioner, key)
	}
	return rec, nil
}

// addToEndpoint adds the certificate's interval to its Endpoint (creating
// the Endpoint) and returns its position in the lineage. A certificate
// already in the Endpoint keeps its position.
func (s *Store) addToEndpoint(rec *CertRecord, f certFacts) (int, error) {
	seq := -1
	err := s.updateEndpoint(rec.EndpointID, func(e *Endpoint) (bool, error) {
		if e.ID == "" {
			*e = *newEndpoint(rec, f)
		}
		if i, ok := e.interval(rec.Serial); ok {
			seq = e.Intervals[i].Seq
			return false, nil
		}
		seq = e.add(rec, f)
		return true, nil
	})
	return seq, err
}

// withdraw removes a certificate's interval from an Endpoint it was added
// to by mistake (see add). Its lineage position stays empty.
func (s *Store) withdraw(id, serial string) error {
	return s.updateEndpoint(id, func(e *Endpoint) (bool, error) {
		i, ok := e.interval(serial)
		if !ok {
			return false, nil
		}
		e.Intervals = append(e.Intervals[:i:i], e.Intervals[i+1:]...)
		e.Certificates--
		e.refresh()
		if e.Certificates == 0 { // nothing left: hidden from lists
			e.EndsAt, e.LastSerial, e.EndReason = time.Time{}, "", ""
		}
		return true, nil
	})
}

// revoke ends a certificate's interval at the revocation time.
func (s *Store) revoke(serial string, r plugins.Revocation, at time.Time) error {
	rec, err := s.getCert(serial)
	if err != nil {
		return err
	}
	if rec == nil || !rec.Recorded {
		rec, err = s.ingest(serial, at)
		if errors.Is(err, errUnknownCertificate) {
			s.log.Info("revocation of a certificate the database does not hold: nothing to bill", "serial", serial)
			return nil
		}
		if err != nil {
			return fmt.Errorf("revoked certificate %s: %w", serial, err)
		}
	}
	end := r.RevokedAt.Unix()
	if r.RevokedAt.Nanosecond() > 0 {
		end++ // active during the second it was revoked in
	}
	err = s.updateEndpoint(rec.EndpointID, func(e *Endpoint) (bool, error) {
		if e.ID == "" {
			return false, fmt.Errorf("endpoint %s of certificate %s is missing", rec.EndpointID, serial)
		}
		i, ok := e.interval(serial)
		if !ok || e.Intervals[i].Revoked {
			return false, nil // compacted long ago, or already applied
		}
		e.Intervals[i].Revoked = true
		e.Intervals[i].End = max(e.Intervals[i].Start, min(e.Intervals[i].End, end))
		e.Revocations++
		e.refresh()
		e.UpdatedAt = r.RevokedAt.UTC()
		return true, nil
	})
	if err != nil {
		return err
	}
	return s.updateCert(serial, func(c *CertRecord) bool {
		if c.Revoked {
			return false
		}
		c.Revoked, c.RevokedAt, c.RevocationReason = true, r.RevokedAt.UTC(), r.Reason
		if c.RevocationReason == "" {
			c.RevocationReason = "reasonCode " + strconv.Itoa(r.ReasonCode)
		}
		return true
	})
}

// ingest records a certificate the billing tables do not know yet from
// upstream's tables, as a /sign certificate: it predates the plugin, or its
// own event is late. A young certificate is left to its own event.
func (s *Store) ingest(serial string, at time.Time) (*CertRecord, error) {
	cert, prov, err := upstreamCertificate(s.db, serial)
	if err != nil {
		return nil, err
	}
	if at.Sub(cert.NotBefore) < ingestGrace {
		return nil, fmt.Errorf("certificate %s is not recorded yet: %w", serial, errRetry)
	}
	s.log.Info("recording certificate from the upstream tables", "serial", serial)
	if err := s.add(certFacts{serial: serial, cert: cert, provisioner: prov, obtainedBy: ObtainedSign, at: at}); err != nil {
		return nil, err
	}
	rec, err := s.getCert(serial)
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return nil, fmt.Errorf("certificate %s vanished while recording", serial)
	}
	return rec, nil
}

// updateEndpoint runs fn on the stored Endpoint (zero value if missing) and
// writes the result with compare-and-swap, retrying on conflict. fn reports
// whether it changed anything.
func (s *Store) updateEndpoint(id string, fn func(*Endpoint) (bool, error)) error {
	old, err := s.db.Get(endpointsTable, []byte(id))
	if err != nil && !database.IsErrNotFound(err) {
		return fmt.Errorf("read endpoint %s: %w", id, err)
	}
	if err != nil {
		old = nil
	}
	for range maxSwapAttempts {
		var e Endpoint
		if old != nil {
			if err := json.Unmarshal(old, &e); err != nil {
				return fmt.Errorf("decode endpoint %s: %w", id, err)
			}
		}
		changed, err := fn(&e)
		if err != nil || !changed {
			return err
		}
		b, err := json.Marshal(&e)
		if err != nil {
			return err
		}
		cur, swapped, err := storage.CmpAndSwap(s.db, endpointsTable, []byte(id), old, b)
		if err != nil {
			return fmt.Errorf("write endpoint %s: %w", id, err)
		}
		if swapped {
			return nil
		}
		old = cur
		time.Sleep(time.Duration(rand.IntN(5)) * time.Millisecond)
	}
	return fmt.Errorf("write endpoint %s: too much contention", id)
}

// updateCert is updateEndpoint for a certificate record that must exist.
func (s *Store) updateCert(serial string, fn func(*CertRecord) bool) error {
	old, err := s.db.Get(certsTable, []byte(serial))
	if err != nil {
		return fmt.Errorf("read certificate %s: %w", serial, err)
	}
	for range maxSwapAttempts {
		var c CertRecord
		if err := json.Unmarshal(old, &c); err != nil {
			return fmt.Errorf("decode certificate %s: %w", serial, err)
		}
		if !fn(&c) {
			return nil
		}
		b, err := json.Marshal(&c)
		if err != nil {
			return err
		}
		cur, swapped, err := storage.CmpAndSwap(s.db, certsTable, []byte(serial), old, b)
		if err != nil {
			return fmt.Errorf("write certificate %s: %w", serial, err)
		}
		if swapped {
			return nil
		}
		old = cur
	}
	return fmt.Errorf("write certificate %s: too much contention", serial)
}

func (s *Store) getCert(serial string) (*CertRecord, error) {
	_, c, err := s.getCertRaw(serial)
	return c, err
}

// getCertRaw returns the stored bytes too, for compare-and-swap.
func (s *Store) getCertRaw(serial string) ([]byte, *CertRecord, error) {
	b, err := s.db.Get(certsTable, []byte(serial))
	if database.IsErrNotFound(err) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read certificate %s: %w", serial, err)
	}
	var c CertRecord
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, nil, fmt.Errorf("decode certificate %s: %w", serial, err)
	}
	return b, &c, nil
}

// Endpoint returns one Endpoint, or nil if there is none with that ID.
func (s *Store) Endpoint(id string) (*Endpoint, error) {
	b, err := s.db.Get(endpointsTable, []byte(id))
	if database.IsErrNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read endpoint %s: %w", id, err)
	}
	var e Endpoint
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("decode endpoint %s: %w", id, err)
	}
	return &e, nil
}

// Lineage returns an Endpoint's certificates in the order they were
// recorded. A position whose row is not written yet (an event in flight) or
// whose certificate record does not point back at it (withdrawn) is
// skipped.
func (s *Store) Lineage(e *Endpoint) ([]*CertRecord, error) {
	out := make([]*CertRecord, 0, e.Certificates)
	for seq := range e.NextSeq {
		serial, err := s.db.Get(lineageTable, lineageKey(e.ID, seq))
		if database.IsErrNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read lineage %s/%d: %w", e.ID, seq, err)
		}
		c, err := s.getCert(string(serial))
		if err != nil {
			return nil, err
		}
		if c != nil && c.EndpointID == e.ID && c.Seq == seq {
			out = append(out, c)
		}
	}
	return out, nil
}

// Endpoints calls fn for every stored Endpoint. nosql offers no cursor, so
// the table's rows are read at once; certificates are never loaded.
func (s *Store) Endpoints(fn func(*Endpoint) error) error {
	entries, err := s.db.List(endpointsTable)
	if database.IsErrNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list endpoints: %w", err)
	}
	for _, en := range entries {
		var e Endpoint
		if err := json.Unmarshal(en.Value, &e); err != nil {
			return fmt.Errorf("decode endpoint %s: %w", en.Key, err)
		}
		if err := fn(&e); err != nil {
			return err
		}
	}
	return nil
}

func lineageKey(id string, seq int) []byte {
	return fmt.Appendf(nil, "%s/%010d", id, seq)
}

// subscriber reports whether the event is about a subscriber certificate,
// which billing counts.
func subscriber(ev plugins.CertificateEvent) bool {
	return ev.Provisioner == nil || ev.Provisioner.Type != plugins.ProvisionerTypeAttestationCA
}
