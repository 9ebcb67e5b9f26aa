package adcs_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/stepfort/stepfort/internal/adcs"
)

var csvHeader = `"Request ID","Serial Number","Request Disposition","Certificate Effective Date","Certificate Expiration Date","Effective Revocation Date","Revocation Reason","Issued Common Name","Certificate Template","Binary Certificate"`

// goodCells is a valid revoked row; each case spoils one cell.
var goodCells = []string{"7", "4400000007b742b5daba3d4deb000000000007", "21", "5/28/2025 3:24 PM", "5/28/2027 3:34 PM",
	"7/30/2025 11:29 AM", "1", "cn", "WebServer", "1657 Bytes"}

func csvRow(cells []string) string {
	return `"` + strings.Join(cells, `","`) + `"`
}

func TestBadValues(t *testing.T) {
	tests := []struct {
		name  string
		col   int // index in DefaultColumns, -1: no field
		value string
		want  string
	}{
		{"request ID not a number", 0, "seven", "not a number"},
		{"request ID negative", 0, "-3", "not a request ID"},
		{"serial not hex", 1, "4400zz", "not a hexadecimal serial"},
		{"serial over 20 octets", 1, "01" + strings.Repeat("ff", 20), "longer than 20 octets"},
		{"serial zero", 1, "0000", "zero"},
		{"serial empty in an issued row", 1, "EMPTY", "empty in an issued or revoked row"},
		{"disposition text", 2, "Revoked", "not a number"},
		{"disposition mismatch", 2, "0x15 (20) -- Revoked", "does not match"},
		{"disposition out of range", 2, "4096", "not a request disposition"},
		{"disposition empty", 2, "", "empty"},
		{"disposition trailing text", 2, "21 Revoked", "not a number"},
		{"not before bad date", 3, "28/05/2025 15:24", "not a date in the US or ISO format"},
		{"not after garbage", 4, "soon", "not a date"},
		{"not after empty", 4, "EMPTY", "empty in an issued or revoked row"},
		{"revocation date bad", 5, "7/30/2025 25:29 AM", "not a date"},
		{"revocation date empty when revoked", 5, "", "empty in a revoked row"},
		{"reason 7", 6, "7", "not a CRL reason code"},
		{"reason 11", 6, "0xb -- Whatever", "not a CRL reason code"},
		{"reason text", 6, "Key Compromise", "not a number"},
		{"binary cell with a bad PEM", 9, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----", "not a PEM certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cells := append([]string(nil), goodCells...)
			cells[tt.col] = tt.value
			good := append([]string(nil), goodCells...)
			good[0] = "8"
			data := csvHeader + "\r\n" + csvRow(cells) + "\r\n" + csvRow(good) + "\r\n"
			res := readAll(t, []byte(data), adcs.Options{})
			checkOneError(t, res, 2, adcs.DefaultColumns[tt.col], tt.want)
			if len(res.rows) != 1 || res.rows[0].RequestID != 8 || res.rows[0].Line != 3+strings.Count(tt.value, "\n") {
				t.Errorf("the row after the bad one: %+v", res.rows)
			}
		})
	}
}

func checkOneError(t *testing.T, res result, line int, field, want string) {
	t.Helper()
	if res.fatal != nil {
		t.Fatalf("fatal: %v", res.fatal)
	}
	if len(res.errs) != 1 {
		t.Fatalf("got %d row errors, want 1: %v", len(res.errs), res.errs)
	}
	e := res.errs[0]
	if e.Line != line || e.Field != field || !strings.Contains(e.Error(), want) {
		t.Errorf("got %q (line %d, field %q), want line %d, field %q, containing %q", e, e.Line, e.Field, line, field, want)
	}
	if field != "" && !strings.Contains(e.Error(), "column "+field) {
		t.Errorf("%q does not name the column", e)
	}
}

func TestBadCSVRecords(t *testing.T) {
	good := csvRow(goodCells)
	tests := []struct{ name, row, want string }{
		{"too few cells", `"7","44"`, "2 cells, expected 10 (the -out columns Request.RequestID,SerialNumber"},
		{"too many cells", good + `,"extra"`, "11 cells, expected 10"},
		{"unquoted garbage", `hello world`, "1 cells, expected 10"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := csvHeader + "\r\n" + tt.row + "\r\n" + good + "\r\n"
			res := readAll(t, []byte(data), adcs.Options{})
			checkOneError(t, res, 2, "", tt.want)
			if len(res.rows) != 1 || res.rows[0].Line != 3 {
				t.Errorf("rows: %+v", res.rows)
			}
		})
	}
	t.Run("quote never closed", func(t *testing.T) {
		data := csvHeader + "\r\n" + good + "\r\n" + `"8","44` + "\r\nmore\r\n"
		res := readAll(t, []byte(data), adcs.Options{})
		checkOneError(t, res, 3, "", "ends inside a quoted CSV cell")
		if len(res.rows) != 1 {
			t.Errorf("rows: %+v", res.rows)
		}
	})
}

// textRow is a text-mode row with the default columns and a certificate body.
func textRow(n, serial, pemBlock string) string {
	return "Row " + n + ":\r\n" +
		"  Request ID: 0x4 (4)\r\n" +
		"  Serial Number: \"" + serial + "\"\r\n" +
		"  Request Disposition: 0x14 (20) -- Issued\r\n" +
		"  Certificate Effective Date: 5/28/2024 3:24 PM\r\n" +
		"  Certificate Expiration Date: 5/28/2026 3:34 PM\r\n" +
		"  Effective Revocation Date: EMPTY\r\n" +
		"  Revocation Reason: EMPTY\r\n" +
		"  Issued Common Name: \"web01\"\r\n" +
		"  Certificate Template: \"Machine\"\r\n" +
		"  Binary Certificate:\r\n" + pemBlock + "\r\n"
}

const certSerial = "4400000004b742b5daba3d4deb000000000004"

func TestBadTextRows(t *testing.T) {
	pemCRLF := strings.ReplaceAll(certPEM, "\n", "\r\n")
	good := textRow("9", certSerial, pemCRLF)
	tests := []struct{ name, row, field, want string }{
		{"certificate of another serial", textRow("1", "4400000004b742b5daba3d4deb000000000005", pemCRLF), "RawCertificate",
			"the certificate has serial 4400000004b742b5daba3d4deb000000000004, the row 4400000004b742b5daba3d4deb000000000005"},
		{"bad base64", textRow("1", certSerial, "-----BEGIN CERTIFICATE-----\r\n!!!!\r\n-----END CERTIFICATE-----\r\n"), "RawCertificate", "not valid base64"},
		{"not DER", textRow("1", certSerial, "-----BEGIN CERTIFICATE-----\r\nAAAA\r\n-----END CERTIFICATE-----\r\n"), "RawCertificate", "not a DER certificate"},
		{"a key, not a certificate", textRow("1", certSerial, "-----BEGIN PRIVATE KEY-----\r\nAAAA\r\n-----END PRIVATE KEY-----\r\n"), "RawCertificate", `type "PRIVATE KEY"`},
		{"two certificates", textRow("1", certSerial, pemCRLF+pemCRLF), "RawCertificate", "two PEM blocks"},
		{"PEM not closed", textRow("1", certSerial, "-----BEGIN CERTIFICATE-----\r\nAAAA\r\n"), "", "without its -----END line"},
		{"missing label", strings.Replace(textRow("1", certSerial, pemCRLF), "  Revocation Reason: EMPTY\r\n", "", 1), "",
			"the row has 9 values, expected 10 (the -out columns Request.RequestID,SerialNumber"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := good + tt.row + good
			res := readAll(t, []byte(data), adcs.Options{})
			line := strings.Count(good, "\n") + 1
			checkOneError(t, res, line, tt.field, tt.want)
			if len(res.rows) != 2 && !strings.Contains(tt.name, "not closed") {
				t.Errorf("got %d good rows, want 2", len(res.rows))
			}
		})
	}
}

func TestColumns(t *testing.T) {
	t.Run("unknown column", func(t *testing.T) {
		_, err := adcs.NewReader(strings.NewReader(csvHeader), adcs.Options{Columns: []string{"SerialNumber", "Serial"}})
		if err == nil || !strings.Contains(err.Error(), `column 2 "Serial" is not a certutil -view column`) ||
			!strings.Contains(err.Error(), "Request.RevokedEffectiveWhen") || !strings.Contains(err.Error(), "CertificateHash") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("required column missing", func(t *testing.T) {
		_, err := adcs.NewReader(strings.NewReader(csvHeader), adcs.Options{Columns: []string{"SerialNumber", "Disposition", "NotAfter", "RevokedWhen"}})
		if err == nil || !strings.Contains(err.Error(), "lack Request.RevokedReason") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("header count", func(t *testing.T) {
		_, err := adcs.NewReader(strings.NewReader(`"A","B"`+"\r\n"), adcs.Options{})
		if err == nil || !strings.Contains(err.Error(), "line 1: the CSV header has 2 columns, expected 10 (the -out columns Request.RequestID,") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("text label count on the first row", func(t *testing.T) {
		data := strings.Replace(textRow("1", certSerial, ""), "  Revocation Reason: EMPTY\r\n", "", 1)
		res := readAll(t, []byte("Schema:\r\n\r\n"+data), adcs.Options{})
		if res.fatal == nil || !strings.Contains(res.fatal.Error(), "line 3: the row has 9 values, expected 10") {
			t.Errorf("got %v", res.fatal)
		}
	})
	t.Run("date format", func(t *testing.T) {
		_, err := adcs.NewReader(strings.NewReader(csvHeader), adcs.Options{DateFormat: "FR"})
		if err == nil || !strings.Contains(err.Error(), `date format "FR"`) {
			t.Errorf("got %v", err)
		}
	})
	t.Run("aliases, ignored columns, RevokedWhen", func(t *testing.T) {
		cols := []string{"requestid", "Request.RequestID", "serialnumber", "disposition", "ext:2.5.29.17", "NotAfter",
			"Request.RevokedWhen", "Request.RevokedEffectiveWhen", "RevokedReason", "CertificateHash", "Request.CommonName"}
		head := `"a","b","c","d","e","f","g","h","i","j","k"` + "\r\n"
		data := head +
			`"9","1","0a","21","DNS Name=x","1/1/2030 1:00 AM","2/2/2025 2:00 PM","2/3/2025 3:00 PM","1","4f 2a","rcn"` + "\r\n" +
			`"10","2","0b","21","","1/1/2030 1:00 AM","2/2/2025 2:00 PM","EMPTY","1","4f 2a","rcn"` + "\r\n"
		rows := mustRead(t, []byte(data), adcs.Options{Columns: cols})
		if len(rows) != 2 {
			t.Fatalf("rows: %v", rows)
		}
		if r := rows[0]; r.RequestID != 9 || r.Serial.Int64() != 10 || !r.RevokedAt.Equal(date(2025, 2, 3, 15, 0)) || r.CommonName != "rcn" {
			t.Errorf("row 1 (effective date preferred): %+v", r)
		}
		if r := rows[1]; !r.RevokedAt.Equal(date(2025, 2, 2, 14, 0)) {
			t.Errorf("row 2 (revocation date when the effective one is empty): %+v", r)
		}
	})
}

func TestEmptyAndOddFiles(t *testing.T) {
	tests := []struct{ name, data, want string }{
		{"empty", "", "the file is empty"},
		{"blank", "\r\n \r\n", "the file is empty"},
		{"BOM only", "\xff\xfe", "the file is empty"},
		{"UTF-16BE", "\xfe\xff\x00\"", "UTF-16 big-endian"},
		{"text without rows", "Schema:\r\n  Column Name\r\n0 Rows\r\n", `no "Row 1:" block`},
		{"odd UTF-16", "\xff\xfe\"\x00A", "ends in the middle of a character"},
		{"NUL", "\x00\x00abc", "NUL bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := readAll(t, []byte(tt.data), adcs.Options{})
			if res.fatal == nil || !strings.Contains(res.fatal.Error(), tt.want) {
				t.Errorf("got %v, want %q", res.fatal, tt.want)
			}
		})
	}
	t.Run("header only", func(t *testing.T) {
		res := readAll(t, []byte(csvHeader+"\r\nCertUtil: -view command completed successfully.\r\n"), adcs.Options{})
		if res.fatal != nil || len(res.rows)+len(res.errs) != 0 {
			t.Errorf("got %+v", res)
		}
	})
}

func TestWindows1252(t *testing.T) {
	data := csvHeader + "\r\n" + csvRow([]string{"7", goodCells[1], "21", goodCells[3], goodCells[4], goodCells[5], "1", "Jos\xe9 \x80", "User", ""}) + "\r\n"
	rows := mustRead(t, []byte(data), adcs.Options{})
	if len(rows) != 1 || rows[0].CommonName != "José €" {
		t.Errorf("got %+v", rows)
	}
}

// endless yields a line that never ends.
type endless struct{ n int64 }

func (e *endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'A'
	}
	e.n += int64(len(p))
	return len(p), nil
}

func TestBounds(t *testing.T) {
	t.Run("endless line", func(t *testing.T) {
		src := &endless{}
		_, err := adcs.NewReader(io.MultiReader(strings.NewReader(csvHeader+"\r\n"), src), adcs.Options{})
		if err != nil {
			t.Fatal(err)
		}
		r, _ := adcs.NewReader(io.MultiReader(strings.NewReader(csvHeader+"\r\n"), src), adcs.Options{})
		_, err = r.Next()
		var re *adcs.RowError
		if err == nil || errors.As(err, &re) || !strings.Contains(err.Error(), "line 2: longer than 1048576 bytes") {
			t.Errorf("got %v", err)
		}
		if src.n > 4*adcs.MaxLine {
			t.Errorf("read %d bytes before giving up", src.n)
		}
		if _, err2 := r.Next(); err2 != err {
			t.Errorf("the error is not sticky: %v", err2)
		}
	})
	t.Run("endless UTF-16 line", func(t *testing.T) {
		src := &endless{}
		_, err := adcs.NewReader(io.MultiReader(strings.NewReader("\xff\xfe"), src), adcs.Options{})
		if err == nil || !strings.Contains(err.Error(), "longer than") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("endless row", func(t *testing.T) {
		var b bytes.Buffer
		b.WriteString(strings.TrimSuffix(textRow("1", certSerial, "-----BEGIN CERTIFICATE-----\r\n"), "\r\n"))
		line := strings.Repeat("A", 64) + "\r\n"
		for b.Len() < 2*adcs.MaxRow {
			b.WriteString(line)
		}
		res := readAll(t, b.Bytes(), adcs.Options{})
		if len(res.errs) != 1 || !strings.Contains(res.errs[0].Error(), "line 1: the row is longer than 1048576 bytes") {
			t.Errorf("got %+v %v", res, res.errs)
		}
	})
	t.Run("endless quoted cell", func(t *testing.T) {
		var b bytes.Buffer
		b.WriteString(csvHeader + "\r\n\"1\",\"")
		for b.Len() < 2*adcs.MaxRow {
			b.WriteString("abcdefgh\r\n")
		}
		res := readAll(t, b.Bytes(), adcs.Options{})
		if len(res.errs) == 0 || !strings.Contains(res.errs[0].Error(), "line 2: a CSV record longer than") {
			t.Errorf("got %+v", res)
		}
	})
}
