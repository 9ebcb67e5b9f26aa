package billing

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

var (
	testKeyOnce sync.Once
	testKey     *ecdsa.PrivateKey
	nextSerial  atomic.Int64
)

// t0 is a fixed start of time for the rules: 2026-03-10 12:00 UTC.
var t0 = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

// newCert makes a self-signed leaf with a fresh serial. names[0] is the CN;
// the rest are SANs (IP, email, URI or DNS by their shape).
func newCert(t testing.TB, notBefore time.Time, life time.Duration, names ...string) (*x509.Certificate, []byte) {
	t.Helper()
	testKeyOnce.Do(func() {
		testKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	})
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(1_000_000 + nextSerial.Add(1)),
		NotBefore:    notBefore, NotAfter: notBefore.Add(life),
	}
	testenv.SetNames(tpl, names...)
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &testKey.PublicKey, testKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, der
}

// fakePolicy groups by provisioner name: names listed are renewal-disabled.
type fakePolicy map[string]bool

func (f fakePolicy) Grouping(ref plugins.ProvisionerRef) (string, error) {
	if neverRenews[strings.ToUpper(ref.Type)] || f[ref.Name] {
		return GroupingSubject, nil
	}
	return GroupingLineage, nil
}

var (
	jwk   = plugins.ProvisionerRef{ID: "jwk-id", Name: "admin", Type: "JWK"}
	oidc  = plugins.ProvisionerRef{ID: "oidc-id", Name: "google", Type: "OIDC"} // renewal disabled in tests
	acmeP = plugins.ProvisionerRef{ID: "acme-id", Name: "acme", Type: "ACME"}
)

func testPolicy() fakePolicy { return fakePolicy{"google": true} }

func bboltDB(t testing.TB) nosql.DB {
	t.Helper()
	db, err := nosql.New("bbolt", filepath.Join(t.TempDir(), "billing.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func postgresDB(t testing.TB) nosql.DB {
	t.Helper()
	pg := testenv.StartPostgres(t)
	db, err := nosql.New("postgresql", pg.DSN(), nosql.WithDatabase("billing"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newTestStore(t testing.TB, db nosql.DB) *Store {
	t.Helper()
	if db == nil {
		db = bboltDB(t)
	}
	s, err := NewStore(db, testPolicy(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fixture drives a store with events the way the daemon would.
type fixture struct {
	t     testing.TB
	s     *Store
	certs map[string]*x509.Certificate
	n     int
}

func newFixture(t testing.TB, db nosql.DB) *fixture {
	return &fixture{t: t, s: newTestStore(t, db), certs: map[string]*x509.Certificate{}}
}

func (f *fixture) event(kind plugins.EventKind, serial string) plugins.CertificateEvent {
	f.n++
	return plugins.CertificateEvent{ID: fmt.Sprintf("ev%d", f.n), Kind: kind, Serial: serial}
}

// sign records a /sign certificate and returns its serial.
func (f *fixture) sign(p plugins.ProvisionerRef, at time.Time, life time.Duration, names ...string) string {
	f.t.Helper()
	c, der := newCert(f.t, at, life, names...)
	serial := c.SerialNumber.String()
	f.certs[serial] = c
	ev := f.event(plugins.EventIssued, serial)
	ev.OccurredAt, ev.Provisioner, ev.CertificateDER = at, &p, der
	if err := f.s.Record(ev); err != nil {
		f.t.Fatalf("record sign: %v", err)
	}
	return serial
}

// renew records a /renew (or /rekey) of parent.
func (f *fixture) renew(parent string, at time.Time, life time.Duration, rekey bool) string {
	f.t.Helper()
	serial, err := f.tryRenew(parent, at, life, rekey)
	if err != nil {
		f.t.Fatalf("record renew: %v", err)
	}
	return serial
}

func (f *fixture) tryRenew(parent string, at time.Time, life time.Duration, rekey bool) (string, error) {
	pc := f.certs[parent]
	names := []string{pc.Subject.CommonName}
	names = append(names, pc.DNSNames...)
	c, der := newCert(f.t, at, life, names...)
	serial := c.SerialNumber.String()
	f.certs[serial] = c
	ev := f.event(plugins.EventRenewed, serial)
	ev.OccurredAt, ev.ParentSerial, ev.Rekey, ev.CertificateDER = at, parent, rekey, der
	ev.Provisioner = &jwk
	return serial, f.s.Record(ev)
}

func (f *fixture) revoke(serial string, at time.Time) {
	f.t.Helper()
	ev := f.event(plugins.EventRevoked, serial)
	ev.OccurredAt = at
	ev.Revocation = &plugins.Revocation{ReasonCode: 4, Reason: "superseded", RevokedAt: at}
	if err := f.s.Record(ev); err != nil {
		f.t.Fatalf("record revoke: %v", err)
	}
}

func (f *fixture) endpointOf(serial string) *Endpoint {
	f.t.Helper()
	rec, err := f.s.getCert(serial)
	if err != nil || rec == nil {
		f.t.Fatalf("certificate %s not recorded: %v", serial, err)
	}
	e, err := f.s.Endpoint(rec.EndpointID)
	if err != nil || e == nil {
		f.t.Fatalf("endpoint %s missing: %v", rec.EndpointID, err)
	}
	return e
}

func (f *fixture) countEndpoints() int {
	n := 0
	if err := f.s.Endpoints(func(*Endpoint) error { n++; return nil }); err != nil {
		f.t.Fatal(err)
	}
	return n
}

func (f *fixture) report(m string, mode string) *Report {
	f.t.Helper()
	month, err := ParseMonth(m)
	if err != nil {
		f.t.Fatal(err)
	}
	r, err := f.s.Report(month, mode, t0)
	if err != nil {
		f.t.Fatal(err)
	}
	return r
}

// replicaHost returns a test host on db acting as the replica named name:
// two hosts on one database are two replicas (their own clocks, their own
// lease holder ids).
func replicaHost(t testing.TB, db nosql.DB, name string) *plugintest.Host {
	t.Helper()
	h := plugintest.NewHostWithDB(t, db, "bbolt")
	h.ReplicaID = plugins.ReplicaID(name, "127.0.0.1:9000", 1, "0")
	h.Log = quietLog()
	return h
}
