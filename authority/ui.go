package authority

import (
	"net/http"
	"runtime"
	"sync"
	"weak"

	"github.com/go-chi/chi/v5"

	"github.com/stepfort/stepfort/internal/ui"
)

// uiServers keeps one dashboard per daemon across reloads, so a reload
// does not log every admin out. Keyed weakly: a stopped, collected daemon
// takes its entry (and its sessions) with it.
var uiServers sync.Map // weak.Pointer[Daemon] -> *ui.Server

// mountUI serves the web dashboard at /ui/ when the admin API is served
// and stepfort.ui.enabled is not false (docs/ui.md). The dashboard calls
// the daemon's own HTTPS handler in process, so every action goes through
// the admin API's authentication, scopes and audit records.
func (d *Daemon) mountUI(mux chi.Router) error {
	if d.tokens == nil || !d.file.Stepfort.UI.IsEnabled() {
		return nil
	}
	srv, err := d.uiServer()
	if err != nil {
		return err
	}
	mux.Handle(ui.Prefix, srv)
	mux.Handle(ui.Prefix+"/*", srv)
	return nil
}

func (d *Daemon) uiServer() (*ui.Server, error) {
	key := weak.Make(d)
	if s, ok := uiServers.Load(key); ok {
		return s.(*ui.Server), nil
	}
	cfg := d.file.Stepfort.UI
	s, err := ui.New(ui.Options{
		API:             http.HandlerFunc(d.serveHTTPS),
		Audit:           d.audit,
		Now:             d.now,
		Log:             d.log.With("component", "ui"),
		Replica:         d.replica,
		IdleTimeout:     cfg.IdleTimeout.Duration,
		AbsoluteTimeout: cfg.AbsoluteTimeout.Duration,
	})
	if err != nil {
		return nil, err
	}
	actual, loaded := uiServers.LoadOrStore(key, s)
	if !loaded {
		runtime.AddCleanup(d, func(k weak.Pointer[Daemon]) { uiServers.Delete(k) }, key)
	}
	return actual.(*ui.Server), nil
}
