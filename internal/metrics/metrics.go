// Package metrics exports Prometheus metrics: upstream step-ca's metric names
// (its implementation, internal/metrix, is not importable) and stepfort's own.
package metrics

import (
	"crypto/x509"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/smallstep/certificates/authority/provisioner"
	"golang.org/x/crypto/ssh"

	"github.com/stepfort/stepfort/plugins"
)

// Registry holds every metric of one daemon.
type Registry struct {
	reg *prometheus.Registry

	x509, ssh *provisionerCounters
	kmsSigned prometheus.Counter
	kmsErrors prometheus.Counter

	eventsDelivered *prometheus.CounterVec
	eventsFailed    *prometheus.CounterVec
	eventsPending   prometheus.Gauge
	adminRequests   *prometheus.CounterVec
	httpRequests    *prometheus.CounterVec
}

type provisionerCounters struct {
	signed, renewed, rekeyed, webhookAuthorized, webhookEnriched *prometheus.CounterVec
}

// New builds a registry with upstream's metrics (namespace step_ca, same
// names and labels as internal/metrix) and stepfort's (namespace stepfort).
func New() *Registry {
	start := time.Now()
	r := &Registry{reg: prometheus.NewRegistry()}
	labels := []string{"provisioner", "success"}
	r.x509 = newProvisionerCounters(r.reg, "x509", labels, labels)
	r.ssh = newProvisionerCounters(r.reg, "ssh", append(labels, "type"), labels)
	r.kmsSigned = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "step_ca", Subsystem: "kms", Name: "signed", Help: "Number of KMS-backed signatures"})
	r.kmsErrors = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "step_ca", Subsystem: "kms", Name: "errors", Help: "Number of KMS-related errors"})
	uptime := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "step_ca", Name: "uptime_seconds", Help: "Number of seconds since service start"},
		func() float64 { return float64(time.Since(start) / time.Second) })

	r.eventsDelivered = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stepfort", Name: "events_delivered_total", Help: "Certificate events accepted by an observer"}, []string{"observer", "kind"})
	r.eventsFailed = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stepfort", Name: "event_delivery_errors_total", Help: "Certificate event deliveries that failed and will be retried"}, []string{"observer"})
	r.eventsPending = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "stepfort", Name: "events_pending", Help: "Certificate events not yet accepted by every observer, as of the last sweep"})
	r.adminRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stepfort", Name: "admin_requests_total", Help: "Admin API requests by outcome"}, []string{"outcome"})
	r.httpRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stepfort", Name: "http_requests_total", Help: "HTTP requests by listener and status class"}, []string{"listener", "code"})
	r.reg.MustRegister(r.kmsSigned, r.kmsErrors, uptime, r.eventsDelivered, r.eventsFailed, r.eventsPending,
		r.adminRequests, r.httpRequests, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

func newProvisionerCounters(reg *prometheus.Registry, sub string, signLabels, webhookLabels []string) *provisionerCounters {
	vec := func(name, help string, labels []string) *prometheus.CounterVec {
		v := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "step_ca", Subsystem: sub, Name: name, Help: help}, labels)
		reg.MustRegister(v)
		return v
	}
	return &provisionerCounters{
		rekeyed:           vec("rekeyed_total", "Number of certificates rekeyed", signLabels),
		renewed:           vec("renewed_total", "Number of certificates renewed", signLabels),
		signed:            vec("signed_total", "Number of certificates signed", signLabels),
		webhookAuthorized: vec("webhook_authorized_total", "Number of authorizing webhooks called", webhookLabels),
		webhookEnriched:   vec("webhook_enriched_total", "Number of enriching webhooks called", webhookLabels),
	}
}

// Registerer is where plugins register their collectors.
func (r *Registry) Registerer() prometheus.Registerer { return r.reg }

// Handler serves /metrics.
func (r *Registry) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{Registry: r.reg, Timeout: 5 * time.Second, MaxRequestsInFlight: 10}))
	return mux
}

func inc(v *prometheus.CounterVec, p provisioner.Interface, err error, extra ...string) {
	name := ""
	if p != nil {
		name = p.GetName()
	}
	v.WithLabelValues(append([]string{name, strconv.FormatBool(err == nil)}, extra...)...).Inc()
}

func sshType(c *ssh.Certificate) string {
	switch {
	case c == nil:
		return "unknown"
	case c.CertType == ssh.UserCert:
		return "user"
	case c.CertType == ssh.HostCert:
		return "host"
	default:
		return "unknown"
	}
}

// The methods below implement authority.Meter.

// X509Signed counts /sign, ACME and SCEP issuance.
func (r *Registry) X509Signed(_ []*x509.Certificate, p provisioner.Interface, err error) {
	inc(r.x509.signed, p, err)
}

// X509Renewed counts /renew.
func (r *Registry) X509Renewed(_ []*x509.Certificate, p provisioner.Interface, err error) {
	inc(r.x509.renewed, p, err)
}

// X509Rekeyed counts /rekey.
func (r *Registry) X509Rekeyed(_ []*x509.Certificate, p provisioner.Interface, err error) {
	inc(r.x509.rekeyed, p, err)
}

// X509WebhookAuthorized counts AUTHORIZING webhook calls.
func (r *Registry) X509WebhookAuthorized(p provisioner.Interface, err error) {
	inc(r.x509.webhookAuthorized, p, err)
}

// X509WebhookEnriched counts ENRICHING webhook calls.
func (r *Registry) X509WebhookEnriched(p provisioner.Interface, err error) {
	inc(r.x509.webhookEnriched, p, err)
}

// SSHSigned counts SSH issuance.
func (r *Registry) SSHSigned(c *ssh.Certificate, p provisioner.Interface, err error) {
	inc(r.ssh.signed, p, err, sshType(c))
}

// SSHRenewed counts SSH renewals.
func (r *Registry) SSHRenewed(c *ssh.Certificate, p provisioner.Interface, err error) {
	inc(r.ssh.renewed, p, err, sshType(c))
}

// SSHRekeyed counts SSH rekeys.
func (r *Registry) SSHRekeyed(c *ssh.Certificate, p provisioner.Interface, err error) {
	inc(r.ssh.rekeyed, p, err, sshType(c))
}

// SSHWebhookAuthorized counts SSH AUTHORIZING webhook calls.
func (r *Registry) SSHWebhookAuthorized(p provisioner.Interface, err error) {
	inc(r.ssh.webhookAuthorized, p, err)
}

// SSHWebhookEnriched counts SSH ENRICHING webhook calls.
func (r *Registry) SSHWebhookEnriched(p provisioner.Interface, err error) {
	inc(r.ssh.webhookEnriched, p, err)
}

// KMSSigned counts KMS signatures and errors.
func (r *Registry) KMSSigned(err error) {
	if err == nil {
		r.kmsSigned.Inc()
	} else {
		r.kmsErrors.Inc()
	}
}

// EventDelivered implements events.Stats.
func (r *Registry) EventDelivered(observer string, kind plugins.EventKind) {
	r.eventsDelivered.WithLabelValues(observer, string(kind)).Inc()
}

// EventDeliveryFailed implements events.Stats.
func (r *Registry) EventDeliveryFailed(observer string) {
	r.eventsFailed.WithLabelValues(observer).Inc()
}

// EventsPending implements events.Stats.
func (r *Registry) EventsPending(n int) { r.eventsPending.Set(float64(n)) }

// AdminRequest counts an admin API request by outcome (ok, unauthorized,
// forbidden, error).
func (r *Registry) AdminRequest(outcome string) { r.adminRequests.WithLabelValues(outcome).Inc() }

// HTTPRequest counts a request by listener ("https", "http") and status.
func (r *Registry) HTTPRequest(listener string, status int) {
	r.httpRequests.WithLabelValues(listener, strconv.Itoa(status/100)+"xx").Inc()
}
