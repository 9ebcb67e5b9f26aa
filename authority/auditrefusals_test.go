package authority

import (
	"bytes"
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/smallstep/certificates/api/render"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/errs"
	"github.com/smallstep/certificates/webhook"

	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

func testDaemonAudit(t *testing.T) (*Daemon, *plugintest.Auditor) {
	t.Helper()
	m := &plugintest.Auditor{}
	d := &Daemon{log: slog.New(slog.DiscardHandler), audit: &daemonAuditor{fallback: m}}
	return d, m
}

// fakeToken is an unsigned compact JWS with the given claims: enough for
// the middleware, which never verifies.
func fakeToken(claims map[string]any) string {
	h, _ := json.Marshal(map[string]any{"alg": "ES256", "kid": "abc"})
	c, _ := json.Marshal(claims)
	return base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c) + ".c2lnbmF0dXJlc2lnbmF0dXJl"
}

func TestWatchedEndpoint(t *testing.T) {
	for _, tt := range []struct {
		method, path string
		action, kind string
		prov         string
	}{
		{"POST", "/sign", "certificate.sign", "sign", ""},
		{"POST", "/1.0/sign", "certificate.sign", "sign", ""},
		{"POST", "/1.0/renew", "certificate.renew", "renew", ""},
		{"POST", "/rekey", "certificate.rekey", "rekey", ""},
		{"POST", "/revoke", "certificate.revoke", "revoke", ""},
		{"POST", "/acme/my%20acme/order/o1/finalize", "certificate.sign", "acmeFinalize", "my acme"},
		{"POST", "/2.0/acme/acme/revoke-cert", "certificate.revoke", "acmeRevoke", "acme"},
		{"POST", "/acme/acme/order/o1", "", "", ""},
		{"POST", "/acme/acme/challenge/a/c", "", "", ""},
		{"GET", "/sign", "", "", ""},
		{"POST", "/health", "", "", ""},
	} {
		r := httptest.NewRequest(tt.method, tt.path, nil)
		ep, ok := watchedEndpoint(r)
		if ok != (tt.action != "") || ep.action != tt.action || ep.kind != tt.kind || ep.provisioner != tt.prov {
			t.Errorf("%s %s: %+v %v", tt.method, tt.path, ep, ok)
		}
	}
}

// TestRefusalAuditSign: a refused /sign leaves one denied record with
// upstream's precise error (not the generic message it answers), the
// claimed provisioner and subject, and never the token.
func TestRefusalAuditSign(t *testing.T) {
	d, m := testDaemonAudit(t)
	tok := fakeToken(map[string]any{"iss": "admin", "sub": "host.example", "aud": "https://ca/1.0/sign"})
	h := d.refusalAudit(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !bytes.Contains(body, []byte(tok)) {
			t.Error("the handler did not get the body")
		}
		// What upstream's handler does: the cause is logged, a generic
		// message answered.
		render.Error(w, r, errs.Unauthorized("authority.Authorize: jwk.AuthorizeSign: token already used: %s", tok))
	}))
	body, _ := json.Marshal(map[string]string{"csr": "", "ott": tok})
	req := httptest.NewRequest("POST", "/1.0/sign", bytes.NewReader(body))
	req.RemoteAddr = "192.0.2.7:5555"
	rw := httptest.NewRecorder()
	h.ServeHTTP(rw, req)
	if rw.Code != http.StatusUnauthorized {
		t.Fatalf("status %d", rw.Code)
	}
	recs := m.Records()
	if len(recs) != 1 {
		t.Fatalf("%d records: %+v", len(recs), recs)
	}
	r := recs[0]
	if r.Action != "certificate.sign" || r.Outcome != plugins.AuditDenied || r.Details["stage"] != "auth" || r.Details["actor"] != "claimed" {
		t.Errorf("record %+v", r)
	}
	if !strings.Contains(r.Reason, "token already used") {
		t.Errorf("reason %q lacks upstream's cause", r.Reason)
	}
	if r.Actor.Kind != "provisioner" || r.Actor.Name != "admin" || r.Actor.RemoteAddr != "192.0.2.7:5555" || r.Object.Subject != "host.example" {
		t.Errorf("actor/object %+v %+v", r.Actor, r.Object)
	}
	if b, _ := json.Marshal(r); bytes.Contains(b, []byte(tok)) || bytes.Contains(b, []byte(strings.Split(tok, ".")[1])) {
		t.Errorf("the token is in the record: %s", b)
	}
}

// TestRefusalAuditSuccessNotRecorded: 2xx answers leave nothing and their
// bodies are not kept.
func TestRefusalAuditSuccessNotRecorded(t *testing.T) {
	d, m := testDaemonAudit(t)
	var rw *refusalWriter
	h := d.refusalAudit(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rw = w.(*refusalWriter)
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(bytes.Repeat([]byte("x"), 1<<20))
	}))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/sign", bytes.NewReader(bytes.Repeat([]byte("y"), 1<<20))))
	if len(m.Records()) != 0 {
		t.Errorf("records for a success: %+v", m.Records())
	}
	if rw.body.Len() != 0 {
		t.Errorf("a success answer was buffered: %d bytes", rw.body.Len())
	}
}

// TestRefusalAuditBounded: the request and error bodies are kept only up
// to their bounds.
func TestRefusalAuditBounded(t *testing.T) {
	d, m := testDaemonAudit(t)
	var rw *refusalWriter
	h := d.refusalAudit(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rw = w.(*refusalWriter)
		_, _ = io.Copy(io.Discard, r.Body)
		if tb := r.Body.(*teeBody); tb.buf.Len() > refusalBodyMax {
			t.Errorf("request buffer %d bytes", tb.buf.Len())
		}
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write(bytes.Repeat([]byte("x"), 1<<20))
	}))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/sign", bytes.NewReader(bytes.Repeat([]byte("y"), 1<<20))))
	if rw.body.Len() > refusalErrorMax {
		t.Errorf("error buffer %d bytes", rw.body.Len())
	}
	if recs := m.Records(); len(recs) != 1 || recs[0].Details["stage"] != "request" || recs[0].Actor.Kind != "anonymous" {
		t.Errorf("records %+v", recs)
	}
}

// TestRefusalAuditACME: an ACME finalize refusal names the account from
// the JWS key id and takes upstream's problem detail.
func TestRefusalAuditACME(t *testing.T) {
	d, m := testDaemonAudit(t)
	prot := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"ES256","kid":"https://ca/acme/acme/account/ACC123","nonce":"n","url":"u"}`))
	body := []byte(`{"protected":"` + prot + `","payload":"e30","signature":"c2ln"}`)
	h := d.refusalAudit(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"type":"urn:ietf:params:acme:error:orderNotReady","detail":"order is not ready"}`))
	}))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/acme/acme/order/o1/finalize", bytes.NewReader(body)))
	recs := m.Records()
	if len(recs) != 1 || recs[0].Actor.Kind != "acmeAccount" || recs[0].Actor.ID != "ACC123" || recs[0].Reason != "order is not ready" ||
		recs[0].Object.Provisioner != "acme" || recs[0].Details["endpoint"] != "acmeFinalize" {
		t.Errorf("records %+v", recs)
	}
}

// denyAuthorizer refuses everything with an error that may declare a
// stage.
type denyAuthorizer struct{ err error }

func (denyAuthorizer) SignProvisioners() []string { return []string{"*"} }
func (a denyAuthorizer) AuthorizeSign(context.Context, plugins.SignRequest) error {
	return a.err
}

type inventoryDenial struct{}

func (inventoryDenial) Error() string      { return "device d1 is disabled" }
func (inventoryDenial) AuditStage() string { return "inventory" }

// TestPluginDenialNotedOnRequest: a sign authorizer's denial inside a
// watched request becomes that request's single record, with the
// plugin's stage; outside one (SCEP) the webhook records it itself.
func TestPluginDenialNotedOnRequest(t *testing.T) {
	d, m := testDaemonAudit(t)
	hooks := &internalWebhooks{authorizers: []plugins.SignAuthorizer{denyAuthorizer{errors.New("not on the allow list")}},
		authorizerNames: []string{"policyX"}, audit: d.audit, log: slog.New(slog.DiscardHandler)}
	callHook := func(ctx context.Context) {
		b, _ := json.Marshal(webhook.RequestBody{})
		req := httptest.NewRequestWithContext(ctx, "POST", "https://"+internalHost+"/sign-authorizer/agents", bytes.NewReader(b))
		hooks.ServeHTTP(httptest.NewRecorder(), req)
	}
	h := d.refusalAudit(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		callHook(r.Context())
		render.Error(w, r, errs.Forbidden("authority.Sign: webhook denied"))
	}))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/sign", strings.NewReader(`{}`)))
	recs := m.Records()
	if len(recs) != 1 || recs[0].Details["stage"] != "plugin:policyX" || recs[0].Reason != "not on the allow list" || recs[0].Details["plugin"] != "policyX" {
		t.Fatalf("records %+v", recs)
	}

	hooks.authorizers = []plugins.SignAuthorizer{denyAuthorizer{inventoryDenial{}}}
	callHook(context.Background())
	recs = m.Records()
	if len(recs) != 2 {
		t.Fatalf("records %+v", recs)
	}
	if r := recs[1]; r.Details["stage"] != "inventory" || r.Action != "certificate.sign" || r.Outcome != plugins.AuditDenied ||
		r.Actor.Name != "agents" || r.Object.Provisioner != "agents" {
		t.Errorf("record %+v", r)
	}
}

func TestRedact(t *testing.T) {
	tok := fakeToken(map[string]any{"iss": "x"})
	got := redact("bad token "+tok+" and secret s3cr3t-value", []string{"s3cr3t-value"})
	if strings.Contains(got, tok) || strings.Contains(got, "s3cr3t") {
		t.Errorf("redact: %q", got)
	}
}

// renewRefuser is a plugin that refuses every renewal.
type renewRefuser struct{ name string }

func (r renewRefuser) Name() string { return r.name }
func (renewRefuser) AuthorizeRenew(context.Context, plugins.RenewRequest) error {
	return inventoryDenial{}
}

// TestRenewRefusalAudited: a RenewAuthorizer's refusal on /renew becomes
// the request's record with the plugin's stage; upstream sees a 401.
func TestRenewRefusalAudited(t *testing.T) {
	d, m := testDaemonAudit(t)
	d.plugins = []plugins.Plugin{renewRefuser{"deviceAttest"}}
	cert := &x509.Certificate{SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: "dev.example"}}
	ctl := &provisioner.Controller{Interface: &provisioner.JWK{ID: "agents-id", Name: "agents", Type: "JWK"}}
	h := d.refusalAudit(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := d.authorizeRenewAudited(r.Context(), ctl, cert)
		var sc interface{ StatusCode() int }
		if !errors.As(err, &sc) || sc.StatusCode() != http.StatusUnauthorized {
			t.Errorf("renew error %v", err)
		}
		render.Error(w, r, err)
	}))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/1.0/renew", nil))
	recs := m.Records()
	if len(recs) != 1 {
		t.Fatalf("records %+v", recs)
	}
	if r := recs[0]; r.Action != "certificate.renew" || r.Details["stage"] != "inventory" || r.Details["plugin"] != "deviceAttest" ||
		r.Reason != "device d1 is disabled" || r.Details["status"] != "401" {
		t.Errorf("record %+v", r)
	}
}
