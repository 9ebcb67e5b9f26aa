package authority

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
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

// injectSCEPWebhooks adds the in-process SCEPCHALLENGE and NOTIFYING
// webhooks of SCEP plugins to the SCEP provisioners they name. With a
// SCEPCHALLENGE webhook upstream ignores the provisioner's static
// challenge.
func injectSCEPWebhooks(cfg *config.Config, scep []namedSCEP) error {
	if cfg.AuthorityConfig == nil {
		return nil
	}
	for _, p := range cfg.AuthorityConfig.Provisioners {
		if p.GetType() != provisioner.TypeSCEP {
			continue
		}
		for _, wh := range scepWebhooks(scep, p.GetName()) {
			if err := addWebhook(p, wh.name, wh.kind, wh.url); err != nil {
				return err
			}
		}
	}
	return nil
}

// scepWebhook is one in-process SCEP webhook of a provisioner.
type scepWebhook struct{ name, kind, url string }

// scepWebhooks are the in-process webhooks of the SCEP provisioner prov.
func scepWebhooks(scep []namedSCEP, prov string) []scepWebhook {
	var out []scepWebhook
	for _, n := range scep {
		if !slices.Contains(n.provisioners(), prov) {
			continue
		}
		if n.validator != nil {
			out = append(out, scepWebhook{n.name, "SCEPCHALLENGE", internalURL(scepCheckPath, n.name, prov)})
		}
		if n.notifier != nil {
			out = append(out, scepWebhook{n.name + "-notify", "NOTIFYING", internalURL(scepNotifyPath, n.name, prov)})
		}
	}
	return out
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
func signWebhookURL(prov string) string { return internalURL(signPath, prov) }

// enrichWebhookURL is an enricher's in-process ENRICHING webhook of a
// provisioner.
func enrichWebhookURL(enricher, prov string) string { return internalURL(enrichPath, enricher, prov) }

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

func callAuthorizer(ctx context.Context, a plugins.SignAuthorizer, sr plugins.SignRequest) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("sign authorizer failed: %v", r)
		}
	}()
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
