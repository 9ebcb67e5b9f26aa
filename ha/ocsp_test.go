package ha

import (
	"crypto"
	"encoding/json"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	upstream "github.com/smallstep/certificates/authority"
	upconfig "github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"
	"golang.org/x/crypto/ocsp"

	"github.com/stepfort/stepfort/internal/setup"
	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

// newTestHost is a plugintest.Host with a real upstream authority over
// bbolt; the plugin gets the database store itself, as from the daemon.
func newTestHost(t testing.TB) *plugintest.Host {
	t.Helper()
	auth, store := newTestAuthority(t)
	h := plugintest.NewHostWithDB(t, store, "bbolt")
	h.Auth = auth
	return h
}

func hits(r *Responder) float64 { return testutil.ToFloat64(r.cacheHit) }

func responses(r *Responder, s string) float64 {
	return testutil.ToFloat64(r.requests.WithLabelValues(s))
}

// newTestAuthority is a real upstream authority over a fresh `stepfort
// init` directory (bbolt), with its database store (what upstream's db.DB
// wraps).
func newTestAuthority(t testing.TB) (*upstream.Authority, nosql.DB) {
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
	return auth, d.(*db.DB).DB
}

func TestResponderStatusCacheAndRefresh(t *testing.T) {
	h := newTestHost(t)
	cfg := DefaultConfig().OCSP
	r, err := NewResponder(h, cfg)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := r.currentSigner()
	issued := big.NewInt(424242)
	if err := h.Store.Set(storage.CertsTable, []byte(issued.String()), []byte("der")); err != nil {
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
	if hits(r) != 1 {
		t.Fatalf("second request not served from cache: hits=%v", hits(r))
	}
	if unknown := request(big.NewInt(7)); unknown.Status != ocsp.Unknown {
		t.Fatalf("never-issued serial answered %d", unknown.Status)
	}
	if request(big.NewInt(7)); hits(r) != 2 || responses(r, "unknown") != 2 {
		t.Fatal("the signed unknown response was not reused")
	}

	// Pre-signing: past 40% of the validity the refresher re-signs.
	h.Advance(cfg.Validity.Duration * 41 / 100)
	if n := r.Refresh(); n != 1 {
		t.Fatalf("refreshed %d responses, want 1", n)
	}
	hitsBefore := hits(r)
	if again := request(issued); !again.ThisUpdate.After(first.ThisUpdate) || hits(r) != hitsBefore+1 {
		t.Fatalf("refreshed response not served from cache (thisUpdate %v)", again.ThisUpdate)
	}

	// A revocation is seen at once, cache or not.
	rci, _ := json.Marshal(db.RevokedCertificateInfo{Serial: issued.String(), ReasonCode: ocsp.KeyCompromise, RevokedAt: h.Now().Add(-time.Second).UTC()})
	if err := h.Store.Set(storage.RevokedCertsTable, []byte(issued.String()), rci); err != nil {
		t.Fatal(err)
	}
	if revoked := request(issued); revoked.Status != ocsp.Revoked || revoked.RevocationReason != ocsp.KeyCompromise {
		t.Fatalf("after revocation: status %d reason %d", revoked.Status, revoked.RevocationReason)
	}

	// The delegated responder certificate rotates past half its life, and
	// responses always end before it does.
	h.Advance(cfg.ResponderLifetime.Duration/2 + time.Minute)
	rotated := request(issued)
	if rotated.Certificate == nil || rotated.Certificate.SerialNumber.Cmp(key.cert.SerialNumber) == 0 {
		t.Fatal("responder certificate was not rotated")
	}
	if rotated.NextUpdate.After(rotated.Certificate.NotAfter) {
		t.Fatalf("response valid until %v, responder certificate until %v", rotated.NextUpdate, rotated.Certificate.NotAfter)
	}
}

func itoa(i int) string { return big.NewInt(int64(i)).String() }
