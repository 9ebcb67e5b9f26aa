package ha

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"math/big"
	mrand "math/rand"
	"reflect"
	"testing"
	"time"

	"github.com/smallstep/certificates/db"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// testIssuer is a CA certificate and key that can sign CRLs.
type testIssuer struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newTestIssuer(t testing.TB, key crypto.Signer) testIssuer {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Test Intermediate CA", Organization: []string{"stepfort"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return testIssuer{cert, key}
}

func testKeys(t testing.TB) map[string]crypto.Signer {
	t.Helper()
	keys := map[string]crypto.Signer{}
	for name, c := range map[string]elliptic.Curve{"P-256": elliptic.P256(), "P-384": elliptic.P384(), "P-521": elliptic.P521()} {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		keys[name] = k
	}
	r, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keys["RSA-2048"] = r
	_, e, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	keys["Ed25519"] = e
	return keys
}

// testEntry is one revocation as the encoder takes it.
type testEntry struct {
	serial string
	at     time.Time
	reason int
}

// encodeBoth encodes entries with crlEncoder (first chunk sized by hint)
// and with x509.CreateRevocationList.
func encodeBoth(t testing.TB, is testIssuer, entries []testEntry, hint int) (ours, gos []byte) {
	t.Helper()
	now := time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)
	next := now.Add(36 * time.Hour)
	idp, err := issuingDistributionPoint("http://ca.example/1.0/crl")
	if err != nil {
		t.Fatal(err)
	}
	sig, err := newCRLSigner(is.key)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := newCRLEncoder(is.cert, sig, now, next, hint)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.RevocationList{Number: big.NewInt(4242), ThisUpdate: now, NextUpdate: next, ExtraExtensions: []pkix.Extension{idp}}
	for _, e := range entries {
		if err := enc.add([]byte(e.serial), e.at, e.reason); err != nil {
			t.Fatalf("add %+v: %v", e, err)
		}
		sn, ok := new(big.Int).SetString(e.serial, 10)
		if !ok {
			t.Fatalf("bad test serial %q", e.serial)
		}
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: sn, RevocationTime: e.at, ReasonCode: e.reason})
	}
	if ours, err = enc.finish(4242, idp); err != nil {
		t.Fatal(err)
	}
	if gos, err = x509.CreateRevocationList(rand.Reader, tmpl, is.cert, is.key); err != nil {
		t.Fatal(err)
	}
	return ours, gos
}

// sameAsGo checks that ours is the CRL Go encodes: the same bytes when the
// signature is deterministic (RSA PKCS #1 v1.5, Ed25519), else the same
// TBSCertList and signature algorithm, and a valid signature.
func sameAsGo(t testing.TB, is testIssuer, ours, gos []byte) *x509.RevocationList {
	t.Helper()
	a, err := x509.ParseRevocationList(ours)
	if err != nil {
		t.Fatalf("our CRL does not parse: %v", err)
	}
	b, err := x509.ParseRevocationList(gos)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.CheckSignatureFrom(is.cert); err != nil {
		t.Fatalf("our CRL's signature: %v", err)
	}
	if !bytes.Equal(a.RawTBSRevocationList, b.RawTBSRevocationList) {
		t.Fatalf("TBSCertList differs from Go's:\nours % x\nGo's % x", head(a.RawTBSRevocationList), head(b.RawTBSRevocationList))
	}
	if a.SignatureAlgorithm != b.SignatureAlgorithm {
		t.Fatalf("signature algorithm %v, Go picks %v", a.SignatureAlgorithm, b.SignatureAlgorithm)
	}
	if _, ok := is.key.(*ecdsa.PrivateKey); !ok && !bytes.Equal(ours, gos) {
		t.Fatal("deterministic signature, yet the CRL differs from Go's")
	}
	if !whole(ours) {
		t.Fatal("the CertificateList's length is not the CRL's")
	}
	return a
}

// whole reports whether der is exactly one DER element.
func whole(der []byte) bool {
	s := cryptobyte.String(der)
	var el cryptobyte.String
	return s.ReadASN1Element(&el, cbasn1.SEQUENCE) && s.Empty()
}

func head(b []byte) []byte { return b[:min(len(b), 200)] }

func TestCRLEncoderMatchesGo(t *testing.T) {
	keys := testKeys(t)
	at := time.Date(2024, 2, 29, 12, 30, 45, 987654321, time.FixedZone("x", 5*3600+1800))
	edge := []testEntry{
		{"0", at, 0},
		{"1", at, 1},
		{"127", at, 10},
		{"128", at, 127},
		{"255", at, 128},
		{"256", at, 255},
		{"000123", at, 300},
		{"9223372036854775808", at, -1}, // 2^63
		{"18446744073709551615", at, 6}, // 2^64-1
		{"18446744073709551616", at, 9}, // 2^64
		{"340282366920938463463374607431768211455", at, 2},                                        // 2^128-1
		{"1461501637330902918203684832716283019655932542975", at, 3},                              // 2^160-1
		{"115792089237316195423570985008687907853269984665640564039457584007913129639935", at, 4}, // 2^256-1
		{"115792089237316195423570985008687907853269984665640564039457584007913129639936", at, 5}, // 2^256: big.Int path
		{"-5", at, 1}, // signs go through big.Int, as before
		{"+77", at, 1},
		{"1000", time.Date(1950, 1, 1, 0, 0, 0, 0, time.UTC), 1},
		{"1001", time.Date(1949, 12, 31, 23, 59, 59, 0, time.UTC), 1}, // GeneralizedTime
		{"1002", time.Date(2049, 12, 31, 23, 59, 59, 999, time.UTC), 1},
		{"1003", time.Date(2050, 1, 1, 0, 0, 0, 0, time.UTC), 1}, // GeneralizedTime
		{"1004", time.Date(2050, 1, 1, 0, 30, 0, 0, time.FixedZone("y", 3600)), 1},
		{"1005", time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), 0},
		{"1006", time.Date(2200, 6, 1, 0, 0, 0, 0, time.UTC), 5},
	}
	for name, key := range keys {
		t.Run(name, func(t *testing.T) {
			is := newTestIssuer(t, key)
			t.Run("empty", func(t *testing.T) {
				ours, gos := encodeBoth(t, is, nil, 0)
				if crl := sameAsGo(t, is, ours, gos); len(crl.RevokedCertificateEntries) != 0 {
					t.Fatal("entries in an empty CRL")
				}
			})
			t.Run("reason 0 only", func(t *testing.T) {
				ours, gos := encodeBoth(t, is, []testEntry{{"42", at, 0}}, 0)
				crl := sameAsGo(t, is, ours, gos)
				if e := crl.RevokedCertificateEntries[0]; len(e.Extensions) != 0 || e.ReasonCode != 0 {
					t.Fatalf("reason 0 entry has extensions %v", e.Extensions)
				}
			})
			t.Run("edges", func(t *testing.T) {
				ours, gos := encodeBoth(t, is, edge, 0)
				crl := sameAsGo(t, is, ours, gos)
				for i, e := range crl.RevokedCertificateEntries {
					if want, _ := new(big.Int).SetString(edge[i].serial, 10); e.SerialNumber.Cmp(want) != 0 ||
						!e.RevocationTime.Equal(edge[i].at.Truncate(time.Second)) || e.ReasonCode != edge[i].reason {
						t.Fatalf("entry %d: %v %v %d, want %+v", i, e.SerialNumber, e.RevocationTime, e.ReasonCode, edge[i])
					}
				}
			})
		})
	}
}

// TestCRLEncoderBuffers covers the three ways finish lays the CRL out:
// in place (the hint was right), copied from overflow chunks (no hint),
// and copied to a smaller buffer (the hint was far too big).
func TestCRLEncoderBuffers(t *testing.T) {
	is := newTestIssuer(t, testKeys(t)["Ed25519"])
	r := mrand.New(mrand.NewSource(1))
	entries := randomEntries(r, 40_000)
	var want []byte
	for _, hint := range []int{0, 1 << 10, 2 << 20, 64 << 20} {
		ours, gos := encodeBoth(t, is, entries, hint)
		sameAsGo(t, is, ours, gos)
		if want == nil {
			want = ours
		} else if !bytes.Equal(ours, want) {
			t.Fatalf("hint %d changed the CRL", hint)
		}
		if cap(ours) > len(ours)+len(ours)/4+crlTail+(64<<10) {
			t.Fatalf("hint %d: %d bytes kept for a %d-byte CRL", hint, cap(ours), len(ours))
		}
	}
}

func randomEntries(r *mrand.Rand, n int) []testEntry {
	out := make([]testEntry, n)
	for i := range out {
		sn := new(big.Int).Rand(r, new(big.Int).Lsh(big.NewInt(1), uint(1+r.Intn(300))))
		sec := r.Int63n(8000*365*86400) - 100*365*86400 // from 1870 to 9800
		out[i] = testEntry{sn.String(), time.Unix(sec, r.Int63n(1e9)), r.Intn(12)}
		if r.Intn(10) == 0 {
			out[i].reason = r.Intn(1000) - 100
		}
	}
	return out
}

func TestCRLEncoderRandom(t *testing.T) {
	keys := testKeys(t)
	r := mrand.New(mrand.NewSource(7))
	for _, key := range keys {
		is := newTestIssuer(t, key)
		for range 20 {
			ours, gos := encodeBoth(t, is, randomEntries(r, r.Intn(300)), r.Intn(20000))
			sameAsGo(t, is, ours, gos)
		}
	}
}

// FuzzCRLEncoder compares one entry's encoding with Go's for arbitrary
// serial digits, times and reasons.
func FuzzCRLEncoder(f *testing.F) {
	f.Add("1", int64(0), int64(0), 1)
	f.Add("340282366920938463463374607431768211455", int64(2524608000), int64(5), 0)
	f.Add("00", int64(-631152000), int64(999999999), -3)
	is := newTestIssuer(f, testKeys(f)["Ed25519"])
	f.Fuzz(func(t *testing.T, serial string, sec, nsec int64, reason int) {
		at := time.Unix(sec%(8000*365*86400), nsec%1e9).UTC()
		if _, ok := new(big.Int).SetString(serial, 10); !ok || len(serial) > 200 || at.IsZero() || at.Year() < 0 || at.Year() > 9999 {
			return
		}
		ours, gos := encodeBoth(t, is, []testEntry{{serial, at, reason}}, 0)
		if !bytes.Equal(ours, gos) {
			t.Fatalf("%q %v %d: differs from Go", serial, at, reason)
		}
	})
}

func TestCRLSignerMisbehaving(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	s, err := newCRLSigner(wrongKey{k, other})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.sign([]byte("tbs")); err == nil {
		t.Fatal("a signature by another key was accepted")
	}
}

// wrongKey claims one public key and signs with another.
type wrongKey struct{ pub, priv *ecdsa.PrivateKey }

func (w wrongKey) Public() crypto.PublicKey { return w.pub.Public() }
func (w wrongKey) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	return w.priv.Sign(r, d, o)
}

func TestEncodeCRLInfoIsJSONMarshal(t *testing.T) {
	for _, der := range [][]byte{{}, {1}, {1, 2}, {1, 2, 3}, bytes.Repeat([]byte{0xfb, 0xff}, 1000)} {
		exp := time.Date(2031, 1, 2, 3, 4, 5, 6, time.UTC)
		got, err := encodeCRLInfo(77, exp, 36*time.Hour, der, 0)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(&db.CertificateRevocationListInfo{Number: 77, ExpiresAt: exp, Duration: 36 * time.Hour, DER: der})
		if !bytes.Equal(got, want) {
			t.Fatalf("\ngot  %s\nwant %s", got, want)
		}
	}
}

func TestParseCRLHeader(t *testing.T) {
	is := newTestIssuer(t, testKeys(t)["P-256"])
	for _, n := range []int{0, 3} {
		ours, _ := encodeBoth(t, is, randomEntries(mrand.New(mrand.NewSource(3)), n), 0)
		full, err := x509.ParseRevocationList(ours)
		if err != nil {
			t.Fatal(err)
		}
		h, err := parseCRLHeader(ours)
		if err != nil {
			t.Fatal(err)
		}
		if len(h.RevokedCertificateEntries) != 0 {
			t.Fatal("header parse returned entries")
		}
		full.RevokedCertificateEntries, full.RevokedCertificates = nil, nil
		h.RevokedCertificates = nil
		if !reflect.DeepEqual(h, full) {
			t.Fatalf("header parse differs:\n%+v\n%+v", h, full)
		}
		if err := h.CheckSignatureFrom(is.cert); err != nil {
			t.Fatal(err)
		}
	}
	for _, bad := range [][]byte{nil, {0x30, 0}, {0x30, 3, 0x30, 1, 0}, bytes.Repeat([]byte{0x30}, 10)} {
		if _, err := parseCRLHeader(bad); err == nil {
			t.Fatalf("% x parsed", bad)
		}
	}
}
