package authority

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"runtime/debug"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/smallstep/certificates/acme"
	acmeAPI "github.com/smallstep/certificates/acme/api"
	acmeNoSQL "github.com/smallstep/certificates/acme/db/nosql"
	"github.com/smallstep/certificates/api"
	upstream "github.com/smallstep/certificates/authority"
	upadmin "github.com/smallstep/certificates/authority/admin"
	adminAPI "github.com/smallstep/certificates/authority/admin/api"
	adminDBNosql "github.com/smallstep/certificates/authority/admin/db/nosql"
	upconfig "github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/ca"
	"github.com/smallstep/certificates/db"
	"github.com/smallstep/certificates/errs"
	"github.com/smallstep/certificates/logging"
	"github.com/smallstep/certificates/middleware/requestid"
	"github.com/smallstep/certificates/monitoring"
	"github.com/smallstep/certificates/scep"
	scepAPI "github.com/smallstep/certificates/scep/api"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/internal/admin"
	"github.com/stepfort/stepfort/internal/provfields"
	"github.com/stepfort/stepfort/plugins"
)

type x509Certificate = x509.Certificate

// generation is everything rebuilt on reload: the authority, its TLS
// configuration, the handlers and the plugins' per-generation values. The
// daemon swaps it atomically.
type generation struct {
	cfg            *upconfig.Config
	auth           *upstream.Authority
	tls            *tls.Config
	renewer        *ca.TLSRenewer
	https, http    http.Handler
	servesInsecure bool
	plugins        []plugins.Generation // activated once this generation serves
}

// activate makes gen the generation serving requests and tells the plugins.
func (d *Daemon) activate(gen *generation) {
	d.gen.Store(gen)
	for _, pg := range gen.plugins {
		pg.Activate()
	}
}

// capabilities are the plugin capabilities one generation is built with.
type capabilities struct {
	generations      []plugins.Generation
	signAuthorizers  []plugins.SignAuthorizer
	authorizerNames  []string // the plugin of each sign authorizer
	renewAuthorizers bool
	enforcers        []provisioner.CertificateEnforcer
	enrichers        []namedEnricher
	scep             []namedSCEP
}

// collectCapabilities lets each plugin see (and change) the configuration,
// and gathers what the authority is built with. A plugin's enforcer is taken
// from its Generation when it has one, so it follows reloads.
func (d *Daemon) collectCapabilities(cfg *upconfig.Config) (*capabilities, error) {
	c := &capabilities{}
	for _, p := range d.plugins {
		var pg plugins.Generation
		if m, ok := p.(plugins.ConfigMutator); ok {
			var err error
			if pg, err = m.MutateConfig(cfg); err != nil {
				return nil, fmt.Errorf("plugin %s: %w", p.Name(), err)
			}
		}
		if pg != nil {
			c.generations = append(c.generations, pg)
		}
		if e, ok := pg.(plugins.CertificateEnforcer); ok {
			c.enforcers = append(c.enforcers, provisioner.CertificateEnforcerFunc(e.EnforceCertificate))
		} else if e, ok := p.(plugins.CertificateEnforcer); ok {
			c.enforcers = append(c.enforcers, provisioner.CertificateEnforcerFunc(e.EnforceCertificate))
		}
		if a, ok := p.(plugins.SignAuthorizer); ok {
			c.signAuthorizers = append(c.signAuthorizers, a)
			c.authorizerNames = append(c.authorizerNames, p.Name())
		}
		if _, ok := p.(plugins.RenewAuthorizer); ok {
			c.renewAuthorizers = true
		}
		if e, ok := p.(plugins.SignEnricher); ok {
			c.enrichers = append(c.enrichers, namedEnricher{name: p.Name(), SignEnricher: e})
		}
		n := namedSCEP{name: p.Name()}
		n.validator, _ = p.(plugins.SCEPChallengeValidator)
		n.notifier, _ = p.(plugins.SCEPNotifier)
		if n.validator != nil || n.notifier != nil {
			c.scep = append(c.scep, n)
		}
	}
	return c, nil
}

// build assembles one generation. Mirrors ca/ca.go (*CA).Init of v0.30.2,
// with stepfort's authority options, plugin routes and the admin API added.
func (d *Daemon) build(file *config.File) (*generation, error) {
	cfg := file.CA
	caps, err := d.collectCapabilities(cfg)
	if err != nil {
		return nil, err
	}
	if err := injectSignWebhooks(cfg, caps.signAuthorizers); err != nil {
		return nil, err
	}
	if err := injectEnrichWebhooks(cfg, caps.enrichers); err != nil {
		return nil, err
	}
	if err := injectSCEPWebhooks(cfg, caps.scep); err != nil {
		return nil, err
	}
	external := &http.Client{Transport: newExternalTransport()}
	webhooks := &webhookClient{external: external, internal: &internalWebhooks{
		authorizers: caps.signAuthorizers, authorizerNames: caps.authorizerNames, enrichers: caps.enrichers, scep: caps.scep,
		audit: d.audit, log: d.log.With("component", "internal-webhooks")}}
	var auth *upstream.Authority
	current := func() *upstream.Authority { return auth }
	opts, err := d.authorityOptions(cfg, webhooks, caps, current)
	if err != nil {
		return nil, err
	}
	if auth, err = upstream.New(cfg, opts...); err != nil {
		return nil, err
	}
	if err := d.checkNamedProvisioners(file, auth); err != nil {
		auth.CloseForReload()
		return nil, err
	}
	d.warnOpenSCEP(auth)
	gen := &generation{cfg: cfg, auth: auth, plugins: caps.generations}
	var clientTLS *tls.Config
	if gen.tls, clientTLS, gen.renewer, err = tlsConfigs(auth, cfg); err != nil {
		return nil, err
	}
	gen.renewer.Run()
	external.Transport.(*http.Transport).TLSClientConfig = clientTLS
	if err := d.mount(gen); err != nil {
		return nil, err
	}
	return gen, nil
}

// checkNamedProvisioners refuses a generation in which a provisioner a
// plugin names is missing or of the wrong type, checked against the
// provisioners the authority actually loaded (ca.json, or the database
// with enableAdmin).
func (d *Daemon) checkNamedProvisioners(file *config.File, auth *upstream.Authority) error {
	checkers := file.ProvisionerCheckers()
	for _, p := range d.plugins {
		if c, ok := p.(plugins.ProvisionerChecker); ok {
			checkers[p.Name()] = c
		}
	}
	if len(checkers) == 0 {
		return nil
	}
	var known []string
	if list, _, err := auth.GetProvisioners("", 100); err == nil {
		for _, p := range list {
			known = append(known, p.GetName())
		}
	}
	return config.CheckNamedProvisioners(checkers, func(name string) (string, bool) {
		p, err := auth.LoadProvisionerByName(name)
		if err != nil {
			return "", false
		}
		return p.GetType().String(), true
	}, known)
}

// warnOpenSCEP warns about SCEP provisioners that accept every enrollment:
// upstream treats an empty challenge with no SCEPCHALLENGE webhook as "no
// validation". A plain step-ca configuration may mean it, so this warns
// instead of refusing.
func (d *Daemon) warnOpenSCEP(auth *upstream.Authority) {
	list, _, err := auth.GetProvisioners("", 100)
	if err != nil {
		return
	}
	for _, p := range list {
		sp, ok := p.(*provisioner.SCEP)
		if !ok || sp.ChallengePassword != "" {
			continue
		}
		open := true
		for _, w := range provfields.Webhooks(sp) {
			if w.Kind == "SCEPCHALLENGE" {
				open = false
			}
		}
		if open {
			d.log.Warn("SCEP provisioner accepts every enrollment: it has no challenge and no challenge webhook (attach the dynamicScep plugin)", "provisioner", sp.GetName())
		}
	}
}

// authorityOptions are upstream's authority.New options with stepfort's
// database, webhook client, metrics and plugin hooks. auth returns the
// authority being built, once it exists.
func (d *Daemon) authorityOptions(cfg *upconfig.Config, webhooks *webhookClient, caps *capabilities, auth func() *upstream.Authority) ([]upstream.Option, error) {
	opts := []upstream.Option{
		upstream.WithPassword(d.opts.Password),
		upstream.WithSSHHostPassword(d.opts.SSHHostPassword),
		upstream.WithSSHUserPassword(d.opts.SSHUserPassword),
		upstream.WithIssuerPassword(d.opts.IssuerPassword),
		upstream.WithWebhookClient(webhooks),
		upstream.WithMeter(d.metrics),
	}
	if d.db != nil {
		opts = append(opts, upstream.WithDatabase(d.db))
		if cfg.AuthorityConfig.EnableAdmin {
			inner, err := adminDBNosql.New(d.db, upadmin.DefaultAuthorityID)
			if err != nil {
				return nil, fmt.Errorf("open the admin database: %w", err)
			}
			opts = append(opts, upstream.WithAdminDB(&gatedAdminDB{DB: inner, webhooks: caps.linkedWebhooks}))
		}
	}
	enforcers := caps.enforcers
	if len(caps.signAuthorizers) > 0 || len(caps.scep) > 0 {
		// Runs after the plugins' enforcers; refuses what no webhook gated.
		enforcers = append(enforcers, gateIntact(caps, auth))
	}
	if d.opts.Quiet {
		opts = append(opts, upstream.WithQuietInit())
	}
	if len(enforcers) > 0 {
		opts = append(opts, upstream.WithX509Enforcers(enforcers...))
	}
	if caps.renewAuthorizers {
		opts = append(opts, upstream.WithAuthorizeRenewFunc(func(ctx context.Context, p *provisioner.Controller, cert *x509.Certificate) error {
			return d.authorizeRenewAudited(ctx, p, cert)
		}))
	}
	return opts, nil
}

// mount builds the generation's HTTPS and HTTP handlers: upstream's routes,
// ACME, SCEP, the admin API and plugin routes, behind upstream's monitoring
// and logging middleware and stepfort's common wrapper.
func (d *Daemon) mount(gen *generation) error {
	cfg, auth := gen.cfg, gen.auth
	mux := chi.NewRouter()
	insecureMux := chi.NewRouter()
	mux.Use(middleware.GetHead)
	insecureMux.Use(middleware.GetHead)

	api.Route(mux)
	mux.Route("/1.0", func(r chi.Router) {
		api.Route(r)
		r.Get("/health", d.health)
	})
	mux.Get("/health", d.health) // replaces api.Health; same "status" field
	insecureMux.Get("/crl", api.CRL)
	insecureMux.Get("/1.0/crl", api.CRL)

	acmeDB, linker, err := d.mountACME(mux, cfg, auth)
	if err != nil {
		return err
	}
	if cfg.AuthorityConfig.EnableAdmin && auth.GetAdminDatabase() != nil {
		mux.Route("/admin", func(r chi.Router) {
			adminAPI.Route(r,
				adminAPI.WithACMEResponder(adminAPI.NewACMEAdminResponder()),
				adminAPI.WithPolicyResponder(adminAPI.NewPolicyAdminResponder()),
				adminAPI.WithWebhookResponder(adminAPI.NewWebhookAdminResponder()))
		})
	}
	scepAuthority := auth.GetSCEP()
	if scepAuthority != nil {
		// RFC 8894 runs SCEP over HTTP; upstream also serves it over HTTPS.
		insecureMux.Route("/scep", func(r chi.Router) { scepAPI.Route(r) })
		mux.Route("/scep", func(r chi.Router) { scepAPI.Route(r) })
	}
	insecurePlugins, adminMax := d.mountPlugins(mux, insecureMux)
	if err := d.mountUI(mux); err != nil {
		return err
	}
	gen.servesInsecure = scepAuthority != nil || cfg.CRL.IsEnabled() || insecurePlugins

	// Innermost, so upstream's error reaches it (and passes on to the
	// request logger): refusals of the signing endpoints are audited.
	https, insecure := d.refusalAudit(mux), http.Handler(insecureMux)
	if len(cfg.Monitoring) > 0 {
		m, err := monitoring.New(cfg.Monitoring)
		if err != nil {
			return err
		}
		https, insecure = m.Middleware(https), m.Middleware(insecure)
	}
	var traceHeader string
	if len(cfg.Logger) > 0 {
		logger, err := logging.New("ca", cfg.Logger)
		if err != nil {
			return err
		}
		traceHeader = logger.GetTraceHeader()
		https, insecure = logger.Middleware(https), logger.Middleware(insecure)
	}
	base := baseContext(auth, scepAuthority, acmeDB, linker)
	https = d.common(bodyLimit{next: https, adminMax: adminMax}, base, "https")
	insecure = d.common(bodyLimit{next: insecure}, base, "http")
	gen.https = d.withDirectRoutes(requestid.New(traceHeader).Middleware(https))
	gen.http = d.withDirectRoutes(requestid.New(traceHeader).Middleware(insecure))
	return nil
}

// mountACME serves ACME when there is a database, with the plugins' ACME
// database wrappers.
func (d *Daemon) mountACME(mux chi.Router, cfg *upconfig.Config, auth *upstream.Authority) (acme.DB, acme.Linker, error) {
	if cfg.DB == nil || d.db == nil {
		if auth.HasACMEProvisioner() {
			d.log.Warn("no database is configured: ACME provisioners are disabled")
		}
		return nil, nil, nil
	}
	// upstream asserts nosql.DB here; events.DB embeds *db.DB so it is one.
	base, err := acmeNoSQL.New(d.db)
	if err != nil {
		return nil, nil, fmt.Errorf("configure ACME database: %w", err)
	}
	acmeDB := acme.DB(base)
	for _, p := range d.plugins {
		if w, ok := p.(plugins.ACMEDBWrapper); ok {
			acmeDB = w.WrapACMEDB(acmeDB)
		}
	}
	dns := cfg.DNSNames[0]
	u, err := url.Parse("https://" + cfg.Address)
	if err != nil {
		return nil, nil, fmt.Errorf("address %q: %w", cfg.Address, err)
	}
	if port := u.Port(); port != "" && port != "443" {
		dns = dns + ":" + port
	}
	mux.Route("/acme", func(r chi.Router) { acmeAPI.Route(r) })
	mux.Route("/2.0/acme", func(r chi.Router) { acmeAPI.Route(r) })
	return acmeDB, acme.NewLinker(dns, "acme"), nil
}

// mountPlugins mounts plugin routes and the admin API; it reports whether a
// plugin serves plain HTTP and the largest body an admin route accepts.
func (d *Daemon) mountPlugins(mux, insecureMux chi.Router) (insecure bool, adminMax int64) {
	var adminRoutes []plugins.AdminRoute
	for _, p := range d.plugins {
		if rp, ok := p.(plugins.RouteProvider); ok {
			rp.Routes(mux)
		}
		if rp, ok := p.(plugins.InsecureRouteProvider); ok {
			rp.InsecureRoutes(insecureMux)
			insecure = true
		}
		if ap, ok := p.(plugins.AdminRouteProvider); ok {
			adminRoutes = append(adminRoutes, ap.AdminRoutes()...)
		}
	}
	for _, r := range adminRoutes {
		adminMax = max(adminMax, r.MaxBody)
	}
	if d.tokens != nil {
		(&admin.Server{
			Tokens:      d.tokens,
			MaxTokenTTL: d.file.Stepfort.Admin.MaxTokenTTL.Duration,
			Log:         d.log.With("component", "admin-api"),
			Metrics:     d.metrics,
		}).Mount(mux, adminRoutes)
	}
	return insecure, adminMax
}

// withDirectRoutes lets plugins answer some requests before any
// middleware (plugins.DirectRouteProvider).
func (d *Daemon) withDirectRoutes(next http.Handler) http.Handler {
	var direct []plugins.DirectRouteProvider
	for _, p := range d.plugins {
		if dr, ok := p.(plugins.DirectRouteProvider); ok {
			direct = append(direct, dr)
		}
	}
	if len(direct) == 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, dr := range direct {
			if h := dr.DirectRoute(r); h != nil {
				h.ServeHTTP(w, r)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// baseContext mirrors ca/ca.go buildContext: upstream handlers find the
// authority, databases, SCEP authority and ACME linker in the request context.
func baseContext(a *upstream.Authority, scepAuthority *scep.Authority, acmeDB acme.DB, linker acme.Linker) context.Context {
	ctx := upstream.NewContext(context.Background(), a)
	if authDB := a.GetDatabase(); authDB != nil {
		ctx = db.NewContext(ctx, authDB)
	}
	if adminDB := a.GetAdminDatabase(); adminDB != nil {
		ctx = upadmin.NewContext(ctx, adminDB)
	}
	if scepAuthority != nil {
		ctx = scep.NewContext(ctx, scepAuthority)
	}
	if acmeDB != nil {
		ctx = acme.NewContext(ctx, acmeDB, acme.NewClient(), linker, nil)
	}
	return ctx
}

// common adds what every request needs: the generation's context values
// (upstream sets them as the server's BaseContext; ours changes on reload),
// panic recovery and request metrics.
func (d *Daemon) common(next http.Handler, base context.Context, listener string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := mergedContext{Context: r.Context(), values: base}
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		defer func() {
			if rec := recover(); rec != nil {
				if rec == http.ErrAbortHandler {
					panic(rec)
				}
				d.log.Error("handler panic", "path", r.URL.Path, "panic", fmt.Sprint(rec), "stack", string(debug.Stack()))
				if !sw.wrote {
					admin.WriteError(sw, http.StatusInternalServerError, "internal error")
				}
			}
			d.metrics.HTTPRequest(listener, sw.status)
		}()
		next.ServeHTTP(sw, r.WithContext(ctx))
	})
}

// mergedContext is the request context, falling back to the generation's
// base context for values (authority, databases, ACME linker).
type mergedContext struct {
	context.Context
	values context.Context
}

func (c mergedContext) Value(key any) any {
	if v := c.Context.Value(key); v != nil {
		return v
	}
	return c.values.Value(key)
}

type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the real writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (d *Daemon) serveHTTPS(w http.ResponseWriter, r *http.Request) {
	d.gen.Load().https.ServeHTTP(w, r)
}
func (d *Daemon) serveHTTP(w http.ResponseWriter, r *http.Request) { d.gen.Load().http.ServeHTTP(w, r) }

func fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if len(bytes.TrimSpace(a)) == 0 && len(bytes.TrimSpace(b)) == 0 {
		return true
	}
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return bytes.Equal(xb, yb)
}

// renewDenied turns a plugin's renewal veto into an upstream HTTP error
// (401) unless the plugin already chose a status.
func renewDenied(err error) error {
	var se interface{ StatusCode() int }
	if errors.As(err, &se) {
		return err
	}
	return errs.Unauthorized("renewal refused: %s", err)
}
