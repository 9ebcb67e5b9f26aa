package deviceattest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// parentWait bounds how long a renewed account certificate waits for its
// parent's link. Events are delivered at least once but not in order: a
// renewal's event can come before its parent's issued event (the parent's
// delivery failed and is in back-off, or another replica holds it), so the
// renewal is retried rather than dropped. The bound stops the retries for
// a parent that will never be linked (issued before the plugin was
// enabled, or whose device was already gone).
const parentWait = 24 * time.Hour

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
	link, err := p.linkOf(ctx, ev, prov)
	if err != nil || link == nil {
		return err
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

// linkOf returns the link the event's certificate gets (without serial,
// provisioner and expiry), or nil if it is not a device or account
// certificate. An error makes the daemon deliver the event again.
func (p *Plugin) linkOf(ctx context.Context, ev plugins.CertificateEvent, prov string) (*Link, error) {
	if ev.Kind == plugins.EventRenewed && ev.ParentSerial != "" {
		parent, found, err := p.links.Get(ev.ParentSerial)
		if err != nil {
			return nil, err
		}
		if found {
			return &Link{DeviceID: parent.DeviceID, Kind: parent.Kind, ParentSerial: ev.ParentSerial}, nil
		}
		// A renewal carries its parent's provisioner. A device
		// certificate's renewal also carries its permanent identifier and
		// is linked below as an issued one is; an account certificate's
		// can only follow its parent's link.
		if p.account(prov) {
			return nil, p.awaitParent(ev)
		}
	}
	switch {
	case p.gated(prov):
		return p.deviceLink(ctx, ev)
	case p.account(prov):
		return p.accountLink(ev)
	}
	return nil, nil
}

// awaitParent decides about an account certificate's renewal whose parent
// is not linked: an error (retry) while the parent's issued event may
// still come, nil once it cannot (the parent is not a certificate of this
// CA, or parentWait has passed).
func (p *Plugin) awaitParent(ev plugins.CertificateEvent) error {
	issued, err := storage.Issued(p.host.DB(), ev.ParentSerial)
	if err != nil {
		return err
	}
	if !issued {
		return nil // not a certificate of this CA: nothing will link it
	}
	if age := p.host.Now().Sub(ev.OccurredAt); age > parentWait {
		p.log.Error("renewed account certificate whose parent was never linked to a device", "event", "deviceattest.unlinked",
			"serial", ev.Serial, "parentSerial", ev.ParentSerial, "waited", age.String())
		return nil
	}
	return fmt.Errorf("renewed certificate %s: parent %s not linked to a device yet", ev.Serial, ev.ParentSerial)
}

// deviceLink links a certificate of a gated provisioner through its
// permanent identifier. One whose device is no longer registered is
// revoked at once and gets no link.
func (p *Plugin) deviceLink(ctx context.Context, ev plugins.CertificateEvent) (*Link, error) {
	pid := ev.PermanentIdentifier
	if pid == "" {
		if c, err := ev.Certificate(); err == nil {
			pid = permanentIdentifier(c)
		}
	}
	if pid == "" {
		return nil, nil
	}
	d, err := p.gate.Inventory.ByIdentifier(pid)
	if errors.Is(err, inventory.ErrNotFound) {
		// Removed between finalize and this event: nothing to link,
		// so revoke it now.
		p.log.Warn("device certificate for an unregistered device", "event", "deviceattest.unlinked", "serial", ev.Serial, "permanentIdentifier", pid)
		return nil, p.revokeSerials(ctx, "", []string{ev.Serial})
	}
	if err != nil {
		return nil, err
	}
	link := &Link{DeviceID: d.ID, Kind: KindDevice}
	if ev.Kind == plugins.EventRenewed {
		link.ParentSerial = ev.ParentSerial
	}
	return link, nil
}

// accountLink links an account certificate through the pending record of
// its key; a redelivered event finds the link it recorded before (the
// pending record may be purged by then).
func (p *Plugin) accountLink(ev plugins.CertificateEvent) (*Link, error) {
	if prev, found, err := p.links.Get(ev.Serial); err != nil || found {
		return prev, err
	}
	c, err := ev.Certificate()
	if err != nil {
		return nil, err
	}
	pend, found, err := p.links.Pending(KeyID(c))
	if err != nil {
		return nil, err
	}
	if !found {
		p.log.Warn("account certificate without a device", "event", "deviceattest.unlinked", "serial", ev.Serial)
		return nil, nil
	}
	return &Link{DeviceID: pend.DeviceID, Kind: KindAccount, ParentSerial: pend.DeviceSerial}, nil
}
