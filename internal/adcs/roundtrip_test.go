package adcs_test

import (
	"bytes"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/adcs"
	"github.com/stepfort/stepfort/internal/adcs/adcstest"
)

// sampleRows covers every kind of value the writer prints.
func sampleRows(t *testing.T) []adcs.Row {
	s1 := hexInt("4400000004b742b5daba3d4deb000000000004")
	s2 := hexInt("ff00000005b742b5daba3d4deb000000000005") // high bit: printed with a leading 00
	s3 := hexInt("0a")
	c1, _ := newCert(t, s1, "web01.corp.example")
	c3, _ := newCert(t, s3, "tiny")
	return []adcs.Row{
		{RequestID: 4, Serial: s1, Disposition: 21, NotBefore: date(2018, 7, 30, 11, 19), NotAfter: date(2020, 7, 30, 11, 29),
			RevokedAt: date(2019, 7, 30, 11, 29), Reason: 5, CommonName: "web01.corp.example",
			Template: "Test Web Server", TemplateOID: "1.3.6.1.4.1.311.21.8.1234567.7654321.1", Certificate: c1.Raw},
		{RequestID: 5, Serial: s2, Disposition: 20, NotBefore: date(2025, 1, 2, 0, 5), NotAfter: date(2026, 12, 31, 23, 59),
			Reason: -1, CommonName: `José "Pepe" Núñez, Ñandú 😀`, Template: "Machine"},
		{RequestID: 6, Serial: s3, Disposition: 21, NotBefore: date(2025, 3, 4, 13, 0), NotAfter: date(2025, 9, 4, 1, 0),
			RevokedAt: date(2025, 3, 5, 0, 0), Reason: 0, Template: "1.3.6.1.4.1.311.21.8.99", TemplateOID: "1.3.6.1.4.1.311.21.8.99",
			Certificate: c3.Raw},
		{RequestID: 7, Disposition: 31, Reason: -1, CommonName: "denied.corp.example", Template: "WebServer"},
	}
}

func TestRoundTrip(t *testing.T) {
	rows := sampleRows(t)
	madrid := time.FixedZone("CET", 3600)
	type enc struct {
		name       string
		utf16, bom bool
	}
	encs := []enc{{"utf8", false, false}, {"utf8-bom", false, true}, {"utf16le-bom", true, true}, {"utf16le", true, false}}
	writers := map[string]func(*bytes.Buffer, adcstest.Opts) error{
		"text": func(b *bytes.Buffer, o adcstest.Opts) error { return adcstest.WriteText(b, slices.Values(rows), o) },
		"csv":  func(b *bytes.Buffer, o adcstest.Opts) error { return adcstest.WriteCSV(b, slices.Values(rows), o) },
	}
	for mode, write := range writers {
		for _, e := range encs {
			for _, lang := range []string{"en", "es", "de"} {
				for _, df := range []string{"US", "UK", "ISO", "DE"} {
					t.Run(fmt.Sprintf("%s/%s/%s/%s", mode, e.name, lang, df), func(t *testing.T) {
						var b bytes.Buffer
						o := adcstest.Opts{UTF16: e.utf16, BOM: e.bom, Headers: lang, DateFormat: df, Location: madrid}
						if err := write(&b, o); err != nil {
							t.Fatal(err)
						}
						got := mustRead(t, b.Bytes(), adcs.Options{DateFormat: df, Location: madrid})
						if len(got) != len(rows) {
							t.Fatalf("got %d rows, want %d", len(got), len(rows))
						}
						for i := range rows {
							want := rows[i]
							if mode == "csv" {
								want.Certificate = nil // CSV prints "1657 Bytes"
							}
							want.Line = got[i].Line
							if !reflect.DeepEqual(*got[i], want) {
								t.Errorf("row %d:\n got %+v\nwant %+v", i, *got[i], want)
							}
						}
					})
				}
			}
		}
	}
}

// TestRoundTripLines checks that Row.Line is the first line of the row.
func TestRoundTripLines(t *testing.T) {
	rows := sampleRows(t)
	var b bytes.Buffer
	if err := adcstest.WriteText(&b, slices.Values(rows), adcstest.Opts{}); err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(b.Bytes(), []byte("\r\n"))
	for _, r := range mustRead(t, b.Bytes(), adcs.Options{}) {
		if l := string(lines[r.Line-1]); l[:4] != "Row " {
			t.Errorf("row %d: line %d is %q", r.RequestID, r.Line, l)
		}
	}
	b.Reset()
	if err := adcstest.WriteCSV(&b, slices.Values(rows), adcstest.Opts{}); err != nil {
		t.Fatal(err)
	}
	for i, r := range mustRead(t, b.Bytes(), adcs.Options{}) {
		if r.Line != i+2 {
			t.Errorf("row %d: line %d, want %d", r.RequestID, r.Line, i+2)
		}
	}
}

func TestSynthetic(t *testing.T) {
	c, _ := newCert(t, adcstest.SyntheticSerial(1), "template")
	seq, err := adcstest.Synthetic(50, c.Raw)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := adcstest.WriteText(&b, seq, adcstest.Opts{UTF16: true, BOM: true}); err != nil {
		t.Fatal(err)
	}
	got := mustRead(t, b.Bytes(), adcs.Options{})
	if len(got) != 50 {
		t.Fatalf("got %d rows", len(got))
	}
	revoked := 0
	for i, r := range got {
		if r.RequestID != int64(i+2) || r.Serial.Cmp(adcstest.SyntheticSerial(int64(i+2))) != 0 || r.Certificate == nil {
			t.Errorf("row %d: %+v", i, r)
		}
		if r.Disposition == adcs.DispositionRevoked {
			revoked++
		}
	}
	if revoked != 5 {
		t.Errorf("%d revoked, want 5", revoked)
	}
}
