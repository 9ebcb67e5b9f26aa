package authority

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/webhook"

	"github.com/stepfort/stepfort/internal/provfields"
	"github.com/stepfort/stepfort/plugins"
)

// internalHost is the host name of webhooks answered inside this process.
// Requests to it never reach the network: webhookClient routes them to a
// handler. The name is under .internal, which no public DNS resolves.
const internalHost = "stepfort.internal"

// signWebhookName is the name of the AUTHORIZING webhook the daemon adds to
// provisioners gated by SignAuthorizer plugins.
const signWebhookName = "stepfort-sign-authorizer"

// webhookClient is upstream's webhook HTTP client with in-process routing
// for internalHost. It implements provisioner.HTTPClient.
type webhookClient struct {
	internal http.Handler
	external *http.Client
}

func (c *webhookClient) Get(u string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	return c.Do(req)
}

func (c *webhookClient) Do(req *http.Request) (*http.Response, error) {
	if req.URL.Host != internalHost {
		return c.external.Do(req)
	}
	rec := httptest.NewRecorder()
	c.internal.ServeHTTP(rec, req)
	return rec.Result(), nil
}

// injectSignWebhooks adds the in-process AUTHORIZING webhook to every
// provisioner that a SignAuthorizer gates. The provisioner name travels in the
// URL because upstream's AUTHORIZING body does not carry it.
func injectSignWebhooks(cfg *config.Config, authorizers []plugins.SignAuthorizer) error {
	if len(authorizers) == 0 || cfg.AuthorityConfig == nil {
		return nil
	}
	for _, p := range cfg.AuthorityConfig.Provisioners {
		if !gated(p.GetName(), authorizers) {
			continue
		}
		if err := addWebhook(p, signWebhookName, "AUTHORIZING", signWebhookURL(p.GetName())); err != nil {
			return err
		}
	}
	return nil
}

// namedEnricher is a SignEnricher with the plugin name its template data
// appears under.
type namedEnricher struct {
	name string
	plugins.SignEnricher
}

// injectEnrichWebhooks adds one in-process ENRICHING webhook per enricher to
// the provisioners it names. Upstream puts the answer's data in the template
// as .Webhooks.<webhook name>, so the webhook carries the plugin's name.
func injectEnrichWebhooks(cfg *config.Config, enrichers []namedEnricher) error {
	if cfg.AuthorityConfig == nil {
		return nil
	}
	for _, e := range enrichers {
		for _, p := range cfg.AuthorityConfig.Provisioners {
			if !enriches(e, p.GetName()) {
				continue
			}
			if err := addWebhook(p, e.name, "ENRICHING", enrichWebhookURL(e.name, p.GetName())); err != nil {
				return err
			}
		}
	}
	return nil
}

// addWebhook appends an in-process webhook to a provisioner unless one with
// that name is there already (ca.json may name it; then it is left alone).
func addWebhook(p provisioner.Interface, name, kind, webhookURL string) error {
	opts, err := provfields.Options(p)
	if err != nil {
		return err
	}
	if slices.ContainsFunc(opts.Webhooks, func(w *provisioner.Webhook) bool { return w.Name == name }) {
		return nil
	}
	opts.Webhooks = append(opts.Webhooks, &provisioner.Webhook{
		ID: name, Name: name, URL: webhookURL, Kind: kind, CertType: "X509",
	})
	return nil
}

// signWebhookURL is the in-process AUTHORIZING webhook of a provisioner;
// the name travels escaped in the path (parseInternalPath).
func signWebhookURL(prov string) string {
	return "https://" + internalHost + "/sign-authorizer/" + url.PathEscape(prov)
}

// enrichWebhookURL is an enricher's in-process ENRICHING webhook of a
// provisioner.
func enrichWebhookURL(enricher, prov string) string {
	return "https://" + internalHost + "/enrich/" + url.PathEscape(enricher) + "/" + url.PathEscape(prov)
}

// enriches reports whether e enriches the provisioner name.
func enriches(e namedEnricher, name string) bool {
	names := e.EnrichProvisioners()
	return slices.Contains(names, "*") || slices.Contains(names, name)
}

func gated(name string, authorizers []plugins.SignAuthorizer) bool {
	for _, a := range authorizers {
		for _, n := range a.SignProvisioners() {
			if n == "*" || n == name {
				return true
			}
		}
	}
	return false
}

// internalWebhookHandler answers the in-process AUTHORIZING and ENRICHING
// webhooks. It fails closed: anything it cannot parse or decide is a denial,
// answered with 200 and allow=false so upstream does not retry.
func internalWebhookHandler(authorizers []plugins.SignAuthorizer, enrichers []namedEnricher, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		deny := func(code, msg string) {
			writeWebhookResponse(w, &webhook.ResponseBody{Allow: false, Error: &webhook.Error{Code: code, Message: msg}})
		}
		prov, enricher, ok := parseInternalPath(r.URL.EscapedPath())
		if !ok {
			deny("internalError", "unknown internal webhook")
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			deny("internalError", "read webhook request")
			return
		}
		var req webhook.RequestBody
		if err := json.Unmarshal(body, &req); err != nil {
			deny("internalError", "decode webhook request")
			return
		}
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
				deny("internalError", "parse x5c certificate")
				return
			}
			sr.X5CCertificate = c
		}
		if enricher != "" {
			for _, e := range enrichers {
				if e.name != enricher {
					continue
				}
				data, err := callEnricher(r.Context(), e, sr)
				if err != nil {
					code := denialCode(err)
					log.Info("issuance denied by enricher", "plugin", e.name, "provisioner", prov, "permanentIdentifier", sr.PermanentIdentifier, "reason", err.Error())
					deny(code, err.Error())
					return
				}
				writeWebhookResponse(w, &webhook.ResponseBody{Allow: true, Data: data})
				return
			}
			deny("internalError", "unknown enricher")
			return
		}
		// The daemon only adds this webhook to gated provisioners: finding no
		// authorizer means the name did not round-trip, so deny.
		matched := false
		for _, a := range authorizers {
			if !gated(prov, []plugins.SignAuthorizer{a}) {
				continue
			}
			matched = true
			if err := callAuthorizer(r.Context(), a, sr); err != nil {
				code := denialCode(err)
				log.Info("issuance denied by plugin", "provisioner", prov, "permanentIdentifier", sr.PermanentIdentifier, "reason", err.Error())
				deny(code, err.Error())
				return
			}
		}
		if !matched {
			log.Warn("issuance denied: no sign authorizer gates the provisioner", "provisioner", prov)
			deny("unauthorized", "no sign authorizer for this provisioner")
			return
		}
		writeWebhookResponse(w, &webhook.ResponseBody{Allow: true})
	})
}

// parseInternalPath splits an internal webhook path into the provisioner
// and, for ENRICHING webhooks, the enricher. Names are escaped with
// url.PathEscape when the webhook is added, so PathUnescape is exact.
func parseInternalPath(escaped string) (prov, enricher string, ok bool) {
	if rest, found := strings.CutPrefix(escaped, "/sign-authorizer/"); found {
		p, err := url.PathUnescape(rest)
		return p, "", err == nil && !strings.Contains(rest, "/")
	}
	rest, found := strings.CutPrefix(escaped, "/enrich/")
	if !found {
		return "", "", false
	}
	e, p, found := strings.Cut(rest, "/")
	if !found || strings.Contains(p, "/") {
		return "", "", false
	}
	enricher, err1 := url.PathUnescape(e)
	prov, err2 := url.PathUnescape(p)
	return prov, enricher, err1 == nil && err2 == nil
}

func callAuthorizer(ctx context.Context, a plugins.SignAuthorizer, sr plugins.SignRequest) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("sign authorizer failed: %v", r)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, 8*time.Second)
	defer cancel()
	return a.AuthorizeSign(ctx, sr)
}

// denialCode is the webhook error code for a plugin's denial: the error's
// own Code() if it has one (it becomes the ACME subproblem
// urn:smallstep:acme:error:<code>), else "unauthorized".
func denialCode(err error) string {
	var coded interface{ Code() string }
	if errors.As(err, &coded) {
		return coded.Code()
	}
	return "unauthorized"
}

func callEnricher(ctx context.Context, e namedEnricher, sr plugins.SignRequest) (data map[string]any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("sign enricher failed: %v", r)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, 8*time.Second)
	defer cancel()
	return e.EnrichSign(ctx, sr)
}

func writeWebhookResponse(w http.ResponseWriter, body *webhook.ResponseBody) {
	b, _ := json.Marshal(body)
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.Copy(w, bytes.NewReader(b))
}

// newExternalTransport mirrors upstream's internal/httptransport.New.
func newExternalTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}
