package deviceattest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"math/big"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/certificates/acme"
	"github.com/smallstep/certificates/authority/provisioner"

	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// recordingDB is upstream's acme.DB as far as the gate uses it.
type recordingDB struct {
	acme.DB
	stored *acme.Challenge
}

func (r *recordingDB) UpdateChallenge(_ context.Context, ch *acme.Challenge) error {
	c := *ch
	r.stored = &c
	return nil
}

func newTestPlugin(t *testing.T, cfg *Config) (*Plugin, *inventory.Store) {
	t.Helper()
	p, inv, _ := newPluginOn(t, cfg, plugintest.NewHost(t))
	return p, inv
}

// newPluginOn builds the plugin on h, holding back the goroutines it
// starts (the sweep) so a test decides when they run; it returns an
// inventory store on the same database.
func newPluginOn(t *testing.T, cfg *Config, h *plugintest.Host) (*Plugin, *inventory.Store, *heldHost) {
	t.Helper()
	h.Log = testLogger(t)
	held := &heldHost{Host: h}
	p, err := New(cfg, held)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := inventory.NewStore(h.DB(), h.Now)
	if err != nil {
		t.Fatal(err)
	}
	return p, inv, held
}

// heldHost is a plugintest.Host whose Go keeps the goroutines for the
// test to start with run.
type heldHost struct {
	*plugintest.Host
	mu  sync.Mutex
	fns map[string]func(ctx context.Context)
}

func (h *heldHost) Go(name string, fn func(ctx context.Context)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fns == nil {
		h.fns = map[string]func(context.Context){}
	}
	h.fns[name] = fn
}

// run starts the held goroutine name in the host's group.
func (h *heldHost) run(t *testing.T, name string) {
	t.Helper()
	h.mu.Lock()
	fn := h.fns[name]
	h.mu.Unlock()
	if fn == nil {
		t.Fatalf("no goroutine %q started (have %v)", name, h.fns)
	}
	h.Host.Go(name, fn)
}

// TestChallengeGateFormats drives the wrapped UpdateChallenge with apple
// (UDID / serial) and step (YubiKey serial) challenges from testdata, as
// upstream's deviceAttest01Validate leaves them after a valid attestation.
func TestChallengeGateFormats(t *testing.T) {
	var fixtures []struct {
		Name, Format, Value, Status, Collection, Provisioner, Want, Detail string
		Register                                                           bool
	}
	b, err := os.ReadFile("testdata/challenges.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &fixtures); err != nil {
		t.Fatal(err)
	}
	cfg := defaultConfig()
	cfg.Collections = []string{"", "fleet"}
	p, inv := newTestPlugin(t, cfg)
	if _, err := inv.CreateCollection(inventory.Collection{Name: "lab"}); err != nil {
		t.Fatal(err)
	}
	for _, f := range fixtures {
		if !f.Register {
			continue
		}
		if _, err := inv.Create(inventory.DeviceInput{Identifiers: []string{f.Value}, Status: inventory.Status(f.Status), Collection: f.Collection}); err != nil {
			t.Fatalf("%s: register: %v", f.Name, err)
		}
	}
	for _, tt := range fixtures {
		t.Run(tt.Name, func(t *testing.T) {
			rec := &recordingDB{}
			db := p.WrapACMEDB(rec)
			prov := tt.Provisioner
			if prov == "" {
				prov = "agents"
			}
			ctx := acme.NewProvisionerContext(context.Background(), &provisioner.ACME{Name: prov})
			ch := &acme.Challenge{Type: acme.DEVICEATTEST01, Status: acme.StatusValid, Value: tt.Value, PayloadFormat: tt.Format, ValidatedAt: "now"}
			if err := db.UpdateChallenge(ctx, ch); err != nil {
				t.Fatal(err)
			}
			if string(rec.stored.Status) != tt.Want {
				t.Fatalf("status %s, want %s (error %v)", rec.stored.Status, tt.Want, rec.stored.Error)
			}
			if tt.Want == "invalid" {
				e := rec.stored.Error
				if e == nil || e.Type != "urn:ietf:params:acme:error:rejectedIdentifier" || !strings.HasSuffix(e.Detail, tt.Detail) {
					t.Fatalf("error %+v, want rejectedIdentifier with %q", e, tt.Detail)
				}
				if rec.stored.ValidatedAt != "" {
					t.Fatal("invalid challenge keeps validated time")
				}
			}
		})
	}
}

// TestGateFinalizeAndRenew: the SignAuthorizer denies finalize for a
// disabled device and a missing identifier; renewals of gated provisioners
// without a link or identifier are denied (fail closed).
func TestGateFinalizeAndRenew(t *testing.T) {
	p, inv := newTestPlugin(t, defaultConfig())
	d, err := inv.Create(inventory.DeviceInput{Identifiers: []string{"17255819"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := p.AuthorizeSign(ctx, plugins.SignRequest{Provisioner: "agents", PermanentIdentifier: "17255819"}); err != nil {
		t.Fatalf("active device denied: %v", err)
	}
	if err := p.AuthorizeSign(ctx, plugins.SignRequest{Provisioner: "agents"}); err == nil {
		t.Fatal("finalize without a permanent identifier allowed")
	}
	if err := p.AuthorizeSign(ctx, plugins.SignRequest{Provisioner: "accounts"}); err == nil {
		t.Fatal("account certificate without an x5c leaf allowed")
	}
	if err := p.AuthorizeSign(ctx, plugins.SignRequest{Provisioner: "admin"}); err != nil {
		t.Fatalf("ungated provisioner: %v", err)
	}
	disabled := inventory.StatusDisabled
	if _, err := inv.Update(d.ID, inventory.DevicePatch{Status: &disabled}); err != nil {
		t.Fatal(err)
	}
	err = p.AuthorizeSign(ctx, plugins.SignRequest{Provisioner: "agents", PermanentIdentifier: "17255819"})
	if err == nil || err.Error() != "device 17255819 is disabled" {
		t.Fatalf("disabled device: %v", err)
	}
}

// TestRenewGate checks /renew and /rekey on their own (in the e2e flow a
// disabled device's certificates are also revoked, which upstream refuses
// first): an active device's certificate renews, a disabled device's does
// not, and an unlinked certificate on a gated provisioner is refused.
func TestRenewGate(t *testing.T) {
	p, inv := newTestPlugin(t, defaultConfig())
	d, err := inv.Create(inventory.DeviceInput{Identifiers: []string{"17255819"}})
	if err != nil {
		t.Fatal(err)
	}
	agents := plugins.ProvisionerRef{Type: "ACME", Name: "agents"}
	device := certWithPermanentIdentifier(t, "17255819")
	ctx := context.Background()
	if err := p.AuthorizeRenew(ctx, plugins.RenewRequest{Provisioner: agents, Certificate: device}); err != nil {
		t.Fatalf("active device's renewal refused: %v", err)
	}
	if err := p.AuthorizeRenew(ctx, plugins.RenewRequest{Provisioner: agents, Certificate: certWithPermanentIdentifier(t, "")}); err == nil {
		t.Fatal("renewal of a certificate linked to no device allowed")
	}
	disabled := inventory.StatusDisabled
	if _, err := inv.Update(d.ID, inventory.DevicePatch{Status: &disabled}); err != nil {
		t.Fatal(err)
	}
	if err := p.AuthorizeRenew(ctx, plugins.RenewRequest{Provisioner: agents, Certificate: device}); err == nil || err.Error() != "device 17255819 is disabled" {
		t.Fatalf("disabled device's renewal: %v", err)
	}
	other := plugins.ProvisionerRef{Type: "JWK", Name: "admin"}
	if err := p.AuthorizeRenew(ctx, plugins.RenewRequest{Provisioner: other, Certificate: device}); err != nil {
		t.Fatalf("ungated provisioner's renewal refused: %v", err)
	}
}

func certWithPermanentIdentifier(t *testing.T, pid string) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "device"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	if pid != "" {
		// SAN otherName PermanentIdentifier (RFC 4043), as the ACME
		// device-attest-01 template writes it.
		value, _ := asn1.Marshal(struct {
			IdentifierValue string `asn1:"utf8"`
		}{pid})
		other, _ := asn1.Marshal(struct {
			TypeID asn1.ObjectIdentifier
			Value  asn1.RawValue
		}{asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 8, 3}, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: value}})
		var seq asn1.RawValue
		if _, err := asn1.Unmarshal(other, &seq); err != nil {
			t.Fatal(err)
		}
		san, _ := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: seq.Bytes}})
		tmpl.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: san}}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if got := permanentIdentifier(cert); got != pid {
		t.Fatalf("test certificate carries permanent identifier %q, want %q", got, pid)
	}
	return cert
}
