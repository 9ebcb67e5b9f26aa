// Package plugintest provides a plugins.Host for plugin unit tests: a real
// database (bbolt in a temporary directory unless the test brings one), the
// real lease implementation, a clock the test moves, a goroutine group
// joined at cleanup, and a recorder of administrative revocations and
// device events.
package plugintest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
)

// Host is a plugins.Host for tests. Set fields before handing it to a
// plugin; use SetNow and Advance to move the clock.
type Host struct {
	Auth      *authority.Authority // nil unless the test needs upstream
	Store     nosql.DB
	BackendID string // "bbolt" unless set
	ReplicaID string
	Registry  *prometheus.Registry
	Log       *slog.Logger
	// RevokeFunc answers Revoke; the default records the request.
	RevokeFunc func(ctx context.Context, req plugins.RevokeRequest) error
	// Recorder answers Events; the default keeps added events in memory.
	Recorder plugins.EventRecorder
	// Clock, when set, is the clock instead of the one SetNow and Advance
	// move (benchmarks use time.Now).
	Clock func() time.Time

	mu     sync.Mutex
	now    time.Time
	locker plugins.Locker
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	revoked []plugins.RevokeRequest
	audit   Auditor
}

// NewHost returns a host on a fresh bbolt database; the clock starts at
// time.Now(). Goroutines started with Go run at once and are stopped and
// joined when the test ends.
func NewHost(t testing.TB) *Host {
	t.Helper()
	db, err := nosql.New("bbolt", filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return NewHostWithDB(t, db, "bbolt")
}

// NewHostWithDB returns a host on the given database store, closed when
// the test ends.
func NewHostWithDB(t testing.TB, db nosql.DB, backend string) *Host {
	t.Helper()
	h := New(db, backend, t.Name())
	// Registered after the database's cleanup, so it runs first.
	t.Cleanup(h.Close)
	return h
}

// New returns a host outside a test (benchmarks): the caller calls Close.
// replica names it among hosts on the same database.
func New(db nosql.DB, backend, replica string) *Host {
	h := &Host{Store: db, BackendID: backend, ReplicaID: plugins.ReplicaID("test", replica, 1, "0"), Registry: prometheus.NewRegistry(), Log: slog.Default(), now: time.Now()}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	h.Recorder = &Recorder{}
	return h
}

// Close cancels and joins the goroutines started with Go. It is
// registered as a test cleanup; calling it earlier is allowed.
func (h *Host) Close() {
	h.cancel()
	h.wg.Wait()
}

// Audit implements plugins.Host: records are kept for AuditRecords.
func (h *Host) Audit() plugins.Auditor { return &h.audit }

// AuditRecords returns the audit records plugins wrote, oldest first.
func (h *Host) AuditRecords() []plugins.AuditRecord { return h.audit.Records() }

// Authority implements plugins.Host.
func (h *Host) Authority() *authority.Authority { return h.Auth }

// DB implements plugins.Host.
func (h *Host) DB() nosql.DB { return h.Store }

// Backend implements plugins.Host.
func (h *Host) Backend() string { return h.BackendID }

// Replica implements plugins.Host.
func (h *Host) Replica() string { return h.ReplicaID }

// Now implements plugins.Host.
func (h *Host) Now() time.Time {
	if h.Clock != nil {
		return h.Clock()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.now
}

// SetNow sets the clock.
func (h *Host) SetNow(t time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.now = t
}

// Advance moves the clock forward.
func (h *Host) Advance(d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.now = h.now.Add(d)
}

// Locker implements plugins.Host with the real lease implementation.
func (h *Host) Locker() plugins.Locker {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.locker == nil {
		l, err := storage.NewLocker(h.Store, h.ReplicaID, h.Now)
		if err != nil {
			panic(fmt.Sprintf("plugintest: lease table: %v", err))
		}
		h.locker = l
	}
	return h.locker
}

// Go implements plugins.Host.
func (h *Host) Go(_ string, fn func(ctx context.Context)) {
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		fn(h.ctx)
	}()
}

// Events implements plugins.Host.
func (h *Host) Events() plugins.EventRecorder { return h.Recorder }

// Revoke implements plugins.Host.
func (h *Host) Revoke(ctx context.Context, req plugins.RevokeRequest) error {
	if h.RevokeFunc != nil {
		return h.RevokeFunc(ctx, req)
	}
	if req.Actor == "" {
		return errors.New("revoke: actor is required")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.revoked = append(h.revoked, req)
	return nil
}

// Revoked returns the revocations the default Revoke recorded.
func (h *Host) Revoked() []plugins.RevokeRequest {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]plugins.RevokeRequest(nil), h.revoked...)
}

// Logger implements plugins.Host.
func (h *Host) Logger() *slog.Logger { return h.Log }

// Metrics implements plugins.Host.
func (h *Host) Metrics() prometheus.Registerer { return h.Registry }

// Recorder is an EventRecorder that keeps events in memory instead of in
// the transaction (the events package tests the durable path).
type Recorder struct {
	mu    sync.Mutex
	Added []plugins.DeviceEvent
	// Certificates holds the certificate events added (checked as the
	// daemon's recorder checks them).
	Certificates []plugins.CertificateEvent
	// Fail, when set, is returned by AddCertificateEvent.
	Fail      error
	Announced []string
	Discarded []string
	next      int
}

// AddDeviceEvent implements plugins.EventRecorder.
func (r *Recorder) AddDeviceEvent(_ *database.Tx, ev *plugins.DeviceEvent) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.next++
	ev.ID = fmt.Sprintf("test-%06d", r.next)
	ev.OccurredAt = time.Now().UTC()
	r.Added = append(r.Added, *ev)
	return nil
}

// AddCertificateEvent implements plugins.CertificateEventRecorder.
func (r *Recorder) AddCertificateEvent(_ *database.Tx, ev *plugins.CertificateEvent) error {
	if err := plugins.CheckCertificateEvent(ev); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.Fail != nil {
		return r.Fail
	}
	r.next++
	ev.ID = fmt.Sprintf("test-%06d", r.next)
	ev.OccurredAt = time.Now().UTC()
	r.Certificates = append(r.Certificates, *ev)
	return nil
}

// Announce implements plugins.EventRecorder.
func (r *Recorder) Announce(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Announced = append(r.Announced, id)
}

// Discard implements plugins.EventRecorder.
func (r *Recorder) Discard(id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Discarded = append(r.Discarded, id)
	return nil
}

var (
	_ plugins.Host                     = (*Host)(nil)
	_ plugins.CertificateEventRecorder = (*Recorder)(nil)
)
