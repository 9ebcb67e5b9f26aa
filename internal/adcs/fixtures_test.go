package adcs_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/adcs"
	"github.com/stepfort/stepfort/internal/adcs/adcstest"
)

// certPEM is a real certificate with the serial of the research notes' example.
const certPEM = `-----BEGIN CERTIFICATE-----
MIIBjTCCATSgAwIBAgITRAAAAAS3QrXauj1N6wAAAAAABDAKBggqhkjOPQQDAjAd
MRswGQYDVQQDDBJ3ZWIwMS5jb3JwLmV4YW1wbGUwHhcNMjYxMTI5MTE0NzQ5WhcN
MjgxMTI4MTE0NzQ5WjAdMRswGQYDVQQDDBJ3ZWIwMS5jb3JwLmV4YW1wbGUwWTAT
BgcqhkjOPQIBBggqhkjOPQMBBwNCAASg7UGt+de03LryeMsD13jLvviPv8p16GbE
qbilDn/nqdstizAzVWxFJOfD/71opmRPZwGHrNHvw9axyLfkaGcco1MwUTAdBgNV
HQ4EFgQUqVK63JF7SUNkvgqotLKx3TRvDWcwHwYDVR0jBBgwFoAUqVK63JF7SUNk
vgqotLKx3TRvDWcwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiB2
hgyvrdA0cpW0jEF938xe0wV1ZNP2dHOqeIWWuvhC3wIgAplNsl9/72dl6sx8ayUX
R85CRSNpBfLtcBSNqNQQSUA=
-----END CERTIFICATE-----
`

// textFixture is text mode as the research notes show it, CRLF line ends.
var textFixture = crlf(`Schema:
  Column Name                   Localized Name                Type    MaxLength
  ----------------------------  ----------------------------  ------  ---------
  Request.RequestID             Request ID                    Long    4 -- Indexed
  SerialNumber                  Serial Number                 String  128 -- Indexed

Row 1:
  Request ID: 0x4 (4)
  Serial Number: "4400000004b742b5daba3d4deb000000000004"
  Request Disposition: 0x15 (21) -- Revoked
  Certificate Effective Date: 5/28/2024 3:24 PM
  Certificate Expiration Date: 5/28/2026 3:34 PM
  Effective Revocation Date: 7/30/2025 11:29 AM
  Revocation Reason: 0x5 -- Reason: Cessation of Operation
  Issued Common Name: "web01.corp.example"
  Certificate Template: "1.3.6.1.4.1.311.21.8.16187918.14945684.15749023.11519519.4925321.197.13392998.8282280" Test Web Server
  Binary Certificate:
` + certPEM + `
Row 2:
  Request ID: 0x5 (5)
  Serial Number: "44 00 00 00 05 b7 42 b5 da ba 3d 4d eb 00 00 00 00 00 05"
  Request Disposition: 0x14 (20) -- Issued
  Certificate Effective Date: 12/1/2025 9:05:33 AM
  Certificate Expiration Date: 12/1/2026 9:05 PM
  Effective Revocation Date: EMPTY
  Revocation Reason: EMPTY
  Issued Common Name: "Machine01"
  Certificate Template: "Machine"
  Binary Certificate: EMPTY

Row 3:
  Request ID: 0x6 (6)
  Serial Number: "0000000006"
  Request Disposition: 0x15 (21) -- Revoked
  Certificate Effective Date: 1/2/2025 3:04` + "\u202f" + `PM
  Certificate Expiration Date: 1/2/2027 3:04 PM
  Effective Revocation Date: 2/3/2025 4:05 AM
  Revocation Reason: 0x1 -- Key Compromise
  Issued Common Name: EMPTY
  Certificate Template: EMPTY
  Binary Certificate:
    0000  30 82 01 8d 30 82 01 34  a0 03 02 01 02 02 13 44   0...0..4.......D

Maximum Row Index: 6

3 Rows
  30 Row Properties, Total Size = 1234, Max Size = 401, Ave Size = 41
   0 Request Attributes, Total Size = 0, Max Size = 0, Ave Size = 0
   0 Certificate Extensions, Total Size = 0, Max Size = 0, Ave Size = 0
  30 Total Fields, Total Size = 1234, Max Size = 401, Ave Size = 41
CertUtil: -view command completed successfully.
`)

func crlf(s string) []byte { return []byte(strings.ReplaceAll(s, "\n", "\r\n")) }

func TestTextFixture(t *testing.T) {
	rows := mustRead(t, textFixture, adcs.Options{DateFormat: "US"})
	if len(rows) != 3 {
		t.Fatalf("got %d rows", len(rows))
	}
	r := rows[0]
	if r.Line != 7 || r.RequestID != 4 || r.Serial.Cmp(hexInt("4400000004b742b5daba3d4deb000000000004")) != 0 ||
		r.Disposition != 21 || !r.NotBefore.Equal(date(2024, 5, 28, 15, 24)) || !r.NotAfter.Equal(date(2026, 5, 28, 15, 34)) ||
		!r.RevokedAt.Equal(date(2025, 7, 30, 11, 29)) || r.Reason != 5 || r.CommonName != "web01.corp.example" ||
		r.Template != "Test Web Server" || !strings.HasPrefix(r.TemplateOID, "1.3.6.1.4.1.311.21.8.161") || len(r.Certificate) != 401 {
		t.Errorf("row 1: %+v", r)
	}
	r = rows[1]
	if r.Serial.Cmp(hexInt("4400000005b742b5daba3d4deb000000000005")) != 0 || r.Disposition != 20 ||
		!r.NotBefore.Equal(date(2025, 12, 1, 9, 5).Add(33*time.Second)) || !r.NotAfter.Equal(date(2026, 12, 1, 21, 5)) ||
		!r.RevokedAt.IsZero() || r.Reason != -1 || r.Template != "Machine" || r.TemplateOID != "" || r.Certificate != nil {
		t.Errorf("row 2: %+v", r)
	}
	r = rows[2]
	if r.Serial.Int64() != 6 || !r.NotBefore.Equal(date(2025, 1, 2, 15, 4)) || r.Reason != 1 || r.CommonName != "" ||
		r.Template != "" || r.Certificate != nil {
		t.Errorf("row 3 (no-break space before PM, a hex dump is not a certificate): %+v", r)
	}
}

// csvFixture mixes every form a CSV cell may take: display forms and bare
// numbers, EMPTY and "", the "1657 Bytes" of a binary column.
var csvFixture = crlf(`"Request ID","Serial Number","Request Disposition","Certificate Effective Date","Certificate Expiration Date","Effective Revocation Date","Revocation Reason","Issued Common Name","Certificate Template","Binary Certificate"
"2","4400000002b742b5daba3d4deb000000000002","20","5/28/2025 3:24 PM","5/28/2027 3:34 PM","","","web01.corp.example","1.3.6.1.4.1.311.21.8.1.2 Test Web Server","1657 Bytes"
"3","4400000003b742b5daba3d4deb000000000003","0x15 (21) -- Revoked","5/28/2025 3:24 PM","5/28/2027 3:34 PM","7/30/2025 11:29 AM","0x1 -- Key Compromise","multi
line, ""quoted""","""Machine""","EMPTY"
"4","4400000004b742b5daba3d4deb000000000004","0x15","5/28/2025 3:24 PM","5/28/2027 3:34 PM","7/30/2025 11:30 AM","0x5 -- Reason: Cessation of Operation","x","User","1402 Bytes"

CertUtil: -view command completed successfully.

`)

func TestCSVFixture(t *testing.T) {
	rows := mustRead(t, csvFixture, adcs.Options{})
	if len(rows) != 3 {
		t.Fatalf("got %d rows", len(rows))
	}
	if r := rows[0]; r.Line != 2 || r.RequestID != 2 || r.Disposition != 20 || r.Reason != -1 || !r.RevokedAt.IsZero() ||
		r.Template != "Test Web Server" || r.TemplateOID != "1.3.6.1.4.1.311.21.8.1.2" || r.Certificate != nil {
		t.Errorf("row 1: %+v", r)
	}
	if r := rows[1]; r.Line != 3 || r.Disposition != 21 || r.Reason != 1 || !r.RevokedAt.Equal(date(2025, 7, 30, 11, 29)) ||
		r.CommonName != "multi\nline, \"quoted\"" || r.Template != "Machine" {
		t.Errorf("row 2: %+v", r)
	}
	if r := rows[2]; r.Line != 5 || r.Disposition != 21 || r.Reason != 5 || r.Template != "User" {
		t.Errorf("row 3: %+v", r)
	}
}

func TestSpanishUTF16Fixture(t *testing.T) {
	rows := mustRead(t, adcstest.SpanishCSV, adcs.Options{DateFormat: "UK"})
	if len(rows) != 3 {
		t.Fatalf("got %d rows", len(rows))
	}
	if r := rows[0]; r.RequestID != 2 || r.Disposition != 20 || !r.NotBefore.Equal(date(2025, 5, 28, 15, 24)) ||
		r.Template != "Servidor web de prueba" || r.TemplateOID != "1.3.6.1.4.1.311.21.8.8167270.1" {
		t.Errorf("row 1: %+v", r)
	}
	if r := rows[1]; r.CommonName != "José Núñez" || r.Disposition != 21 || r.Reason != 1 ||
		!r.RevokedAt.Equal(date(2025, 7, 30, 11, 29)) || !r.NotBefore.Equal(date(2025, 6, 1, 9, 0)) {
		t.Errorf("row 2: %+v", r)
	}
	if r := rows[2]; r.Disposition != 31 || r.Serial != nil || r.Line != 4 {
		t.Errorf("row 3 (denied, no serial): %+v", r)
	}
}
