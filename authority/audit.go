package authority

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stepfort/stepfort/plugins"
)

// logAuditor writes audit records to the daemon log, one "audit" line
// each. It never fails, so it never refuses an action. It is the trail
// when no plugin provides one (auditLog off or without a database).
type logAuditor struct{ log *slog.Logger }

func (a logAuditor) Record(ctx context.Context, r plugins.AuditRecord) error {
	a.log.LogAttrs(ctx, slog.LevelInfo, "audit",
		slog.String("action", r.Action), slog.String("outcome", string(r.Outcome)), slog.String("reason", r.Reason),
		slog.Any("actor", r.Actor), slog.Any("object", r.Object), slog.Any("details", r.Details))
	return nil
}

// daemonAuditor is what Host.Audit hands out: it forwards to the trail
// once the plugin that provides it is built, so a plugin that keeps
// Host.Audit() from its constructor still reaches the trail.
type daemonAuditor struct {
	fallback plugins.Auditor
	trail    atomic.Pointer[plugins.Auditor]
}

func (a *daemonAuditor) Record(ctx context.Context, r plugins.AuditRecord) error {
	if t := a.trail.Load(); t != nil {
		return (*t).Record(ctx, r)
	}
	return a.fallback.Record(ctx, r)
}

func (a *daemonAuditor) set(t plugins.Auditor) { a.trail.Store(&t) }

// useTrail makes the first plugin that is a plugins.Auditor the trail.
func (d *Daemon) useTrail() {
	for _, p := range d.plugins {
		if a, ok := p.(plugins.Auditor); ok {
			d.audit.set(a)
			break
		}
	}
	if d.tokens != nil {
		d.tokens.Audit = d.audit
	}
}

// systemRecord appends a record of the daemon itself.
func (d *Daemon) systemRecord(action string, outcome plugins.AuditOutcome, reason string, details map[string]string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = d.audit.Record(ctx, plugins.AuditRecord{Action: action, Outcome: outcome, Reason: reason,
		Actor: plugins.AuditActor{Kind: "system", ID: d.replica}, Object: plugins.AuditObject{Config: d.file.Path}, Details: details})
}

// auditedLocker records lease changes as this replica sees them: a lease
// it acquires, one it loses (TryLock fails while it held it) and one it
// releases. Renewals are not recorded.
type auditedLocker struct {
	plugins.Locker
	d    *Daemon
	mu   sync.Mutex
	held map[string]bool
}

func (l *auditedLocker) TryLock(ctx context.Context, name string, ttl time.Duration) (bool, error) {
	ok, err := l.Locker.TryLock(ctx, name, ttl)
	if err != nil {
		return ok, err
	}
	l.mu.Lock()
	was := l.held[name]
	l.held[name] = ok
	l.mu.Unlock()
	switch {
	case ok && !was:
		l.d.leaseRecord(ctx, "lease.acquire", name, ttl)
	case !ok && was:
		l.d.leaseRecord(ctx, "lease.lost", name, ttl)
	}
	return ok, nil
}

func (l *auditedLocker) Unlock(ctx context.Context, name string) error {
	err := l.Locker.Unlock(ctx, name)
	l.mu.Lock()
	was := l.held[name]
	delete(l.held, name)
	l.mu.Unlock()
	if was && err == nil {
		l.d.leaseRecord(ctx, "lease.release", name, 0)
	}
	return err
}

func (d *Daemon) leaseRecord(ctx context.Context, action, name string, ttl time.Duration) {
	det := map[string]string{"lease": name}
	if ttl > 0 {
		det["ttl"] = ttl.String()
	}
	_ = d.audit.Record(context.WithoutCancel(ctx), plugins.AuditRecord{Action: action, Outcome: plugins.AuditSuccess,
		Actor: plugins.AuditActor{Kind: "system", ID: d.replica}, Details: det})
}
