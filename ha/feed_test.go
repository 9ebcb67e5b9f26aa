package ha

import (
	"crypto"
	"encoding/json"
	"math/big"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"
	"golang.org/x/crypto/ocsp"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

// ask sends a SHA-1 request (what RFC 5019 clients use) for serial.
func ask(t *testing.T, r *Responder, serial *big.Int) *ocsp.Response {
	t.Helper()
	return askWith(t, r, serial, crypto.SHA1)
}

// askWith asks about serial with CertID hash algorithm hash and parses the
// signed answer.
func askWith(t *testing.T, r *Responder, serial *big.Int, hash crypto.Hash) *ocsp.Response {
	t.Helper()
	key, err := r.currentSigner()
	if err != nil {
		t.Fatal(err)
	}
	out, err := r.respondTo(requestOf(&ocsp.Request{HashAlgorithm: hash, IssuerNameHash: key.nameHash[hash], IssuerKeyHash: key.keyHash[hash], SerialNumber: serial}))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ocsp.ParseResponseForCert(out.der, nil, key.issuer)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// startResponder builds a responder with cfg and starts its status feed
// (its loops run until the test ends).
func startResponder(t *testing.T, h *plugintest.Host, cfg OCSPConfig) *Responder {
	t.Helper()
	r, err := NewResponder(h, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.StartStatusFeed(); err != nil {
		t.Fatal(err)
	}
	return r
}

func revokeRow(t *testing.T, store nosql.DB, serial *big.Int, reason int, at time.Time) {
	t.Helper()
	b, _ := json.Marshal(db.RevokedCertificateInfo{Serial: serial.String(), ReasonCode: reason, RevokedAt: at.UTC().Truncate(time.Second)})
	if err := store.Set(storage.RevokedCertsTable, []byte(serial.String()), b); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// On bbolt the index is loaded once and then fed by this replica's writes
// (CertificateWatcher); it answers without reading the database.
func TestStatusIndexLiveOnBbolt(t *testing.T) {
	h := newTestHost(t)
	before := big.NewInt(1001)
	if err := h.Store.Set(storage.CertsTable, []byte(before.String()), []byte("der")); err != nil {
		t.Fatal(err)
	}
	revokeRow(t, h.Store, before, ocsp.Superseded, h.Now().Add(-time.Hour))
	r := startResponder(t, h, DefaultConfig().OCSP)
	if !r.idx.isLive() || len(r.idx.revoked) != 1 {
		t.Fatalf("live=%v revoked=%d after load", r.idx.isLive(), len(r.idx.revoked))
	}
	if got := ask(t, r, before); got.Status != ocsp.Revoked || got.RevocationReason != ocsp.Superseded {
		t.Fatalf("loaded revocation answered %d/%d", got.Status, got.RevocationReason)
	}

	// An unknown serial is cached as unknown until its issuance is announced.
	fresh := big.NewInt(2002)
	if got := ask(t, r, fresh); got.Status != ocsp.Unknown {
		t.Fatalf("never-issued serial answered %d", got.Status)
	}
	if err := h.Store.Set(storage.CertsTable, []byte(fresh.String()), []byte("der")); err != nil {
		t.Fatal(err)
	}
	if got := ask(t, r, fresh); got.Status != ocsp.Unknown {
		t.Fatal("the live index read the database for a cached unknown serial")
	}
	r.Committed(plugins.CertificateEvent{Kind: plugins.EventIssued, Serial: fresh.String()})
	if got := ask(t, r, fresh); got.Status != ocsp.Good {
		t.Fatalf("announced issuance answered %d", got.Status)
	}

	// A revocation is answered as soon as it is announced, reason and time
	// included, and pre-signed for SHA-1 in the background.
	at := h.Now().Add(-time.Minute).UTC().Truncate(time.Second)
	r.Committed(plugins.CertificateEvent{Kind: plugins.EventRevoked, Serial: fresh.String(), Revocation: &plugins.Revocation{ReasonCode: ocsp.KeyCompromise, RevokedAt: at}})
	got := ask(t, r, fresh)
	if got.Status != ocsp.Revoked || got.RevocationReason != ocsp.KeyCompromise || !got.RevokedAt.Equal(at) {
		t.Fatalf("announced revocation answered %d/%d/%v", got.Status, got.RevocationReason, got.RevokedAt)
	}

	// A database read that raced an issuance announcement is not cached
	// as unknown.
	racy := "3003"
	_, seq, _ := r.idx.lookup(racy)
	r.idx.issuedNow("4004")
	r.idx.learn(racy, certStatus{code: statusUnknown}, seq)
	if _, _, ok := r.idx.lookup(racy); ok {
		t.Fatal("unknown cached across an issuance announcement")
	}
}

// On PostgreSQL the index follows other replicas through notifications,
// goes stale (database reads) when its listener dies, and resyncs.
func TestStatusFeedOnPostgres(t *testing.T) {
	pg := testenv.StartPostgres(t)
	open := func() nosql.DB {
		d, err := nosql.New("postgresql", pg.DSN(), nosql.WithDatabase("feedtest"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		for _, tbl := range [][]byte{storage.CertsTable, storage.RevokedCertsTable} {
			if err := d.CreateTable(tbl); err != nil {
				t.Fatal(err)
			}
		}
		return d
	}
	storeA, storeB := open(), open()
	auth, _ := newTestAuthority(t)
	// The daemon hands plugins the PostgreSQL store itself.
	h := plugintest.NewHostWithDB(t, storeA, "postgresql")
	h.Auth = auth
	r := startResponder(t, h, DefaultConfig().OCSP)
	waitFor(t, "feed live", 10*time.Second, r.idx.isLive)
	// Several idle periods (wait timeouts and pings) pass first.
	time.Sleep(3 * feedIdle)

	// Replica B issues and revokes; A's index follows within a second.
	serial := big.NewInt(5005)
	if err := storeB.Set(storage.CertsTable, []byte(serial.String()), []byte("der")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "issuance on B reaches A's index", time.Second, func() bool {
		st, _, ok := r.idx.lookup(serial.String())
		return ok && st.code == statusGood
	})
	revokeRow(t, storeB, serial, ocsp.CessationOfOperation, time.Now())
	took := waitFor(t, "revocation on B reaches A's index", time.Second, func() bool {
		st, _, ok := r.idx.lookup(serial.String())
		return ok && st.code == statusRevoked && st.rev.reason == ocsp.CessationOfOperation
	})
	t.Logf("revocation on B seen by A's index after %s", took)
	if got := ask(t, r, serial); got.Status != ocsp.Revoked {
		t.Fatalf("A answered %d", got.Status)
	}

	// Kill A's listening session: the index goes stale at once, so a
	// revocation B commits meanwhile is read from the database, and after
	// the reconnect the resync has it in memory.
	pool := storage.SQLPool(storeB)
	res, err := pool.Exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'stepfort-ocsp-feed' AND pid <> pg_backend_pid()`)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		t.Fatalf("terminated %d listening sessions, want 1", n)
	}
	waitFor(t, "index stale after its listener died", 2*time.Second, func() bool { return !r.idx.isLive() })
	other := big.NewInt(6006)
	if err := storeB.Set(storage.CertsTable, []byte(other.String()), []byte("der")); err != nil {
		t.Fatal(err)
	}
	revokeRow(t, storeB, other, ocsp.KeyCompromise, time.Now())
	if got := ask(t, r, other); got.Status != ocsp.Revoked {
		t.Fatalf("while stale, A answered %d for a revoked serial", got.Status)
	}
	waitFor(t, "feed live again", 10*time.Second, r.idx.isLive)
	if st, _, ok := r.idx.lookup(other.String()); !ok || st.code != statusRevoked {
		t.Fatal("resync did not load the revocation made while the feed was down")
	}
	if n := testutilCounter(t, h.Registry, "stepfort_ocsp_status_resyncs_total"); n < 2 {
		t.Fatalf("resyncs = %v, want >= 2", n)
	}
}

// testutilCounter is the value of counter name in reg, summed over labels.
func testutilCounter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			sum := 0.0
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
			return sum
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// The signed-response cache stays within ocsp.cacheSize however many
// certificates are asked about, dropping entries one at a time.
func TestResponseCacheBounded(t *testing.T) {
	h := newTestHost(t)
	cfg := DefaultConfig().OCSP
	cfg.CacheSize = 1000
	r := startResponder(t, h, cfg)
	for i := range 1200 {
		serial := big.NewInt(int64(100000 + i))
		r.Committed(plugins.CertificateEvent{Kind: plugins.EventIssued, Serial: serial.String()})
		if got := ask(t, r, serial); got.Status != ocsp.Good {
			t.Fatalf("serial %s answered %d", serial, got.Status)
		}
		r.mu.RLock()
		n := len(r.cache)
		r.mu.RUnlock()
		if n > cfg.CacheSize {
			t.Fatalf("cache holds %d responses, bound %d", n, cfg.CacheSize)
		}
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if len(r.cache) < cfg.CacheSize*9/10 {
		t.Fatalf("cache emptied instead of evicting one at a time: %d entries", len(r.cache))
	}
}

// A responder built again in the same process counts into the collectors
// the registry already exposes.
func TestMetricsReusedAcrossRestarts(t *testing.T) {
	h := newTestHost(t)
	first, err := NewResponder(h, DefaultConfig().OCSP)
	if err != nil {
		t.Fatal(err)
	}
	second, err := NewResponder(h, DefaultConfig().OCSP)
	if err != nil {
		t.Fatal(err)
	}
	if first.requests != second.requests || first.cacheHit != second.cacheHit {
		t.Fatal("second responder registered its own collectors")
	}
	ask(t, second, big.NewInt(99))
	if testutilCounter(t, h.Registry, "stepfort_ocsp_responses_total") != 1 { // summed over labels
		t.Fatal("response not counted in the registered collector")
	}
}
