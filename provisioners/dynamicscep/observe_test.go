package dynamicscep

import (
	"context"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/stepfort/stepfort/plugins"
)

// TestDeviceRevocation: the certificate of a device-bound enrollment is
// linked (through NotifySCEP or the issued event, idempotently) and
// revoked, cessationOfOperation, when the device is disabled; a device
// enabled again before delivery keeps it; an unbound enrollment links
// nothing.
func TestDeviceRevocation(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			p, h := newPlugin(t, backend)
			ctx := context.Background()
			dev := addDevice(t, p, "SERIAL-1")
			secret, _ := create(t, p, Bindings{Device: dev}, "")
			csr, key := newCSR(t, csrSpec{cn: "d1"})
			if _, err := p.ValidateSCEPChallenge(ctx, enroll(secret, csr)); err != nil {
				t.Fatal(err)
			}
			cert := issue(t, csr, key, 1001, h.Now())
			p.NotifySCEP(ctx, plugins.SCEPIssued{Provisioner: "scep", TransactionID: "tx-1", CSR: csr, Certificate: cert})
			ev := plugins.CertificateEvent{ID: "e1", Kind: plugins.EventIssued, Serial: "1001", Provisioner: &plugins.ProvisionerRef{Name: "scep", Type: "SCEP"}, CertificateDER: cert.Raw}
			if err := p.ObserveCertificate(ctx, ev); err != nil {
				t.Fatal(err)
			}
			// An unbound enrollment is linked to nothing.
			free, _ := create(t, p, Bindings{}, "")
			csr2, key2 := newCSR(t, csrSpec{cn: "d2"})
			if _, err := p.ValidateSCEPChallenge(ctx, enroll(free, csr2)); err != nil {
				t.Fatal(err)
			}
			cert2 := issue(t, csr2, key2, 1002, h.Now())
			p.NotifySCEP(ctx, plugins.SCEPIssued{Provisioner: "scep", Certificate: cert2})

			dc, err := p.links.DeviceCerts(dev)
			if err != nil || len(dc.Certs) != 1 || dc.Certs[0].Serial != "1001" {
				t.Fatalf("links %+v %v", dc, err)
			}
			devEv := plugins.DeviceEvent{ID: "d1", Kind: plugins.DeviceDisabled, DeviceID: dev}
			// Disabled and enabled again before delivery: kept.
			setStatus(t, p, dev, "disabled")
			setStatus(t, p, dev, "active")
			if err := p.ObserveDevice(ctx, devEv); err != nil || len(h.Revoked()) != 0 {
				t.Fatalf("reactivated device: %v %v", h.Revoked(), err)
			}
			setStatus(t, p, dev, "disabled")
			if err := p.ObserveDevice(ctx, devEv); err != nil {
				t.Fatal(err)
			}
			if err := p.ObserveDevice(ctx, devEv); err != nil { // redelivered: nothing more
				t.Fatal(err)
			}
			got := h.Revoked()
			if len(got) != 1 || got[0].Serial != "1001" || got[0].ReasonCode != 5 || got[0].Actor != "plugin:dynamicScep" {
				t.Fatalf("revocations %+v", got)
			}
		})
	}
}

// TestLinkAfterDisable: a device disabled between enrollment and the
// issued event (its device event found no link) loses the certificate
// when the link is recorded; an already revoked certificate counts as
// done.
func TestLinkAfterDisable(t *testing.T) {
	p, h := newPlugin(t, "bbolt")
	ctx := context.Background()
	calls := 0
	h.RevokeFunc = func(_ context.Context, req plugins.RevokeRequest) error {
		calls++
		return plugins.ErrAlreadyRevoked
	}
	dev := addDevice(t, p, "SERIAL-2")
	secret, _ := create(t, p, Bindings{Device: dev}, "")
	csr, key := newCSR(t, csrSpec{cn: "d"})
	if _, err := p.ValidateSCEPChallenge(ctx, enroll(secret, csr)); err != nil {
		t.Fatal(err)
	}
	setStatus(t, p, dev, "disabled")
	if err := p.ObserveDevice(ctx, plugins.DeviceEvent{ID: "x", DeviceID: dev}); err != nil || calls != 0 {
		t.Fatalf("nothing linked yet: %d %v", calls, err)
	}
	cert := issue(t, csr, key, 7, h.Now())
	ev := plugins.CertificateEvent{ID: "e", Kind: plugins.EventIssued, Serial: "7", Provisioner: &plugins.ProvisionerRef{Name: "scep"}, CertificateDER: cert.Raw}
	if err := p.ObserveCertificate(ctx, ev); err != nil || calls != 1 {
		t.Fatalf("late link: %d %v", calls, err)
	}
	if err := p.ObserveCertificate(ctx, ev); err != nil || calls != 1 {
		t.Fatalf("redelivered event revoked again: %d %v", calls, err)
	}
	// A failing revocation is returned, so the event is delivered again.
	h.RevokeFunc = func(context.Context, plugins.RevokeRequest) error { return errors.New("database down") }
	secret, _ = create(t, p, Bindings{Device: addDevice(t, p, "SERIAL-3")}, "")
	csr, key = newCSR(t, csrSpec{cn: "e"})
	if _, err := p.ValidateSCEPChallenge(ctx, enroll(secret, csr)); err != nil {
		t.Fatal(err)
	}
	pend, _, _ := p.links.PendingFor(issue(t, csr, key, 8, h.Now()))
	setStatus(t, p, pend.DeviceID, "disabled")
	cert = issue(t, csr, key, 8, h.Now())
	ev = plugins.CertificateEvent{ID: "f", Kind: plugins.EventIssued, Serial: "8", Provisioner: &plugins.ProvisionerRef{Name: "scep"}, CertificateDER: cert.Raw}
	if err := p.ObserveCertificate(ctx, ev); err == nil {
		t.Fatal("failed revocation not reported")
	}
}

// TestPurge: challenges past their retention and old pending links go;
// outstanding challenges stay.
func TestPurge(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			p, h := newPlugin(t, backend)
			ctx := context.Background()
			keep, _ := create(t, p, Bindings{}, "24h")
			used, usedC := create(t, p, Bindings{Device: addDevice(t, p, "S")}, "")
			csr, _ := newCSR(t, csrSpec{cn: "d"})
			if _, err := p.ValidateSCEPChallenge(ctx, enroll(used, csr)); err != nil {
				t.Fatal(err)
			}
			for range 3 {
				create(t, p, Bindings{}, "1m")
			}
			pendingLink := &x509.Certificate{RawSubjectPublicKeyInfo: csr.RawSubjectPublicKeyInfo}
			if _, ok, err := p.links.PendingFor(pendingLink); err != nil || !ok {
				t.Fatalf("no pending device link after the enrollment: %v %v", ok, err)
			}
			h.Advance(23 * time.Hour)
			if n, err := p.challenges.Purge(ctx, h.Now(), 24*time.Hour); err != nil || n != 0 {
				t.Fatalf("purge within retention: %d %v", n, err)
			}
			h.Advance(2 * time.Hour)
			if n, err := p.challenges.Purge(ctx, h.Now(), 24*time.Hour); err != nil || n != 4 {
				t.Fatalf("purge: %d %v, want 4", n, err)
			}
			if _, _, err := p.challenges.ByID(usedC.ID); !errors.Is(err, ErrNotFound) {
				t.Fatalf("purged challenge still found by ID: %v", err)
			}
			if _, _, err := p.challenges.Lookup(keep); err != nil {
				t.Fatalf("outstanding challenge purged: %v", err)
			}
			// The plugin's own purge loop starts with the plugin and may run
			// after the clock moved: the link is purged by it or by this
			// call, never left.
			if n, err := p.links.PurgePending(ctx, h.Now()); err != nil || n > 1 {
				t.Fatalf("pending purge: %d %v", n, err)
			}
			if _, ok, err := p.links.PendingFor(pendingLink); err != nil || ok {
				t.Fatalf("pending device link not purged: %v %v", ok, err)
			}
		})
	}
}
