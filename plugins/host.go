package plugins

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"
)

// Host is what the daemon offers a plugin. A plugin gets everything it
// needs from here; it does not unwrap upstream's types or guess at the
// backend.
type Host interface {
	// Authority returns the current upstream authority. It changes on SIGHUP
	// reload, so call it per request instead of keeping the result.
	Authority() *authority.Authority
	// DB is the database store itself (bbolt, PostgreSQL, ...), not
	// upstream's wrapper around it, so a plugin's writes never produce
	// certificate events. Plugin tables are prefixed "stepfort_" and must be
	// created with CreateTable before use. Nil without a database.
	DB() nosql.DB
	// Backend names the database driver as ca.json's db.type does
	// ("bbolt", "postgresql", "mysql", "badgerv2", ...), "" without one.
	Backend() string
	// Replica identifies this process among the replicas sharing the
	// database; see ReplicaID for its format.
	Replica() string
	// Now is the daemon clock; tests inject their own.
	Now() time.Time
	// Locker is the one lease contract for cluster-exclusive jobs.
	Locker() Locker
	// Go runs fn in the daemon's goroutine group: from when the daemon
	// serves (at once if it already does) until it stops, when ctx is
	// cancelled and the daemon waits for fn to return before it stops the
	// plugins and closes the database.
	Go(name string, fn func(ctx context.Context))
	// Events records durable events in a plugin's own transactions.
	Events() EventRecorder
	// Revoke revokes a certificate administratively through upstream's
	// revocation path (revoked table, CRL, OCSP, the revoked event); the
	// record names the actor instead of pretending to be an mTLS revoke.
	Revoke(ctx context.Context, req RevokeRequest) error
	// Audit is the audit trail: every refusal and every administrative
	// action a plugin takes is recorded there.
	Audit() Auditor
	// Logger is a structured logger tagged with the plugin name.
	Logger() *slog.Logger
	// Metrics registers collectors exported on metricsAddress next to
	// upstream's metrics. Name them "stepfort_<plugin>_...".
	Metrics() prometheus.Registerer
}

// RevokeRequest is an administrative revocation.
type RevokeRequest struct {
	Serial     string // decimal, as upstream keys certificates
	ReasonCode int    // RFC 5280 CRLReason
	Reason     string
	// Actor says who revoked, for the record: "plugin:deviceAttest",
	// "token:<id>". Required.
	Actor string
}

// ErrAlreadyRevoked is returned by Host.Revoke for a serial that is revoked
// already.
var ErrAlreadyRevoked = errors.New("certificate is already revoked")

// ErrUnknownCertificate is returned by Host.Revoke for a serial this CA has
// not stored.
var ErrUnknownCertificate = errors.New("certificate not found")

// EventRecorder puts durable events into a caller's transaction, so an
// event exists if and only if the change it describes was committed.
type EventRecorder interface {
	// AddDeviceEvent fills ev.ID and ev.OccurredAt and adds the event to tx.
	// After tx commits, call Announce(ev.ID) so this replica delivers it at
	// once; an event never announced is delivered by the next sweep. If
	// the change the event describes did not happen after all (a
	// compare-and-swap in tx did not swap), call Discard(ev.ID).
	AddDeviceEvent(tx *database.Tx, ev *DeviceEvent) error
	Announce(id string)
	Discard(id string) error
}

// CertificateEventRecorder is implemented by the EventRecorder of a Host
// with a database (find it with a type assertion on Host.Events()). It is
// for plugins that sign certificates themselves, outside upstream's
// signing path (the Attestation CA's AK certificates), so that those
// certificates reach every CertificateObserver (index, audit trail) like
// upstream's: the event is written in the plugin's own transaction, in the
// same record format, and delivered by the same outbox.
//
// AddCertificateEvent checks ev (kind issued, a decimal serial, the
// certificate with that serial, a provisioner with a name and a type: use
// a type that is not upstream's, such as ProvisionerTypeAttestationCA), fills
// ev.ID and ev.OccurredAt and adds the event to tx. Commit tx before the
// certificate leaves the process (so a certificate a client received
// always has its event), then call Announce(ev.ID). The event is not shown
// to CertificateWatchers (they see upstream's certificates only).
type CertificateEventRecorder interface {
	AddCertificateEvent(tx *database.Tx, ev *CertificateEvent) error
}

// ProvisionerTypeAttestationCA is the provisioner type of the Attestation
// CA's AK certificates in certificate events. They are not subscriber
// certificates: billing does not count them, the index gives them no
// Endpoint.
const ProvisionerTypeAttestationCA = "AttestationCA"

// CheckCertificateEvent is the check every CertificateEventRecorder makes
// before it adds ev.
func CheckCertificateEvent(ev *CertificateEvent) error {
	switch {
	case ev == nil:
		return errors.New("certificate event: nil")
	case ev.Kind != EventIssued:
		return fmt.Errorf("certificate event: kind %q: only %q can be recorded by a plugin", ev.Kind, EventIssued)
	case ev.Provisioner == nil || ev.Provisioner.Name == "" || ev.Provisioner.Type == "":
		return errors.New("certificate event: provisioner name and type are required")
	case len(ev.CertificateDER) == 0:
		return errors.New("certificate event: the certificate is required")
	}
	cert, err := x509.ParseCertificate(ev.CertificateDER)
	if err != nil {
		return fmt.Errorf("certificate event: certificate: %w", err)
	}
	if got := cert.SerialNumber.String(); ev.Serial != got {
		return fmt.Errorf("certificate event: serial %q is not the certificate's %s", ev.Serial, got)
	}
	return nil
}

// Locker hands out named, time-limited leases in the shared database, so
// a cluster-exclusive job (CRL publishing, expiry alerts) runs on one
// replica at a time. It is the only lock contract in stepfort.
//
// Atomicity: TryLock reads the lease row and writes the new one with a
// compare-and-swap against the bytes it read, so of several replicas racing
// for a free or expired lease exactly one wins. A lease is held by
// Host.Replica().
//
// Expiry: nobody releases the lease of a replica that died; it expires
// after its TTL and the next TryLock elsewhere wins, so work resumes within
// TTL plus one attempt interval. Expiry compares the caller's clock with
// the time the holder wrote: replica clocks must agree to well within the
// TTL. A holder renews by calling TryLock again before Until; a holder that
// was paused past Until may still act once, so work guarded by a lease must
// itself be safe against a stale holder (the CRL row has its own
// compare-and-swap).
//
// Errors: a database error is returned as is and means "not acquired".
type Locker interface {
	// TryLock takes or renews the named lease for this replica until
	// now+ttl and reports whether this replica holds it.
	TryLock(ctx context.Context, name string, ttl time.Duration) (bool, error)
	// Unlock gives the lease up if this replica holds it, so another
	// replica can take over at once on a clean shutdown.
	Unlock(ctx context.Context, name string) error
	// Lease returns the stored state of the named lease (zero if never
	// taken).
	Lease(ctx context.Context, name string) (Lease, error)
}

// Lease is the stored state of one lease.
type Lease struct {
	Holder  string    `json:"holder"`
	Until   time.Time `json:"until"`
	Changes int64     `json:"changes"` // how many times the holder changed
}
