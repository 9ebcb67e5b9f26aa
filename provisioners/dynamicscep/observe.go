package dynamicscep

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// revocationReasonCode is the RFC 5280 CRLReason of certificates revoked
// because their device was disabled or removed: cessationOfOperation.
const revocationReasonCode = 5

const revocationReason = "device disabled or removed from the inventory"

// NotifySCEP implements plugins.SCEPNotifier: the certificate of a
// device-bound enrollment is linked to its device at once. The notifier
// cannot fail issuance and is not replayed after a crash, so the issued
// certificate event (ObserveCertificate) records the same link durably;
// whichever comes first writes it.
func (p *Plugin) NotifySCEP(ctx context.Context, ev plugins.SCEPIssued) {
	if !p.served(ev.Provisioner) || ev.Certificate == nil {
		return
	}
	p.intune.notify(ctx, ev) // Intune enrollments: successNotification (intune.go)
	if err := p.link(ctx, ev.Certificate, serialOf(ev.Certificate)); err != nil {
		p.log.Warn("SCEP certificate not linked yet; the certificate event will retry", "event", "scep.link_deferred",
			"serial", serialOf(ev.Certificate), "transactionID", clip(ev.TransactionID), "error", err)
	}
}

// ObserveCertificate implements plugins.CertificateObserver: the durable
// path of NotifySCEP. An error makes the daemon deliver the event again.
func (p *Plugin) ObserveCertificate(ctx context.Context, ev plugins.CertificateEvent) error {
	if ev.Kind != plugins.EventIssued || ev.Provisioner == nil || !p.served(ev.Provisioner.Name) {
		return nil
	}
	c, err := ev.Certificate()
	if err != nil {
		return nil // a revocation of a certificate we never held, nothing to link
	}
	return p.link(ctx, c, ev.Serial)
}

// link records the device link of a certificate whose key a device-bound
// challenge was accepted for, and revokes it at once if the device is no
// longer active (it was disabled between enrollment and now; its device
// event may have found no link to act on).
func (p *Plugin) link(ctx context.Context, cert *x509.Certificate, serial string) error {
	pend, found, err := p.links.PendingFor(cert)
	if err != nil || !found {
		return err
	}
	if err := p.links.Record(pend.DeviceID, DeviceCert{Serial: serial, Ref: pend.ChallengeID, NotAfter: cert.NotAfter}); err != nil {
		return err
	}
	active, err := p.deviceActive(pend.DeviceID)
	if err != nil || active {
		return err
	}
	return p.RevokeDevice(ctx, pend.DeviceID)
}

// ObserveDevice implements plugins.DeviceObserver: a device that is
// disabled or removed loses its SCEP certificates. The event says what
// was true when it was recorded; the device is read again and the
// decision rests on its state now, so a device disabled and enabled again
// before delivery keeps its certificates.
func (p *Plugin) ObserveDevice(ctx context.Context, ev plugins.DeviceEvent) error {
	active, err := p.deviceActive(ev.DeviceID)
	if err != nil {
		return fmt.Errorf("device event %s: %w", ev.ID, err)
	}
	if active {
		return nil
	}
	return p.RevokeDevice(ctx, ev.DeviceID)
}

func (p *Plugin) deviceActive(id string) (bool, error) {
	d, err := p.inventory.Get(id)
	switch {
	case errors.Is(err, inventory.ErrNotFound):
		return false, nil
	case err != nil:
		return false, err
	}
	return d.Active(), nil
}

// RevokeDevice revokes every unexpired, unrevoked SCEP certificate linked
// to a device, through the host's administrative revocation (revoked
// table, CRL, OCSP, revoked event). A certificate revoked already counts
// as done. It is idempotent.
func (p *Plugin) RevokeDevice(ctx context.Context, deviceID string) error {
	dc, err := p.links.DeviceCerts(deviceID)
	if err != nil {
		return err
	}
	now := p.host.Now()
	var done []string
	var errs []error
	for _, c := range dc.Certs {
		if c.Revoked || !c.NotAfter.After(now) {
			continue
		}
		err := p.host.Revoke(ctx, plugins.RevokeRequest{Serial: c.Serial, ReasonCode: revocationReasonCode, Reason: revocationReason, Actor: Actor})
		switch {
		case err == nil || errors.Is(err, plugins.ErrAlreadyRevoked):
			done = append(done, c.Serial)
			p.log.Info("SCEP certificate revoked for device", "event", "scep.revoked", "device", deviceID, "serial", c.Serial, "reasonCode", revocationReasonCode)
		default:
			errs = append(errs, fmt.Errorf("revoke %s: %w", c.Serial, err))
		}
	}
	if err := p.links.MarkRevoked(deviceID, done); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// serialOf is a certificate's serial as upstream keys it (decimal).
func serialOf(c *x509.Certificate) string { return c.SerialNumber.String() }
