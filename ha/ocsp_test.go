package ha

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	upstream "github.com/smallstep/certificates/authority"
	upconfig "github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"
	_ "go.step.sm/crypto/kms/softkms" // ocsp.responderKey in tests
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

// failingSigner has the key's public key and fails while failing is set:
// a KMS whose token is away.
type failingSigner struct {
	crypto.Signer
	failing atomic.Bool
}

func (f *failingSigner) Sign(rnd io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if f.failing.Load() {
		return nil, errors.New("PKCS#11 token unavailable")
	}
	return f.Signer.Sign(rnd, digest, opts)
}

// softKMSKey writes a P-256 key and returns its softkms key URI: the same
// kms.New + CreateSigner path a pkcs11: URI takes.
func softKMSKey(t *testing.T) (string, crypto.PublicKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	path := filepath.Join(t.TempDir(), "responder.key")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return "softkms:path=" + path, key.Public()
}

// TestResponderKMSKey: with ocsp.responderKey the delegated responder
// certificate is issued for the KMS key, at start and at every rotation;
// a failing KMS signature answers tryLater.
func TestResponderKMSKey(t *testing.T) {
	h := newTestHost(t)
	cfg := DefaultConfig().OCSP
	uri, pub := softKMSKey(t)
	cfg.ResponderKey = uri
	r, err := NewResponder(h, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	fs := &failingSigner{Signer: r.kmsKey}
	r.kmsKey = fs

	issued := big.NewInt(515151)
	if err := h.Store.Set(storage.CertsTable, []byte(issued.String()), []byte("der")); err != nil {
		t.Fatal(err)
	}
	first := askWith(t, r, issued, crypto.SHA256) // verified against the intermediate
	if first.Status != ocsp.Good || first.Certificate == nil {
		t.Fatalf("status %d, responder certificate %v", first.Status, first.Certificate != nil)
	}
	if !first.Certificate.PublicKey.(*ecdsa.PublicKey).Equal(pub) {
		t.Fatal("responder certificate is not for the KMS key")
	}

	h.Advance(cfg.ResponderLifetime.Duration/2 + time.Minute)
	rotated := askWith(t, r, issued, crypto.SHA256)
	if rotated.Certificate.SerialNumber.Cmp(first.Certificate.SerialNumber) == 0 {
		t.Fatal("responder certificate was not rotated")
	}
	if !rotated.Certificate.PublicKey.(*ecdsa.PublicKey).Equal(pub) {
		t.Fatal("rotated responder certificate is not for the KMS key")
	}

	// The KMS fails: a response that must be signed is tryLater, at once.
	fs.failing.Store(true)
	key, _ := r.currentSigner()
	req, err := ocsp.CreateRequest(&x509.Certificate{SerialNumber: big.NewInt(99)}, key.issuer, &ocsp.RequestOptions{Hash: crypto.SHA256})
	if err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	r.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/ocsp", bytes.NewReader(req)))
	if !bytes.Equal(w.Body.Bytes(), ocsp.TryLaterErrorResponse) || responses(r, "tryLater") != 1 {
		t.Fatalf("with the KMS failing: %x, tryLater=%v", w.Body.Bytes(), responses(r, "tryLater"))
	}
	// A rotation needs only the CA key: the KMS key gets its new
	// certificate while it fails, and signs again once it is back.
	h.Advance(cfg.ResponderLifetime.Duration/2 + time.Minute)
	if _, err := r.currentSigner(); err != nil {
		t.Fatal(err)
	}
	fs.failing.Store(false)
	if back := askWith(t, r, issued, crypto.SHA256); !back.Certificate.PublicKey.(*ecdsa.PublicKey).Equal(pub) {
		t.Fatal("after the KMS is back: not the KMS key")
	}
}

func TestResponderKMSKeyConfig(t *testing.T) {
	uri, _ := softKMSKey(t)
	for _, tc := range []struct {
		name, key, signer, want string
	}{
		{"file path", "/etc/stepfort/responder.key", "delegated", "ocsp.responderKey: must be a KMS key URI"},
		{"unknown type", "nokms:id=1", "delegated", "ocsp.responderKey: unknown KMS type"},
		{"signer ca", uri, "ca", `ocsp.responderKey: only with ocsp.signer "delegated"`},
	} {
		c := DefaultConfig()
		c.OCSP.ResponderKey, c.OCSP.Signer = tc.key, tc.signer
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	c := DefaultConfig()
	c.OCSP.ResponderKey = uri
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	// A key that cannot be opened stops the build with the field's path.
	cfg := DefaultConfig().OCSP
	cfg.ResponderKey = "softkms:path=" + filepath.Join(t.TempDir(), "absent.key")
	_, err := NewResponder(newTestHost(t), cfg)
	if err == nil || !strings.Contains(err.Error(), "stepfort.plugins.revocation.ocsp.responderKey: ") {
		t.Fatalf("absent key: %v", err)
	}
}
