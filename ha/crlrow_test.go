package ha

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/smallstep/certificates/db"
)

// viaJSON is decodeCRLRow's reference: encoding/json into the fields read.
func viaJSON(row []byte) (crlRow, error) {
	var v struct {
		Serial               string
		ReasonCode           int
		RevokedAt, ExpiresAt time.Time
	}
	err := json.Unmarshal(row, &v)
	return crlRow{serial: []byte(v.Serial), reason: v.ReasonCode, revokedAt: v.RevokedAt, expiresAt: v.ExpiresAt}, err
}

func sameRow(a, b crlRow) bool {
	return string(a.serial) == string(b.serial) && a.reason == b.reason &&
		a.revokedAt.Equal(b.revokedAt) && a.expiresAt.Equal(b.expiresAt) &&
		a.revokedAt.Location().String() == b.revokedAt.Location().String()
}

func upstreamRow(t testing.TB, rci db.RevokedCertificateInfo) []byte {
	t.Helper()
	b, err := json.Marshal(&rci)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeCRLRow(t *testing.T) {
	at := time.Date(2025, 3, 4, 5, 6, 7, 891011121, time.UTC)
	fast := []db.RevokedCertificateInfo{
		{Serial: "123456789012345678901234567890", ProvisionerID: "jwk/admin", ReasonCode: 1, Reason: "key compromise",
			RevokedAt: at, ExpiresAt: at.Add(time.Hour), TokenID: "abc", MTLS: true},
		{Serial: "1", RevokedAt: at.In(time.FixedZone("", -7*3600))},
		{Serial: "2", ReasonCode: -3, RevokedAt: at, ACME: true},
		// Escapes and non-ASCII in fields the CRL does not read.
		{Serial: "3", Reason: `said "<no>" & left ☃ \ `, ProvisionerID: "\u00e9\t", RevokedAt: at},
	}
	for _, rci := range fast {
		row := upstreamRow(t, rci)
		got, ok := scanCRLRow(row)
		if !ok {
			t.Fatalf("fast path refused an upstream row: %s", row)
		}
		want, _ := viaJSON(row)
		if !sameRow(got, want) {
			t.Fatalf("%s:\ngot  %+v\nwant %+v", row, got, want)
		}
	}
	// Valid JSON the fast path leaves to encoding/json, and invalid rows.
	for _, row := range []string{
		`{"Serial":"4","RevokedAt":"2025-03-04T05:06:07Z","Extra":{"a":[1,2]}}`,
		`{"serial":"5","REVOKEDAT":"2025-03-04T05:06:07Z","reasoncode":2}`,
		`{"Serial":"\u0036","RevokedAt":"2025-03-04T05:06:07Z"}`,
		`{"Serial":"7","RevokedAt":null,"ExpiresAt":null}`,
		`{"Serial":"8","ReasonCode":1.0}`,
		`{"Serial":"9","ReasonCode":"1"}`,
		`{"Serial":"10","ReasonCode":99999999999999999999}`,
		`{"Serial":"11","RevokedAt":"yesterday"}`,
		`{"ſerial":"12"}`,
		`{"Serial":"13",}`,
		`{"Serial":"14"} x`,
		`[]`, ``, `null`, `{}`, ` { } `,
	} {
		got, err := decodeCRLRow([]byte(row))
		want, werr := viaJSON([]byte(row))
		if (err == nil) != (werr == nil) || (err == nil && !sameRow(got, want)) {
			t.Fatalf("%s: got %+v, %v; encoding/json %+v, %v", row, got, err, want, werr)
		}
	}
}

// FuzzCRLRow checks that decodeCRLRow always agrees with encoding/json,
// and in particular that the fast path never accepts what encoding/json
// reads differently or rejects.
func FuzzCRLRow(f *testing.F) {
	at := time.Date(2025, 3, 4, 5, 6, 7, 8, time.UTC)
	f.Add(upstreamRow(f, db.RevokedCertificateInfo{Serial: "1234", ReasonCode: 4, Reason: "x\"y", RevokedAt: at, ExpiresAt: at, MTLS: true}))
	f.Add([]byte(`{"Serial":"1","ReasonCode":-0,"RevokedAt":"2025-03-04T05:06:07+01:00","X":null,"Y":true,"Z":"\u00e9"}`))
	f.Add([]byte(`{"reasonCode":01}`))
	f.Fuzz(func(t *testing.T, row []byte) {
		want, werr := viaJSON(row)
		if got, ok := scanCRLRow(row); ok && (werr != nil || !sameRow(got, want)) {
			t.Fatalf("fast path %+v, encoding/json %+v, %v", got, want, werr)
		}
		got, err := decodeCRLRow(row)
		if (err == nil) != (werr == nil) || (err == nil && !sameRow(got, want)) {
			t.Fatalf("got %+v, %v; encoding/json %+v, %v", got, err, want, werr)
		}
	})
}

// BenchmarkDecodeCRLRow compares the fast path with encoding/json on an
// upstream row.
func BenchmarkDecodeCRLRow(b *testing.B) {
	now := time.Now().UTC()
	row := upstreamRow(b, db.RevokedCertificateInfo{Serial: "85070591730234615865843651857942052864", ProvisionerID: "bench-provisioner-id",
		ReasonCode: 1, Reason: "bench", RevokedAt: now, ExpiresAt: now.Add(time.Hour), TokenID: "bench-token-id"})
	b.Run("scan", func(b *testing.B) {
		for b.Loop() {
			if _, ok := scanCRLRow(row); !ok {
				b.Fatal("refused")
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		for b.Loop() {
			if _, err := viaJSON(row); err != nil {
				b.Fatal(err)
			}
		}
	})
}
