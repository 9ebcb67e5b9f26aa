package events

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/plugins"
)

// akEvent is the event the Attestation CA records for an AK certificate.
func akEvent(t *testing.T) *plugins.CertificateEvent {
	t.Helper()
	c := newCert(t, nil)
	return &plugins.CertificateEvent{
		Kind: plugins.EventIssued, Serial: c.SerialNumber.String(), CertificateDER: c.Raw,
		Provisioner:         &plugins.ProvisionerRef{Name: "attestationCA", Type: plugins.ProvisionerTypeAttestationCA},
		PermanentIdentifier: "urn:ek:sha256:abc",
	}
}

func TestRecordedCertificateEventsAreDelivered(t *testing.T) {
	for name, open := range backends(t) {
		t.Run(name, func(t *testing.T) {
			base := open(t)
			clk := newClock()
			certs := &recorder{}
			ob := NewOutbox(base, []Observer{{Name: "cert", Certificate: certs}},
				OutboxOptions{Replica: "a", ClaimTTL: 5 * time.Second, RetryInterval: time.Second, Now: clk.Now})
			r, err := NewRecorder(base, ob, clk.Now)
			if err != nil {
				t.Fatal(err)
			}
			own := []byte("stepfort_test_own")
			if err := base.CreateTable(own); err != nil {
				t.Fatal(err)
			}
			ev := akEvent(t)
			tx := new(database.Tx)
			tx.Set(own, []byte("row"), []byte("x"))
			if err := r.AddCertificateEvent(tx, ev); err != nil {
				t.Fatal(err)
			}
			if ev.ID == "" || !ev.OccurredAt.Equal(clk.Now().UTC()) {
				t.Fatalf("event id %q occurred at %v, want the injected clock %v", ev.ID, ev.OccurredAt, clk.Now())
			}
			if err := base.Update(tx); err != nil {
				t.Fatal(err)
			}
			// The stored row is the record DB writes for upstream's issuances.
			raw, err := base.Get(Table, []byte(ev.ID))
			if err != nil {
				t.Fatalf("event not committed with the transaction: %v", err)
			}
			if rec, err := decodeRecord(raw); err != nil || rec.Event == nil || rec.Device != nil || rec.kind() != plugins.EventIssued {
				t.Fatalf("stored record %s: %+v, %v", raw, rec, err)
			}
			r.Announce(ev.ID)
			ob.deliverBatch(context.Background(), ob.batch(<-ob.notify))
			got := certs.got()
			if len(got) != 1 {
				t.Fatalf("observer got %d events", len(got))
			}
			g := got[0]
			if g.ID != ev.ID || g.Serial != ev.Serial || g.Kind != plugins.EventIssued || *g.Provisioner != *ev.Provisioner ||
				g.PermanentIdentifier != ev.PermanentIdentifier || string(g.CertificateDER) != string(ev.CertificateDER) {
				t.Fatalf("observer got %+v, want %+v", g, ev)
			}
			if left := ob.Sweep(context.Background()); left != 0 {
				t.Fatalf("%d events left after delivery", left)
			}
		})
	}
}

func TestAddCertificateEventRejectsBadEvents(t *testing.T) {
	base := backends(t)["bbolt"](t)
	ob := NewOutbox(base, []Observer{{Name: "cert", Certificate: &recorder{}}}, OutboxOptions{Replica: "a"})
	r, err := NewRecorder(base, ob, nil)
	if err != nil {
		t.Fatal(err)
	}
	other := newCert(t, nil)
	for name, c := range map[string]struct {
		edit func(*plugins.CertificateEvent)
		want string
	}{
		"revoked kind":    {func(e *plugins.CertificateEvent) { e.Kind = plugins.EventRevoked }, "kind"},
		"no provisioner":  {func(e *plugins.CertificateEvent) { e.Provisioner = nil }, "provisioner"},
		"no type":         {func(e *plugins.CertificateEvent) { e.Provisioner.Type = "" }, "provisioner"},
		"no certificate":  {func(e *plugins.CertificateEvent) { e.CertificateDER = nil }, "certificate"},
		"bad certificate": {func(e *plugins.CertificateEvent) { e.CertificateDER = []byte{1, 2} }, "certificate"},
		"other serial":    {func(e *plugins.CertificateEvent) { e.Serial = other.SerialNumber.String() }, "serial"},
		"hex serial":      {func(e *plugins.CertificateEvent) { e.Serial = other.SerialNumber.Text(16) }, "serial"},
	} {
		t.Run(name, func(t *testing.T) {
			ev := akEvent(t)
			c.edit(ev)
			tx := new(database.Tx)
			err := r.AddCertificateEvent(tx, ev)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want one naming %q", err, c.want)
			}
			if len(tx.Operations) != 0 {
				t.Fatal("a rejected event was added to the transaction")
			}
		})
	}
}

func TestRecorderWithoutCertificateObserversWritesNoCertificateEvents(t *testing.T) {
	base := backends(t)["bbolt"](t)
	for name, ob := range map[string]*Outbox{
		"no outbox":    nil,
		"devices only": NewOutbox(base, []Observer{{Name: "dev", Device: &deviceRecorder{}}}, OutboxOptions{Replica: "a"}),
	} {
		t.Run(name, func(t *testing.T) {
			r, err := NewRecorder(base, ob, nil)
			if err != nil {
				t.Fatal(err)
			}
			tx := new(database.Tx)
			ev := akEvent(t)
			if err := r.AddCertificateEvent(tx, ev); err != nil {
				t.Fatal(err)
			}
			if len(tx.Operations) != 0 || ev.ID == "" {
				t.Fatalf("tx has %d operations, event id %q", len(tx.Operations), ev.ID)
			}
			r.Announce(ev.ID)
		})
	}
}
