// Package plugins defines the contract between the stepfort daemon and the
// features it adds to upstream step-ca.
//
// A plugin implements the small Plugin interface and opts into capabilities by
// implementing the optional interfaces below; the daemon discovers them with
// type assertions, the way step-ca discovers optional capabilities of a
// CertificateAuthorityService (cas/apiv1).
//
// Life of a plugin: the daemon builds it with its Factory, handing it the
// Host, so every capability can serve from the moment the plugin exists
// (there is no "not started" state). Background work goes through Host.Go,
// which starts when the daemon serves and is joined when it stops; then the
// daemon calls Stop if the plugin implements Stopper.
package plugins

import (
	"context"
	"crypto/x509"
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/smallstep/certificates/acme"
	"github.com/smallstep/certificates/authority/config"
)

// Plugin is what every plugin is.
type Plugin interface {
	// Name is the plugin's key under "stepfort.plugins" in ca.json.
	Name() string
}

// Stopper releases what a plugin holds. The daemon calls Stop after the
// listeners have drained and every Host.Go goroutine has returned, before
// the database closes.
type Stopper interface {
	Stop(ctx context.Context) error
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
	// MaxBody bounds the request body in bytes; 0 means the daemon's
	// default (DefaultMaxBody). Routes that take uploads (imports) declare
	// what they need. A larger body is answered 413.
	MaxBody int64
}

// DefaultMaxBody is the request body limit of every route that declares
// none: upstream's JSON and ACME requests, SCEP messages and plugin routes
// are far smaller. Plugin routes that need more wrap their handler in
// http.MaxBytesHandler themselves.
const DefaultMaxBody = 1 << 20

// AdminRouteProvider adds endpoints to the admin API.
type AdminRouteProvider interface {
	AdminRoutes() []AdminRoute
}

// Generation is a plugin's view of one configuration generation: the
// upstream configuration loaded at start or by a SIGHUP reload. It is built
// once per generation and never changed afterwards, so requests served by
// the old generation and the new one never share a mutable field.
//
// The daemon discovers per-generation capabilities on it by type assertion
// (today CertificateEnforcer), and calls Activate once the generation is the
// one serving requests. A generation that fails to build is never
// activated.
type Generation interface {
	Activate()
}

// ConfigMutator sees each freshly loaded upstream configuration before the
// authority is built (at start and on every reload). It may change cfg, for
// example to add provisioner options, and returns the plugin's Generation
// for it, or nil when it has nothing per generation.
type ConfigMutator interface {
	MutateConfig(cfg *config.Config) (Generation, error)
}

// ProvisionerRef identifies the provisioner that authorized an issuance.
type ProvisionerRef struct {
	ID   string `json:"id,omitempty"`
	Name string `json:"name,omitempty"`
	Type string `json:"type,omitempty"`
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

// RenewRequest is what a RenewAuthorizer sees of a /renew or /rekey.
type RenewRequest struct {
	// Provisioner is the provisioner that issued the certificate being
	// renewed, as upstream identified it.
	Provisioner ProvisionerRef
	// Certificate is the certificate presented for renewal.
	Certificate *x509.Certificate
}

// RenewAuthorizer vetoes /renew and /rekey. The daemon calls every
// RenewAuthorizer, then upstream's default renewal checks.
type RenewAuthorizer interface {
	AuthorizeRenew(ctx context.Context, req RenewRequest) error
}

// ACMEDBWrapper wraps upstream's ACME database, the earliest point at which a
// challenge (device-attest-01 included) can be rejected.
type ACMEDBWrapper interface {
	WrapACMEDB(db acme.DB) acme.DB
}

// CertificateObserver receives certificate events. Delivery is at least once
// and survives crashes (see docs/design/events.md): the observer must be
// idempotent, keyed by Event.ID or by serial and kind. Returning an error
// makes the daemon retry the event later, for this observer only.
type CertificateObserver interface {
	ObserveCertificate(ctx context.Context, ev CertificateEvent) error
}

// DeviceObserver receives device events with the same guarantees as
// CertificateObserver. An event says what happened when it was recorded;
// act on the device's state as it is now (a device disabled and enabled
// again must not lose its certificates to a late delivery).
type DeviceObserver interface {
	ObserveDevice(ctx context.Context, ev DeviceEvent) error
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
//
// The daemon looks for it on the plugin's Generation first (settings that
// follow ca.json reloads), then on the plugin.
type CertificateEnforcer interface {
	EnforceCertificate(cert *x509.Certificate) error
}

// HealthReporter adds fields to /health (for example which replica holds a
// lease). An error marks the replica unhealthy (503).
type HealthReporter interface {
	Health(ctx context.Context) (map[string]any, error)
}

// ProvisionerChecker is implemented by the Config of a plugin that names
// upstream provisioners (so `stepfort config check` can run it without
// building the plugin), or by the plugin itself. The daemon checks the
// names against every configuration generation (start, reload) and `config
// check` against ca.json, and a configuration in which a named provisioner
// is missing or of the wrong type is refused, so a typo cannot leave a
// provisioner ungated.
type ProvisionerChecker interface {
	NamedProvisioners() []NamedProvisioner
}

// NamedProvisioner is one provisioner reference in a plugin's configuration.
type NamedProvisioner struct {
	Path  string   // JSON path under the plugin's block, e.g. "accountProvisioners[0]"
	Name  string   // provisioner name, compared exactly as upstream does
	Types []string // allowed upstream types ("JWK", "X5C", "ACME", ...); empty allows any
}

// SCEPRequest is what a SCEPChallengeValidator sees of a SCEP enrollment
// (PKCSReq or RenewalReq).
type SCEPRequest struct {
	Provisioner   string
	Challenge     string // the CSR's challengePassword
	TransactionID string
	CSR           *x509.CertificateRequest
}

// SCEPChallengeValidator decides the SCEP enrollments of the provisioners it
// names. The daemon adds an in-process SCEPCHALLENGE webhook named after
// the plugin to each of them, so upstream ignores their static challenge.
// nil allows, and the data goes into the template as .Webhooks.<plugin>;
// an error refuses (a CertRep with failInfo badRequest). It runs with a
// deadline and must fail closed.
type SCEPChallengeValidator interface {
	SCEPProvisioners() []string
	ValidateSCEPChallenge(ctx context.Context, req SCEPRequest) (map[string]any, error)
}

// SCEPIssued is a certificate just signed for a SCEP enrollment.
type SCEPIssued struct {
	Provisioner   string
	TransactionID string
	CSR           *x509.CertificateRequest
	Certificate   *x509.Certificate
}

// SCEPNotifier hears of the certificates signed for the SCEP provisioners
// it names, right after signing, with the enrollment's transaction id (an
// in-process NOTIFYING webhook): what a challenge issuer such as Intune
// must be told. It cannot block issuance (upstream ignores notification
// errors); durable work belongs in CertificateObserver.
type SCEPNotifier interface {
	SCEPProvisioners() []string
	NotifySCEP(ctx context.Context, ev SCEPIssued)
}
