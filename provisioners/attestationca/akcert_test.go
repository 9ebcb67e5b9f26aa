package attestationca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"go.step.sm/crypto/x509util"
)

func testIssuer(t *testing.T) *issuer {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "att"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &issuer{chain: []*x509.Certificate{c}, signer: key}
}

func TestTPMDetails(t *testing.T) {
	tests := []struct {
		name    string
		in      TPMInfo
		want    [3]string
		wantErr bool
	}{
		{"swtpm", TPMInfo{Manufacturer: "1229081856", Model: "SW   TPM", FirmwareVersion: "8217.4131"}, [3]string{"id:49424D00", "SW   TPM", "id:20191023"}, false},
		{"bad manufacturer", TPMInfo{Manufacturer: "IBM", Model: "x", FirmwareVersion: "1.2"}, [3]string{}, true},
		{"too big manufacturer", TPMInfo{Manufacturer: "4294967296", Model: "x", FirmwareVersion: "1.2"}, [3]string{}, true},
		{"empty model", TPMInfo{Manufacturer: "1", Model: "", FirmwareVersion: "1.2"}, [3]string{}, true},
		{"non-ASCII model", TPMInfo{Manufacturer: "1", Model: "é", FirmwareVersion: "1.2"}, [3]string{}, true},
		{"bad version", TPMInfo{Manufacturer: "1", Model: "x", FirmwareVersion: "1"}, [3]string{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, mo, v, err := tpmDetails(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err %v", err)
			}
			if !tt.wantErr && [3]string{m, mo, v} != tt.want {
				t.Fatalf("got %v want %v", [3]string{m, mo, v}, tt.want)
			}
		})
	}
}

func TestIssueAKCertificate(t *testing.T) {
	is := testIssuer(t)
	ak, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	urn := "urn:ek:sha256:DFINw4j2r0XQ1D1Oq3oHPRpAkfB2QJ1yrqdyw1ZPXO8="
	sess := &AttestationSession{EKURN: urn, Manufacturer: "id:49424D00", Model: "SW   TPM", Version: "id:20191023"}
	c, err := is.issueAKCertificate(ak.Public(), sess, time.Now(), 1000*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if c.NotAfter.After(is.chain[0].NotAfter) {
		t.Fatal("AK certificate outlives its issuer")
	}
	sans, err := x509util.ParseSubjectAlternativeNames(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != urn || len(sans.PermanentIdentifiers) != 1 || sans.PermanentIdentifiers[0].Identifier != urn {
		t.Fatalf("SAN %v %+v", c.URIs, sans.PermanentIdentifiers)
	}
	if d := sans.TPMHardwareDetails; d.Manufacturer != "id:49424D00" || d.Model != "SW   TPM" || d.Version != "id:20191023" {
		t.Fatalf("TPM details %+v", d)
	}
	if c.Subject.String() != "" || c.IsCA || c.Version != 3 || !c.UnknownExtKeyUsage[0].Equal(oidTCGKpAIKCertificate) {
		t.Fatalf("AK certificate shape: %+v", c)
	}
}
