// Package events turns upstream step-ca's certificate stores, and the device
// changes plugins record (Recorder), into durable events and delivers them
// to plugins.
//
// Guarantee: an event is written in the same database transaction as the
// certificate, revocation or device change it describes (see DB and
// Recorder), so a certificate that a client received always has its event. The Outbox delivers events at least
// once, across crashes and replicas, and deletes an event only after every
// observer has accepted it. docs/design/events.md has the full argument.
package events

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
)

// Table holds pending events, keyed by event ID (which sorts by time).
var Table = []byte("stepfort_events")

// Upstream's tables; the events tests read what DB writes back through
// upstream's own getters, which checks the names.
var (
	certsTable        = storage.CertsTable
	certsDataTable    = storage.CertsDataTable
	revokedCertsTable = storage.RevokedCertsTable
)

// DB is upstream's database with certificate events. It embeds *db.DB, which
// upstream needs (the authority and ACME type-assert nosql.DB), and overrides
// the three storers the authority type-asserts on after signing and on
// revocation. These run after the CA has signed, so they record; they never
// authorize.
type DB struct {
	*db.DB
	outbox   *Outbox // nil: no observers, write no events
	now      func() time.Time
	watchers []plugins.CertificateWatcher
	admin    sync.Map // serial -> *adminRevocation, see Administrative
}

// Watch adds a watcher told about every committed issuance, renewal and
// revocation on this replica before the storing call returns. Call it
// before the DB is used.
func (d *DB) Watch(w plugins.CertificateWatcher) { d.watchers = append(d.watchers, w) }

// NewDB wraps base. now is the clock of event IDs and times (nil:
// time.Now). Certificate events are written only when outbox has a
// certificate observer; with a nil outbox the DB behaves exactly like
// upstream.
func NewDB(base *db.DB, outbox *Outbox, now func() time.Time) (*DB, error) {
	if now == nil {
		now = time.Now
	}
	d := &DB{DB: base, outbox: outbox, now: now}
	if outbox != nil {
		if err := base.CreateTable(Table); err != nil {
			return nil, fmt.Errorf("create table %s: %w", Table, err)
		}
	}
	return d, nil
}

// AdminTokenPrefix starts the TokenID of a revocation stored by an
// administrative revocation; the actor follows it.
const AdminTokenPrefix = "stepfort-admin:"

type adminRevocation struct{ actor string }

// Administrative marks the revocation of serial that the caller is about to
// make through upstream's Authority.Revoke as administrative, until done is
// called. Upstream knows only token, mTLS and ACME revocations, so the
// daemon revokes with MTLS set; while the mark is registered, Revoke stores
// the revocation with MTLS and ACME unset and TokenID AdminTokenPrefix+actor,
// and the revoked event names the actor. Safe for concurrent use; call done
// when the revoke returns:
//
//	defer d.Administrative(serial, "plugin:deviceAttest")()
func (d *DB) Administrative(serial, actor string) (done func()) {
	mark := &adminRevocation{actor: actor}
	d.admin.Store(serial, mark)
	// Only our own mark: a later registration for the serial stays.
	return func() { d.admin.CompareAndDelete(serial, mark) }
}

// administrative returns the revocation to store for rci and its actor:
// rci itself, or a copy rewritten by Administrative.
func (d *DB) administrative(rci *db.RevokedCertificateInfo) (*db.RevokedCertificateInfo, string) {
	v, ok := d.admin.Load(rci.Serial)
	if !ok {
		return rci, ""
	}
	actor := v.(*adminRevocation).actor
	admin := *rci
	admin.MTLS, admin.ACME = false, false
	admin.TokenID = AdminTokenPrefix + actor
	return &admin, actor
}

type attested interface {
	AttestationData() *provisioner.AttestationData
}

type raProvisioner interface {
	RAInfo() *provisioner.RAInfo
}

// StoreCertificateChain stores what upstream stores (x509_certs and
// x509_certs_data) and the issued event, in one transaction.
func (d *DB) StoreCertificateChain(p provisioner.Interface, chain ...*x509.Certificate) error {
	leaf := chain[0]
	serial := leaf.SerialNumber.String()
	data := &db.CertificateData{}
	ev := d.newEvent(plugins.EventIssued, serial)
	ev.CertificateDER = leaf.Raw
	if p != nil {
		data.Provisioner = &db.ProvisionerData{ID: p.GetID(), Name: p.GetName(), Type: p.GetType().String()}
		if ra, ok := p.(raProvisioner); ok {
			data.RaInfo = ra.RAInfo()
		}
		ev.Provisioner = &plugins.ProvisionerRef{ID: data.Provisioner.ID, Name: data.Provisioner.Name, Type: data.Provisioner.Type}
		if at, ok := p.(attested); ok && at.AttestationData() != nil {
			ev.PermanentIdentifier = at.AttestationData().PermanentIdentifier
		}
	}
	b, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("marshal certificate data: %w", err)
	}
	tx := new(database.Tx)
	tx.Set(certsTable, []byte(serial), leaf.Raw)
	tx.Set(certsDataTable, []byte(serial), b)
	if err := d.addEvent(tx, ev); err != nil {
		return err
	}
	if err := d.Update(tx); err != nil {
		return fmt.Errorf("store certificate %s: %w", serial, err)
	}
	d.notify(ev)
	return nil
}

// StoreRenewedCertificate stores the renewed certificate with its parent's
// certificate data, as upstream does, and the renewed event, in one
// transaction.
func (d *DB) StoreRenewedCertificate(parent *x509.Certificate, chain ...*x509.Certificate) error {
	leaf := chain[0]
	serial := leaf.SerialNumber.String()
	var dataJSON []byte
	data, err := d.GetCertificateData(parent.SerialNumber.String())
	if err == nil {
		dataJSON, _ = json.Marshal(data)
	}
	ev := d.newEvent(plugins.EventRenewed, serial)
	ev.CertificateDER = leaf.Raw
	ev.ParentSerial = parent.SerialNumber.String()
	ev.Rekey = !publicKeysEqual(parent, leaf)
	if data != nil && data.Provisioner != nil {
		ev.Provisioner = &plugins.ProvisionerRef{ID: data.Provisioner.ID, Name: data.Provisioner.Name, Type: data.Provisioner.Type}
	}
	tx := new(database.Tx)
	tx.Set(certsTable, []byte(serial), leaf.Raw)
	if dataJSON != nil {
		tx.Set(certsDataTable, []byte(serial), dataJSON)
	}
	if err := d.addEvent(tx, ev); err != nil {
		return err
	}
	if err := d.Update(tx); err != nil {
		return fmt.Errorf("store renewed certificate %s: %w", serial, err)
	}
	d.notify(ev)
	return nil
}

// Revoke records the revocation as upstream does (a compare-and-swap that
// fails with db.ErrAlreadyExists when the serial is already revoked) and the
// revoked event, in one transaction. Neither backend rolls a transaction back
// when its compare-and-swap does not swap, so an already-revoked serial leaves
// a spurious event; it is deleted here, and the Outbox also drops any revoked
// event that does not match the stored revocation (in case of a crash before
// the delete). A revocation marked by Administrative is stored as such.
func (d *DB) Revoke(rci *db.RevokedCertificateInfo) error {
	rci, actor := d.administrative(rci)
	ev := d.revokedEvent(rci, actor)
	rcib, err := json.Marshal(rci)
	if err != nil {
		return fmt.Errorf("marshal revocation: %w", err)
	}
	observed := d.outbox.observesCertificates()
	if observed {
		d.describeRevoked(ev)
	}
	tx := new(database.Tx)
	tx.Cas(revokedCertsTable, []byte(rci.Serial), rcib) // compares with absent
	if err := d.addEvent(tx, ev); err != nil {
		return err
	}
	// Not d.Update: on PostgreSQL nosql's compare-and-swap locks no absent
	// row, so two replicas revoking one serial would both win.
	if err := storage.Update(d.DB.DB, tx); err != nil {
		return fmt.Errorf("revoke %s: %w", rci.Serial, err)
	}
	if !tx.Operations[0].Swapped {
		if observed {
			_ = d.Del(Table, []byte(ev.ID))
		}
		return db.ErrAlreadyExists
	}
	d.notify(ev)
	return nil
}

// describeRevoked adds the certificate and its provisioner to a revoked
// event, for observers, when the database holds them.
func (d *DB) describeRevoked(ev *plugins.CertificateEvent) {
	crt, err := d.GetCertificate(ev.Serial)
	if err != nil {
		return
	}
	ev.CertificateDER = crt.Raw
	if data, err := d.GetCertificateData(ev.Serial); err == nil && data.Provisioner != nil {
		ev.Provisioner = &plugins.ProvisionerRef{ID: data.Provisioner.ID, Name: data.Provisioner.Name, Type: data.Provisioner.Type}
	}
}

func (d *DB) revokedEvent(rci *db.RevokedCertificateInfo, actor string) *plugins.CertificateEvent {
	ev := d.newEvent(plugins.EventRevoked, rci.Serial)
	ev.Revocation = &plugins.Revocation{
		ReasonCode: rci.ReasonCode, Reason: rci.Reason, RevokedAt: rci.RevokedAt, MTLS: rci.MTLS, ACME: rci.ACME, Actor: actor,
	}
	return ev
}

func (d *DB) newEvent(kind plugins.EventKind, serial string) *plugins.CertificateEvent {
	now := d.now().UTC()
	return &plugins.CertificateEvent{ID: NewID(now), Kind: kind, Serial: serial, OccurredAt: now}
}

func (d *DB) addEvent(tx *database.Tx, ev *plugins.CertificateEvent) error {
	if !d.outbox.observesCertificates() {
		return nil
	}
	b, err := json.Marshal(&record{Event: ev})
	if err != nil {
		return fmt.Errorf("marshal event: %w", err)
	}
	tx.Set(Table, []byte(ev.ID), b)
	return nil
}

func (d *DB) notify(ev *plugins.CertificateEvent) {
	for _, w := range d.watchers {
		w.CertificateCommitted(*ev)
	}
	if d.outbox.observesCertificates() {
		d.outbox.Notify(ev.ID)
	}
}

// NewID returns an event ID that sorts by time across replicas: zero-padded
// Unix nanoseconds, then random bits so two replicas never collide.
func NewID(t time.Time) string {
	var r [6]byte
	_, _ = rand.Read(r[:])
	return fmt.Sprintf("%020d-%s", t.UnixNano(), hex.EncodeToString(r[:]))
}

func publicKeysEqual(a, b *x509.Certificate) bool {
	if k, ok := a.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); ok {
		return k.Equal(b.PublicKey)
	}
	return false
}
