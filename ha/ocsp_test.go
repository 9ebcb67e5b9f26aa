package ha

import (
	"crypto"
	"encoding/json"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	upstream "github.com/smallstep/certificates/authority"
	upconfig "github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"
	"golang.org/x/crypto/ocsp"

	"github.com/stepfort/stepfort/internal/setup"
	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/internal/testenv"
)

// fakeHost is a plugins.Host with a real upstream authority and a clock the
// test moves.
type fakeHost struct {
	auth  *upstream.Authority
	store nosql.DB
	now   time.Time
	reg   *prometheus.Registry
}

func (h *fakeHost) Authority() *upstream.Authority { return h.auth }
func (h *fakeHost) DB() nosql.DB                   { return h.store }
func (h *fakeHost) Logger() *slog.Logger           { return slog.Default() }
func (h *fakeHost) Now() time.Time                 { return h.now }
func (h *fakeHost) Metrics() prometheus.Registerer { return h.reg }
func (h *fakeHost) advance(d time.Duration)        { h.now = h.now.Add(d) }
func (h *fakeHost) hits(r *Responder) float64      { return testutil.ToFloat64(r.cacheHit) }
func (h *fakeHost) responses(r *Responder, s string) float64 {
	return testutil.ToFloat64(r.requests.WithLabelValues(s))
}

func newFakeHost(t testing.TB) *fakeHost {
	t.Helper()
	auth, d := newTestAuthority(t)
	return &fakeHost{auth: auth, store: d, now: time.Now(), reg: prometheus.NewRegistry()}
}

// newTestAuthority is a real upstream authority over a fresh `stepfort
// init` directory (bbolt), with its database.
func newTestAuthority(t testing.TB) (*upstream.Authority, *db.DB) {
	t.Helper()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	res, err := setup.Init(setup.Options{Dir: filepath.Join(t.TempDir(), "ca"), Address: "127.0.0.1:" + itoa(port), InsecureAddress: "127.0.0.1:" + itoa(port+1)})
	if err != nil {
		t.Fatal(err)
	}
	// Only upstream's part of ca.json: the plugins init enables are not
	// registered in this package's tests.
	cfg, err := upconfig.LoadConfiguration(res.ConfigFile)
	if err != nil {
		t.Fatal(err)
	}
	d, err := db.New(cfg.DB)
	if err != nil {
		t.Fatal(err)
	}
	pw, _ := os.ReadFile(res.PasswordFile)
	auth, err := upstream.New(cfg, upstream.WithDatabase(d), upstream.WithPassword([]byte(strings.TrimSpace(string(pw)))), upstream.WithQuietInit())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = auth.Shutdown() })
	return auth, d.(*db.DB)
}

func TestResponderStatusCacheAndRefresh(t *testing.T) {
	h := newFakeHost(t)
	cfg := DefaultConfig().OCSP
	r, err := NewResponder(h, cfg)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := r.currentSigner()
	issued := big.NewInt(424242)
	if err := h.store.Set(storage.CertsTable, []byte(issued.String()), []byte("der")); err != nil {
		t.Fatal(err)
	}
	request := func(serial *big.Int) *ocsp.Response {
		t.Helper()
		return askWith(t, r, serial, crypto.SHA256)
	}

	first := request(issued)
	if first.Status != ocsp.Good || first.NextUpdate.Sub(first.ThisUpdate) < cfg.Validity.Duration {
		t.Fatalf("first response %+v", first)
	}
	request(issued)
	if h.hits(r) != 1 {
		t.Fatalf("second request not served from cache: hits=%v", h.hits(r))
	}
	if unknown := request(big.NewInt(7)); unknown.Status != ocsp.Unknown {
		t.Fatalf("never-issued serial answered %d", unknown.Status)
	}
	if request(big.NewInt(7)); h.hits(r) != 2 || h.responses(r, "unknown") != 2 {
		t.Fatal("the signed unknown response was not reused")
	}

	// Pre-signing: past 40% of the validity the refresher re-signs.
	h.advance(cfg.Validity.Duration * 41 / 100)
	if n := r.Refresh(); n != 1 {
		t.Fatalf("refreshed %d responses, want 1", n)
	}
	hitsBefore := h.hits(r)
	if again := request(issued); !again.ThisUpdate.After(first.ThisUpdate) || h.hits(r) != hitsBefore+1 {
		t.Fatalf("refreshed response not served from cache (thisUpdate %v)", again.ThisUpdate)
	}

	// A revocation is seen at once, cache or not.
	rci, _ := json.Marshal(db.RevokedCertificateInfo{Serial: issued.String(), ReasonCode: ocsp.KeyCompromise, RevokedAt: h.now.Add(-time.Second).UTC()})
	if err := h.store.Set(storage.RevokedCertsTable, []byte(issued.String()), rci); err != nil {
		t.Fatal(err)
	}
	if revoked := request(issued); revoked.Status != ocsp.Revoked || revoked.RevocationReason != ocsp.KeyCompromise {
		t.Fatalf("after revocation: status %d reason %d", revoked.Status, revoked.RevocationReason)
	}

	// The delegated responder certificate rotates past half its life, and
	// responses always end before it does.
	h.advance(cfg.ResponderLifetime.Duration/2 + time.Minute)
	rotated := request(issued)
	if rotated.Certificate == nil || rotated.Certificate.SerialNumber.Cmp(key.cert.SerialNumber) == 0 {
		t.Fatal("responder certificate was not rotated")
	}
	if rotated.NextUpdate.After(rotated.Certificate.NotAfter) {
		t.Fatalf("response valid until %v, responder certificate until %v", rotated.NextUpdate, rotated.Certificate.NotAfter)
	}
}

func TestLeaseContract(t *testing.T) {
	h := newFakeHost(t)
	l, err := NewLeases(h.store, h.Now)
	if err != nil {
		t.Fatal(err)
	}
	ok, _ := l.TryAcquire("job", "a", 10*time.Second)
	if !ok {
		t.Fatal("a could not take a free lease")
	}
	if ok, _ := l.TryAcquire("job", "b", 10*time.Second); ok {
		t.Fatal("b took a lease a holds")
	}
	h.advance(5 * time.Second)
	if ok, _ := l.TryAcquire("job", "a", 10*time.Second); !ok {
		t.Fatal("a could not renew")
	}
	h.advance(9 * time.Second) // renewal moved the expiry
	if ok, _ := l.TryAcquire("job", "b", 10*time.Second); ok {
		t.Fatal("b took a renewed lease")
	}
	h.advance(2 * time.Second) // a died and did not renew
	if ok, _ := l.TryAcquire("job", "b", 10*time.Second); !ok {
		t.Fatal("b could not take an expired lease")
	}
	if cur, _ := l.Get("job"); cur.Holder != "b" || cur.Changes != 2 {
		t.Fatalf("lease %+v", cur)
	}
	_ = l.Release("job", "a") // not the holder: no effect
	if ok, _ := l.TryAcquire("job", "a", 10*time.Second); ok {
		t.Fatal("release by a non-holder freed the lease")
	}
	_ = l.Release("job", "b")
	if ok, _ := l.TryAcquire("job", "a", 10*time.Second); !ok {
		t.Fatal("a could not take a released lease")
	}
}

func TestPublisherNumbersOnlyIncrease(t *testing.T) {
	h := newFakeHost(t)
	p, err := NewPublisher(h, "a", "http://ca.example/1.0/crl", 24*time.Hour, time.Second, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for want := int64(1); want <= 3; want++ {
		if err := p.Publish(); err != nil {
			t.Fatal(err)
		}
		info, crl, err := p.current()
		if err != nil || info.Number != want || crl.Number.Int64() != want {
			t.Fatalf("publish %d: info=%+v err=%v", want, info, err)
		}
	}
	// A stale writer that read number 3 cannot store 4 after someone else did.
	old, _ := h.store.Get(crlTable, crlKey)
	if err := p.Publish(); err != nil {
		t.Fatal(err)
	}
	if _, swapped, _ := h.store.CmpAndSwap(crlTable, crlKey, old, []byte(`{"Number":4}`)); swapped {
		t.Fatal("stale compare-and-swap replaced a newer CRL")
	}
	// Due: not right after publishing, yes after a revocation, yes near nextUpdate.
	if due, _ := p.due(); due {
		t.Fatal("due right after publishing")
	}
	h.advance(time.Second)
	_ = MarkDirty(h.store, h.now)
	if due, _ := p.due(); !due {
		t.Fatal("not due after a revocation")
	}
	_ = p.Publish()
	h.advance(17 * time.Hour)
	if due, _ := p.due(); !due {
		t.Fatal("not due after two thirds of the validity")
	}
}

func itoa(i int) string { return big.NewInt(int64(i)).String() }
