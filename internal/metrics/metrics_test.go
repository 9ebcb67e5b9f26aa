package metrics

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/smallstep/certificates/authority/provisioner"
	"golang.org/x/crypto/ssh"

	"github.com/stepfort/stepfort/plugins"
)

// scrape returns the text exposition served on /metrics.
func scrape(t *testing.T, r *Registry) string {
	t.Helper()
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCountersMove(t *testing.T) {
	r := New()
	p := &provisioner.JWK{Name: "admin", Type: "JWK"}
	failed := errors.New("denied")

	r.X509Signed(nil, p, nil)
	r.X509Signed(nil, p, nil)
	r.X509Signed(nil, p, failed)
	r.X509Renewed(nil, p, nil)
	r.X509Rekeyed(nil, nil, failed)
	r.X509WebhookAuthorized(p, nil)
	r.X509WebhookEnriched(p, failed)
	r.SSHSigned(&ssh.Certificate{CertType: ssh.HostCert}, p, nil)
	r.SSHSigned(nil, p, nil)
	r.KMSSigned(nil)
	r.KMSSigned(failed)
	r.KMSSigned(failed)
	r.EventDelivered("auditLog", plugins.EventIssued)
	r.EventDeliveryFailed("billing")
	r.EventsPending(7)
	r.AdminRequest("forbidden")
	r.HTTPRequest("https", 404)
	r.HTTPRequest("https", 403)

	tests := []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"x509 signed ok", r.x509.signed.WithLabelValues("admin", "true"), 2},
		{"x509 signed failed", r.x509.signed.WithLabelValues("admin", "false"), 1},
		{"x509 renewed", r.x509.renewed.WithLabelValues("admin", "true"), 1},
		{"x509 rekeyed without provisioner", r.x509.rekeyed.WithLabelValues("", "false"), 1},
		{"webhook authorized", r.x509.webhookAuthorized.WithLabelValues("admin", "true"), 1},
		{"webhook enriched failed", r.x509.webhookEnriched.WithLabelValues("admin", "false"), 1},
		{"ssh host", r.ssh.signed.WithLabelValues("admin", "true", "host"), 1},
		{"ssh unknown", r.ssh.signed.WithLabelValues("admin", "true", "unknown"), 1},
		{"kms signed", r.kmsSigned, 1},
		{"kms errors", r.kmsErrors, 2},
		{"event delivered", r.eventsDelivered.WithLabelValues("auditLog", "issued"), 1},
		{"event failed", r.eventsFailed.WithLabelValues("billing"), 1},
		{"events pending", r.eventsPending, 7},
		{"admin forbidden", r.adminRequests.WithLabelValues("forbidden"), 1},
		{"http 4xx", r.httpRequests.WithLabelValues("https", "4xx"), 2},
	}
	for _, tt := range tests {
		if got := testutil.ToFloat64(tt.c); got != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// The exported names are a contract with dashboards: upstream's step_ca_*
// names (so step-ca dashboards keep working) and stepfort's own.
func TestHandlerServesNames(t *testing.T) {
	r := New()
	p := &provisioner.ACME{Name: "acme", Type: "ACME"}
	r.X509Signed(nil, p, nil)
	r.SSHRenewed(&ssh.Certificate{CertType: ssh.UserCert}, p, nil)
	r.EventDelivered("auditLog", plugins.EventRevoked)
	r.AdminRequest("ok")
	r.HTTPRequest("http", 200)
	plugin := prometheus.NewCounter(prometheus.CounterOpts{Name: "stepfort_test_plugin_total", Help: "a plugin's own counter"})
	r.Registerer().MustRegister(plugin)
	plugin.Inc()

	body := scrape(t, r)
	for _, want := range []string{
		`step_ca_x509_signed_total{provisioner="acme",success="true"} 1`,
		`step_ca_ssh_renewed_total{provisioner="acme",success="true",type="user"} 1`,
		`step_ca_kms_signed 0`,
		`step_ca_kms_errors 0`,
		`step_ca_uptime_seconds `,
		`stepfort_events_delivered_total{kind="revoked",observer="auditLog"} 1`,
		`stepfort_events_pending 0`,
		`stepfort_admin_requests_total{outcome="ok"} 1`,
		`stepfort_http_requests_total{code="2xx",listener="http"} 1`,
		`stepfort_test_plugin_total 1`,
		`go_goroutines `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestHandlerServesOnlyMetricsPath(t *testing.T) {
	srv := httptest.NewServer(New().Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET / = %s, want 404", resp.Status)
	}
}

// Two daemons in one process (tests, benchmarks) must not share counters.
func TestRegistriesAreIndependent(t *testing.T) {
	a, b := New(), New()
	a.AdminRequest("ok")
	if got := testutil.ToFloat64(b.adminRequests.WithLabelValues("ok")); got != 0 {
		t.Errorf("a second registry sees %v admin requests of the first", got)
	}
}
