package adcs_test

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/adcs"
)

var (
	oidFreshest = asn1.ObjectIdentifier{2, 5, 29, 46}
	oidDelta    = asn1.ObjectIdentifier{2, 5, 29, 27}
	oidIDP      = asn1.ObjectIdentifier{2, 5, 29, 28}
)

func makeCRL(t testing.TB, issuer *x509.Certificate, key crypto.Signer, number int64, ext ...pkix.Extension) []byte {
	t.Helper()
	now := time.Date(2025, 7, 30, 11, 19, 0, 0, time.UTC)
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(number), ThisUpdate: now, NextUpdate: now.Add(7 * 24 * time.Hour),
		RevokedCertificateEntries: []x509.RevocationListEntry{
			{SerialNumber: hexInt("4400000004b742b5daba3d4deb000000000004"), RevocationTime: now.Add(-time.Hour), ReasonCode: 5},
			{SerialNumber: big.NewInt(6), RevocationTime: now.Add(-2 * time.Hour)},
		},
		ExtraExtensions: ext,
	}, issuer, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestReadCRL(t *testing.T) {
	ca, key := newCert(t, big.NewInt(1), "Corp Issuing CA 1")
	freshest := []byte{0x30, 0x03, 0x02, 0x01, 0x01} // any bytes: reported raw
	base := makeCRL(t, ca, key, 10, pkix.Extension{Id: oidFreshest, Value: freshest})
	f, err := adcs.ReadCRL(base, ca)
	if err != nil {
		t.Fatal(err)
	}
	if f.Number.Int64() != 10 || f.Delta || f.BaseNumber != nil || string(f.FreshestCRL) != string(freshest) || f.IDP != nil ||
		len(f.Entries) != 2 || f.Entries[0].ReasonCode != 5 || string(f.Raw) != string(base) ||
		!f.ThisUpdate.Equal(time.Date(2025, 7, 30, 11, 19, 0, 0, time.UTC)) || !f.NextUpdate.Equal(f.ThisUpdate.Add(7*24*time.Hour)) {
		t.Errorf("base: %+v", f)
	}

	baseNum, _ := asn1.Marshal(big.NewInt(10))
	idp := []byte{0x30, 0x00}
	delta := makeCRL(t, ca, key, 11, pkix.Extension{Id: oidDelta, Critical: true, Value: baseNum},
		pkix.Extension{Id: oidIDP, Critical: true, Value: idp})
	pemDelta := pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: delta})
	f, err = adcs.ReadCRL(append([]byte("\r\n"), pemDelta...), ca)
	if err != nil {
		t.Fatal(err)
	}
	if f.Number.Int64() != 11 || !f.Delta || f.BaseNumber.Int64() != 10 || string(f.IDP) != string(idp) || string(f.Raw) != string(delta) {
		t.Errorf("delta: %+v", f)
	}
}

func TestReadCRLRefuses(t *testing.T) {
	ca, key := newCert(t, big.NewInt(1), "Corp Issuing CA 1")
	other, otherKey := newCert(t, big.NewInt(1), "Other CA")
	renewed, renewedKey := newCert(t, big.NewInt(2), "Corp Issuing CA 1") // same name, new key
	good := makeCRL(t, ca, key, 10)
	tampered := append([]byte(nil), good...)
	tampered[len(tampered)-5] ^= 1
	badBase, _ := asn1.Marshal("ten")
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"another issuer", makeCRL(t, other, otherKey, 10), `the CRL was issued by "CN=Other CA", not by the issuer "CN=Corp Issuing CA 1"`},
		{"another key of the same CA", makeCRL(t, renewed, renewedKey, 10), "signed by another key of that CA"},
		{"bad signature", tampered, `signature does not verify with the key of "CN=Corp Issuing CA 1"`},
		{"unknown critical extension", makeCRL(t, ca, key, 10, pkix.Extension{Id: asn1.ObjectIdentifier{1, 2, 3, 4}, Critical: true, Value: []byte{5, 0}}),
			"critical extension 1.2.3.4"},
		{"delta indicator not an integer", makeCRL(t, ca, key, 10, pkix.Extension{Id: oidDelta, Critical: true, Value: badBase}),
			"Delta CRL Indicator (2.5.29.27) is not an INTEGER"},
		{"garbage", []byte("hello"), "parse the CRL"},
		{"PEM of a certificate", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}), `"CERTIFICATE", not an X509 CRL`},
		{"bad PEM", []byte("-----BEGIN X509 CRL-----\nAAAA"), "not valid PEM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := adcs.ReadCRL(tt.data, ca)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want %q", err, tt.want)
			}
		})
	}
	t.Run("no issuer", func(t *testing.T) {
		if _, err := adcs.ReadCRL(good, nil); err == nil {
			t.Error("no error")
		}
	})
	t.Run("known critical extensions pass", func(t *testing.T) {
		ms := pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 21, 4}, Critical: true, Value: []byte{5, 0}}
		if _, err := adcs.ReadCRL(makeCRL(t, ca, key, 10, ms), ca); err != nil {
			t.Error(err)
		}
	})
}

func TestReadCRLEntryExtension(t *testing.T) {
	ca, key := newCert(t, big.NewInt(1), "Corp Issuing CA 1")
	now := time.Date(2025, 7, 30, 11, 19, 0, 0, time.UTC)
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(3), ThisUpdate: now, NextUpdate: now.Add(time.Hour),
		RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: big.NewInt(0x77), RevocationTime: now,
			ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 29}, Critical: true, Value: []byte{0x30, 0}}}}},
	}, ca, key)
	if err != nil {
		t.Fatal(err)
	}
	_, err = adcs.ReadCRL(der, ca)
	if err == nil || !strings.Contains(err.Error(), "entry for serial 77 has a critical extension 2.5.29.29") {
		t.Errorf("got %v", err)
	}
}
