package deviceattest

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"go.step.sm/crypto/x509util"

	"github.com/stepfort/stepfort/plugins"
)

// SignProvisioners implements plugins.SignAuthorizer: the gated ACME
// provisioners (finalize) and the account X5C provisioners.
func (p *Plugin) SignProvisioners() []string {
	return append(append([]string(nil), p.cfg.Provisioners...), p.cfg.AccountProvisioners...)
}

// AuthorizeSign implements plugins.SignAuthorizer. At ACME finalize it checks
// the attested permanent identifier again (the device may have been
// disabled since the challenge). For an account certificate it checks that
// the X5C leaf is an unrevoked device certificate of an active device, and
// records which device the new key belongs to.
func (p *Plugin) AuthorizeSign(ctx context.Context, req plugins.SignRequest) error {
	switch {
	case p.gated(req.Provisioner):
		if _, err := p.gate.Check(req.PermanentIdentifier); err != nil {
			p.denied("finalize", req.Provisioner, req.PermanentIdentifier, err)
			return err
		}
		return nil
	case p.account(req.Provisioner):
		dev, err := p.deviceOfX5C(req.X5CCertificate)
		if err != nil {
			p.denied("account", req.Provisioner, "", err)
			return err
		}
		if req.Certificate == nil || req.Certificate.PublicKey == nil {
			return deny(CodeUnknownAccount, "account certificate request without a public key")
		}
		kid, err := keyIDOfPublic(req.Certificate.PublicKey)
		if err != nil {
			return deny(CodeUnknownAccount, "account certificate public key: %v", err)
		}
		return p.links.SetPending(kid, Pending{DeviceID: dev.deviceID, DeviceSerial: dev.serial, Expires: p.host.Now().Add(time.Hour)})
	}
	return nil
}

type x5cDevice struct{ deviceID, serial string }

// deviceOfX5C resolves the device behind an X5C leaf: its link if the
// issued event was already processed, else its permanent identifier SAN.
func (p *Plugin) deviceOfX5C(leaf *x509.Certificate) (*x5cDevice, error) {
	if leaf == nil {
		return nil, deny(CodeUnknownAccount, "no x5c certificate")
	}
	serial := leaf.SerialNumber.String()
	if auth := p.host.Authority(); auth != nil {
		revoked, err := auth.IsRevoked(serial)
		if err != nil {
			return nil, &Denial{code: CodeLookupFailed, msg: fmt.Sprintf("certificate %s could not be checked for revocation", serial), err: err}
		}
		if revoked {
			return nil, deny(CodeDisabled, "device certificate %s is revoked", serial)
		}
	}
	link, found, err := p.links.Get(serial)
	if err != nil {
		return nil, &Denial{code: CodeLookupFailed, msg: fmt.Sprintf("certificate %s could not be checked against the inventory", serial), err: err}
	}
	if found {
		if link.Kind != KindDevice {
			return nil, deny(CodeUnknownAccount, "certificate %s is not a device certificate", serial)
		}
		if _, err := p.gate.CheckID(link.DeviceID); err != nil {
			return nil, err
		}
		return &x5cDevice{deviceID: link.DeviceID, serial: serial}, nil
	}
	pid := permanentIdentifier(leaf)
	if pid == "" {
		return nil, deny(CodeUnknownAccount, "certificate %s is not a device certificate", serial)
	}
	d, err := p.gate.Check(pid)
	if err != nil {
		return nil, err
	}
	return &x5cDevice{deviceID: d.ID, serial: serial}, nil
}

// AuthorizeRenew implements plugins.RenewAuthorizer: upstream runs no
// webhooks on /renew and /rekey, so the gate is applied here.
func (p *Plugin) AuthorizeRenew(_ context.Context, req plugins.RenewRequest) error {
	name, cert := req.Provisioner.Name, req.Certificate
	if cert == nil || !p.gated(name) && !p.account(name) {
		return nil
	}
	err := p.checkRenew(name, cert)
	if err != nil {
		p.denied("renew", name, cert.SerialNumber.String(), err)
	}
	return err
}

func (p *Plugin) checkRenew(name string, cert *x509.Certificate) error {
	serial := cert.SerialNumber.String()
	if p.gated(name) {
		if pid := permanentIdentifier(cert); pid != "" {
			_, err := p.gate.Check(pid)
			return err
		}
	}
	link, found, err := p.links.Get(serial)
	if err != nil {
		return &Denial{code: CodeLookupFailed, msg: fmt.Sprintf("certificate %s could not be checked against the inventory", serial), err: err}
	}
	if found {
		_, err := p.gate.CheckID(link.DeviceID)
		return err
	}
	// The issued event may not be processed yet: the pending record of an
	// account key still names its device.
	if pend, ok, err := p.links.Pending(KeyID(cert)); err != nil {
		return &Denial{code: CodeLookupFailed, msg: fmt.Sprintf("certificate %s could not be checked against the inventory", serial), err: err}
	} else if ok {
		_, err := p.gate.CheckID(pend.DeviceID)
		return err
	}
	return deny(CodeUnknownAccount, "certificate %s is not linked to a device", serial)
}

// permanentIdentifier returns the first PermanentIdentifier SAN of cert.
func permanentIdentifier(cert *x509.Certificate) string {
	sans, err := x509util.ParseSubjectAlternativeNames(cert)
	if err != nil || len(sans.PermanentIdentifiers) == 0 {
		return ""
	}
	return sans.PermanentIdentifiers[0].Identifier
}

// denied writes the audit event of a refusal.
func (p *Plugin) denied(stage, prov, subject string, err error) {
	var d *Denial
	code := CodeLookupFailed
	if errors.As(err, &d) {
		code = d.Code()
	}
	p.log.Info("device certificate denied", "event", "deviceattest.denied", "stage", stage,
		"provisioner", prov, "subject", subject, "reason", code, "error", err.Error())
}
