package adcs_test

import (
	"bytes"
	"errors"
	"io"
	"math/big"
	"slices"
	"testing"
	"unicode/utf16"

	"github.com/stepfort/stepfort/internal/adcs"
	"github.com/stepfort/stepfort/internal/adcs/adcstest"
)

func toUTF16(b []byte) []byte {
	out := []byte{0xFF, 0xFE}
	for _, u := range utf16.Encode([]rune(string(b))) {
		out = append(out, byte(u), byte(u>>8))
	}
	return out
}

// FuzzReader: any input ends in rows, row errors, io.EOF or one sticky
// error, never a panic, and nothing a row holds outgrows the bounds.
func FuzzReader(f *testing.F) {
	f.Add(textFixture, uint8(0))
	f.Add(csvFixture, uint8(1))
	f.Add(adcstest.SpanishCSV, uint8(2))
	f.Add(toUTF16(textFixture), uint8(3))
	f.Add([]byte(csvHeader+"\r\n"+csvRow(goodCells)+"\r\n"), uint8(0))
	f.Add([]byte(textRow("1", certSerial, certPEM)), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, format uint8) {
		o := adcs.Options{DateFormat: []string{"", "US", "UK", "ISO"}[format%4]}
		r, err := adcs.NewReader(bytes.NewReader(data), o)
		if err != nil {
			return
		}
		for i := 0; ; i++ {
			if i > len(data)+1 {
				t.Fatalf("%d rows from %d bytes", i, len(data))
			}
			row, err := r.Next()
			var re *adcs.RowError
			switch {
			case errors.Is(err, io.EOF):
				return
			case errors.As(err, &re):
				if re.Line <= 0 {
					t.Fatalf("row error without a line: %v", re)
				}
				continue
			case err != nil:
				if _, err2 := r.Next(); err2 != err {
					t.Fatalf("error not sticky: %v then %v", err, err2)
				}
				return
			}
			if len(row.Certificate) > adcs.MaxRow || len(row.CommonName) > adcs.MaxRow || row.Line <= 0 {
				t.Fatalf("row out of bounds: %+v", row)
			}
			if row.Serial != nil && (row.Serial.Sign() <= 0 || row.Serial.BitLen() > 160) {
				t.Fatalf("serial %v", row.Serial)
			}
			if (row.Disposition == 20 || row.Disposition == 21) && (row.Serial == nil || row.NotAfter.IsZero()) {
				t.Fatalf("issued row without serial or NotAfter: %+v", row)
			}
		}
	})
}

// FuzzReadCRL: any bytes give a CRL signed by the issuer or an error, never a panic.
func FuzzReadCRL(f *testing.F) {
	ca, key := newCert(f, big.NewInt(1), "Corp Issuing CA 1")
	f.Add(makeCRL(f, ca, key, 10))
	f.Add(makeCRL(f, ca, key, 11))
	f.Add([]byte("-----BEGIN X509 CRL-----\n-----END X509 CRL-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := adcs.ReadCRL(data, ca)
		if err != nil {
			return
		}
		if c.Number == nil || (c.Delta && c.BaseNumber == nil) {
			t.Fatalf("accepted a CRL without numbers: %+v", c)
		}
		if !slices.Equal(c.Raw, data) && !bytes.Contains(data, []byte("-----BEGIN")) {
			t.Fatal("Raw is not the input")
		}
	})
}
