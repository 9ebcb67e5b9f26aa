package ha

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestCertIDHashes(t *testing.T) {
	for _, enforced := range []bool{false, true} {
		got := issuerHashFuncs(enforced)
		for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512} {
			if got[h] == nil {
				t.Errorf("enforced=%v: no %s", enforced, h)
			}
		}
		if _, sha1 := got[crypto.SHA1]; sha1 == enforced {
			t.Errorf("enforced=%v: SHA-1 present=%v", enforced, sha1)
		}
	}
}

// TestHashIssuerUnderFIPS140Only runs the helper below in a child with
// GODEBUG=fips140=only (the mode is fixed at start-up): hashing an issuer
// must not panic on SHA-1, and a SHA-1 CertID then names no issuer.
func TestHashIssuerUnderFIPS140Only(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperHashIssuerFIPS140Only$", "-test.v")
	cmd.Env = append(os.Environ(), "GODEBUG=fips140=only", "STEPFORT_FIPS_HELPER=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestHelperHashIssuerFIPS140Only") {
		t.Fatalf("child with fips140=only: %v\n%s", err, out)
	}
}

func TestHelperHashIssuerFIPS140Only(t *testing.T) {
	if os.Getenv("STEPFORT_FIPS_HELPER") != "1" {
		t.Skip("run by TestHashIssuerUnderFIPS140Only")
	}
	key, err := newResponderKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "FIPS Issuer"},
		NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<32, 0),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	k := &responderKey{issuer: issuer, signer: key}
	if err := k.hashIssuer(); err != nil {
		t.Fatalf("hashIssuer under fips140=only: %v", err)
	}
	if _, ok := k.nameHash[crypto.SHA1]; ok {
		t.Fatal("SHA-1 issuer hash computed under fips140=only")
	}
	name := sha256.Sum256(issuer.RawSubject)
	if !k.issuedBy(crypto.SHA256, name[:], k.keyHash[crypto.SHA256]) {
		t.Fatal("a SHA-256 CertID does not name the issuer")
	}
	if k.issuedBy(crypto.SHA1, make([]byte, 20), make([]byte, 20)) {
		t.Fatal("a SHA-1 CertID names the issuer under fips140=only")
	}
	// Pre-signing a SHA-1 response would panic the pre-sign goroutine.
	if h := presignHash(); h != crypto.SHA256 {
		t.Fatalf("responses pre-signed for %s under fips140=only, want SHA-256", h)
	}
}

func TestPresignHashDefault(t *testing.T) {
	if h := presignHash(); h != crypto.SHA1 {
		t.Fatalf("responses pre-signed for %s, want SHA-1 (RFC 5019 clients)", h)
	}
}
