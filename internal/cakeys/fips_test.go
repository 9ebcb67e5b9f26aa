package cakeys

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.step.sm/crypto/pemutil"
	"software.sslmate.com/src/go-pkcs12"
)

func TestPFXLegacyAlgorithms(t *testing.T) {
	for file, want := range map[string][]string{
		"windows-azure-tools-3des.pfx": {"3DES (pbeWithSHAAnd3-KeyTripleDES-CBC)", "RC2-40 (pbeWithSHAAnd40BitRC2-CBC)", "a SHA-1 MAC"},
		"windows-certmgr-aes256.pfx":   nil,
	} {
		data, err := os.ReadFile(filepath.Join("testdata", file))
		if err != nil {
			t.Fatal(err)
		}
		got := pfxLegacyAlgorithms(data)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: %q, want %q", file, got, want)
		}
	}
	if got := pfxLegacyAlgorithms([]byte("not DER")); got != nil {
		t.Errorf("garbage: %q", got)
	}
}

// TestReadUnderFIPS140Only runs the helper below in a child with
// GODEBUG=fips140=only (fixed at start-up). The parent writes a CA key
// in the legacy PEM encryption and a modern PFX, which the child cannot
// make (MD5; go-pkcs12 hashes the certificate with SHA-1 for its key ID).
func TestReadUnderFIPS140Only(t *testing.T) {
	dir := t.TempDir()
	key, cert := selfSignedCA(t)
	block, err := pemutil.Serialize(key, pemutil.WithPassword([]byte("legacy pem password")))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "legacy.key"), pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	// go-pkcs12 names the key bag with a SHA-1 hash, so the child cannot
	// write a PFX either.
	pfx, err := pkcs12.Modern2023.Encode(key, cert, nil, "a long enough pfx password")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "modern.pfx"), pfx, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperReadFIPS140Only$", "-test.v")
	cmd.Env = append(os.Environ(), "GODEBUG=fips140=only", "STEPFORT_FIPS_HELPER="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestHelperReadFIPS140Only") {
		t.Fatalf("child with fips140=only: %v\n%s", err, out)
	}
	t.Logf("child with fips140=only:\n%s", out)
}

func TestHelperReadFIPS140Only(t *testing.T) {
	dir := os.Getenv("STEPFORT_FIPS_HELPER")
	if dir == "" {
		t.Skip("run by TestReadUnderFIPS140Only")
	}
	refused := func(what string, err error, want ...string) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s read under fips140=only", what)
		}
		msg := err.Error()
		t.Log(msg)
		if strings.Contains(msg, "\n") || !strings.Contains(msg, "FIPS 140-3: non-approved algorithm refused: ") {
			t.Fatalf("%s: want a one-line refusal, got %q", what, msg)
		}
		for _, w := range want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: %q does not say %q", what, msg, w)
			}
		}
	}
	// Windows' legacy export: 3DES key bag, RC2-40 certificates, SHA-1 MAC.
	data, err := os.ReadFile(filepath.Join("testdata", "windows-azure-tools-3des.pfx"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = ReadPFX(data, "")
	refused("legacy 3DES PFX", err, "SHA-1", "3DES", "RC2-40", "re-export it as AES-256/SHA-256")

	// AES-256/SHA-256, but an 8-character password: HMAC keys under 112
	// bits are refused.
	if data, err = os.ReadFile(filepath.Join("testdata", "windows-certmgr-aes256.pfx")); err != nil {
		t.Fatal(err)
	}
	_, err = ReadPFX(data, "password")
	refused("AES-256 PFX with a short password", err, "112 bits", "at least 14 characters")

	// AES-256/SHA-256 with a long password reads.
	pfx, _ := os.ReadFile(filepath.Join(dir, "modern.pfx"))
	b, err := ReadPFX(pfx, "a long enough pfx password")
	if err != nil || b.CheckCA() != nil {
		t.Fatalf("AES-256/SHA-256 PFX under fips140=only: %v", err)
	}

	// A CA key in the legacy PEM encryption (MD5 key derivation).
	keyPEM, _ := os.ReadFile(filepath.Join(dir, "legacy.key"))
	certPEM, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	_, err = ReadPEM(certPEM, keyPEM, []byte("legacy pem password"))
	refused("legacy PEM-encrypted key", err, "MD5", "PKCS#8")
}

func selfSignedCA(t *testing.T) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "FIPS Test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert
}
