package ha

import (
	"bytes"
	"encoding/json"
	"time"
)

// crlRow is what the CRL needs of an upstream revoked_x509_certs row
// (JSON db.RevokedCertificateInfo).
type crlRow struct {
	serial    []byte // decimal; may alias the row
	reason    int
	revokedAt time.Time
	expiresAt time.Time
}

// decodeCRLRow decodes a row. Rows as upstream writes them (json.Marshal,
// flat, no escapes in the fields read) take a scanner that reads only the
// four fields, several times faster than encoding/json; anything else goes
// through encoding/json, so the result is always what json.Unmarshal gives.
func decodeCRLRow(row []byte) (crlRow, error) {
	if r, ok := scanCRLRow(row); ok {
		return r, nil
	}
	var v struct {
		Serial               string
		ReasonCode           int
		RevokedAt, ExpiresAt time.Time
	}
	if err := json.Unmarshal(row, &v); err != nil {
		return crlRow{}, err
	}
	return crlRow{serial: []byte(v.Serial), reason: v.ReasonCode, revokedAt: v.RevokedAt, expiresAt: v.ExpiresAt}, nil
}

// scanCRLRow is the fast path of decodeCRLRow. It accepts only a
// strict subset of JSON: one object of strings without escapes in the
// fields it reads, integers, true, false and null, and ASCII keys (which
// encoding/json matches case-insensitively, as here). It reports false for
// anything else, valid or not.
func scanCRLRow(b []byte) (r crlRow, ok bool) {
	i := jsonSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return r, false
	}
	i = jsonSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return r, jsonSpace(b, i+1) == len(b)
	}
	for {
		// Key.
		if i >= len(b) || b[i] != '"' {
			return r, false
		}
		end := jsonPlainString(b, i)
		if end < 0 {
			return r, false
		}
		key := b[i+1 : end-1]
		i = jsonSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return r, false
		}
		i = jsonSpace(b, i+1)
		if i >= len(b) {
			return r, false
		}
		// Value.
		var vend int
		switch {
		case bytes.EqualFold(key, []byte("Serial")):
			if b[i] != '"' {
				return r, false
			}
			if vend = jsonPlainString(b, i); vend < 0 {
				return r, false
			}
			r.serial = b[i+1 : vend-1]
		case bytes.EqualFold(key, []byte("ReasonCode")):
			n, e, ok := jsonInt(b, i)
			if !ok {
				return r, false
			}
			r.reason, vend = n, e
		case bytes.EqualFold(key, []byte("RevokedAt")), bytes.EqualFold(key, []byte("ExpiresAt")):
			if b[i] != '"' {
				return r, false
			}
			if vend = jsonPlainString(b, i); vend < 0 {
				return r, false
			}
			var t time.Time
			if t.UnmarshalJSON(b[i:vend]) != nil {
				return r, false
			}
			if key[0]|0x20 == 'r' {
				r.revokedAt = t
			} else {
				r.expiresAt = t
			}
		default:
			if vend = jsonSkip(b, i); vend < 0 {
				return r, false
			}
		}
		i = jsonSpace(b, vend)
		if i >= len(b) {
			return r, false
		}
		switch b[i] {
		case ',':
			i = jsonSpace(b, i+1)
		case '}':
			return r, jsonSpace(b, i+1) == len(b)
		default:
			return r, false
		}
	}
}

func jsonSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// jsonPlainString returns the end of the string starting at b[i] == '"', or -1
// if it has escapes, control or non-ASCII bytes (left to encoding/json).
func jsonPlainString(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return j + 1
		case c == '\\' || c < 0x20 || c >= 0x80:
			return -1
		}
	}
	return -1
}

// jsonString returns the end of the JSON string starting at b[i] == '"',
// or -1 if it is not one. Like encoding/json it lets any byte from 0x20 on
// through (invalid UTF-8 is replaced there, and not read here).
func jsonString(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return j + 1
		case c < 0x20:
			return -1
		case c == '\\':
			if j++; j >= len(b) {
				return -1
			}
			switch b[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if j+4 >= len(b) {
					return -1
				}
				for _, h := range b[j+1 : j+5] {
					if !('0' <= h && h <= '9' || 'a' <= h && h <= 'f' || 'A' <= h && h <= 'F') {
						return -1
					}
				}
				j += 4
			default:
				return -1
			}
		}
	}
	return -1
}

// integer parses a JSON integer that fits an int comfortably.
func jsonInt(b []byte, i int) (n, end int, ok bool) {
	neg := false
	if b[i] == '-' {
		neg = true
		i++
	}
	start := i
	for i < len(b) && b[i] >= '0' && b[i] <= '9' && i-start < 18 {
		n = n*10 + int(b[i]-'0')
		i++
	}
	if i == start || (b[start] == '0' && i-start > 1) {
		return 0, 0, false
	}
	if i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E' || (b[i] >= '0' && b[i] <= '9')) {
		return 0, 0, false
	}
	if neg {
		n = -n
	}
	return n, i, true
}

// jsonSkip skips a field the CRL does not need: a string, an integer,
// true, false or null.
func jsonSkip(b []byte, i int) int {
	switch b[i] {
	case '"':
		return jsonString(b, i)
	case 't':
		return jsonLiteral(b, i, "true")
	case 'f':
		return jsonLiteral(b, i, "false")
	case 'n':
		return jsonLiteral(b, i, "null")
	}
	if _, end, ok := jsonInt(b, i); ok {
		return end
	}
	return -1
}

func jsonLiteral(b []byte, i int, lit string) int {
	if bytes.HasPrefix(b[i:], []byte(lit)) {
		return i + len(lit)
	}
	return -1
}
