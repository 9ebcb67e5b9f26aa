package events

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/db"
	"go.step.sm/crypto/jose"

	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins"
)

// backends opens upstream's DB on bbolt and on a real PostgreSQL.
func backends(t *testing.T) map[string]func(t *testing.T) *db.DB {
	return map[string]func(t *testing.T) *db.DB{
		"bbolt": func(t *testing.T) *db.DB {
			d, err := db.New(&db.Config{Type: "bbolt", DataSource: filepath.Join(t.TempDir(), "db")})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Shutdown() })
			return d.(*db.DB)
		},
		"postgresql": func(t *testing.T) *db.DB {
			pg := testenv.StartPostgres(t)
			d, err := db.New(&db.Config{Type: "postgresql", DataSource: pg.DSN(), Database: "events_test"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Shutdown() })
			return d.(*db.DB)
		},
	}
}

type recorder struct {
	mu     sync.Mutex
	events []plugins.CertificateEvent
	fail   int // fail this many calls first
}

func (r *recorder) ObserveCertificate(_ context.Context, ev plugins.CertificateEvent) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail > 0 {
		r.fail--
		return errors.New("observer down")
	}
	r.events = append(r.events, ev)
	return nil
}

func (r *recorder) got() []plugins.CertificateEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]plugins.CertificateEvent(nil), r.events...)
}

func newCert(t *testing.T, key *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	if key == nil {
		key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "device"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func jwkProvisioner(t *testing.T) provisioner.Interface {
	jwk, err := jose.GenerateJWK("EC", "P-256", "ES256", "sig", "kid1", 0)
	if err != nil {
		t.Fatal(err)
	}
	pub := jwk.Public()
	return &provisioner.JWK{Type: "JWK", Name: "admin", Key: &pub}
}

func TestEventsAreStoredWithCertificatesAndDelivered(t *testing.T) {
	for name, open := range backends(t) {
		t.Run(name, func(t *testing.T) {
			base := open(t)
			rec := &recorder{}
			ob := NewOutbox(base, []Observer{{Name: "rec", Certificate: rec}}, OutboxOptions{Replica: "a", ClaimTTL: 5 * time.Second, RetryInterval: time.Second})
			d, err := NewDB(base, ob, nil)
			if err != nil {
				t.Fatal(err)
			}
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			first := newCert(t, key)
			if err := d.StoreCertificateChain(jwkProvisioner(t), first); err != nil {
				t.Fatal(err)
			}
			renewed := newCert(t, key)
			if err := d.StoreRenewedCertificate(first, renewed); err != nil {
				t.Fatal(err)
			}
			rekeyed := newCert(t, nil)
			if err := d.StoreRenewedCertificate(renewed, rekeyed); err != nil {
				t.Fatal(err)
			}
			rci := &db.RevokedCertificateInfo{Serial: rekeyed.SerialNumber.String(), ReasonCode: 1, Reason: "keyCompromise", RevokedAt: time.Now().UTC()}
			if err := d.Revoke(rci); err != nil {
				t.Fatal(err)
			}
			// A second revoke is refused as upstream refuses it, and leaves no event.
			again := *rci
			again.RevokedAt = time.Now().UTC()
			if err := d.Revoke(&again); !errors.Is(err, db.ErrAlreadyExists) {
				t.Fatalf("second revoke: %v", err)
			}
			// Upstream's own tables hold what upstream would have written.
			if c, err := d.GetCertificate(rekeyed.SerialNumber.String()); err != nil || !c.Equal(rekeyed) {
				t.Fatalf("GetCertificate: %v", err)
			}
			if data, err := d.GetCertificateData(rekeyed.SerialNumber.String()); err != nil || data.Provisioner.Name != "admin" {
				t.Fatalf("GetCertificateData = %+v, %v", data, err)
			}
			if ok, err := d.IsRevoked(rci.Serial); err != nil || !ok {
				t.Fatalf("IsRevoked = %v, %v", ok, err)
			}

			ob.grace = 0
			if left := ob.Sweep(context.Background()); left != 0 {
				t.Fatalf("%d events left after sweep", left)
			}
			got := rec.got()
			if len(got) != 4 {
				t.Fatalf("got %d events, want 4: %+v", len(got), got)
			}
			want := []struct {
				kind   plugins.EventKind
				serial string
				parent string
				rekey  bool
			}{
				{plugins.EventIssued, first.SerialNumber.String(), "", false},
				{plugins.EventRenewed, renewed.SerialNumber.String(), first.SerialNumber.String(), false},
				{plugins.EventRenewed, rekeyed.SerialNumber.String(), renewed.SerialNumber.String(), true},
				{plugins.EventRevoked, rekeyed.SerialNumber.String(), "", false},
			}
			for i, w := range want {
				g := got[i]
				if g.Kind != w.kind || g.Serial != w.serial || g.ParentSerial != w.parent || g.Rekey != w.rekey {
					t.Errorf("event %d = %s %s parent=%s rekey=%v, want %+v", i, g.Kind, g.Serial, g.ParentSerial, g.Rekey, w)
				}
				if g.Provisioner == nil || g.Provisioner.Name != "admin" || g.Provisioner.Type != "JWK" {
					t.Errorf("event %d provisioner = %+v", i, g.Provisioner)
				}
			}
			if r := got[3].Revocation; r == nil || r.ReasonCode != 1 || r.Reason != "keyCompromise" {
				t.Errorf("revocation = %+v", r)
			}
		})
	}
}

func TestUndeliveredEventsSurviveACrash(t *testing.T) {
	for name, open := range backends(t) {
		t.Run(name, func(t *testing.T) {
			base := open(t)
			failing := &recorder{fail: 1 << 30}
			ob := NewOutbox(base, []Observer{{Name: "rec", Certificate: failing}}, OutboxOptions{Replica: "a", ClaimTTL: 5 * time.Second, RetryInterval: time.Second})
			d, err := NewDB(base, ob, nil)
			if err != nil {
				t.Fatal(err)
			}
			c := newCert(t, nil)
			if err := d.StoreCertificateChain(jwkProvisioner(t), c); err != nil {
				t.Fatal(err)
			}
			ob.grace = 0
			if left := ob.Sweep(context.Background()); left != 1 {
				t.Fatalf("pending = %d, want 1 while the observer fails", left)
			}
			// "Crash": replica a is gone with a claim that was released on
			// failure. A new process (replica b) with a healthy observer
			// delivers it, after the back-off.
			rec := &recorder{}
			now := time.Now().Add(time.Minute)
			ob2 := NewOutbox(base, []Observer{{Name: "rec", Certificate: rec}}, OutboxOptions{Replica: "b", ClaimTTL: 5 * time.Second, RetryInterval: time.Second, Now: func() time.Time { return now }})
			if left := ob2.Sweep(context.Background()); left != 0 {
				t.Fatalf("pending after restart = %d", left)
			}
			if got := rec.got(); len(got) != 1 || got[0].Serial != c.SerialNumber.String() {
				t.Fatalf("delivered %+v", got)
			}
		})
	}
}

func TestClaimedEventIsNotDeliveredTwice(t *testing.T) {
	base := backends(t)["bbolt"](t)
	recA, recB := &recorder{}, &recorder{}
	opts := OutboxOptions{ClaimTTL: time.Minute, RetryInterval: time.Second}
	opts.Replica = "a"
	a := NewOutbox(base, []Observer{{Name: "rec", Certificate: recA}}, opts)
	opts.Replica = "b"
	b := NewOutbox(base, []Observer{{Name: "rec", Certificate: recB}}, opts)
	d, _ := NewDB(base, a, nil)
	c := newCert(t, nil)
	if err := d.StoreCertificateChain(nil, c); err != nil {
		t.Fatal(err)
	}
	id := <-a.notify
	raw, err := base.Get(Table, []byte(id))
	if err != nil {
		t.Fatal(err)
	}
	// Replica a claims it (as deliver does) but has not finished.
	var rec record
	mustUnmarshal(t, raw, &rec)
	rec.ClaimedBy, rec.ClaimedUntil = "a", time.Now().Add(time.Minute)
	if _, ok := a.swap([]byte(id), raw, &rec); !ok {
		t.Fatal("claim failed")
	}
	b.grace = 0
	if left := b.Sweep(context.Background()); left != 1 || len(recB.got()) != 0 {
		t.Fatalf("replica b delivered an event claimed by a (left=%d)", left)
	}
	if !a.deliver(context.Background(), []byte(id), nil) || len(recA.got()) != 1 {
		t.Fatal("replica a could not finish its own claim")
	}
}

func TestObserverPanicIsRetried(t *testing.T) {
	base := backends(t)["bbolt"](t)
	p := &panicky{}
	ob := NewOutbox(base, []Observer{{Name: "p", Certificate: p}}, OutboxOptions{Replica: "a", ClaimTTL: time.Minute, RetryInterval: time.Second})
	d, _ := NewDB(base, ob, nil)
	if err := d.StoreCertificateChain(nil, newCert(t, nil)); err != nil {
		t.Fatal(err)
	}
	id := <-ob.notify
	if ob.deliver(context.Background(), []byte(id), nil) {
		t.Fatal("event deleted although the observer panicked")
	}
	var rec record
	raw, _ := base.Get(Table, []byte(id))
	mustUnmarshal(t, raw, &rec)
	if rec.Attempts != 1 || rec.LastError == "" || rec.NotBefore.IsZero() {
		t.Fatalf("record after panic = %+v", rec)
	}
}

type panicky struct{}

func (panicky) ObserveCertificate(context.Context, plugins.CertificateEvent) error { panic("boom") }

func TestNoObserversWritesNoEvents(t *testing.T) {
	base := backends(t)["bbolt"](t)
	d, err := NewDB(base, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.StoreCertificateChain(nil, newCert(t, nil)); err != nil {
		t.Fatal(err)
	}
	if entries, err := base.List(Table); err == nil && len(entries) > 0 {
		t.Fatalf("events written without observers: %d", len(entries))
	}
}

func TestRestartTakesOverItsOwnClaims(t *testing.T) {
	base := backends(t)["bbolt"](t)
	dead := &recorder{}
	a := NewOutbox(base, []Observer{{Name: "rec", Certificate: dead}}, OutboxOptions{Replica: "host|:9000|111-aaaa", ClaimTTL: time.Hour, RetryInterval: time.Second})
	d, _ := NewDB(base, a, nil)
	if err := d.StoreCertificateChain(nil, newCert(t, nil)); err != nil {
		t.Fatal(err)
	}
	id := <-a.notify
	raw, _ := base.Get(Table, []byte(id))
	var rec record
	mustUnmarshal(t, raw, &rec)
	rec.ClaimedBy, rec.ClaimedUntil = "host|:9000|111-aaaa", time.Now().Add(time.Hour) // killed mid-delivery
	if _, ok := a.swap([]byte(id), raw, &rec); !ok {
		t.Fatal("claim failed")
	}
	other := &recorder{}
	b := NewOutbox(base, []Observer{{Name: "rec", Certificate: other}}, OutboxOptions{Replica: "otherhost|:9000|5-bbbb", ClaimTTL: time.Hour, RetryInterval: time.Second})
	if b.deliver(context.Background(), []byte(id), nil) {
		t.Fatal("another replica took a live claim")
	}
	restarted := &recorder{}
	c := NewOutbox(base, []Observer{{Name: "rec", Certificate: restarted}}, OutboxOptions{Replica: "host|:9000|222-cccc", ClaimTTL: time.Hour, RetryInterval: time.Second})
	if !c.deliver(context.Background(), []byte(id), nil) || len(restarted.got()) != 1 {
		t.Fatal("the restarted replica did not take over its previous incarnation's claim")
	}
}
