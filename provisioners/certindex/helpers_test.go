package certindex

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"math/big"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

func TestMain(m *testing.M) { testenv.RunMain(m) }

var backends = []string{"bbolt", "postgresql"}

var (
	keyOnce    sync.Once
	caKey      *ecdsa.PrivateKey
	caCert     *x509.Certificate
	nextSerial atomic.Int64
)

// t0 is a fixed start of time: 2026-03-10 12:00 UTC.
var t0 = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

var (
	jwk  = plugins.ProvisionerRef{ID: "jwk-id", Name: "admin", Type: "JWK"}
	acme = plugins.ProvisionerRef{ID: "acme-id", Name: "acme", Type: "ACME"}
)

// newCert makes a leaf signed by a test CA. names[0] is the CN; the rest
// are SANs by their shape.
func newCert(t testing.TB, notBefore time.Time, life time.Duration, names ...string) *x509.Certificate {
	t.Helper()
	keyOnce.Do(func() {
		caKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Test Intermediate"},
			NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(10 * 365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
			SubjectKeyId: []byte{1, 2, 3, 4}, KeyUsage: x509.KeyUsageCertSign}
		der, _ := x509.CreateCertificate(rand.Reader, tpl, tpl, &caKey.PublicKey, caKey)
		caCert, _ = x509.ParseCertificate(der)
	})
	tpl := &x509.Certificate{SerialNumber: new(big.Int).Lsh(big.NewInt(1_000_000+nextSerial.Add(1)), 64),
		NotBefore: notBefore, NotAfter: notBefore.Add(life)}
	testenv.SetNames(tpl, names...)
	der, err := x509.CreateCertificate(rand.Reader, tpl, caCert, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// fixture is a plugin on a test host plus what events.DB would have
// written to upstream's tables.
type fixture struct {
	t    testing.TB
	host *plugintest.Host
	p    *Plugin
	db   nosql.DB
}

func newFixture(t testing.TB, backend string) *fixture {
	t.Helper()
	d := testenv.OpenStore(t, backend)
	for _, tb := range [][]byte{storage.CertsTable, storage.CertsDataTable, storage.RevokedCertsTable} {
		if err := d.CreateTable(tb); err != nil {
			t.Fatal(err)
		}
	}
	h := plugintest.NewHostWithDB(t, d, backend)
	h.SetNow(t0)
	p, err := New(DefaultConfig(), h)
	if err != nil {
		t.Fatal(err)
	}
	// JWK renews (lineage), ACME groups by subject.
	p.group = func(ref plugins.ProvisionerRef) (bool, error) { return ref.Type == "ACME", nil }
	h.RevokeFunc = func(_ context.Context, req plugins.RevokeRequest) error {
		if req.Actor == "" {
			t.Error("revoke without actor")
		}
		rci := db.RevokedCertificateInfo{Serial: req.Serial, ReasonCode: req.ReasonCode, Reason: req.Reason, RevokedAt: h.Now().Add(time.Second)}
		b, _ := json.Marshal(rci)
		_, ok, err := storage.CmpAndSwap(d, storage.RevokedCertsTable, []byte(req.Serial), nil, b)
		if err == nil && !ok {
			return plugins.ErrAlreadyRevoked
		}
		return err
	}
	return &fixture{t: t, host: h, p: p, db: d}
}

// issue stores a certificate as upstream would and returns its event.
func (f *fixture) issue(prov plugins.ProvisionerRef, parent string, notBefore time.Time, life time.Duration, names ...string) plugins.CertificateEvent {
	f.t.Helper()
	c := newCert(f.t, notBefore, life, names...)
	sn := c.SerialNumber.String()
	data, _ := json.Marshal(db.CertificateData{Provisioner: &db.ProvisionerData{ID: prov.ID, Name: prov.Name, Type: prov.Type}})
	if err := f.db.Set(storage.CertsTable, []byte(sn), c.Raw); err != nil {
		f.t.Fatal(err)
	}
	if err := f.db.Set(storage.CertsDataTable, []byte(sn), data); err != nil {
		f.t.Fatal(err)
	}
	kind := plugins.EventIssued
	if parent != "" {
		kind = plugins.EventRenewed
	}
	p := prov
	return plugins.CertificateEvent{ID: "ev-" + sn, Kind: kind, Serial: sn, OccurredAt: f.host.Now(), Provisioner: &p,
		ParentSerial: parent, CertificateDER: c.Raw}
}

// revokeEvent stores a revocation and returns its event.
func (f *fixture) revokeEvent(issued plugins.CertificateEvent, code int, at time.Time) plugins.CertificateEvent {
	f.t.Helper()
	rci := db.RevokedCertificateInfo{Serial: issued.Serial, ReasonCode: code, Reason: "test", RevokedAt: at}
	b, _ := json.Marshal(rci)
	if err := f.db.Set(storage.RevokedCertsTable, []byte(issued.Serial), b); err != nil {
		f.t.Fatal(err)
	}
	ev := issued
	ev.ID, ev.Kind, ev.ParentSerial = "rev-"+issued.Serial, plugins.EventRevoked, ""
	ev.Revocation = &plugins.Revocation{ReasonCode: code, Reason: "test", RevokedAt: at}
	return ev
}

func (f *fixture) observe(evs ...plugins.CertificateEvent) {
	f.t.Helper()
	for _, ev := range evs {
		if err := f.p.ObserveCertificate(context.Background(), ev); err != nil {
			f.t.Fatal(err)
		}
	}
}

func (f *fixture) get(serial string) *Record {
	f.t.Helper()
	r, err := f.p.store.Get(serial)
	if err != nil || r == nil {
		f.t.Fatalf("get %s: %v %v", serial, r, err)
	}
	return r
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
