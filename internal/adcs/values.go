package adcs

import (
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Disposition codes of the ADCS request table.
const (
	DispositionIssued  = 20
	DispositionRevoked = 21
)

// isEmpty reports an empty cell: "" in CSV, EMPTY in both modes. The
// localized spellings are guesses from the Windows resource strings.
func isEmpty(v string) bool {
	switch v {
	case "", "EMPTY", "VACÍO", "VACIO", "LEER", "VIDE":
		return true
	}
	return false
}

// unquote drops one pair of surrounding double quotes (text mode quotes strings).
func unquote(v string) string {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		return v[1 : len(v)-1]
	}
	return v
}

// parseSerial reads a serial number as certutil prints it: hex, quoted,
// maybe with spaces between the octets and leading zeros.
func parseSerial(v string) (*big.Int, error) {
	v = unquote(v)
	if len(v) > 128 {
		return nil, fmt.Errorf("%d characters is too long for a serial number", len(v))
	}
	digits := make([]byte, 0, len(v))
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == ' ' || c == '\t':
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f', 'A' <= c && c <= 'F':
			if len(digits) == 0 && c == '0' {
				continue // leading zero
			}
			digits = append(digits, c)
		default:
			return nil, fmt.Errorf("%q is not a hexadecimal serial number", v)
		}
	}
	if len(digits) == 0 {
		if strings.ContainsRune(v, '0') {
			return nil, errors.New("the serial number is zero")
		}
		return nil, errors.New("the serial number is empty")
	}
	if len(digits) > 40 {
		return nil, fmt.Errorf("%q is longer than 20 octets (RFC 5280 4.1.2.2)", v)
	}
	n, _ := new(big.Int).SetString(string(digits), 16)
	return n, nil
}

// parseLong reads a Long column: "21", "0x15", "0x15 (21) -- Revoked",
// "0x5 -- Reason: Cessation of Operation". Hex values are 32-bit, so
// 0xffffffff is -1 as in ADCS.
func parseLong(v string) (int64, error) {
	head, rest, _ := strings.Cut(v, " ")
	var n int64
	if h, ok := strings.CutPrefix(head, "0x"); ok {
		u, err := strconv.ParseUint(h, 16, 32)
		if err != nil {
			return 0, fmt.Errorf("%q is not a number", v)
		}
		n = int64(int32(uint32(u)))
	} else {
		d, err := strconv.ParseInt(head, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%q is not a number", v)
		}
		n = d
	}
	rest = strings.TrimSpace(rest)
	if strings.HasPrefix(rest, "(") {
		inner, after, ok := strings.Cut(rest[1:], ")")
		d, err := strconv.ParseInt(inner, 10, 64)
		if !ok || err != nil || (d != n && uint32(d) != uint32(n)) {
			return 0, fmt.Errorf("%q: the decimal value in parentheses does not match", v)
		}
		rest = strings.TrimSpace(after)
	}
	if rest != "" && !strings.HasPrefix(rest, "--") {
		return 0, fmt.Errorf("%q is not a number", v)
	}
	return n, nil
}

// parseDisposition reads the request disposition (20 issued, 21 revoked, ...).
func parseDisposition(v string) (int, error) {
	n, err := parseLong(v)
	if err != nil {
		return 0, err
	}
	if n < 0 || n > 255 {
		return 0, fmt.Errorf("%d is not a request disposition", n)
	}
	return int(n), nil
}

// parseReason reads a revocation reason; -1 (0xffffffff, released from hold) is no reason.
func parseReason(v string) (int, error) {
	n, err := parseLong(v)
	if err != nil {
		return 0, err
	}
	if n == -1 {
		return -1, nil
	}
	if n < 0 || n > 10 || n == 7 {
		return 0, fmt.Errorf("%d is not a CRL reason code (0-6, 8-10)", n)
	}
	return int(n), nil
}

// parseRequestID reads a request ID.
func parseRequestID(v string) (int64, error) {
	n, err := parseLong(v)
	if err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, fmt.Errorf("%d is not a request ID", n)
	}
	return n, nil
}

// dateFormats are the layouts of each Options.DateFormat, tried in order.
var dateFormats = map[string][]string{
	"US":  {"1/2/2006 3:04 PM", "1/2/2006 3:04:05 PM"},
	"UK":  {"2/1/2006 15:04", "2/1/2006 15:04:05"},
	"ISO": {"2006-01-02 15:04", "2006-01-02 15:04:05", "2006-01-02T15:04:05"},
	"DE":  {"2.1.2006 15:04", "2.1.2006 15:04:05"},
}

var dateNames = map[string]string{
	"US": "M/D/YYYY h:mm AM/PM", "UK": "DD/MM/YYYY HH:mm", "ISO": "YYYY-MM-DD HH:mm", "DE": "DD.MM.YYYY HH:mm",
}

// dateParser parses dates in one Options.DateFormat.
type dateParser struct {
	layouts []string
	name    string
	loc     *time.Location
}

func newDateParser(format string, loc *time.Location) (*dateParser, error) {
	if loc == nil {
		loc = time.UTC
	}
	switch {
	case format == "":
		return &dateParser{append(dateFormats["US"], dateFormats["ISO"]...), "US or ISO", loc}, nil
	case dateFormats[strings.ToUpper(format)] != nil:
		f := strings.ToUpper(format)
		return &dateParser{dateFormats[f], f + " (" + dateNames[f] + ")", loc}, nil
	case strings.Contains(format, "2006"):
		return &dateParser{[]string{format}, format, loc}, nil
	}
	return nil, fmt.Errorf("date format %q: want US, UK, ISO, DE or a Go layout such as 02.01.2006 15:04", format)
}

func (d *dateParser) parse(v string) (time.Time, error) {
	v = normalizeSpace(v)
	for _, l := range d.layouts {
		if t, err := time.ParseInLocation(l, v, d.loc); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a date in the %s format (see --date-format)", v, d.name)
}

// normalizeSpace turns the no-break spaces newer Windows puts before AM/PM
// into plain spaces and collapses runs of spaces.
func normalizeSpace(v string) string {
	if isPlain(v) {
		return v
	}
	var b strings.Builder
	space := false
	for _, r := range strings.TrimSpace(v) {
		if unicode.IsSpace(r) || r == '\u202F' || r == '\u00A0' {
			space = true
			continue
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		b.WriteRune(r)
	}
	return b.String()
}

func isPlain(v string) bool {
	prev := byte('x')
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c >= 0x80 || c == '\t' || (c == ' ' && prev == ' ') {
			return false
		}
		prev = c
	}
	return len(v) == 0 || (v[0] != ' ' && v[len(v)-1] != ' ')
}

// parseTemplate reads `"1.3.6.1.4.1.311.21.8.…" Name`, `"Machine"` or
// `1.3.6.… Name` (CSV) into a display name and an OID.
func parseTemplate(v string) (name, oid string) {
	var first, rest string
	if strings.HasPrefix(v, `"`) {
		if end := strings.IndexByte(v[1:], '"'); end >= 0 {
			first, rest = v[1:1+end], strings.TrimSpace(v[2+end:])
		} else {
			first = v[1:]
		}
	} else {
		first, rest, _ = strings.Cut(v, " ")
		if !isOID(first) {
			return v, ""
		}
		rest = strings.TrimSpace(rest)
	}
	if isOID(first) {
		oid = first
	}
	if rest != "" {
		return rest, oid
	}
	return first, oid
}

func isOID(s string) bool {
	if len(s) < 3 || !strings.Contains(s, ".") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if (s[i] < '0' || s[i] > '9') && s[i] != '.' {
			return false
		}
	}
	return true
}

// parseCSVCertificate reads the RawCertificate cell of a CSV export, which
// certutil prints as "1657 Bytes": no data. A cell holding a PEM block is read.
func parseCSVCertificate(v string) ([]byte, error) {
	if !strings.Contains(v, "-----BEGIN") {
		return nil, nil
	}
	b, _ := pem.Decode([]byte(v))
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	return b.Bytes, nil
}

// decodeBase64 decodes the body of a PEM block collected line by line.
func decodeBase64(body []byte) ([]byte, error) {
	out := make([]byte, base64.StdEncoding.DecodedLen(len(body)))
	n, err := base64.StdEncoding.Decode(out, body)
	if err != nil {
		return nil, fmt.Errorf("the PEM certificate is not valid base64: %w", err)
	}
	return out[:n], nil
}
