package authority

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	upconfig "github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/db"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/internal/setup"
	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins"
)

// revokingPlugin observes certificate events and counts generations.
type revokingPlugin struct {
	host plugins.Host

	mu          sync.Mutex
	events      []plugins.CertificateEvent
	activations int
}

type countingGeneration struct{ p *revokingPlugin }

func (g countingGeneration) Activate() {
	g.p.mu.Lock()
	defer g.p.mu.Unlock()
	g.p.activations++
}

func (p *revokingPlugin) Name() string { return "revoking" }
func (p *revokingPlugin) MutateConfig(*upconfig.Config) (plugins.Generation, error) {
	return countingGeneration{p}, nil
}
func (p *revokingPlugin) ObserveCertificate(_ context.Context, ev plugins.CertificateEvent) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = append(p.events, ev)
	return nil
}

// testDaemon is a daemon serving a fresh `stepfort init` directory.
type testDaemon struct {
	*Daemon
	res             *setup.Result
	https, insecure string // base URLs
	// stop stops the daemon and returns Run's error; it runs once (again
	// at cleanup).
	stop func() error
}

// startDaemon runs a daemon on a fresh `stepfort init` directory with only
// the auditLog plugin from ca.json plus extra.
func startDaemon(t *testing.T, extra ...PluginBuilder) *testDaemon {
	t.Helper()
	return runDaemon(t, initCA(t, nil), extra...)
}

// initCA writes a fresh `stepfort init` directory with only the auditLog
// plugin, then lets edit change ca.json.
func initCA(t *testing.T, edit func(caJSON map[string]any)) *setup.Result {
	t.Helper()
	port, httpPort := mustPort(t), mustPort(t)
	res, err := setup.Init(setup.Options{Dir: filepath.Join(t.TempDir(), "ca"),
		Address: fmt.Sprintf("127.0.0.1:%d", port), InsecureAddress: fmt.Sprintf("127.0.0.1:%d", httpPort)})
	if err != nil {
		t.Fatal(err)
	}
	keepOnlyAuditLog(t, res.ConfigFile)
	if edit != nil {
		b, _ := os.ReadFile(res.ConfigFile)
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		edit(m)
		b, _ = json.Marshal(m)
		if err := os.WriteFile(res.ConfigFile, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return res
}

// runDaemon serves the CA in res until the test ends (or td.stop).
func runDaemon(t *testing.T, res *setup.Result, extra ...PluginBuilder) *testDaemon {
	t.Helper()
	file, err := config.Load(res.ConfigFile)
	if err != nil {
		t.Fatal(err)
	}
	pw, _ := os.ReadFile(res.PasswordFile)
	d, err := New(file, Options{Password: []byte(strings.TrimSpace(string(pw))), Quiet: true, Plugins: extra})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Listen(); err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- d.Run() }()
	_, port, _ := net.SplitHostPort(file.CA.Address)
	_, httpPort, _ := net.SplitHostPort(file.CA.InsecureAddress)
	td := &testDaemon{Daemon: d, res: res,
		https: "https://localhost:" + port, insecure: "http://127.0.0.1:" + httpPort,
		stop: sync.OnceValue(func() error { return errors.Join(d.Stop(), <-runErr) })}
	t.Cleanup(func() {
		if err := td.stop(); err != nil {
			t.Error(err)
		}
	})
	if err := testenv.WaitHTTPS(td.https+"/health", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	return td
}

// An administrative revocation goes through upstream (revoked table,
// event) and says who revoked, instead of posing as an mTLS revocation.
func TestHostRevokeRecordsTheActor(t *testing.T) {
	p := &revokingPlugin{}
	d := startDaemon(t, PluginBuilder{Name: "revoking", New: func(h plugins.Host) (plugins.Plugin, error) {
		p.host = h
		return p, nil
	}})
	res := d.res
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "a.crt"), filepath.Join(dir, "a.key")
	stepCLI(t, res)("ca", "certificate", "revoke-me.example", crt, key, "--provisioner", "admin", "--provisioner-password-file", res.PasswordFile)
	serial := readPEMCert(t, crt).SerialNumber.String()
	ctx := context.Background()

	if err := p.host.Revoke(ctx, plugins.RevokeRequest{Serial: serial, ReasonCode: 1, Reason: "key compromise"}); err == nil {
		t.Fatal("a revocation without an actor was accepted")
	}
	if err := p.host.Revoke(ctx, plugins.RevokeRequest{Serial: serial, ReasonCode: 1, Reason: "key compromise", Actor: "plugin:revoking"}); err != nil {
		t.Fatal(err)
	}
	if err := p.host.Revoke(ctx, plugins.RevokeRequest{Serial: serial, ReasonCode: 1, Actor: "plugin:revoking"}); !errors.Is(err, plugins.ErrAlreadyRevoked) {
		t.Fatalf("second revocation: %v, want ErrAlreadyRevoked", err)
	}
	if err := p.host.Revoke(ctx, plugins.RevokeRequest{Serial: "12345", Actor: "plugin:revoking"}); !errors.Is(err, plugins.ErrUnknownCertificate) {
		t.Fatalf("unknown serial: %v, want ErrUnknownCertificate", err)
	}

	b, err := d.DB().Get([]byte("revoked_x509_certs"), []byte(serial))
	if err != nil {
		t.Fatal(err)
	}
	var rci db.RevokedCertificateInfo
	if err := json.Unmarshal(b, &rci); err != nil {
		t.Fatal(err)
	}
	if rci.MTLS || rci.ACME || rci.TokenID != "stepfort-admin:plugin:revoking" || rci.ReasonCode != 1 {
		t.Fatalf("stored revocation %+v", rci)
	}
	ev := waitEvent(t, p, plugins.EventRevoked)
	if r := ev.Revocation; r == nil || r.MTLS || r.Actor != "plugin:revoking" || ev.Serial != serial {
		t.Fatalf("revoked event %+v / %+v", ev, ev.Revocation)
	}
}

// Each generation's value is activated once it serves: at start and after
// every reload.
func TestGenerationActivatedOnReload(t *testing.T) {
	p := &revokingPlugin{}
	d := startDaemon(t, PluginBuilder{Name: "revoking", New: func(h plugins.Host) (plugins.Plugin, error) {
		p.host = h
		return p, nil
	}})
	if err := d.Reload(); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.activations != 2 {
		t.Fatalf("activations = %d, want 2 (start and reload)", p.activations)
	}
}

func waitEvent(t *testing.T, p *revokingPlugin, kind plugins.EventKind) plugins.CertificateEvent {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		for _, ev := range p.events {
			if ev.Kind == kind {
				p.mu.Unlock()
				return ev
			}
		}
		p.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %s event within 10s", kind)
	return plugins.CertificateEvent{}
}
