package dynamicscep

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// Results of a challenge, the "result" label of
// stepfort_scep_challenges_total.
const (
	ResultCreated            = "created"
	ResultWithdrawn          = "withdrawn"
	ResultAccepted           = "accepted"
	ResultRefusedUnknown     = "refused_unknown"
	ResultRefusedConsumed    = "refused_consumed"
	ResultRefusedExpired     = "refused_expired"
	ResultRefusedWithdrawn   = "refused_withdrawn"
	ResultRefusedProvisioner = "refused_provisioner"
	ResultRefusedMismatch    = "refused_mismatch"
	ResultRefusedDevice      = "refused_device"
	ResultError              = "error"
)

// Refusal is why an enrollment was refused. Its message never contains the
// challenge; the daemon logs it and answers the client with a CertRep of
// failInfo badRequest.
type Refusal struct {
	Result      string // one of the Result* constants
	ChallengeID string // "" when the challenge is unknown
	Reason      string
}

func (r *Refusal) Error() string {
	if r.ChallengeID != "" {
		return fmt.Sprintf("SCEP challenge %s refused: %s", r.ChallengeID, r.Reason)
	}
	return "SCEP challenge refused: " + r.Reason
}

// Code is the webhook error code (SCEP failInfo badRequest).
func (r *Refusal) Code() string { return "badRequest" }

// ValidateSCEPChallenge implements plugins.SCEPChallengeValidator. It
// accepts an enrollment whose challenge is known, outstanding, unexpired,
// made for this provisioner and whose CSR matches the challenge's
// bindings, and consumes the challenge, so it is accepted once on every
// replica. PKCSReq and RenewalReq are treated alike: a renewal needs a
// fresh challenge too. A refusal that is not a consumed, expired or
// withdrawn challenge (a CSR that does not match, a disabled device)
// leaves the challenge outstanding, so the device can retry with a
// corrected request until the challenge expires.
func (p *Plugin) ValidateSCEPChallenge(ctx context.Context, req plugins.SCEPRequest) (map[string]any, error) {
	c, err := p.check(ctx, req)
	if c == nil && isUnknown(err) && p.intune.serves(req.Provisioner) {
		// Not one of ours: on an Intune provisioner it is Intune's.
		return p.intune.validate(ctx, req)
	}
	if err != nil {
		p.refused(ctx, req, c, err)
		return nil, err
	}
	p.metrics.count(c.Source, ResultAccepted)
	p.log.Info("SCEP challenge consumed", "event", "scep.challenge_consumed", "challenge", c.ID, "provisioner", req.Provisioner,
		"source", c.Source, "transactionID", req.TransactionID, "device", c.Device, "cn", clip(req.CSR.Subject.CommonName))
	data := map[string]any{"challengeID": c.ID, "source": c.Source}
	if c.Device != "" {
		data["device"] = c.Device
	}
	return data, nil
}

// check decides an enrollment and consumes the challenge if it is
// accepted. It returns the challenge whenever it was found.
func (p *Plugin) check(ctx context.Context, req plugins.SCEPRequest) (*Challenge, error) {
	if !p.served(req.Provisioner) {
		return nil, &Refusal{Result: ResultRefusedProvisioner, Reason: fmt.Sprintf("provisioner %q is not served by %s", req.Provisioner, Name)}
	}
	if req.CSR == nil {
		return nil, &Refusal{Result: ResultRefusedMismatch, Reason: "no certificate request"}
	}
	c, old, err := p.challenges.Lookup(req.Challenge)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, &Refusal{Result: ResultRefusedUnknown, Reason: "unknown challenge"}
	case err != nil:
		return nil, err
	}
	if r := p.usable(c, req.Provisioner); r != nil {
		return c, r
	}
	if err := CheckCSR(&c.Bindings, req.CSR); err != nil {
		return c, &Refusal{Result: ResultRefusedMismatch, ChallengeID: c.ID, Reason: err.Error()}
	}
	if err := p.checkDevice(c); err != nil {
		return c, err
	}
	if c.Device != "" {
		// Before consuming: if this write fails the challenge stays
		// usable. A pending row of a losing racer is the same row.
		if err := p.links.SetPending(req.CSR, c, p.host.Now()); err != nil {
			return c, err
		}
	}
	if err := ctx.Err(); err != nil {
		// The daemon has given up on the answer: do not spend the
		// challenge on an enrollment that will be refused anyway.
		return c, fmt.Errorf("SCEP challenge %s: %w", c.ID, err)
	}
	switch err := p.challenges.Consume(c, old, req.TransactionID, p.host.Now()); {
	case errors.Is(err, ErrConsumed):
		return c, &Refusal{Result: ResultRefusedConsumed, ChallengeID: c.ID, Reason: "challenge already used"}
	case errors.Is(err, errWithdrawn):
		return c, &Refusal{Result: ResultRefusedWithdrawn, ChallengeID: c.ID, Reason: "challenge withdrawn"}
	case errors.Is(err, ErrNotFound):
		return c, &Refusal{Result: ResultRefusedUnknown, ChallengeID: c.ID, Reason: "challenge purged"}
	case err != nil:
		return c, err
	}
	return c, nil
}

// usable refuses a challenge that is not outstanding now or was made for
// another provisioner.
func (p *Plugin) usable(c *Challenge, provisioner string) *Refusal {
	switch c.StateAt(p.host.Now()) {
	case StateConsumed:
		return &Refusal{Result: ResultRefusedConsumed, ChallengeID: c.ID, Reason: "challenge already used"}
	case StateWithdrawn:
		return &Refusal{Result: ResultRefusedWithdrawn, ChallengeID: c.ID, Reason: "challenge withdrawn"}
	case StateExpired:
		return &Refusal{Result: ResultRefusedExpired, ChallengeID: c.ID, Reason: "challenge expired at " + c.ExpiresAt.UTC().Format("2006-01-02T15:04:05Z")}
	}
	if c.Provisioner != provisioner {
		return &Refusal{Result: ResultRefusedProvisioner, ChallengeID: c.ID, Reason: fmt.Sprintf("challenge is for provisioner %q, not %q", c.Provisioner, provisioner)}
	}
	return nil
}

// checkDevice refuses a challenge bound to a device that is no longer in
// the inventory or not active.
func (p *Plugin) checkDevice(c *Challenge) error {
	if c.Device == "" {
		return nil
	}
	d, err := p.inventory.Get(c.Device)
	switch {
	case errors.Is(err, inventory.ErrNotFound):
		return &Refusal{Result: ResultRefusedDevice, ChallengeID: c.ID, Reason: fmt.Sprintf("bound device %q is not in the inventory", c.Device)}
	case err != nil:
		return fmt.Errorf("SCEP challenge %s: %w", c.ID, err)
	case !d.Active():
		return &Refusal{Result: ResultRefusedDevice, ChallengeID: c.ID, Reason: fmt.Sprintf("bound device %q is %s", c.Device, d.Status)}
	}
	return nil
}

// refused counts, logs and audits a refusal; never the challenge.
func (p *Plugin) refused(ctx context.Context, req plugins.SCEPRequest, c *Challenge, err error) {
	source, id, device, result := "unknown", "", "", ResultError
	if c != nil {
		source, id, device = c.Source, c.ID, c.Device
	}
	recordRefusal(ctx, p.host.Audit(), req, source, id, device, err)
	var r *Refusal
	if errors.As(err, &r) {
		result = r.Result
	}
	p.metrics.count(source, result)
	cn := ""
	if req.CSR != nil {
		cn = clip(req.CSR.Subject.CommonName)
	}
	level := p.log.Info
	if result == ResultError {
		level = p.log.Error
	}
	level("SCEP challenge refused", "event", "scep.challenge_refused", "result", result, "challenge", id, "provisioner", req.Provisioner,
		"transactionID", clip(req.TransactionID), "cn", cn, "reason", err.Error())
}

// CheckCSR checks a certificate request against a challenge's bindings:
// the subject common name must equal a bound one, and when any name is
// bound every subject alternative name must be bound (a bound common name
// counts as a bound DNS name, as upstream uses the common name as the SAN
// of a request without one). DNS names compare case-insensitively, the
// rest exactly. A challenge that binds no name allows any.
func CheckCSR(b *Bindings, csr *x509.CertificateRequest) error {
	if csr == nil {
		return errors.New("no certificate request")
	}
	if b.CommonName != "" && csr.Subject.CommonName != b.CommonName {
		return fmt.Errorf("commonName %q is not the bound %q", clip(csr.Subject.CommonName), b.CommonName)
	}
	if b.CommonName == "" && len(b.DNSNames)+len(b.IPAddresses)+len(b.EmailAddresses)+len(b.URIs) == 0 {
		return nil
	}
	for _, n := range csr.DNSNames {
		if !slices.ContainsFunc(b.DNSNames, func(s string) bool { return strings.EqualFold(s, n) }) && !strings.EqualFold(n, b.CommonName) {
			return fmt.Errorf("dnsName %q is not bound", clip(n))
		}
	}
	for _, ip := range csr.IPAddresses {
		if !slices.ContainsFunc(b.IPAddresses, func(s string) bool { return net.ParseIP(s).Equal(ip) }) {
			return fmt.Errorf("ipAddress %q is not bound", ip.String())
		}
	}
	for _, e := range csr.EmailAddresses {
		if !slices.Contains(b.EmailAddresses, e) {
			return fmt.Errorf("emailAddress %q is not bound", clip(e))
		}
	}
	for _, u := range csr.URIs {
		if !slices.Contains(b.URIs, u.String()) {
			return fmt.Errorf("uri %q is not bound", clip(u.String()))
		}
	}
	return nil
}

// clip bounds a client-supplied value in a log line or message.
func clip(s string) string {
	const max = 128
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
