package billing

import (
	"testing"
	"time"

	"github.com/stepfort/stepfort/plugins"
)

// TestAKCertificatesAreNotEndpoints: the Attestation CA's AK certificates
// are not subscriber certificates; their events (issued and revoked) leave
// no Endpoint and no certificate row, while the same names from a
// subscriber provisioner do count.
func TestAKCertificatesAreNotEndpoints(t *testing.T) {
	f := newFixture(t, nil)
	ak := plugins.ProvisionerRef{Name: "attestationCA", Type: plugins.ProvisionerTypeAttestationCA}
	serial := f.sign(ak, t0, 24*time.Hour, "urn:ek:sha256:abc")
	if n := f.countEndpoints(); n != 0 {
		t.Fatalf("%d Endpoints after an AK certificate, want 0", n)
	}
	if rec, err := f.s.getCert(serial); err != nil || rec != nil {
		t.Fatalf("AK certificate recorded: %+v, %v", rec, err)
	}
	ev := f.event(plugins.EventRevoked, serial)
	ev.Provisioner = &ak
	ev.Revocation = &plugins.Revocation{ReasonCode: 1, RevokedAt: t0}
	if err := f.s.Record(ev); err != nil {
		t.Fatalf("revocation of an AK certificate: %v", err)
	}
	if r := f.report("2026-03", ModeEndpoint); r.Total.Endpoints != 0 {
		t.Fatalf("report counts %d Endpoints, want 0", r.Total.Endpoints)
	}
	f.sign(jwk, t0, 24*time.Hour, "host.example")
	if n := f.countEndpoints(); n != 1 {
		t.Fatalf("%d Endpoints after a JWK certificate, want 1", n)
	}
	if r := f.report("2026-03", ModeEndpoint); r.Total.Endpoints != 1 {
		t.Fatalf("report counts %d Endpoints, want 1", r.Total.Endpoints)
	}
}
