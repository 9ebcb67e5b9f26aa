package authority

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	upconfig "github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/webhook"

	"github.com/stepfort/stepfort/plugins"
)

// denyAll gates the provisioners it names and denies every issuance.
type denyAll struct{ names []string }

func (d denyAll) SignProvisioners() []string { return d.names }
func (d denyAll) AuthorizeSign(context.Context, plugins.SignRequest) error {
	return errors.New("denied by test")
}

// callSignWebhook injects the sign webhooks into a configuration with one
// JWK provisioner named name and calls the in-process webhook the way
// upstream would, returning whether it allowed issuance.
func callSignWebhook(t *testing.T, name string, authorizers []plugins.SignAuthorizer) bool {
	t.Helper()
	p := &provisioner.JWK{Name: name, Type: "JWK"}
	cfg := &upconfig.Config{AuthorityConfig: &upconfig.AuthConfig{Provisioners: provisioner.List{p}}}
	if err := injectSignWebhooks(cfg, authorizers); err != nil {
		t.Fatal(err)
	}
	if p.Options == nil || len(p.Options.Webhooks) != 1 {
		t.Fatalf("provisioner %q: expected one injected webhook", name)
	}
	return askWebhook(t, &internalWebhooks{authorizers: authorizers, log: slog.Default()}, p.Options.Webhooks[0].URL)
}

// askWebhook posts an empty request to url through the in-process webhook
// client, as upstream would, and returns whether the answer allows.
func askWebhook(t *testing.T, h http.Handler, url string) bool {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(`{}`))
	if err != nil {
		t.Fatalf("upstream could not build the webhook request for %q: %v", url, err)
	}
	resp, err := (&webhookClient{internal: h}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body webhook.ResponseBody
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return body.Allow
}

// A gated provisioner must be gated whatever its name: the name travels in
// the webhook URL, and a name that escaped differently than it unescaped
// used to match no authorizer, which allowed issuance.
func TestSignWebhookGatesEveryProvisionerName(t *testing.T) {
	for _, name := range []string{
		"plain", "with space", "a/b", "q?x#y", "café", "100%", "a%2Fb", "x+y", "tab\tname", "ümlaut/ß?%zz",
	} {
		t.Run(name, func(t *testing.T) {
			if callSignWebhook(t, name, []plugins.SignAuthorizer{denyAll{names: []string{name}}}) {
				t.Fatalf("provisioner %q is gated by an authorizer that denies everything, but issuance was allowed", name)
			}
		})
	}
}

// A request for a gated path that no authorizer claims is denied (fail
// closed), not allowed.
func TestSignWebhookWithoutAuthorizerDenies(t *testing.T) {
	allowed := askWebhook(t, &internalWebhooks{log: slog.Default()}, "https://"+internalHost+"/sign-authorizer/unknown")
	if allowed {
		t.Fatal("a sign-authorizer webhook for a provisioner no authorizer gates was allowed")
	}
}
