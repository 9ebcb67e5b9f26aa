package ha

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"testing"
	"time"

	"github.com/smallstep/certificates/db"
	"golang.org/x/crypto/ocsp"

	"github.com/stepfort/stepfort/internal/storage"
)

// Raw OCSP request structures (RFC 6960 4.1.1), to build requests
// x/crypto/ocsp cannot: huge serials, foreign issuer hashes, nonces.
type rawCertID struct {
	HashAlgorithm pkix.AlgorithmIdentifier
	NameHash      []byte
	IssuerKeyHash []byte
	SerialNumber  *big.Int
}

type rawTBSRequest struct {
	RequestList []struct{ Cert rawCertID }
	Extensions  []pkix.Extension `asn1:"explicit,tag:2,optional"`
}

type rawOCSPRequest struct{ TBSRequest rawTBSRequest }

var (
	oidSHA1Alg   = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
	oidOCSPNonce = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 2}
)

// rawRequest is a SHA-1 CertID request for serial with the given issuer
// hashes and, when nonce is not empty, a nonce extension.
func rawRequest(t testing.TB, nameHash, keyHash []byte, serial *big.Int, nonce []byte) []byte {
	t.Helper()
	req := rawOCSPRequest{TBSRequest: rawTBSRequest{RequestList: []struct{ Cert rawCertID }{{rawCertID{
		HashAlgorithm: pkix.AlgorithmIdentifier{Algorithm: oidSHA1Alg, Parameters: asn1.NullRawValue},
		NameHash:      nameHash, IssuerKeyHash: keyHash, SerialNumber: serial,
	}}}}}
	if len(nonce) > 0 {
		req.TBSRequest.Extensions = []pkix.Extension{{Id: oidOCSPNonce, Value: nonce}}
	}
	der, err := asn1.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// serveOCSP sends der as a POST, or as a GET when get is set, and returns
// the answer's body.
func serveOCSP(t testing.TB, r *Responder, der []byte, get bool) []byte {
	t.Helper()
	req := httptest.NewRequest("POST", "/ocsp", bytes.NewReader(der))
	if get {
		req = httptest.NewRequest("GET", "/ocsp/x", nil)
		req.URL.RawPath = "/ocsp/" + url.PathEscape(base64.StdEncoding.EncodeToString(der))
		req.URL.Path, _ = url.PathUnescape(req.URL.RawPath)
	}
	w := httptest.NewRecorder()
	r.ServeHTTP(w, req)
	if w.Code != http.StatusOK {
		t.Fatalf("answer %d", w.Code)
	}
	return w.Body.Bytes()
}

// cachedBytes is what the responder's and the status index's caches hold,
// counted from the outside: the bytes of keys, serials and signed
// responses (not Go's per-entry overhead), and the number of entries.
func cachedBytes(r *Responder) (bytes, entries int) {
	r.parsedMu.RLock()
	for raw, q := range r.parsed {
		bytes += len(raw) + len(q.serial) + len(q.serialNumber.Bytes()) + len(q.issuerName) + len(q.issuerKey)
		entries++
	}
	r.parsedMu.RUnlock()
	r.mu.RLock()
	for _, m := range []map[cacheKey]*cachedResponse{r.cache, r.unknown} {
		for k, v := range m {
			bytes += len(k.serial) + len(v.der)
			entries++
		}
	}
	r.mu.RUnlock()
	r.idx.mu.RLock()
	for _, m := range []map[string]struct{}{r.idx.issued, r.idx.unknown} {
		for serial := range m {
			bytes += len(serial)
			entries++
		}
	}
	r.idx.mu.RUnlock()
	return bytes, entries
}

func heapInUse() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestOCSPHostileRequestsBounded sends 5,000 distinct unauthenticated
// requests a legitimate client never sends (serials of 2 KB, issuers that
// are not ours, 2 KB nonces) to a real responder with its defaults. Each
// gets its proper error (or, for the nonces, its proper answer), none is
// cached (so the caches and the heap do not grow with them), and legitimate
// requests are still answered correctly and from cache.
func TestOCSPHostileRequestsBounded(t *testing.T) {
	h := newTestHost(t)
	r := startResponder(t, h, DefaultConfig().OCSP)
	key, err := r.currentSigner()
	if err != nil {
		t.Fatal(err)
	}
	ourName, ourKey := key.nameHash[crypto.SHA1], key.keyHash[crypto.SHA1]
	issued, revoked, unknown := big.NewInt(1001), big.NewInt(1002), big.NewInt(1003)
	for _, s := range []*big.Int{issued, revoked} {
		if err := h.Store.Set(storage.CertsTable, []byte(s.String()), []byte("der")); err != nil {
			t.Fatal(err)
		}
	}
	rci, _ := json.Marshal(db.RevokedCertificateInfo{Serial: revoked.String(), ReasonCode: ocsp.KeyCompromise, RevokedAt: h.Now().Add(-time.Hour).UTC()})
	if err := h.Store.Set(storage.RevokedCertsTable, []byte(revoked.String()), rci); err != nil {
		t.Fatal(err)
	}
	r.idx.revokedNow(revoked.String(), revocation{at: h.Now().Add(-time.Hour).UTC(), reason: ocsp.KeyCompromise})
	checkLegit := func() {
		t.Helper()
		for s, want := range map[*big.Int]int{issued: ocsp.Good, revoked: ocsp.Revoked, unknown: ocsp.Unknown} {
			for _, get := range []bool{false, true} {
				before := hits(r)
				body := serveOCSP(t, r, rawRequest(t, ourName, ourKey, s, nil), get)
				resp, err := ocsp.ParseResponseForCert(body, nil, key.issuer)
				if err != nil {
					t.Fatalf("serial %v: %v", s, err)
				}
				if resp.Status != want || resp.SerialNumber.Cmp(s) != 0 {
					t.Fatalf("serial %v: status %d, want %d", s, resp.Status, want)
				}
				if again := serveOCSP(t, r, rawRequest(t, ourName, ourKey, s, nil), get); !bytes.Equal(again, body) || hits(r) < before+1 {
					t.Fatalf("serial %v: a repeated request was not served from cache", s)
				}
			}
		}
	}
	checkLegit()
	baseBytes, baseEntries := cachedBytes(r)
	baseHeap := heapInUse()

	huge := func() *big.Int { return new(big.Int).SetBytes(append([]byte{0x7f}, randomBytes(t, 2047)...)) }
	const n = 5000
	for i := range n {
		var der, want []byte
		switch i % 4 {
		case 0: // our issuer, a 2 KB serial
			der, want = rawRequest(t, ourName, ourKey, huge(), nil), ocsp.MalformedRequestErrorResponse
		case 1: // a foreign issuer, a 2 KB serial
			der, want = rawRequest(t, randomBytes(t, 20), randomBytes(t, 20), huge(), nil), ocsp.MalformedRequestErrorResponse
		case 2: // a foreign issuer, a valid serial
			der, want = rawRequest(t, randomBytes(t, 20), randomBytes(t, 20), big.NewInt(int64(i)+1<<40), nil), ocsp.UnauthorizedErrorResponse
		case 3: // our issuer and an issued serial, a 2 KB nonce
			der = rawRequest(t, ourName, ourKey, issued, randomBytes(t, 2048))
		}
		body := serveOCSP(t, r, der, i%8 >= 4)
		if want != nil && !bytes.Equal(body, want) {
			t.Fatalf("request %d (kind %d): answer %x, want %x", i, i%4, body, want)
		}
		if want == nil {
			if resp, err := ocsp.ParseResponseForCert(body, nil, key.issuer); err != nil || resp.Status != ocsp.Good {
				t.Fatalf("request %d with a nonce: %v %v", i, resp, err)
			}
		}
	}
	gotBytes, gotEntries := cachedBytes(r)
	growth := int64(heapInUse()) - int64(baseHeap)
	t.Logf("caches: %d entries, %d bytes before; %d entries, %d bytes after %d hostile requests; heap grew %d KiB",
		baseEntries, baseBytes, gotEntries, gotBytes, n, growth>>10)
	// Nothing of the hostile requests is kept.
	if gotEntries > baseEntries || gotBytes > baseBytes {
		t.Fatalf("hostile requests were cached: %d entries, %d bytes (before: %d, %d)", gotEntries, gotBytes, baseEntries, baseBytes)
	}
	// 5,000 requests of over 2 KB each: kept, they would be over 10 MB.
	if growth > 4<<20 {
		t.Fatalf("heap grew by %d KiB after %d hostile requests", growth>>10, n)
	}
	checkLegit()
	runtime.KeepAlive(r)
}

// TestOCSPCachesBoundedInBytes fills every cache with legitimate-looking
// requests (our issuer, valid serials) past small byte bounds: each cache
// stays within its bound in entries and in bytes, counted by the responder
// and from the outside, and keeps answering.
func TestOCSPCachesBoundedInBytes(t *testing.T) {
	h := newTestHost(t)
	cfg := DefaultConfig().OCSP
	cfg.CacheSize = 100_000
	cfg.CacheBytes, cfg.UnknownCacheBytes, cfg.RequestCacheBytes = 96<<10, 64<<10, 32<<10
	r := startResponder(t, h, cfg)
	key, err := r.currentSigner()
	if err != nil {
		t.Fatal(err)
	}
	const n = 400
	for i := range n {
		if err := h.Store.Set(storage.CertsTable, []byte(big.NewInt(int64(i)+1<<20).String()), []byte("der")); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		for _, s := range []*big.Int{big.NewInt(int64(i) + 1<<20), big.NewInt(int64(i) + 1<<30)} { // issued, unknown
			body := serveOCSP(t, r, rawRequest(t, key.nameHash[crypto.SHA1], key.keyHash[crypto.SHA1], s, nil), i%2 == 0)
			want := ocsp.Good
			if s.Int64() >= 1<<30 {
				want = ocsp.Unknown
			}
			if resp, err := ocsp.ParseResponseForCert(body, nil, key.issuer); err != nil || resp.Status != want {
				t.Fatalf("serial %v: %v %v", s, resp, err)
			}
		}
	}
	r.parsedMu.RLock()
	parsedUsed, parsed := r.parsedBound.used, len(r.parsed)
	outside := int64(0)
	for raw, q := range r.parsed {
		outside += requestSize(raw, q)
	}
	r.parsedMu.RUnlock()
	if parsedUsed > cfg.RequestCacheBytes || outside != parsedUsed || parsed == 0 {
		t.Fatalf("parsed-request cache: %d entries, %d bytes counted, %d recounted, bound %d", parsed, parsedUsed, outside, cfg.RequestCacheBytes)
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	for name, c := range map[string]struct {
		m     map[cacheKey]*cachedResponse
		b     *byteBound[cacheKey, *cachedResponse]
		bound int64
	}{"issued": {r.cache, &r.cacheBound, cfg.CacheBytes}, "unknown": {r.unknown, &r.unknownBound, cfg.UnknownCacheBytes}} {
		outside := int64(0)
		for k, v := range c.m {
			outside += responseSize(k, v)
		}
		t.Logf("%s cache: %d entries, %d bytes (bound %d)", name, len(c.m), c.b.used, c.bound)
		if c.b.used > c.bound || outside != c.b.used || len(c.m) == 0 || len(c.m) >= n {
			t.Fatalf("%s cache: %d entries, %d bytes counted, %d recounted, bound %d", name, len(c.m), c.b.used, outside, c.bound)
		}
	}
}

// TestOCSPOversizedRequests: a POST body or GET path past the bounds is
// answered malformedRequest without being read whole.
func TestOCSPOversizedRequests(t *testing.T) {
	h := newTestHost(t)
	r := startResponder(t, h, DefaultConfig().OCSP)
	key, err := r.currentSigner()
	if err != nil {
		t.Fatal(err)
	}
	// A valid request padded with a nonce just past maxRequest.
	der := rawRequest(t, key.nameHash[crypto.SHA1], key.keyHash[crypto.SHA1], big.NewInt(5), randomBytes(t, maxRequest))
	for _, get := range []bool{false, true} {
		if body := serveOCSP(t, r, der, get); !bytes.Equal(body, ocsp.MalformedRequestErrorResponse) {
			t.Fatalf("oversized request (GET %v): answer %x", get, body)
		}
	}
	// A body far larger is not read past the bound.
	body := &countingReader{n: 100 << 20}
	w := httptest.NewRecorder()
	r.ServeHTTP(w, httptest.NewRequest("POST", "/ocsp", body))
	if !bytes.Equal(w.Body.Bytes(), ocsp.MalformedRequestErrorResponse) || body.read > maxRequest+1 {
		t.Fatalf("100 MiB body: answer %x after reading %d bytes", w.Body.Bytes(), body.read)
	}
}

// countingReader yields n zero bytes and counts what was read.
type countingReader struct{ n, read int }

func (c *countingReader) Read(p []byte) (int, error) {
	if c.read >= c.n {
		return 0, io.EOF
	}
	k := min(len(p), c.n-c.read)
	clear(p[:k])
	c.read += k
	return k, nil
}
