// Package authority assembles upstream step-ca (smallstep/certificates
// v0.30.2) into the stepfort daemon: it builds the authority with stepfort's
// options, wraps the database so certificate stores become events, mounts
// upstream's routes next to plugin routes and the admin API, and runs the
// HTTPS, HTTP and metrics listeners with graceful shutdown and reload.
//
// Upstream's ca.New exposes no mux, handler or authority, so this package
// builds the server from upstream's exported pieces. Every place that mirrors
// ca/ca.go says so, to keep an upgrade a readable diff.
package authority

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	upstream "github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/internal/admin"
	"github.com/stepfort/stepfort/internal/events"
	"github.com/stepfort/stepfort/internal/metrics"
	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
)

// ShutdownTimeout bounds how long in-flight requests may take to finish on
// SIGINT/SIGTERM.
const ShutdownTimeout = 60 * time.Second

// Options are the daemon's run-time inputs besides ca.json.
type Options struct {
	Password        []byte
	SSHHostPassword []byte
	SSHUserPassword []byte
	IssuerPassword  []byte
	Quiet           bool
	// Plugins are extra plugins built in code (tests, embedders), after
	// those configured in ca.json.
	Plugins []PluginBuilder
	Logger  *slog.Logger
	// Now is the clock handed to plugins, events and leases; time.Now when
	// nil.
	Now func() time.Time
}

// PluginBuilder builds a plugin that ca.json does not configure.
type PluginBuilder struct {
	Name string
	New  func(host plugins.Host) (plugins.Plugin, error)
}

// Daemon is a running stepfort CA.
type Daemon struct {
	file    *config.File
	opts    Options
	log     *slog.Logger
	metrics *metrics.Registry

	now     func() time.Time
	replica string // plugins.ReplicaID format

	db       *events.DB // upstream's database with certificate events
	store    nosql.DB   // the store inside it; nil without a database
	locker   plugins.Locker
	outbox   *events.Outbox
	recorder plugins.EventRecorder
	tokens   *admin.TokenStore
	plugins  []plugins.Plugin
	// internal is the daemon's own entry in plugins (the replicas admin
	// route), not named in logs as a plugin.
	internal plugins.Plugin
	// audit is what Host.Audit hands out: the auditLog plugin's trail
	// once built, the log (logAuditor) without one.
	audit *daemonAuditor

	gen atomic.Pointer[generation] // what serves requests now
	bg  *group                     // background goroutines, joined at Stop

	httpsSrv, httpSrv, metricsSrv *http.Server
	listeners                     []net.Listener

	stopOnce sync.Once
	stopped  chan struct{} // closed when Stop has finished
}

// New builds the daemon: database, plugins, event delivery, authority and
// handlers. Nothing listens until Run.
func New(file *config.File, opts Options) (*Daemon, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	d := &Daemon{file: file, opts: opts, log: log, now: now, metrics: metrics.New(), bg: newGroup(log), stopped: make(chan struct{})}
	d.audit = &daemonAuditor{fallback: logAuditor{log}}
	if file.CA.AuthorityConfig != nil && file.CA.AuthorityConfig.DeploymentType == "linked" {
		return nil, errors.New("linked CA deployments are not supported: Certificate Manager would bypass stepfort's certificate events")
	}
	d.replica = newReplicaID(file.CA.Address, now)
	base, err := d.openStore()
	if err != nil {
		return nil, err
	}
	gen, err := d.assemble(base)
	if err != nil {
		if base != nil {
			_ = base.Shutdown()
		}
		return nil, err
	}
	d.activate(gen)
	return d, nil
}

// newReplicaID returns this process's plugins.ReplicaID.
func newReplicaID(address string, now func() time.Time) string {
	hostname, _ := os.Hostname()
	return plugins.ReplicaID(hostname, address, os.Getpid(), events.NewID(now())[21:])
}

// assemble builds the plugins, then what needs them (event delivery, the
// first generation).
func (d *Daemon) assemble(base *db.DB) (*generation, error) {
	if err := d.buildPlugins(); err != nil {
		return nil, err
	}
	if rp := d.replicasEndpoint(); rp != nil {
		d.plugins = append(d.plugins, rp)
		d.internal = rp
		d.bg.Go("heartbeat", d.runHeartbeat)
	}
	d.useTrail()
	if err := d.openEvents(base); err != nil {
		return nil, err
	}
	return d.build(d.file)
}

// openStore opens upstream's database once; it outlives reloads, as in
// upstream's (*CA).Reload which passes WithDatabase(ca.auth.GetDatabase()).
// It returns nil without a database.
func (d *Daemon) openStore() (*db.DB, error) {
	cfg := d.file.CA
	if cfg.DB == nil {
		d.log.Warn("no database configured: certificates, tokens and events are not persisted; ACME and the admin API are disabled")
		d.locker, d.recorder = noDatabase{}, noDatabase{}
		return nil, nil
	}
	opened, err := db.New(cfg.DB)
	if err != nil {
		return nil, fmt.Errorf("open database (%s): %w", cfg.DB.Type, err)
	}
	base, ok := opened.(*db.DB)
	if !ok {
		return nil, fmt.Errorf("database type %q is not supported", cfg.DB.Type)
	}
	d.store = base.DB
	pool := d.file.Stepfort.Database
	if storage.TunePool(d.store, storage.PoolSettings{MaxIdleConns: pool.MaxIdleConns, MaxOpenConns: pool.MaxOpenConns, ConnMaxIdleTime: pool.ConnMaxIdleTime.Duration}) {
		d.log.Debug("SQL connection pool sized", "maxIdleConns", pool.MaxIdleConns, "maxOpenConns", pool.MaxOpenConns)
	}
	lk, err := storage.NewLocker(d.store, d.replica, d.now)
	if err != nil {
		_ = base.Shutdown()
		return nil, err
	}
	d.locker = &auditedLocker{Locker: lk, d: d, held: map[string]bool{}}
	if d.file.Stepfort.Admin.IsEnabled() {
		if d.tokens, err = admin.NewTokenStore(d.store, d.now); err != nil {
			_ = base.Shutdown()
			return nil, err
		}
	}
	return base, nil
}

// buildPlugins builds the plugins ca.json configures, then those passed in
// Options, each with its own Host.
func (d *Daemon) buildPlugins() error {
	for _, pc := range d.file.Plugins {
		p, err := pc.Factory.New(pc.Config, d.newHost(pc.Name))
		if err != nil {
			return fmt.Errorf("plugin %s: %w", pc.Name, err)
		}
		d.plugins = append(d.plugins, p)
	}
	for _, b := range d.opts.Plugins {
		p, err := b.New(d.newHost(b.Name))
		if err != nil {
			return fmt.Errorf("plugin %s: %w", b.Name, err)
		}
		d.plugins = append(d.plugins, p)
	}
	return nil
}

// openEvents wraps the database so certificate stores write events, and
// sets up their delivery to the plugins that observe them.
func (d *Daemon) openEvents(base *db.DB) error {
	if base == nil {
		return nil
	}
	var observers []events.Observer
	for _, p := range d.plugins {
		if o, ok := events.NewObserver(p.Name(), p); ok {
			observers = append(observers, o)
		}
	}
	d.outbox = events.NewOutbox(d.store, observers, events.OutboxOptions{
		Replica:       d.replica,
		ClaimTTL:      d.file.Stepfort.Events.ClaimTTL.Duration,
		RetryInterval: d.file.Stepfort.Events.RetryInterval.Duration,
		Logger:        d.log.With("component", "events"),
		Stats:         d.metrics,
		Now:           d.now,
	})
	var err error
	if d.db, err = events.NewDB(base, d.outbox, d.now); err != nil {
		return err
	}
	if d.recorder, err = events.NewRecorder(d.store, d.outbox, d.now); err != nil {
		return err
	}
	for _, p := range d.plugins {
		if w, ok := p.(plugins.CertificateWatcher); ok {
			d.db.Watch(w)
		}
	}
	if d.outbox != nil {
		d.bg.Go("events", d.outbox.Run)
	}
	if c, ok := d.store.(nosql.Compactor); ok {
		d.bg.Go("compaction", func(ctx context.Context) { runCompaction(ctx, c) })
	}
	return nil
}

// Authority returns the current upstream authority.
// It is nil while the plugins are being built.
func (d *Daemon) Authority() *upstream.Authority {
	if gen := d.gen.Load(); gen != nil {
		return gen.auth
	}
	return nil
}

// DB returns the database store, or nil when none is configured.
func (d *Daemon) DB() nosql.DB { return d.store }

// Metrics returns the daemon's metrics registry.
func (d *Daemon) Metrics() *metrics.Registry { return d.metrics }

// Listen binds every configured address. It is separate from Serve so a port
// already in use is reported before anything is served.
func (d *Daemon) Listen() error {
	cfg := d.file.CA
	gen := d.gen.Load()
	bind := func(addr, what string) (net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range d.listeners {
				_ = l.Close()
			}
			d.listeners = nil
			return nil, fmt.Errorf("%s listener on %s: %w", what, addr, unwrapListenError(err))
		}
		d.listeners = append(d.listeners, ln)
		return ln, nil
	}
	ln, err := bind(cfg.Address, "HTTPS")
	if err != nil {
		return err
	}
	d.httpsSrv = newHTTPServer(http.HandlerFunc(d.serveHTTPS), &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The generation's TLS config changes on reload (new roots, options).
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return d.gen.Load().tls, nil },
	})
	tlsLn := tls.NewListener(ln, d.httpsSrv.TLSConfig)
	d.listeners[len(d.listeners)-1] = tlsLn
	if cfg.InsecureAddress != "" && gen.servesInsecure {
		if _, err := bind(cfg.InsecureAddress, "HTTP"); err != nil {
			return err
		}
		d.httpSrv = newHTTPServer(http.HandlerFunc(d.serveHTTP), nil)
	}
	if cfg.MetricsAddress != "" {
		if _, err := bind(cfg.MetricsAddress, "metrics"); err != nil {
			return err
		}
		d.metricsSrv = newHTTPServer(d.metrics.Handler(), nil)
	}
	return nil
}

func unwrapListenError(err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return errors.New("address already in use")
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

func newHTTPServer(h http.Handler, tlsCfg *tls.Config) *http.Server {
	// Same timeouts as upstream's server.New.
	return &http.Server{
		Handler:           h,
		TLSConfig:         tlsCfg,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      15 * time.Second,
		ReadHeaderTimeout: 15 * time.Second,
		IdleTimeout:       15 * time.Second,
		ErrorLog:          slog.NewLogLogger(slog.Default().Handler(), slog.LevelDebug),
	}
}

// Run starts the plugins and background jobs, then serves until Stop. It
// returns nil after a graceful stop.
func (d *Daemon) Run() error {
	if d.listeners == nil {
		if err := d.Listen(); err != nil {
			return err
		}
	}
	d.bg.Start()
	d.logStart()
	d.systemRecord("daemon.start", plugins.AuditSuccess, "", map[string]string{"address": d.file.CA.Address, "pid": strconv.Itoa(os.Getpid())})

	errc := make(chan error, 3)
	serve := func(srv *http.Server, ln net.Listener) {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
			return
		}
		errc <- nil
	}
	i := 0
	servers := []*http.Server{d.httpsSrv, d.httpSrv, d.metricsSrv}
	n := 0
	for _, srv := range servers {
		if srv == nil {
			continue
		}
		go serve(srv, d.listeners[i])
		i++
		n++
	}
	var firstErr error
	for range n {
		if err := <-errc; err != nil && firstErr == nil {
			firstErr = err
			go func() { _ = d.Stop() }()
		}
	}
	// Serve returns as soon as Shutdown starts; wait for the drain.
	<-d.stopped
	return firstErr
}

func (d *Daemon) logStart() {
	cfg := d.file.CA
	info := d.Authority().GetInfo()
	attrs := []any{"config", d.file.Path, "address", cfg.Address, "dnsNames", info.DNSNames}
	if d.httpSrv != nil {
		attrs = append(attrs, "insecureAddress", cfg.InsecureAddress)
	}
	if d.metricsSrv != nil {
		attrs = append(attrs, "metricsAddress", cfg.MetricsAddress)
	}
	names := make([]string, 0, len(d.plugins))
	for _, p := range d.plugins {
		if p != d.internal {
			names = append(names, p.Name())
		}
	}
	attrs = append(attrs, "plugins", names)
	if cfg.DB != nil {
		attrs = append(attrs, "db", cfg.DB.Type)
	}
	for _, crt := range info.RootX509Certs {
		attrs = append(attrs, "rootFingerprint", fingerprint(crt.Raw))
	}
	d.log.Info("stepfort serving", attrs...)
}

// Stop shuts down gracefully: listeners stop accepting, in-flight requests
// finish (up to ShutdownTimeout), then background jobs are joined, plugins
// stopped and the database closed.
func (d *Daemon) Stop() error {
	var err error
	d.stopOnce.Do(func() {
		defer close(d.stopped)
		d.log.Info("shutting down")
		ctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
		defer cancel()
		var wg sync.WaitGroup
		for _, srv := range []*http.Server{d.httpsSrv, d.httpSrv, d.metricsSrv} {
			if srv == nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if e := srv.Shutdown(ctx); e != nil {
					d.log.Error("server shutdown", "error", e)
				}
			}()
		}
		wg.Wait()
		// Recorded before the trail's goroutine drains and checkpoints.
		d.systemRecord("daemon.stop", plugins.AuditSuccess, "", nil)
		// Background jobs (event delivery, plugin loops) call plugins and
		// the database: let them finish before the plugins stop.
		d.bg.Stop()
		for i := len(d.plugins) - 1; i >= 0; i-- {
			if st, ok := d.plugins[i].(plugins.Stopper); ok {
				if e := st.Stop(ctx); e != nil {
					d.log.Error("stop plugin", "plugin", d.plugins[i].Name(), "error", e)
				}
			}
		}
		gen := d.gen.Load()
		gen.renewer.Stop()
		err = gen.auth.Shutdown() // also closes the database
	})
	return err
}

// Reload re-reads ca.json and swaps in a new authority and handlers, like
// upstream's (*CA).Reload: provisioners, templates, claims, policies, TLS
// options and roots change; the database and listen addresses do not.
// In-flight requests finish on the old generation. The "stepfort" block is
// not reloaded (plugins keep running with their start-up settings); a change
// to it is logged and needs a restart.
func (d *Daemon) Reload() error {
	err := d.reload()
	if err != nil {
		d.systemRecord("config.reload", plugins.AuditFailure, err.Error(), nil)
		return err
	}
	d.systemRecord("config.reload", plugins.AuditSuccess, "", nil)
	return nil
}

func (d *Daemon) reload() error {
	file, err := config.Load(d.file.Path)
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	old := d.gen.Load()
	if !sameJSON(old.cfg.DB, file.CA.DB) {
		return errors.New("reload: the database configuration cannot change; restart instead")
	}
	if old.cfg.Address != file.CA.Address || old.cfg.InsecureAddress != file.CA.InsecureAddress || old.cfg.MetricsAddress != file.CA.MetricsAddress {
		return errors.New("reload: listen addresses cannot change; restart instead")
	}
	if !jsonEqual(d.file.Raw, file.Raw) {
		d.log.Warn("reload: the stepfort block changed; plugin and admin settings take effect on restart")
	}
	gen, err := d.build(file)
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	d.activate(gen)
	// Let requests that hold the old generation finish before closing it;
	// a stop meanwhile closes it at once.
	d.bg.Go("close-generation", func(ctx context.Context) {
		t := time.NewTimer(ShutdownTimeout)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		old.renewer.Stop()
		old.auth.CloseForReload()
	})
	d.log.Info("reloaded", "config", d.file.Path)
	return nil
}

// Servers returns the listen addresses actually bound (useful with ":0").
func (d *Daemon) Servers() []string {
	out := make([]string, 0, len(d.listeners))
	for _, l := range d.listeners {
		out = append(out, l.Addr().String())
	}
	return out
}

// runCompaction compacts badger's value log at start and every minute, like
// upstream's ca.New (ca/ca.go runCompactJob), whose type assertion on
// *db.DB would miss our wrapper.
func runCompaction(ctx context.Context, c nosql.Compactor) {
	compact := func() {
		for err := error(nil); err == nil; {
			err = c.Compact(0.7)
		}
	}
	compact()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			compact()
		}
	}
}

// sameJSON reports whether a and b encode to the same JSON: configuration
// blocks compared as ca.json states them.
func sameJSON(a, b any) bool {
	x, errX := json.Marshal(a)
	y, errY := json.Marshal(b)
	return errX == nil && errY == nil && bytes.Equal(x, y)
}
