package adcstest_test

import (
	"bytes"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/stepfort/stepfort/internal/adcs"
	"github.com/stepfort/stepfort/internal/adcs/adcstest"
)

var row = adcs.Row{RequestID: 4, Serial: bigHex("4400000004b742b5daba3d4deb000000000004"), Disposition: 21,
	NotBefore: time.Date(2018, 7, 30, 11, 19, 0, 0, time.UTC), NotAfter: time.Date(2020, 7, 30, 23, 29, 0, 0, time.UTC),
	RevokedAt: time.Date(2019, 7, 30, 11, 29, 0, 0, time.UTC), Reason: 5, CommonName: `a "b"`,
	Template: "Test Web Server", TemplateOID: "1.3.6.1.4.1.311.21.8.1.2", Certificate: []byte{0x30, 0x00}}

func TestWriteCSVExact(t *testing.T) {
	var b bytes.Buffer
	if err := adcstest.WriteCSV(&b, slices.Values([]adcs.Row{row}), adcstest.Opts{}); err != nil {
		t.Fatal(err)
	}
	want := `"Request ID","Serial Number","Request Disposition","Certificate Effective Date","Certificate Expiration Date","Effective Revocation Date","Revocation Reason","Issued Common Name","Certificate Template","Binary Certificate"` + "\r\n" +
		`"4","4400000004b742b5daba3d4deb000000000004","21","7/30/2018 11:19 AM","7/30/2020 11:29 PM","7/30/2019 11:29 AM","5","a ""b""","1.3.6.1.4.1.311.21.8.1.2 Test Web Server","2 Bytes"` + "\r\n" +
		"CertUtil: -view command completed successfully.\r\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	var u bytes.Buffer
	if err := adcstest.WriteCSV(&u, slices.Values([]adcs.Row{row}), adcstest.Opts{UTF16: true, BOM: true}); err != nil {
		t.Fatal(err)
	}
	if got := u.Bytes(); !bytes.HasPrefix(got, []byte{0xFF, 0xFE, '"', 0}) || decode16(got[2:]) != want {
		t.Errorf("UTF-16: %q", got[:16])
	}
}

func TestWriteTextExact(t *testing.T) {
	var b bytes.Buffer
	o := adcstest.Opts{Headers: "de", DateFormat: "DE", BOM: true,
		Columns: []string{"SerialNumber", "Request.Disposition", "Request.RevokedReason", "CertificateTemplate", "RawCertificate"}}
	if err := adcstest.WriteText(&b, slices.Values([]adcs.Row{row}), o); err != nil {
		t.Fatal(err)
	}
	want := "\xEF\xBB\xBF" + `Schema:
  Spaltenname                   Lokalisierter Name            Typ     Maximale Länge
  ----------------------------  ----------------------------  ------  ---------
  SerialNumber                  Seriennummer                  String  128 -- Indexed
  Request.Disposition           Anforderungsstatus            Long    4 -- Indexed
  Request.RevokedReason         Sperrgrund                    Long    4 -- Indexed
  CertificateTemplate           Zertifikatvorlage             String  128 -- Indexed
  RawCertificate                Binärzertifikat               Binary  16384

Zeile 1:
  Seriennummer: "4400000004b742b5daba3d4deb000000000004"
  Anforderungsstatus: 0x15 (21) -- Gesperrt
  Sperrgrund: 0x5 -- Grund: Cessation of Operation
  Zertifikatvorlage: "1.3.6.1.4.1.311.21.8.1.2" Test Web Server
  Binärzertifikat:
-----BEGIN CERTIFICATE-----
MAA=
-----END CERTIFICATE-----

1 Zeilen
  5 Row Properties, Total Size = 0, Max Size = 0, Ave Size = 0
   0 Request Attributes, Total Size = 0, Max Size = 0, Ave Size = 0
   0 Certificate Extensions, Total Size = 0, Max Size = 0, Ave Size = 0
  5 Total Fields, Total Size = 0, Max Size = 0, Ave Size = 0
CertUtil: -view-Befehl wurde erfolgreich ausgeführt.
`
	want = strings.ReplaceAll(want, "\n", "\r\n")
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}

func TestOptsErrors(t *testing.T) {
	if err := adcstest.WriteCSV(&bytes.Buffer{}, slices.Values([]adcs.Row{row}), adcstest.Opts{Headers: "fr"}); err == nil {
		t.Error("headers fr accepted")
	}
	if _, err := adcstest.Synthetic(1, []byte{1, 2, 3}); err == nil {
		t.Error("a template that is not a certificate accepted")
	}
}

func decode16(b []byte) string {
	u := make([]uint16, len(b)/2)
	for i := range u {
		u[i] = uint16(b[2*i]) | uint16(b[2*i+1])<<8
	}
	return string(utf16.Decode(u))
}

func bigHex(s string) *big.Int {
	n, _ := new(big.Int).SetString(s, 16)
	return n
}
