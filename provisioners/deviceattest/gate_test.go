package deviceattest

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/certificates/acme"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/inventory"
	"github.com/stepfort/stepfort/plugins"
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
	db, err := nosql.New("bbolt", filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	inv, err := inventory.NewStore(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	links, err := NewLinks(db)
	if err != nil {
		t.Fatal(err)
	}
	p := New(cfg)
	p.state.Store(&state{
		gate:  &Gate{Inventory: inv, Collections: cfg.Collections},
		links: links,
		auth:  func() *authorityT { return nil },
		log:   testLogger(t),
		now:   time.Now,
	})
	return p, inv
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

func TestConfigValidate(t *testing.T) {
	for _, tt := range []struct {
		name string
		mod  func(c *Config)
		ok   bool
	}{
		{"default", func(*Config) {}, true},
		{"gate off", func(c *Config) { c.Provisioners = nil }, true},
		{"wildcard", func(c *Config) { c.Provisioners = []string{"*"} }, false},
		{"account also gated", func(c *Config) { c.AccountProvisioners = []string{"agents"} }, false},
		{"bad reason", func(c *Config) { c.RevocationReasonCode = 2 }, false},
		{"sweep too fast", func(c *Config) { c.SweepInterval = config.Duration{Duration: time.Millisecond} }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := defaultConfig()
			tt.mod(c)
			if err := c.Validate(); (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}
