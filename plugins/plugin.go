// Package plugins defines the contract between the stepfort daemon and the
// features it adds to upstream step-ca.
//
// A plugin implements the small Plugin interface and opts into capabilities by
// implementing the optional interfaces below; the daemon discovers them with
// type assertions, the way step-ca discovers optional capabilities of a
// CertificateAuthorityService (cas/apiv1).
package plugins

import (
	"context"
	"crypto/x509"
	"log/slog"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/smallstep/certificates/acme"
	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/nosql"
)

// Plugin is the lifecycle every plugin has. Start runs after the authority is
// built and before any listener accepts connections; Stop runs after the
// listeners have drained.
type Plugin interface {
	// Name is the plugin's key under "stepfort.plugins" in ca.json.
	Name() string
	Start(ctx context.Context, host Host) error
	Stop(ctx context.Context) error
}

// Host is what the daemon offers a running plugin.
type Host interface {
	// Authority returns the current upstream authority. It changes on SIGHUP
	// reload, so call it per request instead of keeping the result.
	Authority() *authority.Authority
	// DB is the shared database (bbolt or PostgreSQL). Plugin tables are
	// prefixed "stepfort_" and must be created with CreateTable before use.
	DB() nosql.DB
	// Logger is a structured logger tagged with the plugin name.
	Logger() *slog.Logger
	// Now is the daemon clock; tests inject their own.
	Now() time.Time
	// Metrics registers collectors exported on metricsAddress next to
	// upstream's metrics. Name them "stepfort_<plugin>_...".
	Metrics() prometheus.Registerer
}

// RouteProvider mounts routes on the HTTPS listener.
type RouteProvider interface {
	Routes(r chi.Router)
}

// InsecureRouteProvider mounts routes on the plain HTTP listener
// (insecureAddress), for protocols that must work without TLS: OCSP, CRL,
// SCEP, NDES.
type InsecureRouteProvider interface {
	InsecureRoutes(r chi.Router)
}

// AdminRoute is one admin API endpoint under /api/v1. Scope is the token
// scope it requires; the daemon authenticates and authorizes before the
// handler runs.
type AdminRoute struct {
	Method  string
	Pattern string // relative to /api/v1, e.g. "/devices/{id}"
	Scope   string
	Handler http.HandlerFunc
}

// AdminRouteProvider adds endpoints to the admin API.
type AdminRouteProvider interface {
	AdminRoutes() []AdminRoute
}

// ConfigMutator may change the upstream configuration after it is loaded and
// before the authority is built, for example to add provisioner options.
// It runs again on every reload with the freshly loaded configuration.
type ConfigMutator interface {
	MutateConfig(cfg *config.Config) error
}

// SignRequest is what a SignAuthorizer sees of an X.509 issuance that is about
// to happen (the certificate is the final template, not yet signed).
type SignRequest struct {
	Provisioner         string
	PermanentIdentifier string // from ACME device-attest-01 attestation, if any
	Certificate         *x509.Certificate
	// X5CCertificate is the leaf of the x5c header that authorized an X5C
	// provisioner's token; nil for other provisioners.
	X5CCertificate *x509.Certificate
	// CSR is the certificate request (set for SignEnricher, where the
	// template is not rendered yet and Certificate is nil).
	CSR *x509.CertificateRequest
}

// SignEnricher adds data to the certificate template of X.509 issuance. It
// is called through an in-process ENRICHING webhook named after the plugin,
// which the daemon adds to the provisioners named by EnrichProvisioners,
// before the template is rendered: templates read the data as
// {{ .Webhooks.<plugin name>.<key> }}. An error denies issuance.
type SignEnricher interface {
	// EnrichProvisioners names the provisioners to enrich; "*" means all.
	EnrichProvisioners() []string
	EnrichSign(ctx context.Context, req SignRequest) (map[string]any, error)
}

// SignAuthorizer vetoes X.509 issuance before signing. It is called through an
// in-process AUTHORIZING webhook that the daemon adds to the provisioners
// named by SignProvisioners, so it runs for every flow that signs through
// those provisioners (/sign, ACME finalize, SCEP). It does not run on /renew
// or /rekey: implement RenewAuthorizer for those.
type SignAuthorizer interface {
	// SignProvisioners names the provisioners to gate; "*" means all.
	SignProvisioners() []string
	AuthorizeSign(ctx context.Context, req SignRequest) error
}

// RenewAuthorizer vetoes /renew and /rekey. The daemon calls every
// RenewAuthorizer, then upstream's default renewal checks.
type RenewAuthorizer interface {
	AuthorizeRenew(ctx context.Context, p *provisioner.Controller, cert *x509.Certificate) error
}

// ACMEDBWrapper wraps upstream's ACME database, the earliest point at which a
// challenge (device-attest-01 included) can be rejected.
type ACMEDBWrapper interface {
	WrapACMEDB(db acme.DB) acme.DB
}

// CertificateObserver receives certificate events. Delivery is at least once
// and survives crashes (see docs/design/events.md): the observer must be
// idempotent, keyed by Event.ID or by serial and kind. Returning an error
// makes the daemon retry the event later.
type CertificateObserver interface {
	ObserveCertificate(ctx context.Context, ev CertificateEvent) error
}

// DirectRouteProvider serves high-rate requests (OCSP) straight from the
// listeners, ahead of upstream's request id, access log and router, which
// together cost more than answering them. Returning nil sends the request
// the normal way. The handler must recover its own panics and keep its own
// metrics.
type DirectRouteProvider interface {
	DirectRoute(r *http.Request) http.Handler
}

// CertificateWatcher is told about a certificate change on this replica
// synchronously, right after it is committed and before the request that
// made it is answered, so a cache can read its own writes (the OCSP
// responder answers "revoked" as soon as the revoke call returns). It must
// be fast and cannot fail. It sees nothing from other replicas and nothing
// is replayed after a crash: durable work belongs in CertificateObserver.
type CertificateWatcher interface {
	CertificateCommitted(ev CertificateEvent)
}

// CertificateEnforcer may change an X.509 certificate template just before
// it is signed (upstream's WithX509Enforcers), for example to add the CRL
// distribution point and OCSP URL. It runs for /sign, ACME and SCEP, after
// the provisioner's own enforcers; upstream copies these extensions from the
// old certificate on /renew and /rekey. An error denies issuance (403).
type CertificateEnforcer interface {
	EnforceCertificate(cert *x509.Certificate) error
}

// HealthReporter adds fields to /health (for example which replica holds a
// lease). An error marks the replica unhealthy (503).
type HealthReporter interface {
	Health(ctx context.Context) (map[string]any, error)
}
