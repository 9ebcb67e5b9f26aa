package deviceattest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// orderFixture is a plugin on one backend with one registered device and
// upstream's certificate table, which the observer consults.
type orderFixture struct {
	p   *Plugin
	h   *plugintest.Host
	inv *inventory.Store
	dev *inventory.Device
	n   int
}

func newOrderFixture(t *testing.T, backend string) *orderFixture {
	t.Helper()
	db := openDB(t, backend)
	if err := db.CreateTable(storage.CertsTable); err != nil {
		t.Fatal(err)
	}
	h := plugintest.NewHostWithDB(t, db, backend)
	p, inv, _ := newPluginOn(t, defaultConfig(), h)
	d, err := inv.Create(inventory.DeviceInput{Identifiers: []string{"17255819"}})
	if err != nil {
		t.Fatal(err)
	}
	return &orderFixture{p: p, h: h, inv: inv, dev: d}
}

// event returns the event of a new certificate; stored puts it in
// upstream's certificate table, as every certificate of the CA is.
func (f *orderFixture) event(t *testing.T, kind plugins.EventKind, prov, pid, parent string, stored bool) plugins.CertificateEvent {
	t.Helper()
	f.n++
	c := certWithPermanentIdentifier(t, pid)
	if stored {
		if err := f.h.DB().Set(storage.CertsTable, []byte(c.SerialNumber.String()), c.Raw); err != nil {
			t.Fatal(err)
		}
	}
	return plugins.CertificateEvent{ID: fmt.Sprintf("ev-%d", f.n), Kind: kind, Serial: c.SerialNumber.String(), OccurredAt: f.h.Now(),
		Provisioner: &plugins.ProvisionerRef{Name: prov}, ParentSerial: parent, CertificateDER: c.Raw}
}

// linked reports the device a serial is linked to ("" for none).
func (f *orderFixture) linked(t *testing.T, serial string) string {
	t.Helper()
	k, found, err := f.p.links.Get(serial)
	if err != nil {
		t.Fatal(err)
	}
	if !found {
		return ""
	}
	return k.DeviceID
}

// TestRenewedBeforeIssued: a renewal's event delivered before its
// parent's issued event is not dropped. An account certificate's renewal
// is retried until the parent is linked, and then revoked with the
// device; a device certificate's renewal is linked by its permanent
// identifier at once. Renewals that can never be linked are not retried.
func TestRenewedBeforeIssued(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			f := newOrderFixture(t, backend)
			ctx := context.Background()
			observe := func(ev plugins.CertificateEvent) error { return f.p.ObserveCertificate(ctx, ev) }

			// The device certificate and an account certificate bought
			// with it; the account certificate is renewed, and that
			// event comes first.
			device := f.event(t, plugins.EventIssued, "agents", "17255819", "", true)
			account := f.event(t, plugins.EventIssued, "accounts", "", "", true)
			c, _ := account.Certificate()
			if err := f.p.links.SetPending(KeyID(c), Pending{DeviceID: f.dev.ID, DeviceSerial: device.Serial, Expires: f.h.Now().Add(time.Hour)}); err != nil {
				t.Fatal(err)
			}
			renewed := f.event(t, plugins.EventRenewed, "accounts", "", account.Serial, true)
			if err := observe(renewed); err == nil {
				t.Fatal("renewal before its parent's issued event accepted: it would never be linked")
			}
			if err := observe(account); err != nil {
				t.Fatal(err)
			}
			if err := observe(renewed); err != nil {
				t.Fatalf("redelivered renewal: %v", err)
			}
			if got := f.linked(t, renewed.Serial); got != f.dev.ID {
				t.Fatalf("renewed account certificate linked to %q, want %s", got, f.dev.ID)
			}

			// A device certificate's renewal before the device
			// certificate's issued event carries the identifier itself.
			deviceRenewed := f.event(t, plugins.EventRenewed, "agents", "17255819", device.Serial, true)
			if err := observe(deviceRenewed); err != nil {
				t.Fatal(err)
			}
			if got := f.linked(t, deviceRenewed.Serial); got != f.dev.ID {
				t.Fatalf("renewed device certificate linked to %q, want %s", got, f.dev.ID)
			}

			// Never linkable: a renewal from an ungated provisioner, of a
			// certificate this CA never issued, or waiting past parentWait.
			for name, ev := range map[string]plugins.CertificateEvent{
				"ungated": f.event(t, plugins.EventRenewed, "admin", "", "123456", true),
				"unknown": f.event(t, plugins.EventRenewed, "accounts", "", "123456", true),
				"waited too long": func() plugins.CertificateEvent {
					orphan := f.event(t, plugins.EventIssued, "accounts", "", "", true) // never linked
					ev := f.event(t, plugins.EventRenewed, "accounts", "", orphan.Serial, true)
					ev.OccurredAt = f.h.Now().Add(-parentWait - time.Minute)
					return ev
				}(),
			} {
				if err := observe(ev); err != nil {
					t.Errorf("%s: %v, want no retry", name, err)
				}
			}

			// Both renewals go with the device.
			disabled := inventory.StatusDisabled
			if _, err := f.inv.Update(f.dev.ID, inventory.DevicePatch{Status: &disabled}); err != nil {
				t.Fatal(err)
			}
			if err := f.p.RevokeDevice(ctx, f.dev.ID); err != nil {
				t.Fatal(err)
			}
			var revoked []string
			for _, r := range f.h.Revoked() {
				revoked = append(revoked, r.Serial)
			}
			for _, s := range []string{renewed.Serial, deviceRenewed.Serial} {
				if !slices.Contains(revoked, s) {
					t.Fatalf("revoked %v, missing renewal %s", revoked, s)
				}
			}
		})
	}
}

// TestNamedProvisioners: every provisioner the configuration names is
// reported, by the configuration (`config check`) and by the plugin (the
// daemon), with its JSON path and the type it must have.
func TestNamedProvisioners(t *testing.T) {
	cfg := defaultConfig()
	cfg.Provisioners = []string{"agents", "laptops"}
	cfg.AccountProvisioners = []string{"accounts", "wifi"}
	p, _ := newTestPlugin(t, cfg)
	want := []plugins.NamedProvisioner{
		{Path: "provisioners[0]", Name: "agents", Types: []string{"ACME"}},
		{Path: "provisioners[1]", Name: "laptops", Types: []string{"ACME"}},
		{Path: "accountProvisioners[0]", Name: "accounts", Types: []string{"X5C"}},
		{Path: "accountProvisioners[1]", Name: "wifi", Types: []string{"X5C"}},
	}
	for name, v := range map[string]any{"config": cfg, "plugin": p} {
		pc, ok := v.(plugins.ProvisionerChecker)
		if !ok {
			t.Fatalf("the %s does not report the provisioners it names", name)
		}
		got := pc.NamedProvisioners()
		if !slices.EqualFunc(got, want, func(a, b plugins.NamedProvisioner) bool {
			return a.Path == b.Path && a.Name == b.Name && slices.Equal(a.Types, b.Types)
		}) {
			t.Fatalf("%s: NamedProvisioners() = %+v, want %+v", name, got, want)
		}
	}
}
