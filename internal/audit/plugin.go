package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/stepfort/stepfort/plugins"
)

// startTrail opens the trail when it is on and a database is configured,
// and starts its background work.
func (p *Plugin) startTrail(c *Config, h plugins.Host) error {
	p.log = h.Logger()
	if !c.TrailEnabled() {
		return nil
	}
	if h.DB() == nil {
		p.log.Warn("audit trail off: it needs a database; records go to the log")
		return nil
	}
	key, err := LoadSigner(c.Key)
	if err != nil {
		return fmt.Errorf("key: %w", err)
	}
	o := TrailOptions{
		Key: key, Replica: h.Replica(), Now: h.Now, Log: p.log, FailClosed: c.FailClosed,
		CheckpointEvery: c.CheckpointEvery, CheckpointInterval: c.CheckpointInterval.Duration,
		CheckpointFile: c.CheckpointFile,
	}
	if c.Sink != nil {
		o.Ship = NewShipper(*c.Sink, p.log)
		h.Go("sink", func(ctx context.Context) { o.Ship.Run(ctx.Done()) })
	}
	if p.trail, err = NewTrail(h.DB(), o); err != nil {
		return err
	}
	h.Go("trail", p.trail.Run)
	h.Go("verify", func(ctx context.Context) { p.trail.runVerifier(ctx, VerifyInterval) })
	if d := c.Retention.Duration; d > 0 {
		h.Go("retention", func(ctx context.Context) { p.prune(ctx, h, d) })
	}
	p.log.Info("audit trail on", "keyId", KeyID(p.trail.PublicKey()), "failClosed", c.FailClosed)
	return nil
}

// prune runs retention hourly on one replica at a time.
func (p *Plugin) prune(ctx context.Context, h plugins.Host, keep time.Duration) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if ok, err := h.Locker().TryLock(ctx, "audit-retention", 2*time.Hour); err == nil && ok {
			n, err := p.trail.Prune(h.Now().Add(-keep))
			if err != nil {
				p.log.Error("audit retention", "error", err)
			} else if n > 0 {
				p.log.Info("audit retention: records pruned up to a checkpoint", "records", n)
				_ = p.trail.Record(ctx, plugins.AuditRecord{Action: "audit.prune", Outcome: plugins.AuditSuccess,
					Actor: plugins.AuditActor{Kind: "system"}, Details: map[string]string{"records": strconv.FormatInt(n, 10)}})
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Trail returns the audit trail, nil when off.
func (p *Plugin) Trail() *Trail { return p.trail }

// Record implements plugins.Auditor: the trail, or the log when it is off.
func (p *Plugin) Record(ctx context.Context, r plugins.AuditRecord) error {
	if p.trail != nil {
		return p.trail.Record(ctx, r)
	}
	p.log.LogAttrs(ctx, slog.LevelInfo, "audit",
		slog.String("action", r.Action), slog.String("outcome", string(r.Outcome)), slog.String("reason", r.Reason),
		slog.Any("actor", r.Actor), slog.Any("object", r.Object), slog.Any("details", r.Details))
	return nil
}

// AdminRoutes implements plugins.AdminRouteProvider: GET /api/v1/audit,
// /audit/export and /audit/key.
func (p *Plugin) AdminRoutes() []plugins.AdminRoute {
	if p.trail == nil {
		return nil
	}
	return p.trail.AdminRoutes()
}

// Health implements plugins.HealthReporter: the trail's size and whether
// appends fail.
func (p *Plugin) Health(context.Context) (map[string]any, error) {
	if p.trail == nil {
		return map[string]any{"trail": "off"}, nil
	}
	// This replica's last appended size: no database read per probe.
	return map[string]any{"records": p.trail.last.Load()}, p.trail.Healthy()
}

// SignProvisioners implements plugins.SignAuthorizer: with failClosed,
// every provisioner's issuance waits for a working trail.
func (p *Plugin) SignProvisioners() []string {
	if p.trail != nil && p.trail.o.FailClosed {
		return []string{"*"}
	}
	return nil
}

// errTrailDown refuses issuance under failClosed.
var errTrailDown = errors.New("the audit trail cannot be written (failClosed)")

// AuthorizeSign refuses while the trail fails (failClosed).
func (p *Plugin) AuthorizeSign(context.Context, plugins.SignRequest) error { return p.gate() }

// AuthorizeRenew refuses while the trail fails (failClosed).
func (p *Plugin) AuthorizeRenew(context.Context, plugins.RenewRequest) error { return p.gate() }

func (p *Plugin) gate() error {
	if p.trail == nil || !p.trail.o.FailClosed {
		return nil
	}
	if err := p.trail.Healthy(); err != nil {
		return fmt.Errorf("%w: %v", errTrailDown, err)
	}
	return nil
}

// CertificateCommitted implements plugins.CertificateWatcher: the record
// of an issuance, renewal or revocation made on this replica is queued at
// once, so concurrent requests' records share one append. The outbox's
// ObserveCertificate then finds it recorded (a read, no write); after a
// crash, or when the queue is full, the outbox records it.
func (p *Plugin) CertificateCommitted(ev plugins.CertificateEvent) {
	if p.trail != nil {
		p.trail.offer(ev.ID, eventRecord(ev))
	}
}

// eventRecord is the trail record of a certificate event.
func eventRecord(ev plugins.CertificateEvent) plugins.AuditRecord {
	r := plugins.AuditRecord{Outcome: plugins.AuditSuccess, Actor: plugins.AuditActor{Kind: "provisioner"},
		Object: plugins.AuditObject{Serial: ev.Serial, Device: ev.PermanentIdentifier}, Details: map[string]string{"eventId": ev.ID}}
	if pr := ev.Provisioner; pr != nil {
		r.Actor.ID, r.Actor.Name = pr.ID, pr.Name
		r.Object.Provisioner = pr.Name
		r.Details["provisionerType"] = pr.Type
	}
	switch ev.Kind {
	case plugins.EventIssued:
		r.Action = "certificate.issue"
	case plugins.EventRenewed:
		r.Action = "certificate.renew"
		if ev.Rekey {
			r.Action = "certificate.rekey"
		}
		r.Details["parentSerial"] = ev.ParentSerial
	case plugins.EventRevoked:
		r.Action = "certificate.revoke"
		if rv := ev.Revocation; rv != nil {
			r.Reason = rv.Reason
			r.Details["reasonCode"] = strconv.Itoa(rv.ReasonCode)
			switch {
			case rv.Actor != "":
				r.Actor = plugins.AuditActor{Kind: "system", Name: rv.Actor}
			case rv.MTLS:
				r.Actor.Kind = "mtls"
			case rv.ACME:
				r.Actor.Kind = "acmeAccount"
			}
		}
	default:
		r.Action = "certificate." + string(ev.Kind)
	}
	if c, err := ev.Certificate(); err == nil {
		r.Object.Subject = c.Subject.CommonName
		if r.Object.Subject == "" && len(c.DNSNames) > 0 {
			r.Object.Subject = c.DNSNames[0]
		}
		r.Object.Issuer = c.Issuer.String()
		r.Details["notAfter"] = c.NotAfter.UTC().Format(time.RFC3339)
	}
	return r
}

var (
	_ plugins.Auditor             = (*Plugin)(nil)
	_ plugins.CertificateObserver = (*Plugin)(nil)
	_ plugins.AdminRouteProvider  = (*Plugin)(nil)
	_ plugins.SignAuthorizer      = (*Plugin)(nil)
	_ plugins.RenewAuthorizer     = (*Plugin)(nil)
	_ plugins.HealthReporter      = (*Plugin)(nil)
	_ plugins.CertificateWatcher  = (*Plugin)(nil)
)
