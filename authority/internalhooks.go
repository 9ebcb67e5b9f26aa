package authority

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/smallstep/certificates/webhook"

	"github.com/stepfort/stepfort/plugins"
)

// Paths of the in-process webhooks, under https://stepfort.internal. Names
// are escaped with url.PathEscape when a webhook is added, so
// parseInternalPath's PathUnescape is exact.
const (
	signPath       = "sign-authorizer" // /sign-authorizer/<provisioner>
	enrichPath     = "enrich"          // /enrich/<plugin>/<provisioner>
	scepCheckPath  = "scep-challenge"  // /scep-challenge/<plugin>/<provisioner>
	scepNotifyPath = "scep-notify"     // /scep-notify/<plugin>/<provisioner>
)

// internalPath is a parsed in-process webhook path.
type internalPath struct {
	route, plugin, provisioner string
}

// parseInternalPath splits an escaped in-process webhook path; ok is false
// for anything else.
func parseInternalPath(escaped string) (p internalPath, ok bool) {
	parts := strings.Split(strings.TrimPrefix(escaped, "/"), "/")
	want := map[string]int{signPath: 2, enrichPath: 3, scepCheckPath: 3, scepNotifyPath: 3}[parts[0]]
	if want == 0 || len(parts) != want {
		return p, false
	}
	names := make([]string, 0, 2)
	for _, part := range parts[1:] {
		n, err := url.PathUnescape(part)
		if err != nil || n == "" {
			return p, false
		}
		names = append(names, n)
	}
	p.route, p.provisioner = parts[0], names[len(names)-1]
	if len(names) == 2 {
		p.plugin = names[0]
	}
	return p, true
}

func internalURL(route string, names ...string) string {
	u := "https://" + internalHost + "/" + route
	for _, n := range names {
		u += "/" + url.PathEscape(n)
	}
	return u
}

// namedSCEP is a plugin's SCEP capabilities with its name, which names
// its webhooks.
type namedSCEP struct {
	name      string
	validator plugins.SCEPChallengeValidator // nil: none
	notifier  plugins.SCEPNotifier           // nil: none
}

func (n namedSCEP) provisioners() []string {
	if n.validator != nil {
		return n.validator.SCEPProvisioners()
	}
	return n.notifier.SCEPProvisioners()
}

// internalWebhooks answers the in-process AUTHORIZING, ENRICHING,
// SCEPCHALLENGE and NOTIFYING webhooks. It fails closed: anything it cannot
// parse or decide is a denial, answered with 200 and allow=false so
// upstream does not retry.
type internalWebhooks struct {
	authorizers     []plugins.SignAuthorizer
	authorizerNames []string // parallel to authorizers: the plugins' names
	enrichers       []namedEnricher
	scep            []namedSCEP
	// audit records denials; one of a watched request is noted for the
	// request's record instead (refusalAudit). Nil: none.
	audit plugins.Auditor
	log   *slog.Logger
}

// webhookTimeout bounds a plugin's answer: upstream applies none to SCEP
// challenge webhooks, and a hung plugin must not hang enrollment.
const webhookTimeout = 8 * time.Second

func (h *internalWebhooks) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path, ok := parseInternalPath(r.URL.EscapedPath())
	if !ok {
		deny(w, "internalError", "unknown internal webhook")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		deny(w, "internalError", "read webhook request")
		return
	}
	var req webhook.RequestBody
	if err := json.Unmarshal(body, &req); err != nil {
		deny(w, "internalError", "decode webhook request")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), webhookTimeout)
	defer cancel()
	switch path.route {
	case signPath:
		h.authorize(ctx, w, path, &req)
	case enrichPath:
		h.enrich(ctx, w, path, &req)
	case scepCheckPath:
		h.scepChallenge(ctx, w, path, &req)
	case scepNotifyPath:
		h.scepNotify(ctx, w, path, &req)
	}
}

func deny(w http.ResponseWriter, code, msg string) {
	writeWebhookResponse(w, &webhook.ResponseBody{Allow: false, Error: &webhook.Error{Code: code, Message: msg}})
}

func (h *internalWebhooks) authorize(ctx context.Context, w http.ResponseWriter, path internalPath, req *webhook.RequestBody) {
	sr, err := signRequest(path.provisioner, req)
	if err != nil {
		deny(w, "internalError", err.Error())
		return
	}
	// The daemon only adds this webhook to gated provisioners: finding no
	// authorizer means the name did not round-trip, so deny.
	matched := false
	for i, a := range h.authorizers {
		if !gated(sr.Provisioner, []plugins.SignAuthorizer{a}) {
			continue
		}
		matched = true
		if err := callAuthorizer(ctx, a, sr); err != nil {
			h.log.Info("issuance denied by plugin", "provisioner", sr.Provisioner, "permanentIdentifier", sr.PermanentIdentifier, "reason", err.Error())
			h.refused(ctx, h.authorizerName(i), err, sr)
			deny(w, denialCode(err), err.Error())
			return
		}
	}
	if !matched {
		h.log.Warn("issuance denied: no sign authorizer gates the provisioner", "provisioner", sr.Provisioner)
		h.refused(ctx, "", errors.New("no sign authorizer for this provisioner"), sr)
		deny(w, "unauthorized", "no sign authorizer for this provisioner")
		return
	}
	writeWebhookResponse(w, &webhook.ResponseBody{Allow: true})
}

func (h *internalWebhooks) enrich(ctx context.Context, w http.ResponseWriter, path internalPath, req *webhook.RequestBody) {
	sr, err := signRequest(path.provisioner, req)
	if err != nil {
		deny(w, "internalError", err.Error())
		return
	}
	for _, e := range h.enrichers {
		if e.name != path.plugin {
			continue
		}
		data, err := callEnricher(ctx, e, sr)
		if err != nil {
			h.log.Info("issuance denied by enricher", "plugin", e.name, "provisioner", sr.Provisioner, "permanentIdentifier", sr.PermanentIdentifier, "reason", err.Error())
			h.refused(ctx, e.name, err, sr)
			deny(w, denialCode(err), err.Error())
			return
		}
		writeWebhookResponse(w, &webhook.ResponseBody{Allow: true, Data: data})
		return
	}
	deny(w, "internalError", "unknown enricher")
}

func (h *internalWebhooks) authorizerName(i int) string {
	if i < len(h.authorizerNames) {
		return h.authorizerNames[i]
	}
	return "unknown"
}

// refused audits a plugin's denial of an issuance: noted on the watched
// request (/sign, ACME finalize), recorded here otherwise (SCEP). plugin
// "" is the daemon's own fail-closed denial (stage webhook).
func (h *internalWebhooks) refused(ctx context.Context, plugin string, err error, sr plugins.SignRequest) {
	obj := plugins.AuditObject{Provisioner: sr.Provisioner, Device: sr.PermanentIdentifier}
	switch {
	case sr.Certificate != nil:
		obj.Subject = subjectName(sr.Certificate.Subject.CommonName, sr.Certificate.DNSNames)
	case sr.CSR != nil:
		obj.Subject = subjectName(sr.CSR.Subject.CommonName, sr.CSR.DNSNames)
	}
	actor := plugins.AuditActor{Kind: "provisioner", Name: sr.Provisioner}
	if plugin == "" {
		plugin, err = "stepfort", stagedError{err, "webhook"}
	}
	recordPluginRefusal(ctx, h.audit, "certificate.sign", plugin, err, obj, actor)
}

// stagedError gives an error the audit stage it is recorded with.
type stagedError struct {
	error
	stage string
}

func (e stagedError) AuditStage() string { return e.stage }
func (e stagedError) Unwrap() error      { return e.error }

// signRequest is what authorizers and enrichers see of upstream's body.
func signRequest(prov string, req *webhook.RequestBody) (plugins.SignRequest, error) {
	sr := plugins.SignRequest{Provisioner: prov}
	if cr := req.X509CertificateRequest; cr != nil && len(cr.Raw) > 0 {
		if csr, err := x509.ParseCertificateRequest(cr.Raw); err == nil {
			sr.CSR = csr
		}
	}
	if req.AttestationData != nil {
		sr.PermanentIdentifier = req.AttestationData.PermanentIdentifier
	}
	if xc := req.X509Certificate; xc != nil && xc.Certificate != nil {
		// Upstream sends the final template (not a signed certificate).
		c := xc.GetCertificate()
		c.NotBefore, c.NotAfter = xc.NotBefore, xc.NotAfter
		if pub, err := x509.ParsePKIXPublicKey(xc.PublicKey); err == nil {
			c.PublicKey = pub
		}
		sr.Certificate = c
	}
	if xc := req.X5CCertificate; xc != nil && len(xc.Raw) > 0 {
		c, err := x509.ParseCertificate(xc.Raw)
		if err != nil {
			return sr, fmt.Errorf("parse x5c certificate: %w", err)
		}
		sr.X5CCertificate = c
	}
	return sr, nil
}

func (h *internalWebhooks) scepPlugin(name string) (namedSCEP, bool) {
	for _, n := range h.scep {
		if n.name == name {
			return n, true
		}
	}
	return namedSCEP{}, false
}

func (h *internalWebhooks) scepChallenge(ctx context.Context, w http.ResponseWriter, path internalPath, req *webhook.RequestBody) {
	n, ok := h.scepPlugin(path.plugin)
	if !ok || n.validator == nil {
		deny(w, "internalError", "unknown SCEP challenge validator")
		return
	}
	csr, err := requestCSR(req)
	if err != nil {
		deny(w, "badRequest", err.Error())
		return
	}
	sr := plugins.SCEPRequest{Provisioner: path.provisioner, Challenge: req.SCEPChallenge, TransactionID: req.SCEPTransactionID, CSR: csr}
	data, err := callSCEPValidator(ctx, n.validator, sr)
	if err != nil {
		// The challenge itself is never logged.
		h.log.Info("SCEP enrollment refused", "plugin", n.name, "provisioner", sr.Provisioner, "transactionID", sr.TransactionID, "cn", csr.Subject.CommonName, "reason", err.Error())
		deny(w, denialCode(err), err.Error())
		return
	}
	writeWebhookResponse(w, &webhook.ResponseBody{Allow: true, Data: data})
}

func (h *internalWebhooks) scepNotify(ctx context.Context, w http.ResponseWriter, path internalPath, req *webhook.RequestBody) {
	n, ok := h.scepPlugin(path.plugin)
	if !ok || n.notifier == nil || req.X509Certificate == nil || len(req.X509Certificate.Raw) == 0 {
		deny(w, "internalError", "unknown SCEP notification")
		return
	}
	cert, err := x509.ParseCertificate(req.X509Certificate.Raw)
	if err != nil {
		deny(w, "internalError", "parse issued certificate")
		return
	}
	csr, _ := requestCSR(req)
	ev := plugins.SCEPIssued{Provisioner: path.provisioner, TransactionID: req.SCEPTransactionID, CSR: csr, Certificate: cert}
	defer func() {
		if r := recover(); r != nil {
			h.log.Error("SCEP notifier panicked", "plugin", n.name, "panic", fmt.Sprint(r))
		}
	}()
	n.notifier.NotifySCEP(ctx, ev)
	writeWebhookResponse(w, &webhook.ResponseBody{Allow: true})
}

// requestCSR parses the PKCS#10 upstream forwards (with its
// challengePassword attribute).
func requestCSR(req *webhook.RequestBody) (*x509.CertificateRequest, error) {
	cr := req.X509CertificateRequest
	if cr == nil || len(cr.Raw) == 0 {
		return nil, fmt.Errorf("no certificate request in the webhook body")
	}
	csr, err := x509.ParseCertificateRequest(cr.Raw)
	if err != nil {
		return nil, fmt.Errorf("parse certificate request: %w", err)
	}
	return csr, nil
}

func callSCEPValidator(ctx context.Context, v plugins.SCEPChallengeValidator, req plugins.SCEPRequest) (data map[string]any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("SCEP challenge validator failed: %v", r)
		}
	}()
	return v.ValidateSCEPChallenge(ctx, req)
}
