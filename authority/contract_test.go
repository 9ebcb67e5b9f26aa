package authority

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/smallstep/certificates/acme"
	upconfig "github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"

	"github.com/stepfort/stepfort/internal/admin"
	_ "github.com/stepfort/stepfort/internal/audit" // init enables it
	"github.com/stepfort/stepfort/internal/setup"
	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins"
)

// contractPlugin implements every optional capability and records calls.
type contractPlugin struct {
	host      plugins.Host
	mu        sync.Mutex
	started   bool // its Host.Go loop ran
	loopEnded bool // ... and returned before Stop
	stopped   bool
	activated []string // Generation.Activate calls, by OCSP URL
	signs     []plugins.SignRequest
	renewals  []string
	events    []plugins.CertificateEvent
	nonces    int
	acmeWraps int
	enriched  []string
	committed []plugins.CertificateEvent
}

// DirectRoute answers /contract/direct before any middleware.
func (p *contractPlugin) DirectRoute(r *http.Request) http.Handler {
	if r.URL.Path != "/contract/direct" {
		return nil
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// No request id: the middleware did not run.
		io.WriteString(w, "direct:"+w.Header().Get("X-Request-Id"))
	})
}

func (p *contractPlugin) CertificateCommitted(ev plugins.CertificateEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.committed = append(p.committed, ev)
}

func (p *contractPlugin) Name() string { return "contract" }

// newContractPlugin checks that the host is complete when the plugin is
// built, and starts a background loop through it.
func newContractPlugin(h plugins.Host) (*contractPlugin, error) {
	if h.DB() == nil || h.Logger() == nil || h.Locker() == nil || h.Events() == nil || h.Metrics() == nil {
		return nil, errors.New("incomplete host")
	}
	if h.Backend() != "bbolt" || !strings.Contains(h.Replica(), "|") || h.Now().IsZero() {
		return nil, fmt.Errorf("host backend %q replica %q", h.Backend(), h.Replica())
	}
	if ok, err := h.Locker().TryLock(context.Background(), "contract", time.Minute); err != nil || !ok {
		return nil, fmt.Errorf("lease: %v %v", ok, err)
	}
	p := &contractPlugin{host: h}
	h.Go("loop", func(ctx context.Context) {
		p.mu.Lock()
		p.started = true
		p.mu.Unlock()
		<-ctx.Done()
		p.mu.Lock()
		p.loopEnded = true
		p.mu.Unlock()
	})
	return p, nil
}

func (p *contractPlugin) Stop(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.loopEnded {
		return errors.New("Stop called before the plugin's Host.Go loop returned")
	}
	p.stopped = true
	return nil
}

func (p *contractPlugin) Routes(r chi.Router) {
	r.Get("/contract/ping", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "https-pong") })
}

func (p *contractPlugin) InsecureRoutes(r chi.Router) {
	r.Get("/contract/ping", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "http-pong") })
}

func (p *contractPlugin) AdminRoutes() []plugins.AdminRoute {
	return []plugins.AdminRoute{{Method: http.MethodGet, Pattern: "/contract", Scope: "contract:read",
		Handler: func(w http.ResponseWriter, r *http.Request) {
			admin.WriteJSON(w, http.StatusOK, map[string]string{"token": admin.TokenFrom(r).Name})
		}}}
}

// contractGeneration is the plugin's per-generation value: the OCSP URL
// its enforcer adds.
type contractGeneration struct {
	p    *contractPlugin
	ocsp string
}

func (g contractGeneration) Activate() {
	g.p.mu.Lock()
	defer g.p.mu.Unlock()
	g.p.activated = append(g.p.activated, g.ocsp)
}

func (g contractGeneration) EnforceCertificate(cert *x509.Certificate) error {
	cert.OCSPServer = []string{g.ocsp}
	return nil
}

func (p *contractPlugin) MutateConfig(cfg *upconfig.Config) (plugins.Generation, error) {
	cfg.AuthorityConfig.Provisioners = append(cfg.AuthorityConfig.Provisioners, &provisioner.ACME{Type: "ACME", Name: "added-by-plugin"})
	// A template that reads the SignEnricher's data.
	for _, prov := range cfg.AuthorityConfig.Provisioners {
		if jwk, ok := prov.(*provisioner.JWK); ok && jwk.Name == "admin" {
			jwk.Options = &provisioner.Options{X509: &provisioner.X509Options{Template: `{
	"subject": {"commonName": {{ toJson .Subject.CommonName }}, "organizationalUnit": {{ toJson .Webhooks.contract.team }}},
	"sans": {{ toJson .SANs }},
	"keyUsage": ["digitalSignature"],
	"extKeyUsage": ["serverAuth", "clientAuth"]
}`}}
		}
	}
	return contractGeneration{p: p, ocsp: "http://contract.example/ocsp"}, nil
}

func (p *contractPlugin) EnrichProvisioners() []string { return []string{"admin"} }

func (p *contractPlugin) EnrichSign(_ context.Context, req plugins.SignRequest) (map[string]any, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if req.CSR == nil || req.Provisioner != "admin" {
		return nil, errors.New("enricher got no CSR")
	}
	p.enriched = append(p.enriched, req.CSR.Subject.CommonName)
	return map[string]any{"team": "blue"}, nil
}

func (p *contractPlugin) SignProvisioners() []string { return []string{"admin"} }

func (p *contractPlugin) AuthorizeSign(_ context.Context, req plugins.SignRequest) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.signs = append(p.signs, req)
	if req.Certificate != nil && req.Certificate.Subject.CommonName == "forbidden.example" {
		return errors.New("device is not registered")
	}
	return nil
}

func (p *contractPlugin) AuthorizeRenew(_ context.Context, req plugins.RenewRequest) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if req.Provisioner.Name != "admin" || req.Provisioner.Type != "JWK" {
		return fmt.Errorf("renew request names provisioner %+v", req.Provisioner)
	}
	cert := req.Certificate
	p.renewals = append(p.renewals, cert.Subject.CommonName)
	if cert.Subject.CommonName == "norenew.example" {
		return errors.New("device disabled")
	}
	return nil
}

type countingACMEDB struct {
	acme.DB
	p *contractPlugin
}

func (c countingACMEDB) CreateNonce(ctx context.Context) (acme.Nonce, error) {
	c.p.mu.Lock()
	c.p.nonces++
	c.p.mu.Unlock()
	return c.DB.CreateNonce(ctx)
}

func (p *contractPlugin) WrapACMEDB(db acme.DB) acme.DB {
	p.acmeWraps++
	return countingACMEDB{DB: db, p: p}
}

func (p *contractPlugin) ObserveCertificate(_ context.Context, ev plugins.CertificateEvent) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = append(p.events, ev)
	return nil
}

// TestPluginContract mounts a plugin with every capability into a real
// daemon and drives it with the real step CLI.
func TestPluginContract(t *testing.T) {
	var p *contractPlugin
	d := startDaemon(t, PluginBuilder{Name: "contract", New: func(h plugins.Host) (plugins.Plugin, error) {
		var err error
		p, err = newContractPlugin(h)
		return p, err
	}})
	res, base := d.res, d.https
	p.mu.Lock()
	if !p.started || p.acmeWraps == 0 || strings.Join(p.activated, ",") != "http://contract.example/ocsp" {
		t.Fatalf("started=%v acmeWraps=%d activated=%v", p.started, p.acmeWraps, p.activated)
	}
	p.mu.Unlock()

	hc := rootClient(t, res.RootFile)
	get := func(url, token string) (int, string) {
		req, _ := http.NewRequest("GET", url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(base+"/contract/ping", ""); code != 200 || body != "https-pong" {
		t.Fatalf("HTTPS route: %d %q", code, body)
	}
	if code, body := get(d.insecure+"/contract/ping", ""); code != 200 || body != "http-pong" {
		t.Fatalf("HTTP route: %d %q", code, body)
	}
	for _, u := range []string{base, d.insecure} {
		if code, body := get(u+"/contract/direct", ""); code != 200 || body != "direct:" {
			t.Fatalf("direct route on %s: %d %q", u, code, body)
		}
	}
	adminToken, _ := os.ReadFile(res.AdminTokenFile)
	if code, body := get(base+"/api/v1/contract", strings.TrimSpace(string(adminToken))); code != 200 || !strings.Contains(body, `"init"`) {
		t.Fatalf("admin route: %d %s", code, body)
	}
	if code, _ := get(base+"/api/v1/contract", ""); code != 401 {
		t.Fatalf("admin route without token: %d", code)
	}
	if code, body := get(base+"/provisioners", ""); code != 200 || !strings.Contains(body, "added-by-plugin") {
		t.Fatalf("ConfigMutator provisioner missing: %s", body)
	}
	if code, _ := get(base+"/acme/acme/new-nonce", ""); code != http.StatusNoContent {
		t.Fatalf("new-nonce: %d", code)
	}

	step := stepCLI(t, res)
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "ok.crt"), filepath.Join(dir, "ok.key")
	step("ca", "certificate", "allowed.example", crt, key, "--provisioner", "admin", "--provisioner-password-file", res.PasswordFile)
	// The watcher heard of the issuance before the CLI got its answer.
	p.mu.Lock()
	if len(p.committed) != 1 || p.committed[0].Kind != plugins.EventIssued || p.committed[0].Serial != readPEMCert(t, crt).SerialNumber.String() {
		t.Fatalf("CertificateWatcher saw %+v", p.committed)
	}
	p.mu.Unlock()
	if out, err := stepErr(t, res, "ca", "certificate", "forbidden.example", filepath.Join(dir, "f.crt"), filepath.Join(dir, "f.key"),
		"--provisioner", "admin", "--provisioner-password-file", res.PasswordFile); err == nil {
		t.Fatalf("SignAuthorizer denial ignored:\n%s", out)
	}
	step("ca", "renew", "--force", crt, key)
	// The enforcer's extension is in the issued certificate and survives
	// renewal; so does the enricher's data, rendered by the template.
	if c := readPEMCert(t, crt); len(c.OCSPServer) != 1 || c.OCSPServer[0] != "http://contract.example/ocsp" {
		t.Fatalf("renewed certificate OCSP servers %v", c.OCSPServer)
	} else if len(c.Subject.OrganizationalUnit) != 1 || c.Subject.OrganizationalUnit[0] != "blue" {
		t.Fatalf("enriched template data missing: subject %v", c.Subject)
	}
	nr, nk := filepath.Join(dir, "nr.crt"), filepath.Join(dir, "nr.key")
	step("ca", "certificate", "norenew.example", nr, nk, "--provisioner", "admin", "--provisioner-password-file", res.PasswordFile)
	if out, err := stepErr(t, res, "ca", "renew", "--force", nr, nk); err == nil {
		t.Fatalf("RenewAuthorizer denial ignored:\n%s", out)
	}

	deadline := time.Now().Add(10 * time.Second)
	for {
		p.mu.Lock()
		n := len(p.events)
		p.mu.Unlock()
		if n >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stopped || p.nonces == 0 {
		t.Fatalf("stopped=%v nonces=%d", p.stopped, p.nonces)
	}
	if ok, err := p.host.Locker().TryLock(context.Background(), "contract", time.Minute); ok || err == nil {
		t.Fatalf("leases after stop: %v %v (the database should be closed)", ok, err)
	}
	var cns []string
	for _, s := range p.signs {
		if s.Provisioner != "admin" || s.Certificate == nil {
			t.Fatalf("sign request %+v", s)
		}
		cns = append(cns, s.Certificate.Subject.CommonName)
	}
	if strings.Join(cns, ",") != "allowed.example,forbidden.example,norenew.example" {
		t.Fatalf("SignAuthorizer saw %v", cns)
	}
	if strings.Join(p.enriched, ",") != "allowed.example,forbidden.example,norenew.example" {
		t.Fatalf("SignEnricher saw %v", p.enriched)
	}
	if strings.Join(p.renewals, ",") != "allowed.example,norenew.example" {
		t.Fatalf("RenewAuthorizer saw %v", p.renewals)
	}
	kinds := map[plugins.EventKind]int{}
	for _, ev := range p.events {
		kinds[ev.Kind]++
	}
	if kinds[plugins.EventIssued] != 2 || kinds[plugins.EventRenewed] != 1 {
		t.Fatalf("observer events %v", kinds)
	}
	if len(p.committed) != 3 || p.committed[1].Kind != plugins.EventRenewed {
		t.Fatalf("watcher events %+v", p.committed)
	}
}

func mustPort(t *testing.T) int {
	p, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func rootClient(t *testing.T, rootFile string) *http.Client {
	b, err := os.ReadFile(rootFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

func stepErr(t *testing.T, res *setup.Result, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(testenv.MustTool(t, "step"), args...)
	cmd.Env = append(os.Environ(), "STEPPATH="+res.Dir)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// stepCLI returns a runner that uses the init directory as STEPPATH (init
// writes config/defaults.json for the step CLI there).
func stepCLI(t *testing.T, res *setup.Result) func(args ...string) string {
	return func(args ...string) string {
		t.Helper()
		out, err := stepErr(t, res, args...)
		if err != nil {
			t.Fatalf("step %v: %v\n%s", args, err, out)
		}
		return out
	}
}

func readPEMCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// keepOnlyAuditLog drops the other plugins init enables, so this test needs
// only the contract plugin and auditLog.
func keepOnlyAuditLog(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	pl := m["stepfort"].(map[string]any)["plugins"].(map[string]any)
	for name := range pl {
		if name != "auditLog" {
			delete(pl, name)
		}
	}
	b, _ = json.Marshal(m)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
