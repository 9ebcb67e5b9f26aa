package deviceattest

import (
	"context"
	"errors"

	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// ObserveCertificate implements plugins.CertificateObserver: it records the
// certificate-to-device link of every device certificate (from the
// attestation's permanent identifier), account certificate (from the X5C
// leaf recorded at AuthorizeSign) and renewal (from the parent's link).
// Idempotent: a redelivered event rewrites the same link. A certificate
// linked to a device that is no longer active is revoked at once (the
// device was disabled between issuance and this event).
func (p *Plugin) ObserveCertificate(ctx context.Context, ev plugins.CertificateEvent) error {
	if ev.Kind != plugins.EventIssued && ev.Kind != plugins.EventRenewed {
		return nil
	}
	prov := ""
	if ev.Provisioner != nil {
		prov = ev.Provisioner.Name
	}
	var link *Link
	switch {
	case ev.Kind == plugins.EventRenewed && ev.ParentSerial != "":
		parent, found, err := p.links.Get(ev.ParentSerial)
		if err != nil {
			return err
		}
		if !found {
			return nil // not a device or account certificate
		}
		link = &Link{DeviceID: parent.DeviceID, Kind: parent.Kind, ParentSerial: ev.ParentSerial}
	case p.gated(prov):
		pid := ev.PermanentIdentifier
		if pid == "" {
			if c, err := ev.Certificate(); err == nil {
				pid = permanentIdentifier(c)
			}
		}
		if pid == "" {
			return nil
		}
		d, err := p.gate.Inventory.ByIdentifier(pid)
		if errors.Is(err, inventory.ErrNotFound) {
			// Removed between finalize and this event: nothing to link,
			// so revoke it now.
			p.log.Warn("device certificate for an unregistered device", "event", "deviceattest.unlinked", "serial", ev.Serial, "permanentIdentifier", pid)
			return p.revokeSerials(ctx, "", []string{ev.Serial})
		}
		if err != nil {
			return err
		}
		link = &Link{DeviceID: d.ID, Kind: KindDevice}
	case p.account(prov):
		c, err := ev.Certificate()
		if err != nil {
			return err
		}
		pend, found, err := p.links.Pending(KeyID(c))
		if err != nil {
			return err
		}
		if !found {
			p.log.Warn("account certificate without a device", "event", "deviceattest.unlinked", "serial", ev.Serial)
			return nil
		}
		link = &Link{DeviceID: pend.DeviceID, Kind: KindAccount, ParentSerial: pend.DeviceSerial}
	default:
		return nil
	}
	c, err := ev.Certificate()
	if err != nil {
		return err
	}
	link.Serial, link.Provisioner, link.NotAfter = ev.Serial, prov, c.NotAfter
	if err := p.links.Record(*link, p.host.Now()); err != nil {
		return err
	}
	if _, err := p.gate.CheckID(link.DeviceID); err != nil {
		var d *Denial
		if errors.As(err, &d) && d.Code() != CodeLookupFailed {
			return p.RevokeDevice(ctx, link.DeviceID)
		}
		return err
	}
	return nil
}
