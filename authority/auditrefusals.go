package authority

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/smallstep/certificates/authority/provisioner"

	"github.com/stepfort/stepfort/plugins"
)

// Refusals of the signing endpoints are recorded in the audit trail
// (docs/audit.md, "Refusals"). Upstream answers them itself, so the daemon
// observes them around upstream's handlers: refusalAudit watches /sign,
// /renew, /rekey, /revoke and ACME finalize and revoke-cert, and records
// every non-2xx answer with upstream's error. The in-process webhooks and
// the renew authorizer, which know which plugin refused and why, annotate
// the request's refusalNote so the one record carries their stage.

// Bounds of what the middleware keeps of a request it watches: the start
// of the request body (a token, a CSR, a JWS) and the start of an error
// answer. Success answers are never buffered.
const (
	refusalBodyMax  = 64 << 10
	refusalErrorMax = 4 << 10
	refusalTimeout  = 5 * time.Second
)

// signingEndpoint is a watched endpoint: the audit action and how to read
// the claimed actor from its request.
type signingEndpoint struct {
	action      string
	kind        string // "sign", "renew", "rekey", "revoke", "acmeFinalize", "acmeRevoke"
	provisioner string // ACME: from the path
}

// watchedEndpoint classifies a request; ok is false for anything not
// watched (every other request passes through untouched).
func watchedEndpoint(r *http.Request) (signingEndpoint, bool) {
	if r.Method != http.MethodPost {
		return signingEndpoint{}, false
	}
	p := strings.TrimPrefix(r.URL.EscapedPath(), "/1.0")
	switch p {
	case "/sign":
		return signingEndpoint{action: "certificate.sign", kind: "sign"}, true
	case "/renew":
		return signingEndpoint{action: "certificate.renew", kind: "renew"}, true
	case "/rekey":
		return signingEndpoint{action: "certificate.rekey", kind: "rekey"}, true
	case "/revoke":
		return signingEndpoint{action: "certificate.revoke", kind: "revoke"}, true
	}
	parts := strings.Split(strings.TrimPrefix(strings.TrimPrefix(r.URL.EscapedPath(), "/2.0"), "/"), "/")
	if len(parts) < 3 || parts[0] != "acme" {
		return signingEndpoint{}, false
	}
	prov, err := url.PathUnescape(parts[1])
	if err != nil {
		return signingEndpoint{}, false
	}
	switch {
	case len(parts) == 5 && parts[2] == "order" && parts[4] == "finalize":
		return signingEndpoint{action: "certificate.sign", kind: "acmeFinalize", provisioner: prov}, true
	case len(parts) == 3 && parts[2] == "revoke-cert":
		return signingEndpoint{action: "certificate.revoke", kind: "acmeRevoke", provisioner: prov}, true
	}
	return signingEndpoint{}, false
}

// refusalNote is what code deeper in a watched request learned about its
// refusal: the stage (plugin:<name>, inventory, attestation, webhook),
// the reason and the device.
type refusalNote struct {
	mu                    sync.Mutex
	stage, reason, device string
	details               map[string]string
}

type refusalNoteKey struct{}

// noteRefusal annotates the watched request ctx belongs to and reports
// whether there is one (then its middleware writes the record; otherwise
// the caller records itself).
func noteRefusal(ctx context.Context, stage, reason, device string, details map[string]string) bool {
	n, _ := ctx.Value(refusalNoteKey{}).(*refusalNote)
	if n == nil {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stage == "" {
		n.stage, n.reason, n.device, n.details = stage, reason, device, details
	}
	return true
}

func (n *refusalNote) get() (stage, reason, device string, details map[string]string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stage, n.reason, n.device, n.details
}

// refusalAudit wraps upstream's handlers: every non-2xx answer of a
// watched endpoint leaves a record.
func (d *Daemon) refusalAudit(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ep, ok := watchedEndpoint(r)
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		note := &refusalNote{}
		body := &teeBody{ReadCloser: r.Body}
		if r.Body == nil {
			body.ReadCloser = http.NoBody
		}
		rw := &refusalWriter{ResponseWriter: w, status: http.StatusOK}
		r2 := r.WithContext(context.WithValue(r.Context(), refusalNoteKey{}, note))
		r2.Body = body
		next.ServeHTTP(rw, r2)
		if rw.status < 300 {
			return
		}
		body.fill()
		rec := refusalRecord(ep, r, body.buf.Bytes(), rw, note)
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), refusalTimeout)
		defer cancel()
		if err := d.audit.Record(ctx, rec); err != nil {
			d.log.Error("audit record of a refusal lost", "action", rec.Action, "reason", rec.Reason, "error", err)
		}
	})
}

// teeBody keeps the first refusalBodyMax bytes the handler reads.
type teeBody struct {
	io.ReadCloser
	buf bytes.Buffer
}

func (t *teeBody) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	if room := refusalBodyMax - t.buf.Len(); room > 0 && n > 0 {
		t.buf.Write(p[:min(n, room)])
	}
	return n, err
}

// fill reads what the handler left unread, up to the bound (a handler
// may refuse before it reads the body).
func (t *teeBody) fill() {
	if room := refusalBodyMax - t.buf.Len(); room > 0 {
		_, _ = io.Copy(io.Discard, io.LimitReader(t, int64(room)))
	}
}

// refusalWriter notes the status, keeps the start of an error answer and
// the error upstream hands its logging writer (render.Error →
// log.Error → WithFields{"error"}), passing the fields on.
type refusalWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
	body   bytes.Buffer
	err    error
	fields map[string]any
}

func (w *refusalWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *refusalWriter) Write(b []byte) (int, error) {
	w.wrote = true
	if w.status >= 300 {
		if room := refusalErrorMax - w.body.Len(); room > 0 {
			w.body.Write(b[:min(len(b), room)])
		}
	}
	return w.ResponseWriter.Write(b)
}

type fieldCarrier interface {
	WithFields(map[string]any)
	Fields() map[string]any
}

// WithFields receives upstream's error; the fields go on to upstream's
// request logger when it is configured.
func (w *refusalWriter) WithFields(f map[string]any) {
	if err, ok := f["error"].(error); ok {
		w.err = err
	}
	if fc, ok := w.ResponseWriter.(fieldCarrier); ok {
		fc.WithFields(f)
		return
	}
	if w.fields == nil {
		w.fields = map[string]any{}
	}
	for k, v := range f {
		w.fields[k] = v
	}
}

// Fields implements upstream's logging field carrier.
func (w *refusalWriter) Fields() map[string]any {
	if fc, ok := w.ResponseWriter.(fieldCarrier); ok {
		return fc.Fields()
	}
	return w.fields
}

// Unwrap lets http.ResponseController reach the real writer.
func (w *refusalWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// refusalRecord builds the record of one refused request. The actor is
// what the request claims (a token's issuer, an ACME account's key id, a
// renewal token's certificate): Details["actor"] = "claimed" says it was
// not verified, since the request was refused. A client certificate the
// TLS handshake verified is not marked.
func refusalRecord(ep signingEndpoint, r *http.Request, body []byte, rw *refusalWriter, note *refusalNote) plugins.AuditRecord {
	c := claimFrom(ep, r, body)
	stage, noted, device, extra := note.get()
	reason := upstreamReason(rw)
	if noted != "" {
		reason = noted
	}
	reason = redact(reason, c.secrets)
	if stage == "" {
		stage = defaultStage(rw.status, reason)
	}
	outcome := plugins.AuditDenied
	if rw.status >= 500 {
		outcome = plugins.AuditFailure
	}
	det := map[string]string{"stage": stage, "status": strconv.Itoa(rw.status), "endpoint": ep.kind}
	if c.actor.Kind != "anonymous" && !c.verified {
		det["actor"] = "claimed"
	}
	for k, v := range extra {
		det[k] = v
	}
	c.actor.RemoteAddr = r.RemoteAddr
	obj := c.object
	if obj.Provisioner == "" {
		obj.Provisioner = ep.provisioner
	}
	if device != "" {
		obj.Device = device
	}
	return plugins.AuditRecord{Action: ep.action, Outcome: outcome, Reason: reason, Actor: c.actor, Object: obj, Details: det}
}

// defaultStage is the stage of a refusal no plugin annotated: an
// external webhook's denial, authentication (401/403) or the request
// itself (other statuses).
func defaultStage(status int, reason string) string {
	switch {
	case strings.Contains(strings.ToLower(reason), "webhook"):
		return "webhook"
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return "auth"
	case status >= 500:
		return "server"
	}
	return "request"
}

// upstreamReason is upstream's error: the one it logs (the precise cause,
// such as "token already used") or else the message of its JSON answer.
func upstreamReason(rw *refusalWriter) string {
	if rw.err != nil {
		return rw.err.Error()
	}
	var e struct {
		Message string `json:"message"`
		Detail  string `json:"detail"`
	}
	if json.Unmarshal(rw.body.Bytes(), &e) == nil {
		if e.Detail != "" {
			return e.Detail
		}
		if e.Message != "" {
			return e.Message
		}
	}
	return http.StatusText(rw.status)
}

// jwtLike matches a compact JWS or JWE anywhere in a message.
var jwtLike = regexp.MustCompile(`[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}(\.[A-Za-z0-9_-]*){0,2}`)

// redact removes the request's secrets and anything shaped like a token
// from a message before it is recorded.
func redact(s string, secrets []string) string {
	for _, sec := range secrets {
		if len(sec) >= 4 {
			s = strings.ReplaceAll(s, sec, "[redacted]")
		}
	}
	return jwtLike.ReplaceAllString(s, "[redacted token]")
}

// claim is what a refused request says about who sent it and what for.
type claim struct {
	actor    plugins.AuditActor
	object   plugins.AuditObject
	secrets  []string // tokens in the request, never recorded
	verified bool     // the actor is a client certificate TLS verified
}

func claimFrom(ep signingEndpoint, r *http.Request, body []byte) claim {
	c := claim{actor: plugins.AuditActor{Kind: "anonymous"}}
	switch ep.kind {
	case "sign", "revoke":
		var req struct {
			CSR    string `json:"csr"`
			OTT    string `json:"ott"`
			Serial string `json:"serial"`
		}
		_ = json.Unmarshal(body, &req)
		if req.OTT != "" {
			c.secrets = append(c.secrets, req.OTT)
			c.fromToken(req.OTT)
		} else {
			c.fromPeer(r)
		}
		if csr := parseCSRPEM(req.CSR); csr != nil {
			c.object.Subject = subjectName(csr.Subject.CommonName, csr.DNSNames)
		}
		if req.Serial != "" {
			c.object.Serial = decimalSerial(req.Serial)
		}
	case "renew", "rekey":
		if !c.fromPeer(r) {
			if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
				c.secrets = append(c.secrets, tok)
				c.fromRenewToken(tok)
			}
		}
	case "acmeFinalize", "acmeRevoke":
		c.fromJWS(ep, body)
	}
	return c
}

// fromToken reads a one-time token's issuer (the provisioner) and subject
// without verifying it.
func (c *claim) fromToken(tok string) {
	var claims struct {
		Iss string `json:"iss"`
		Sub string `json:"sub"`
	}
	if !jwtPart(tok, 1, &claims) {
		c.actor = plugins.AuditActor{Kind: "anonymous", Name: "unparsable token"}
		return
	}
	c.actor = plugins.AuditActor{Kind: "provisioner", Name: claims.Iss}
	c.object.Provisioner = claims.Iss
	c.object.Subject = claims.Sub
}

// fromRenewToken reads the subject of the certificate in a renewal
// token's x5cInsecure header, without verifying it.
func (c *claim) fromRenewToken(tok string) {
	var hdr struct {
		X5C []string `json:"x5cInsecure"`
	}
	if !jwtPart(tok, 0, &hdr) || len(hdr.X5C) == 0 {
		return
	}
	der, err := base64.StdEncoding.DecodeString(hdr.X5C[0])
	if err != nil {
		return
	}
	if cert, err := x509.ParseCertificate(der); err == nil {
		c.fromCert(cert)
	}
}

// fromPeer takes the actor from the TLS client certificate.
func (c *claim) fromPeer(r *http.Request) bool {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return false
	}
	c.fromCert(r.TLS.PeerCertificates[0])
	c.verified = len(r.TLS.VerifiedChains) > 0
	return true
}

func (c *claim) fromCert(cert *x509.Certificate) {
	c.actor = plugins.AuditActor{Kind: "mtls", Subject: cert.Subject.String()}
	c.object.Serial = cert.SerialNumber.String()
	c.object.Subject = subjectName(cert.Subject.CommonName, cert.DNSNames)
	if ext, ok := provisioner.GetProvisionerExtension(cert); ok {
		c.object.Provisioner = ext.Name
	}
}

// fromJWS reads an ACME request: the account from the protected header's
// key id, and the CSR (finalize) or certificate (revoke-cert) from the
// payload.
func (c *claim) fromJWS(ep signingEndpoint, body []byte) {
	var jws struct {
		Protected string `json:"protected"`
		Payload   string `json:"payload"`
	}
	if json.Unmarshal(body, &jws) != nil {
		return
	}
	var hdr struct {
		KID string `json:"kid"`
	}
	if decodeB64JSON(jws.Protected, &hdr) && hdr.KID != "" {
		c.actor = plugins.AuditActor{Kind: "acmeAccount", ID: hdr.KID[strings.LastIndex(hdr.KID, "/")+1:]}
	}
	var payload struct {
		CSR         string `json:"csr"`
		Certificate string `json:"certificate"`
	}
	if !decodeB64JSON(jws.Payload, &payload) {
		return
	}
	if der, err := base64.RawURLEncoding.DecodeString(payload.CSR); err == nil && ep.kind == "acmeFinalize" {
		if csr, err := x509.ParseCertificateRequest(der); err == nil {
			c.object.Subject = subjectName(csr.Subject.CommonName, csr.DNSNames)
		}
	}
	if der, err := base64.RawURLEncoding.DecodeString(payload.Certificate); err == nil && ep.kind == "acmeRevoke" {
		if cert, err := x509.ParseCertificate(der); err == nil {
			c.object.Serial = cert.SerialNumber.String()
			c.object.Subject = subjectName(cert.Subject.CommonName, cert.DNSNames)
		}
	}
}

// jwtPart decodes part i (0 header, 1 claims) of a compact JWS.
func jwtPart(tok string, i int, v any) bool {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return false
	}
	return decodeB64JSON(parts[i], v)
}

func decodeB64JSON(s string, v any) bool {
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
	return err == nil && json.Unmarshal(b, v) == nil
}

func parseCSRPEM(s string) *x509.CertificateRequest {
	block, _ := pem.Decode([]byte(s))
	if block == nil {
		return nil
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil
	}
	return csr
}

// subjectName is the CN, or the first DNS name without one.
func subjectName(cn string, dns []string) string {
	if cn == "" && len(dns) > 0 {
		return dns[0]
	}
	return cn
}

// decimalSerial normalises the serial of a revocation request (upstream
// accepts decimal or 0x-prefixed hex); anything else is kept as sent.
func decimalSerial(s string) string {
	n, ok := new(big.Int).SetString(s, 0)
	if !ok {
		return s
	}
	return n.String()
}

// errorStage is the audit stage a plugin's error declares
// (AuditStage() string, e.g. deviceattest's "inventory"), or def.
func errorStage(err error, def string) string {
	var s interface{ AuditStage() string }
	if errors.As(err, &s) && s.AuditStage() != "" {
		return s.AuditStage()
	}
	return def
}

// authorizeRenewAudited runs every plugin's RenewAuthorizer, then
// upstream's default checks, as Daemon.authorizeRenew does, and notes
// which plugin refused (the /renew or /rekey middleware records it).
func (d *Daemon) authorizeRenewAudited(ctx context.Context, p *provisioner.Controller, cert *x509.Certificate) error {
	req := plugins.RenewRequest{
		Provisioner: plugins.ProvisionerRef{ID: p.GetID(), Name: p.GetName(), Type: p.GetType().String()},
		Certificate: cert,
	}
	for _, pl := range d.plugins {
		ra, ok := pl.(plugins.RenewAuthorizer)
		if !ok {
			continue
		}
		if err := ra.AuthorizeRenew(ctx, req); err != nil {
			d.log.Info("renewal denied by plugin", "plugin", pl.Name(), "serial", cert.SerialNumber.String(), "reason", err.Error())
			d.pluginRefusal(ctx, "certificate.renew", pl.Name(), err, plugins.AuditObject{
				Serial: cert.SerialNumber.String(), Subject: subjectName(cert.Subject.CommonName, cert.DNSNames), Provisioner: p.GetName()},
				plugins.AuditActor{Kind: "mtls", Subject: cert.Subject.String()})
			return renewDenied(err)
		}
	}
	return provisioner.DefaultAuthorizeRenew(ctx, p, cert)
}

// pluginRefusal notes a plugin's refusal on the watched request, or
// records it when there is none (SCEP, a plugin's own route).
func (d *Daemon) pluginRefusal(ctx context.Context, action, plugin string, err error, obj plugins.AuditObject, actor plugins.AuditActor) {
	recordPluginRefusal(ctx, d.audit, action, plugin, err, obj, actor)
}

func recordPluginRefusal(ctx context.Context, a plugins.Auditor, action, plugin string, err error, obj plugins.AuditObject, actor plugins.AuditActor) {
	stage := errorStage(err, "plugin:"+plugin)
	det := map[string]string{"plugin": plugin}
	if noteRefusal(ctx, stage, err.Error(), obj.Device, det) || a == nil {
		return
	}
	det["stage"] = stage
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), refusalTimeout)
	defer cancel()
	_ = a.Record(rctx, plugins.AuditRecord{Action: action, Outcome: plugins.AuditDenied, Reason: err.Error(), Actor: actor, Object: obj, Details: det})
}
