package ha

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/nosql"
	"golang.org/x/crypto/ocsp"

	"github.com/stepfort/stepfort/internal/legacy"
	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

// testLegacyCA is an ADCS-like hierarchy made in the test: a root and an
// RSA issuing CA under it, the issuing CA being the legacy issuer.
type testLegacyCA struct {
	root, cert *x509.Certificate
	key        *rsa.PrivateKey
}

func newTestLegacyCA(t testing.TB, cn string) *testLegacyCA {
	t.Helper()
	return newTestLegacyCAUntil(t, cn, time.Now().Add(10*365*24*time.Hour))
}

// newTestLegacyCAUntil is newTestLegacyCA with an issuing CA valid until
// notAfter.
func newTestLegacyCAUntil(t testing.TB, cn string, notAfter time.Time) *testLegacyCA {
	t.Helper()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn + " Root"},
		NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(20 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn, Organization: []string{"Corp"}},
		NotBefore: now.Add(-24 * time.Hour), NotAfter: notAfter,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, key.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testLegacyCA{root: root, cert: cert, key: key}
}

func (c *testLegacyCA) issuer(name string) *legacy.Issuer {
	return &legacy.Issuer{Config: legacy.IssuerConfig{Name: name}, Cert: c.cert, Signer: c.key}
}

// importGood makes serial a good certificate of issuer through the store's
// own API (a hold released), as an import would.
func importGood(t testing.TB, s *legacy.Store, issuer string, serial *big.Int) {
	t.Helper()
	if err := s.Revoke(issuer, serial, legacy.ReasonCertificateHold, time.Now(), legacy.AllowUnknown()); err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(issuer, serial, legacy.ReasonRemoveFromCRL, time.Now()); err != nil {
		t.Fatal(err)
	}
}

// certIDRequest is an OCSP request for serial of issuer with CertID hash h.
func certIDRequest(t testing.TB, issuer *x509.Certificate, serial *big.Int, h crypto.Hash) []byte {
	t.Helper()
	der, err := ocsp.CreateRequest(&x509.Certificate{SerialNumber: serial}, issuer, &ocsp.RequestOptions{Hash: h})
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// askIssuer asks about serial of issuer (POST or GET) and returns the
// response, verified against issuer (a delegated responder certificate
// must be issued by it).
func askIssuer(t testing.TB, r *Responder, issuer *x509.Certificate, serial *big.Int, h crypto.Hash, get bool) *ocsp.Response {
	t.Helper()
	body := serveOCSP(t, r, certIDRequest(t, issuer, serial, h), get)
	resp, err := ocsp.ParseResponseForCert(body, nil, issuer)
	if err != nil {
		t.Fatalf("serial %v of %q (%s): %v", serial, issuer.Subject.CommonName, h, err)
	}
	if resp.SerialNumber.Cmp(serial) != 0 || resp.IssuerHash != h {
		t.Fatalf("response for serial %v hash %s, asked %v %s", resp.SerialNumber, resp.IssuerHash, serial, h)
	}
	return resp
}

var certIDHashes = []crypto.Hash{crypto.SHA1, crypto.SHA256, crypto.SHA384, crypto.SHA512}

// TestOCSPLegacyIssuers: one responder answers for stepfort's own issuer
// and two legacy issuers, routing by CertID (every accepted hash, GET and
// POST); legacy statuses come from the legacy store (good, revoked with
// its exact time and reason, unknown), signed by a delegated responder
// certificate issued with the legacy key; a serial shared by issuers gets
// each issuer's own answer; unknown issuers get unauthorized.
func TestOCSPLegacyIssuers(t *testing.T) {
	h := newTestHost(t)
	r := startResponder(t, h, DefaultConfig().OCSP)
	own, err := r.currentSigner()
	if err != nil {
		t.Fatal(err)
	}
	store, err := legacy.OpenStore(h.Store)
	if err != nil {
		t.Fatal(err)
	}
	corp1, corp2 := newTestLegacyCA(t, "Corp Issuing CA 1"), newTestLegacyCA(t, "Corp Issuing CA 2")
	for name, ca := range map[string]*testLegacyCA{"corp-1": corp1, "corp-2": corp2} {
		if err := r.AddLegacyIssuer(ca.issuer(name), store); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.AddLegacyIssuer(corp1.issuer("corp-1"), store); err == nil {
		t.Fatal("the same issuer was added twice")
	}
	if err := r.AddLegacyIssuer(corp1.issuer("corp-1-again"), store); err == nil {
		t.Fatal("a second name for the same certificate was accepted")
	}

	shared, revoked, unknown := big.NewInt(0x1234567890), new(big.Int).SetBytes([]byte{0x61, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x2a}), big.NewInt(77)
	revokedAt := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	importGood(t, store, "corp-1", shared)
	if err := store.Revoke("corp-1", revoked, ocsp.KeyCompromise, revokedAt, legacy.AllowUnknown()); err != nil {
		t.Fatal(err)
	}
	if err := store.Revoke("corp-2", shared, ocsp.Superseded, revokedAt, legacy.AllowUnknown()); err != nil {
		t.Fatal(err)
	}
	ownGood := big.NewInt(424242)
	if err := h.Store.Set(storage.CertsTable, []byte(ownGood.String()), []byte("der")); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name   string
		issuer *x509.Certificate
		serial *big.Int
		want   int
		reason int
	}{
		{"corp-1 good", corp1.cert, shared, ocsp.Good, 0},
		{"corp-1 revoked", corp1.cert, revoked, ocsp.Revoked, ocsp.KeyCompromise},
		{"corp-1 unknown", corp1.cert, unknown, ocsp.Unknown, 0},
		{"corp-2, same serial, revoked", corp2.cert, shared, ocsp.Revoked, ocsp.Superseded},
		{"corp-2 unknown", corp2.cert, revoked, ocsp.Unknown, 0},
		{"own good", own.issuer, ownGood, ocsp.Good, 0},
		{"own, a legacy serial", own.issuer, shared, ocsp.Unknown, 0},
	}
	for i, hash := range certIDHashes {
		for _, c := range cases {
			for round := range 2 { // the second from cache
				resp := askIssuer(t, r, c.issuer, c.serial, hash, (i+round)%2 == 0)
				if resp.Status != c.want {
					t.Fatalf("%s (%s): status %d, want %d", c.name, hash, resp.Status, c.want)
				}
				if c.want == ocsp.Revoked && (resp.RevocationReason != c.reason || !resp.RevokedAt.Equal(revokedAt)) {
					t.Fatalf("%s: revoked at %v reason %d, want %v reason %d", c.name, resp.RevokedAt, resp.RevocationReason, revokedAt, c.reason)
				}
				if c.issuer != own.issuer {
					checkDelegated(t, resp.Certificate, c.issuer)
				}
			}
		}
	}

	// Other issuers: a foreign CA, and the legacy root (known, but not an
	// issuer stepfort answers for).
	foreign := newTestLegacyCA(t, "Someone Else CA")
	for _, iss := range []*x509.Certificate{foreign.cert, corp1.root} {
		for _, hash := range certIDHashes {
			if body := serveOCSP(t, r, certIDRequest(t, iss, shared, hash), false); !bytes.Equal(body, ocsp.UnauthorizedErrorResponse) {
				t.Fatalf("%q (%s): answer %x, want unauthorized", iss.Subject.CommonName, hash, body)
			}
		}
	}
	if n := responses(r, "unauthorized"); n != 8 {
		t.Fatalf("%v unauthorized responses counted, want 8", n)
	}

	// Several CertIDs in one request: the first is answered (as
	// x/crypto/ocsp parses requests, and as before legacy issuers).
	two := rawOCSPRequest{}
	for _, c := range []struct {
		iss    *x509.Certificate
		serial *big.Int
	}{{corp1.cert, revoked}, {own.issuer, ownGood}} {
		req, err := ocsp.ParseRequest(certIDRequest(t, c.iss, c.serial, crypto.SHA1))
		if err != nil {
			t.Fatal(err)
		}
		two.TBSRequest.RequestList = append(two.TBSRequest.RequestList, struct{ Cert rawCertID }{rawCertID{
			HashAlgorithm: pkix.AlgorithmIdentifier{Algorithm: oidSHA1Alg, Parameters: asn1.NullRawValue},
			NameHash:      req.IssuerNameHash, IssuerKeyHash: req.IssuerKeyHash, SerialNumber: c.serial}})
	}
	der, err := asn1.Marshal(two)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ocsp.ParseResponseForCert(serveOCSP(t, r, der, false), nil, corp1.cert)
	if err != nil || resp.Status != ocsp.Revoked || resp.SerialNumber.Cmp(revoked) != 0 {
		t.Fatalf("two CertIDs: %+v %v", resp, err)
	}
}

// checkDelegated checks a legacy issuer's responder certificate (RFC 6960
// 4.2.2.2): issued directly by the legacy CA, OCSPSigning, ocsp-nocheck.
func checkDelegated(t testing.TB, cert, issuer *x509.Certificate) {
	t.Helper()
	if cert == nil {
		t.Fatal("no delegated responder certificate in the response")
	}
	if err := cert.CheckSignatureFrom(issuer); err != nil || !bytes.Equal(cert.RawIssuer, issuer.RawSubject) {
		t.Fatalf("responder certificate not issued by %q: %v", issuer.Subject, err)
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning}) {
		t.Fatalf("responder certificate EKU %v", cert.ExtKeyUsage)
	}
	if !slices.ContainsFunc(cert.Extensions, func(e pkix.Extension) bool { return e.Id.Equal(oidOCSPNoCheck) }) {
		t.Fatal("responder certificate without ocsp-nocheck")
	}
	if cert.NotAfter.After(issuer.NotAfter) {
		t.Fatalf("responder certificate outlives its issuer: %v > %v", cert.NotAfter, issuer.NotAfter)
	}
}

// legacyResponder is a responder on a fresh test host whose database is db
// (backend), with legacy issuer "corp-1" read from a legacy store on db.
func legacyResponder(t *testing.T, db nosql.DB, backend string, ca *testLegacyCA) (*plugintest.Host, *Responder) {
	t.Helper()
	auth, _ := newTestAuthority(t)
	h := plugintest.NewHostWithDB(t, db, backend)
	h.Auth = auth
	r, err := NewResponder(h, DefaultConfig().OCSP)
	if err != nil {
		t.Fatal(err)
	}
	store, err := legacy.OpenStore(db)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.AddLegacyIssuer(ca.issuer("corp-1"), store); err != nil {
		t.Fatal(err)
	}
	return h, r
}

// TestOCSPLegacyStatusChangeWithinBound: a legacy status changed by
// another process (another store on the same database: on PostgreSQL its
// own connections) is answered within legacyStatusMaxAge of the
// responder's clock, and a cached response is served until then.
func TestOCSPLegacyStatusChangeWithinBound(t *testing.T) {
	ca := newTestLegacyCA(t, "Corp Issuing CA 1")
	for _, backend := range []string{"bbolt", "postgresql"} {
		t.Run(backend, func(t *testing.T) {
			dbA, dbB := openTwice(t, backend)
			h, r := legacyResponder(t, dbA, backend, ca)
			other, err := legacy.OpenStore(dbB)
			if err != nil {
				t.Fatal(err)
			}
			serial, later := big.NewInt(1001), big.NewInt(1002)
			importGood(t, other, "corp-1", serial)
			for range 2 {
				if got := askIssuer(t, r, ca.cert, serial, crypto.SHA1, false); got.Status != ocsp.Good {
					t.Fatalf("status %d, want good", got.Status)
				}
				if got := askIssuer(t, r, ca.cert, later, crypto.SHA1, false); got.Status != ocsp.Unknown {
					t.Fatalf("status %d, want unknown", got.Status)
				}
			}
			at := time.Date(2026, 11, 1, 2, 3, 4, 0, time.UTC)
			if err := other.Revoke("corp-1", serial, ocsp.CessationOfOperation, at); err != nil {
				t.Fatal(err)
			}
			importGood(t, other, "corp-1", later)
			// Within the bound the cached answers stand (no store read).
			h.Advance(legacyStatusMaxAge - time.Millisecond)
			before := hits(r)
			if got := askIssuer(t, r, ca.cert, serial, crypto.SHA1, false); got.Status != ocsp.Good || hits(r) != before+1 {
				t.Fatalf("within the bound: status %d, hits %v (before %v)", got.Status, hits(r), before)
			}
			// At the bound the change is seen.
			h.Advance(time.Millisecond)
			got := askIssuer(t, r, ca.cert, serial, crypto.SHA1, false)
			if got.Status != ocsp.Revoked || !got.RevokedAt.Equal(at) || got.RevocationReason != ocsp.CessationOfOperation {
				t.Fatalf("after %s: status %d at %v reason %d", legacyStatusMaxAge, got.Status, got.RevokedAt, got.RevocationReason)
			}
			if got := askIssuer(t, r, ca.cert, later, crypto.SHA1, true); got.Status != ocsp.Good {
				t.Fatalf("after %s: a serial imported since answered %d", legacyStatusMaxAge, got.Status)
			}
			// A change made through this replica is seen at once.
			if err := other.Revoke("corp-1", later, ocsp.AffiliationChanged, at); err != nil {
				t.Fatal(err)
			}
			r.ForgetLegacyStatus("corp-1", later)
			if got := askIssuer(t, r, ca.cert, later, crypto.SHA1, true); got.Status != ocsp.Revoked {
				t.Fatalf("after ForgetLegacyStatus: status %d", got.Status)
			}
		})
	}
}

// openTwice opens two handles on one fresh database: on PostgreSQL two
// connection pools (as two processes would), on bbolt the same handle
// (one process at a time can open the file).
func openTwice(t *testing.T, backend string) (nosql.DB, nosql.DB) {
	t.Helper()
	if backend == "bbolt" {
		d, err := nosql.New("bbolt", filepath.Join(t.TempDir(), "db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		return d, d
	}
	pg := testenv.StartPostgres(t)
	open := func() nosql.DB {
		d, err := nosql.New("postgresql", pg.DSN(), nosql.WithDatabase("legacyocsp"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		return d
	}
	return open(), open()
}

// A legacy issuer's change counter is read at most once per
// legacyStatusMaxAge, however many requests ask, and a cached response's
// status is read again only when the counter moved: while nothing changes,
// answering costs one store read per issuer and second, not one per
// serial.
func TestOCSPLegacyStatusReadsBounded(t *testing.T) {
	h := newTestHost(t)
	r, err := NewResponder(h, DefaultConfig().OCSP)
	if err != nil {
		t.Fatal(err)
	}
	ca := newTestLegacyCA(t, "Corp Issuing CA 1")
	reads, stateReads, counter := map[int64]int{}, 0, int64(7)
	if err := r.addIssuer("corp-1", ca.cert, ca.key, func() (int64, error) {
		stateReads++
		return counter, nil
	}, func(sn *big.Int) (certStatus, error) {
		reads[sn.Int64()]++
		return certStatus{code: statusGood}, nil
	}); err != nil {
		t.Fatal(err)
	}
	serials := []int64{5, 6, 7, 8}
	ask := func() {
		for range 100 {
			for _, sn := range serials {
				serveOCSP(t, r, certIDRequest(t, ca.cert, big.NewInt(sn), crypto.SHA256), false)
			}
		}
	}
	for second := range 3 {
		ask()
		if stateReads != second+1 {
			t.Fatalf("%d change-counter reads after %d seconds of requests, want one per second", stateReads, second+1)
		}
		for _, sn := range serials {
			if reads[sn] != 1 {
				t.Fatalf("serial %d: status read %d times while nothing changed, want once", sn, reads[sn])
			}
		}
		h.Advance(legacyStatusMaxAge)
	}
	counter++ // something changed somewhere
	ask()
	for _, sn := range serials {
		if reads[sn] != 2 {
			t.Fatalf("serial %d: status read %d times after the counter moved, want twice", sn, reads[sn])
		}
	}
}

// The legacy responder certificate rotates past half its life like
// stepfort's own, never outlives the legacy CA, and responses never
// outlive it; rotating one issuer keeps the other's cached responses.
func TestOCSPLegacyResponderRotation(t *testing.T) {
	h := newTestHost(t)
	cfg := DefaultConfig().OCSP
	r := startResponder(t, h, cfg)
	ending := newTestLegacyCAUntil(t, "Corp Issuing CA 1", h.Now().Add(3*24*time.Hour))
	store, err := legacy.OpenStore(h.Store)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.AddLegacyIssuer(ending.issuer("corp-1"), store); err != nil {
		t.Fatal(err)
	}
	own, _ := r.currentSigner()
	serial := big.NewInt(9)
	first := askIssuer(t, r, ending.cert, serial, crypto.SHA1, false)
	checkDelegated(t, first.Certificate, ending.cert)
	if !first.Certificate.NotAfter.Equal(ending.cert.NotAfter) {
		t.Fatalf("responder certificate until %v, want the legacy CA's end %v", first.Certificate.NotAfter, ending.cert.NotAfter)
	}
	askWith(t, r, serial, crypto.SHA1) // an own response, cached
	h.Advance(ending.cert.NotAfter.Sub(h.Now())/2 + time.Minute)
	rotated := askIssuer(t, r, ending.cert, serial, crypto.SHA1, false)
	checkDelegated(t, rotated.Certificate, ending.cert)
	if rotated.Certificate.SerialNumber.Cmp(first.Certificate.SerialNumber) == 0 {
		t.Fatal("legacy responder certificate not rotated past half its life")
	}
	if rotated.NextUpdate.After(rotated.Certificate.NotAfter) {
		t.Fatalf("response valid until %v, its responder certificate until %v", rotated.NextUpdate, rotated.Certificate.NotAfter)
	}
	r.mu.RLock()
	_, ownKept := r.unknown[cacheKey{0, serial.String(), crypto.SHA1}]
	r.mu.RUnlock()
	if !ownKept {
		t.Fatal("rotating the legacy responder dropped stepfort's own cached responses")
	}
	if k, _ := r.currentSigner(); k != own {
		t.Fatal("stepfort's own responder rotated with the legacy one")
	}
}

// The real `openssl ocsp` verifies a legacy issuer's answers with only the
// legacy issuer's certificate (-issuer) and its root (-CAfile): no -VAfile,
// since the delegated responder certificate is issued by the issuer the
// request names. SHA-1 (its default) and SHA-256 CertIDs.
func TestOCSPLegacyWithOpenSSL(t *testing.T) {
	h := newTestHost(t)
	h.Clock = time.Now // openssl checks thisUpdate/nextUpdate against the real clock
	r := startResponder(t, h, DefaultConfig().OCSP)
	ca := newTestLegacyCA(t, "Corp Issuing CA 1")
	store, err := legacy.OpenStore(h.Store)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.AddLegacyIssuer(ca.issuer("corp-1"), store); err != nil {
		t.Fatal(err)
	}
	good, revoked, unknown := big.NewInt(0x1a2b3c), big.NewInt(0x4d5e6f), big.NewInt(0x778899)
	importGood(t, store, "corp-1", good)
	at := time.Date(2026, 2, 3, 4, 5, 6, 0, time.UTC)
	if err := store.Revoke("corp-1", revoked, ocsp.KeyCompromise, at, legacy.AllowUnknown()); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	issuerPEM, rootPEM := filepath.Join(dir, "issuer.pem"), filepath.Join(dir, "root.pem")
	for path, c := range map[string]*x509.Certificate{issuerPEM: ca.cert, rootPEM: ca.root} {
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, digest := range []string{"-sha1", "-sha256"} {
		for _, c := range []struct {
			serial *big.Int
			want   []string
		}{
			{good, []string{": good"}},
			{revoked, []string{": revoked", "Reason: keyCompromise", "Revocation Time: Feb  3 04:05:06 2026 GMT"}},
			{unknown, []string{": unknown"}},
		} {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			out, err := exec.CommandContext(ctx, "openssl", "ocsp", digest, "-issuer", issuerPEM, "-CAfile", rootPEM,
				"-serial", "0x"+c.serial.Text(16), "-url", srv.URL+"/ocsp").CombinedOutput()
			cancel()
			if err != nil {
				t.Fatalf("openssl ocsp %s serial %x: %v\n%s", digest, c.serial, err, out)
			}
			for _, w := range append(c.want, "Response verify OK") {
				if !strings.Contains(string(out), w) {
					t.Fatalf("openssl ocsp %s serial %x: no %q in\n%s", digest, c.serial, w, out)
				}
			}
		}
	}
}

// BenchmarkOCSPRoute measures a cached answer (parse from cache, route,
// status, cached response) for stepfort's own issuer alone, for it with a
// legacy issuer added, and for the legacy issuer.
func BenchmarkOCSPRoute(b *testing.B) {
	h := newTestHost(b)
	r, err := NewResponder(h, DefaultConfig().OCSP)
	if err != nil {
		b.Fatal(err)
	}
	if err := r.StartStatusFeed(); err != nil {
		b.Fatal(err)
	}
	own, err := r.currentSigner()
	if err != nil {
		b.Fatal(err)
	}
	serial := big.NewInt(4242)
	r.Committed(plugins.CertificateEvent{Kind: plugins.EventIssued, Serial: serial.String()})
	run := func(b *testing.B, der []byte) {
		b.ReportAllocs()
		for b.Loop() {
			q, err := r.parse(der)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := r.respondTo(q); err != nil {
				b.Fatal(err)
			}
		}
	}
	ownReq := certIDRequest(b, own.issuer, serial, crypto.SHA1)
	b.Run("own-only", func(b *testing.B) { run(b, ownReq) })
	ca := newTestLegacyCA(b, "Corp Issuing CA 1")
	if err := r.addIssuer("corp-1", ca.cert, ca.key, func() (int64, error) { return 0, nil }, func(*big.Int) (certStatus, error) { return certStatus{code: statusGood}, nil }); err != nil {
		b.Fatal(err)
	}
	b.Run("own-with-legacy", func(b *testing.B) { run(b, ownReq) })
	b.Run("legacy", func(b *testing.B) { run(b, certIDRequest(b, ca.cert, serial, crypto.SHA1)) })
}
