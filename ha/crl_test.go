package ha

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"math/big"
	mrand "math/rand"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

// countingStore counts Gets of the CRL row.
type countingStore struct {
	nosql.DB
	mu      sync.Mutex
	crlGets int
}

func (s *countingStore) Get(table, key []byte) ([]byte, error) {
	if bytes.Equal(table, crlTable) && bytes.Equal(key, crlKey) {
		s.mu.Lock()
		s.crlGets++
		s.mu.Unlock()
	}
	return s.DB.Get(table, key)
}

func (s *countingStore) gets() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.crlGets
}

// crlHost is a test host with a real upstream authority (for the
// intermediate and its signer) and, for the publisher, a bbolt store of
// its own that counts reads of the CRL row.
type crlHost struct {
	*plugintest.Host
	store *countingStore
}

func newCRLHost(t testing.TB) *crlHost {
	t.Helper()
	auth, _ := newTestAuthority(t)
	store, err := nosql.New("bbolt", filepath.Join(t.TempDir(), "crl.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	counting := &countingStore{DB: store}
	h := plugintest.NewHostWithDB(t, counting, "bbolt")
	h.Auth = auth
	h.SetNow(time.Now().UTC().Truncate(time.Second))
	return &crlHost{Host: h, store: counting}
}

const testIDP = "http://ca.example/1.0/crl"

// newTestPublisher is a publisher of testIDP CRLs valid for a day.
func newTestPublisher(t *testing.T, h plugins.Host) *Publisher {
	t.Helper()
	p, err := NewPublisher(h, time.Second, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	scope, err := NewCRLScope(testIDP, 24*time.Hour, WithIDP())
	if err != nil {
		t.Fatal(err)
	}
	p.Activate(scope)
	return p
}

// revoke stores a revocation as upstream does (JSON RevokedCertificateInfo
// keyed by the decimal serial).
func revoke(t *testing.T, store nosql.DB, rci db.RevokedCertificateInfo) {
	t.Helper()
	b, err := json.Marshal(&rci)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.CreateTable(storage.RevokedCertsTable); err != nil {
		t.Fatal(err)
	}
	if err := store.Set(storage.RevokedCertsTable, []byte(rci.Serial), b); err != nil {
		t.Fatal(err)
	}
}

// storedCRL reads the x509_crl row.
func storedCRL(t testing.TB, store nosql.DB) (db.CertificateRevocationListInfo, *x509.RevocationList, []byte) {
	t.Helper()
	row, err := store.Get(crlTable, crlKey)
	if err != nil {
		t.Fatal(err)
	}
	var info db.CertificateRevocationListInfo
	if err := json.Unmarshal(row, &info); err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(info.DER)
	if err != nil {
		t.Fatalf("published CRL does not parse: %v", err)
	}
	return info, crl, row
}

// TestPublishStreamedCRL publishes over a table of upstream rows and
// checks the CRL entry by entry, against Go's encoder, and as upstream's
// row.
func TestPublishStreamedCRL(t *testing.T) {
	h := newCRLHost(t)
	p := newTestPublisher(t, h)
	inter := h.Auth.GetIntermediateCertificates()[0]

	// No table at all, then an empty one: a CRL without revokedCertificates.
	for range 2 {
		if err := p.Publish(); err != nil {
			t.Fatal(err)
		}
		_, crl, _ := storedCRL(t, h.store)
		if len(crl.RevokedCertificateEntries) != 0 {
			t.Fatal("entries in the CRL of an empty table")
		}
		checkAgainstGo(t, h, crl, nil)
		if err := h.store.CreateTable(storage.RevokedCertsTable); err != nil {
			t.Fatal(err)
		}
	}

	now := h.Now().Add(time.Minute) // the publication's time
	type want struct {
		at     time.Time
		reason int
	}
	expect := map[string]want{}
	add := func(rci db.RevokedCertificateInfo, listed bool) {
		revoke(t, h.store, rci)
		if listed {
			expect[rci.Serial] = want{rci.RevokedAt.UTC().Truncate(time.Second), rci.ReasonCode}
		}
	}
	r := newRand()
	for i := range 3000 {
		sn := new(big.Int).Rand(r, new(big.Int).Lsh(big.NewInt(1), 128))
		at := now.Add(-time.Duration(r.Int63n(int64(90 * 24 * time.Hour))))
		add(db.RevokedCertificateInfo{Serial: sn.String(), ProvisionerID: "jwk/admin", ReasonCode: i % 11, Reason: "r",
			RevokedAt: at, ExpiresAt: now.Add(time.Duration(i) * time.Hour), TokenID: "t"}, true)
	}
	add(db.RevokedCertificateInfo{Serial: "1001", RevokedAt: now.Add(-48 * time.Hour), ExpiresAt: now.Add(-expiredGrace - time.Second), ReasonCode: 1}, false)
	add(db.RevokedCertificateInfo{Serial: "1002", RevokedAt: now.Add(-48 * time.Hour), ExpiresAt: now.Add(-expiredGrace + time.Second), ReasonCode: 1}, true)
	add(db.RevokedCertificateInfo{Serial: "1003", RevokedAt: now.Add(-time.Minute), ReasonCode: 0}, true) // no ExpiresAt: kept
	add(db.RevokedCertificateInfo{Serial: "1004", RevokedAt: time.Date(2051, 7, 1, 2, 3, 4, 5, time.UTC), ReasonCode: 6}, true)
	add(db.RevokedCertificateInfo{Serial: "1005", RevokedAt: now.Add(-time.Second).In(time.FixedZone("", 9*3600)), ReasonCode: 3,
		Reason: `"quoted" <html> ☃`}, true) // decoded through encoding/json
	add(db.RevokedCertificateInfo{Serial: "340282366920938463463374607431768211455", RevokedAt: now, ReasonCode: 10}, true)

	h.SetNow(now)
	if err := p.Publish(); err != nil {
		t.Fatal(err)
	}
	info, crl, row := storedCRL(t, h.store)
	if err := crl.CheckSignatureFrom(inter); err != nil {
		t.Fatalf("signature: %v", err)
	}
	if info.Number != 3 || crl.Number.Int64() != 3 {
		t.Fatalf("number %d / %v, want 3", info.Number, crl.Number)
	}
	if !crl.ThisUpdate.Equal(h.Now()) || !crl.NextUpdate.Equal(h.Now().Add(24*time.Hour)) || !info.ExpiresAt.Equal(crl.NextUpdate) || info.Duration != 24*time.Hour {
		t.Fatalf("times: this %v next %v expires %v duration %v", crl.ThisUpdate, crl.NextUpdate, info.ExpiresAt, info.Duration)
	}
	idp, _ := issuingDistributionPoint(testIDP)
	var sawIDP bool
	for _, e := range crl.Extensions {
		if e.Id.Equal(idp.Id) {
			sawIDP = e.Critical && bytes.Equal(e.Value, idp.Value)
		}
	}
	if !sawIDP || !bytes.Equal(crl.AuthorityKeyId, inter.SubjectKeyId) {
		t.Fatalf("extensions %v", crl.Extensions)
	}
	if len(crl.RevokedCertificateEntries) != len(expect) {
		t.Fatalf("%d entries, want %d", len(crl.RevokedCertificateEntries), len(expect))
	}
	for _, e := range crl.RevokedCertificateEntries {
		w, ok := expect[e.SerialNumber.String()]
		if !ok || !e.RevocationTime.Equal(w.at) || e.ReasonCode != w.reason {
			t.Fatalf("entry %v %v %d, want %+v (listed %v)", e.SerialNumber, e.RevocationTime, e.ReasonCode, w, ok)
		}
		if (len(e.Extensions) == 0) != (w.reason == 0) {
			t.Fatalf("entry %v with reason %d has extensions %v", e.SerialNumber, w.reason, e.Extensions)
		}
	}
	// Upstream's row, byte for byte as json.Marshal writes it.
	if want, _ := json.Marshal(&info); !bytes.Equal(row, want) {
		t.Fatal("the stored row is not json.Marshal of CertificateRevocationListInfo")
	}
	// Go's encoder, given the same entries in the same (key) order.
	checkAgainstGo(t, h, crl, crl.RevokedCertificateEntries)

	// The cached copy is the stored one.
	cinfo, ccrl, err := p.current()
	if err != nil || cinfo.Number != 3 || !bytes.Equal(cinfo.DER, info.DER) || !ccrl.ThisUpdate.Equal(crl.ThisUpdate) {
		t.Fatalf("current() = %+v, %v", cinfo, err)
	}
}

// checkAgainstGo encodes entries with x509.CreateRevocationList for the
// same issuer, number, times and IDP and compares the TBSCertList (the
// signature is ECDSA, not deterministic).
func checkAgainstGo(t *testing.T, h *crlHost, crl *x509.RevocationList, entries []x509.RevocationListEntry) {
	t.Helper()
	signer, err := h.Auth.GetX509Signer()
	if err != nil {
		t.Fatal(err)
	}
	idp, _ := issuingDistributionPoint(testIDP)
	var clean []x509.RevocationListEntry
	for _, e := range entries {
		clean = append(clean, x509.RevocationListEntry{SerialNumber: e.SerialNumber, RevocationTime: e.RevocationTime, ReasonCode: e.ReasonCode})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: crl.Number, ThisUpdate: crl.ThisUpdate, NextUpdate: crl.NextUpdate,
		RevokedCertificateEntries: clean, ExtraExtensions: []pkix.Extension{idp}}, h.Auth.GetIntermediateCertificates()[0], signer)
	if err != nil {
		t.Fatal(err)
	}
	gos, _ := x509.ParseRevocationList(der)
	if !bytes.Equal(crl.RawTBSRevocationList, gos.RawTBSRevocationList) || crl.SignatureAlgorithm != gos.SignatureAlgorithm {
		t.Fatal("the published TBSCertList differs from x509.CreateRevocationList's")
	}
}

// TestCRLCacheFollowsTheDatabase: a replica that does not publish serves
// the CRL from memory, reads the row again only when the fingerprint
// changes, and sees a new CRL within crlRecheck.
func TestCRLCacheFollowsTheDatabase(t *testing.T) {
	h := newCRLHost(t)
	a := newTestPublisher(t, h)
	b := newTestPublisher(t, h)
	serve := func(p *Publisher, etag string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/1.0/crl", nil)
		if etag != "" {
			req.Header.Set("If-None-Match", etag)
		}
		p.ServeCRL(w, req)
		return w
	}
	if w := serve(b, ""); w.Code != http.StatusServiceUnavailable {
		t.Fatalf("no CRL yet: %d", w.Code)
	}
	revoke(t, h.store, db.RevokedCertificateInfo{Serial: "77", RevokedAt: h.Now(), ReasonCode: 1})
	if err := a.Publish(); err != nil {
		t.Fatal(err)
	}
	w := serve(b, "")
	info, _, _ := storedCRL(t, h.store)
	if w.Code != 200 || !bytes.Equal(w.Body.Bytes(), info.DER) || w.Header().Get("ETag") != crlETag(1, info.DER) {
		t.Fatalf("b serves %d, %d bytes, ETag %s", w.Code, w.Body.Len(), w.Header().Get("ETag"))
	}
	if w := serve(b, crlETag(1, info.DER)); w.Code != http.StatusNotModified {
		t.Fatalf("If-None-Match: %d", w.Code)
	}
	gets := h.store.gets()
	for range 3 {
		time.Sleep(crlRecheck / 2)
		if w := serve(b, ""); w.Code != 200 {
			t.Fatal(w.Code)
		}
		if due, err := b.due(b.Scope()); due || err != nil {
			t.Fatalf("due %v, %v", due, err)
		}
	}
	if n := h.store.gets() - gets; n != 0 {
		t.Fatalf("the unchanged CRL row was read %d more times", n)
	}

	// A new CRL: b sees it within crlRecheck.
	revoke(t, h.store, db.RevokedCertificateInfo{Serial: "78", RevokedAt: h.Now(), ReasonCode: 1})
	if err := a.Publish(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(crlRecheck + time.Second)
	for {
		info, _, err := b.current()
		if err == nil && info != nil && info.Number == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b still has %+v after %s", info, crlRecheck)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// A CRL written without a fingerprint (an older stepfort) is picked
	// up too, and the lease holder republishes to write both.
	h.Advance(time.Minute)
	signer, _ := h.Auth.GetX509Signer()
	inter := h.Auth.GetIntermediateCertificates()[0]
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(10), ThisUpdate: h.Now(), NextUpdate: h.Now().Add(time.Hour)}, inter, signer)
	if err != nil {
		t.Fatal(err)
	}
	row, _ := json.Marshal(&db.CertificateRevocationListInfo{Number: 10, ExpiresAt: h.Now().Add(time.Hour), Duration: time.Hour, DER: der})
	if err := h.store.Set(crlTable, crlKey, row); err != nil {
		t.Fatal(err)
	}
	if err := h.store.Del(crlStateTable, crlPublishedKey); err != nil {
		t.Fatal(err)
	}
	time.Sleep(crlRecheck)
	if info, _, err := b.current(); err != nil || info.Number != 10 {
		t.Fatalf("b: %+v, %v", info, err)
	}
	if due, _ := a.due(a.Scope()); !due {
		t.Fatal("not due with a CRL the fingerprint does not name")
	}
	if err := a.Publish(); err != nil {
		t.Fatal(err)
	}
	if due, _ := a.due(a.Scope()); due {
		t.Fatal("due right after publishing")
	}
	if info, _, _ := storedCRL(t, h.store); info.Number != 11 {
		t.Fatalf("number %d after 10", info.Number)
	}
}

// TestCRLCacheConcurrent serves, checks due and publishes at once (for the
// race detector).
func TestCRLCacheConcurrent(t *testing.T) {
	h := newCRLHost(t)
	p := newTestPublisher(t, h)
	if err := p.Publish(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				if i == 0 {
					_ = p.Publish()
					continue
				}
				w := httptest.NewRecorder()
				p.ServeCRL(w, httptest.NewRequest("GET", "/crl?pem", nil))
				if w.Code != 200 || !slices.Contains([]string{"application/x-pem-file"}, w.Header().Get("Content-Type")) {
					t.Errorf("serve: %d", w.Code)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func newRand() *mrand.Rand { return mrand.New(mrand.NewSource(42)) }

func TestPublisherNumbersOnlyIncrease(t *testing.T) {
	h := newTestHost(t)
	p := newTestPublisher(t, h)
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
	old, _ := h.Store.Get(crlTable, crlKey)
	if err := p.Publish(); err != nil {
		t.Fatal(err)
	}
	if _, swapped, _ := h.Store.CmpAndSwap(crlTable, crlKey, old, []byte(`{"Number":4}`)); swapped {
		t.Fatal("stale compare-and-swap replaced a newer CRL")
	}
	// Due: not right after publishing, yes after a revocation, yes near nextUpdate.
	if due, _ := p.due(p.Scope()); due {
		t.Fatal("due right after publishing")
	}
	h.Advance(time.Second)
	_ = MarkDirty(h.Store, h.Now())
	if due, _ := p.due(p.Scope()); !due {
		t.Fatal("not due after a revocation")
	}
	_ = p.Publish()
	h.Advance(17 * time.Hour)
	if due, _ := p.due(p.Scope()); !due {
		t.Fatal("not due after two thirds of the validity")
	}
}
