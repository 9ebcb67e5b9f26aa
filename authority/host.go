package authority

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	upstream "github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/plugins"
)

// host is the plugins.Host handed to one plugin.
type host struct {
	d    *Daemon
	name string
	log  *slog.Logger
}

func (d *Daemon) newHost(name string) *host {
	return &host{d: d, name: name, log: d.log.With("plugin", name)}
}

// Authority implements plugins.Host; it is nil while plugins are built.
func (h *host) Authority() *upstream.Authority { return h.d.Authority() }
func (h *host) DB() nosql.DB                   { return h.d.store }
func (h *host) Replica() string                { return h.d.replica }
func (h *host) Now() time.Time                 { return h.d.now() }
func (h *host) Locker() plugins.Locker         { return h.d.locker }
func (h *host) Events() plugins.EventRecorder  { return daemonRecorder{h.d} }
func (h *host) Logger() *slog.Logger           { return h.log }
func (h *host) Audit() plugins.Auditor         { return h.d.audit }
func (h *host) Metrics() prometheus.Registerer { return h.d.metrics.Registerer() }

// Backend implements plugins.Host with ca.json's db.type.
func (h *host) Backend() string {
	if db := h.d.file.CA.DB; db != nil && h.d.store != nil {
		return db.Type
	}
	return ""
}

// Go implements plugins.Host; the job is named after the plugin.
func (h *host) Go(name string, fn func(ctx context.Context)) { h.d.bg.Go(h.name+"/"+name, fn) }

// Revoke implements plugins.Host.
func (h *host) Revoke(ctx context.Context, req plugins.RevokeRequest) error {
	return h.d.revoke(ctx, req)
}

// revoke is an administrative revocation through upstream's Authority.Revoke,
// so the CA service, the revoked table and upstream's CRL behave as for any
// revocation. Upstream only knows token, mTLS and ACME revocations; it is
// called as an mTLS one (the CA holds the certificate) and the database
// wrapper records the actor instead (events.DB.Administrative).
func (d *Daemon) revoke(ctx context.Context, req plugins.RevokeRequest) error {
	if req.Actor == "" {
		return errors.New("revoke: the actor is required")
	}
	if d.db == nil {
		return errors.New("revoke: no database is configured")
	}
	crt, err := d.db.GetCertificate(req.Serial)
	if database.IsErrNotFound(err) {
		return fmt.Errorf("revoke %s: %w", req.Serial, plugins.ErrUnknownCertificate)
	}
	if err != nil {
		return fmt.Errorf("revoke %s: %w", req.Serial, err)
	}
	auth := d.Authority()
	if revoked, err := auth.IsRevoked(req.Serial); err != nil {
		return fmt.Errorf("revocation status of %s: %w", req.Serial, err)
	} else if revoked {
		return fmt.Errorf("revoke %s: %w", req.Serial, plugins.ErrAlreadyRevoked)
	}
	done := d.db.Administrative(req.Serial, req.Actor)
	defer done()
	err = auth.Revoke(provisioner.NewContextWithMethod(ctx, provisioner.RevokeMethod), &upstream.RevokeOptions{
		Serial: req.Serial, Reason: req.Reason, ReasonCode: req.ReasonCode, MTLS: true, Crt: crt,
	})
	if err != nil {
		if revoked, _ := auth.IsRevoked(req.Serial); revoked {
			return fmt.Errorf("revoke %s: %w", req.Serial, plugins.ErrAlreadyRevoked)
		}
		return fmt.Errorf("revoke %s: %w", req.Serial, err)
	}
	d.log.Info("certificate revoked", "serial", req.Serial, "actor", req.Actor, "reasonCode", req.ReasonCode)
	return nil
}

// daemonRecorder forwards to the daemon's recorder, which exists only once
// the plugins are built (it delivers to them): a plugin may keep
// Host.Events() from its constructor.
type daemonRecorder struct{ d *Daemon }

func (r daemonRecorder) AddDeviceEvent(tx *database.Tx, ev *plugins.DeviceEvent) error {
	return r.d.recorder.AddDeviceEvent(tx, ev)
}
func (r daemonRecorder) AddCertificateEvent(tx *database.Tx, ev *plugins.CertificateEvent) error {
	c, ok := r.d.recorder.(plugins.CertificateEventRecorder)
	if !ok {
		return errors.New("this daemon's event recorder cannot record certificate events")
	}
	return c.AddCertificateEvent(tx, ev)
}
func (r daemonRecorder) Announce(id string)      { r.d.recorder.Announce(id) }
func (r daemonRecorder) Discard(id string) error { return r.d.recorder.Discard(id) }

// noDatabase is the Locker and EventRecorder of a daemon without a
// database: leases cannot be held and events are not recorded.
type noDatabase struct{}

var errNoDatabase = errors.New("no database is configured")

func (noDatabase) TryLock(context.Context, string, time.Duration) (bool, error) {
	return false, errNoDatabase
}
func (noDatabase) Unlock(context.Context, string) error { return nil }
func (noDatabase) Lease(context.Context, string) (plugins.Lease, error) {
	return plugins.Lease{}, errNoDatabase
}
func (noDatabase) AddDeviceEvent(*database.Tx, *plugins.DeviceEvent) error { return errNoDatabase }
func (noDatabase) AddCertificateEvent(*database.Tx, *plugins.CertificateEvent) error {
	return errNoDatabase
}
func (noDatabase) Announce(string)      {}
func (noDatabase) Discard(string) error { return nil }
