package authority

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	upconfig "github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/webhook"

	"github.com/stepfort/stepfort/plugins"
)

func TestParseInternalPath(t *testing.T) {
	for _, tt := range []struct {
		path string
		want internalPath
		ok   bool
	}{
		{"/sign-authorizer/a%2Fb", internalPath{route: signPath, provisioner: "a/b"}, true},
		{"/enrich/deviceAttest/agents", internalPath{route: enrichPath, plugin: "deviceAttest", provisioner: "agents"}, true},
		{"/scep-challenge/dynamicScep/scep", internalPath{route: scepCheckPath, plugin: "dynamicScep", provisioner: "scep"}, true},
		{"/scep-notify/dynamicScep/sc%20ep", internalPath{route: scepNotifyPath, plugin: "dynamicScep", provisioner: "sc ep"}, true},
		{"/sign-authorizer/a/b", internalPath{}, false},
		{"/enrich/onlyone", internalPath{}, false},
		{"/scep-challenge/p/%zz", internalPath{}, false},
		{"/other/x", internalPath{}, false},
		{"/sign-authorizer/", internalPath{}, false},
	} {
		got, ok := parseInternalPath(tt.path)
		if ok != tt.ok || got != tt.want {
			t.Errorf("%s: %+v %v, want %+v %v", tt.path, got, ok, tt.want, tt.ok)
		}
	}
}

// scepPlugin accepts the challenge "good" and records notifications.
type scepPlugin struct{ notified []plugins.SCEPIssued }

func (*scepPlugin) SCEPProvisioners() []string { return []string{"scep"} }
func (*scepPlugin) ValidateSCEPChallenge(_ context.Context, req plugins.SCEPRequest) (map[string]any, error) {
	if req.Challenge != "good" || req.CSR == nil || req.Provisioner != "scep" {
		return nil, errors.New("challenge refused")
	}
	return map[string]any{"device": "d1"}, nil
}
func (p *scepPlugin) NotifySCEP(_ context.Context, ev plugins.SCEPIssued) {
	p.notified = append(p.notified, ev)
}

// The SCEP webhooks reach only SCEP provisioners named by the plugin, and
// the in-process handler answers them as upstream expects.
func TestSCEPWebhooks(t *testing.T) {
	sp := &scepPlugin{}
	scep := []namedSCEP{{name: "dyn", validator: sp, notifier: sp}}
	prov := &provisioner.SCEP{Name: "scep", Type: "SCEP", ChallengePassword: "static"}
	other := &provisioner.SCEP{Name: "other", Type: "SCEP"}
	jwk := &provisioner.JWK{Name: "scep", Type: "JWK"} // same name, wrong type
	cfg := &upconfig.Config{AuthorityConfig: &upconfig.AuthConfig{Provisioners: provisioner.List{prov, other, jwk}}}
	if err := injectSCEPWebhooks(cfg, scep); err != nil {
		t.Fatal(err)
	}
	if other.Options != nil || jwk.Options != nil {
		t.Fatal("SCEP webhooks added to a provisioner the plugin does not name")
	}
	kinds := map[string]string{}
	for _, w := range prov.Options.Webhooks {
		kinds[w.Kind] = w.URL
	}
	if len(kinds) != 2 || !strings.HasSuffix(kinds["SCEPCHALLENGE"], "/scep-challenge/dyn/scep") || !strings.HasSuffix(kinds["NOTIFYING"], "/scep-notify/dyn/scep") {
		t.Fatalf("webhooks %v", kinds)
	}

	h := &internalWebhooks{scep: scep, log: slog.Default()}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csrDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "device"}}, key)
	call := func(url string, body webhook.RequestBody) webhook.ResponseBody {
		b, _ := json.Marshal(body)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, url, strings.NewReader(string(b))))
		var out webhook.ResponseBody
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	csr := &webhook.X509CertificateRequest{Raw: csrDER}
	if r := call(kinds["SCEPCHALLENGE"], webhook.RequestBody{SCEPChallenge: "good", X509CertificateRequest: csr}); !r.Allow || r.Data.(map[string]any)["device"] != "d1" {
		t.Fatalf("good challenge: %+v", r)
	}
	if r := call(kinds["SCEPCHALLENGE"], webhook.RequestBody{SCEPChallenge: "bad", X509CertificateRequest: csr}); r.Allow {
		t.Fatal("bad challenge allowed")
	}
	if r := call(kinds["SCEPCHALLENGE"], webhook.RequestBody{SCEPChallenge: "good"}); r.Allow {
		t.Fatal("a request without a CSR was allowed")
	}
	if r := call(internalURL(scepCheckPath, "nobody", "scep"), webhook.RequestBody{SCEPChallenge: "good", X509CertificateRequest: csr}); r.Allow {
		t.Fatal("an unknown validator allowed")
	}
	tmpl := &x509.Certificate{SerialNumber: bigOne(), Subject: pkix.Name{CommonName: "device"}}
	certDER, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	call(kinds["NOTIFYING"], webhook.RequestBody{SCEPTransactionID: "tx1", X509CertificateRequest: csr, X509Certificate: &webhook.X509Certificate{Raw: certDER}})
	if len(sp.notified) != 1 || sp.notified[0].TransactionID != "tx1" || sp.notified[0].Certificate.Subject.CommonName != "device" || sp.notified[0].Provisioner != "scep" {
		t.Fatalf("notified %+v", sp.notified)
	}
}

func bigOne() *big.Int { return big.NewInt(1) }
