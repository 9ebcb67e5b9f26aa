package events

import (
	"context"
	"crypto/x509"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/certificates/db"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
)

// mtlsRevocation is what upstream's Authority.Revoke hands the database for
// the daemon's administrative revoke (sent as mTLS).
func mtlsRevocation(serial string) *db.RevokedCertificateInfo {
	return &db.RevokedCertificateInfo{Serial: serial, ProvisionerID: "prov", ReasonCode: 4, Reason: "superseded", RevokedAt: time.Now().UTC(), MTLS: true}
}

func TestAdministrativeRevocationSaysWhoRevoked(t *testing.T) {
	for _, observed := range []bool{true, false} {
		t.Run(fmt.Sprintf("observers=%v", observed), func(t *testing.T) {
			base := backends(t)["bbolt"](t)
			rec := &recorder{}
			var ob *Outbox
			if observed {
				ob = NewOutbox(base, []Observer{{Name: "rec", Certificate: rec}}, OutboxOptions{Replica: "a"})
			}
			d, err := NewDB(base, ob, nil)
			if err != nil {
				t.Fatal(err)
			}
			w := &watcher{}
			d.Watch(w)
			admin, mtls := newCert(t, nil), newCert(t, nil)
			for _, c := range []*x509.Certificate{admin, mtls} {
				if err := d.StoreCertificateChain(nil, c); err != nil {
					t.Fatal(err)
				}
			}

			done := d.Administrative(admin.SerialNumber.String(), "plugin:deviceAttest")
			if err := d.Revoke(mtlsRevocation(admin.SerialNumber.String())); err != nil {
				t.Fatal(err)
			}
			done()
			if err := d.Revoke(mtlsRevocation(mtls.SerialNumber.String())); err != nil {
				t.Fatal(err)
			}

			stored, err := storage.Revocation(base, admin.SerialNumber.String())
			if err != nil || stored.MTLS || stored.ACME || stored.TokenID != "stepfort-admin:plugin:deviceAttest" || stored.ProvisionerID != "prov" || stored.ReasonCode != 4 {
				t.Fatalf("administrative revocation stored as %+v, %v", stored, err)
			}
			if stored, err := storage.Revocation(base, mtls.SerialNumber.String()); err != nil || !stored.MTLS || stored.TokenID != "" {
				t.Fatalf("mTLS revocation stored as %+v, %v", stored, err)
			}
			revs := w.revocations()
			if observed {
				ob.grace = 0
				if left := ob.Sweep(context.Background()); left != 0 {
					t.Fatalf("%d events left", left)
				}
				revs = nil
				for _, ev := range rec.got() {
					if ev.Kind == plugins.EventRevoked {
						revs = append(revs, *ev.Revocation)
					}
				}
			}
			if len(revs) != 2 {
				t.Fatalf("%d revoked events, want 2", len(revs))
			}
			if r := revs[0]; r.MTLS || r.Actor != "plugin:deviceAttest" {
				t.Errorf("administrative revoked event = %+v", r)
			}
			if r := revs[1]; !r.MTLS || r.Actor != "" {
				t.Errorf("mTLS revoked event = %+v", r)
			}
		})
	}
}

// Administrative marks of different serials, registered and revoked
// concurrently, each stay with their own serial (run with -race).
func TestAdministrativeIsSafeForConcurrentUse(t *testing.T) {
	base := backends(t)["bbolt"](t)
	d, err := NewDB(base, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			serial := fmt.Sprint(1000 + i)
			actor := "actor" + serial
			defer d.Administrative(serial, actor)()
			if err := d.Revoke(mtlsRevocation(serial)); err != nil {
				t.Error(err)
				return
			}
			if got, err := storage.Revocation(base, serial); err != nil || got.TokenID != AdminTokenPrefix+actor || got.MTLS {
				t.Errorf("serial %s stored as %+v, %v", serial, got, err)
			}
		}()
	}
	wg.Wait()
	// A mark removed by done no longer applies, and an earlier mark's done
	// does not remove a later one.
	first := d.Administrative("7", "first")
	second := d.Administrative("7", "second")
	first()
	if rci, actor := d.administrative(mtlsRevocation("7")); actor != "second" || rci.TokenID != AdminTokenPrefix+"second" {
		t.Fatalf("after the first done: actor %q, %+v", actor, rci)
	}
	second()
	if _, actor := d.administrative(mtlsRevocation("7")); actor != "" {
		t.Fatalf("mark outlived its done: %q", actor)
	}
}

type watcher struct {
	mu   sync.Mutex
	revs []plugins.Revocation
}

func (w *watcher) CertificateCommitted(ev plugins.CertificateEvent) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if ev.Revocation != nil {
		w.revs = append(w.revs, *ev.Revocation)
	}
}

func (w *watcher) revocations() []plugins.Revocation {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]plugins.Revocation(nil), w.revs...)
}
