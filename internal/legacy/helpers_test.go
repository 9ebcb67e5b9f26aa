package legacy

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/adcs"
	"github.com/stepfort/stepfort/internal/adcs/adcstest"
	"github.com/stepfort/stepfort/internal/testenv"
)

func TestMain(m *testing.M) { testenv.RunMain(m) }

var t0 = time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)

// testCA is an issuing CA like ADCS's: CA, cRLSign, a subject key id.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newCA(t *testing.T, cn string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: t0.AddDate(-5, 0, 0), NotAfter: t0.AddDate(5, 0, 0),
		IsCA: true, BasicConstraintsValid: true, SubjectKeyId: []byte(cn)[:4],
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key}
}

// leaf issues a certificate with serial.
func (ca *testCA) leaf(t *testing.T, serial *big.Int) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "leaf"},
		NotBefore: t0.AddDate(-1, 0, 0), NotAfter: t0.AddDate(1, 0, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// crl writes a CRL file; base > 0 makes it a delta on that base.
func (ca *testCA) crl(t *testing.T, dir string, number, base int64, thisUpdate time.Time, entries ...x509.RevocationListEntry) string {
	t.Helper()
	tpl := &x509.RevocationList{Number: big.NewInt(number), ThisUpdate: thisUpdate, NextUpdate: thisUpdate.Add(7 * 24 * time.Hour),
		RevokedCertificateEntries: entries}
	if base > 0 {
		v, _ := asn1.Marshal(big.NewInt(base))
		tpl.ExtraExtensions = append(tpl.ExtraExtensions, pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 27}, Critical: true, Value: v})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tpl, ca.cert, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "crl"+big.NewInt(number).String()+".crl")
	if number%2 == 0 { // exercise PEM too
		p = filepath.Join(dir, "crl"+big.NewInt(number).String()+".pem")
		der = pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
	}
	if err := os.WriteFile(p, der, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func entry(serial *big.Int, at time.Time, reason int) x509.RevocationListEntry {
	return x509.RevocationListEntry{SerialNumber: serial, RevocationTime: at, ReasonCode: reason}
}

// row is an issued (or, with a reason, revoked) export row.
func row(id int64, reason int, revokedAt time.Time) adcs.Row {
	r := adcs.Row{RequestID: id, Serial: adcstest.SyntheticSerial(id), Disposition: DispositionIssued,
		NotBefore: t0.AddDate(-1, 0, 0), NotAfter: t0.AddDate(1, 0, 0), Reason: -1, CommonName: "host", Template: "WebServer"}
	if reason >= 0 {
		r.Disposition, r.Reason, r.RevokedAt = DispositionRevoked, reason, revokedAt
	}
	return r
}

// export writes rows as a UTF-16LE text export with Spanish headers.
func export(t *testing.T, dir, name string, rows ...adcs.Row) string {
	t.Helper()
	var b bytes.Buffer
	if err := adcstest.WriteText(&b, slices.Values(rows), adcstest.Opts{UTF16: true, BOM: true, Headers: "es"}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func regexpMust(re string) *regexp.Regexp { return regexp.MustCompile(re) }
