package adcs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Text mode is what certutil -view prints without "csv":
//
//	Schema: ...                  (anything before the first row is skipped)
//	Row 1:                       (a header at column 0 ending in " <n>:"; localized)
//	  Serial Number: "4400…04"   (one label per -out column, indented two spaces)
//	  Binary Certificate:
//	-----BEGIN CERTIFICATE-----  (a binary value: a PEM block, or a hex dump
//	MIIF…                         indented deeper, which is skipped)
//	-----END CERTIFICATE-----
//
//	Maximum Row Index: 1         (any other line at column 0 ends the row)
//
// Labels are localized, so a value is matched to its column by position.

// nextText reads the next "Row N:" block.
func (r *Reader) nextText() (*cells, error) {
	start := r.pending
	r.pending = 0
	for start == 0 {
		line, err := r.lines.next()
		if errors.Is(err, io.EOF) && r.layout.headers == 0 {
			return nil, errors.New(`no "Row 1:" block in the file: not a certutil -view export in text mode`)
		}
		if err != nil {
			return nil, err
		}
		if isRowHeader(line) {
			start = r.lines.n
		}
	}
	r.layout.headers++
	b := rowBlock{r: r, c: &cells{line: start, vals: make([]string, 0, len(r.layout.names))}, certCol: -1}
	if err := b.read(); err != nil {
		return nil, err
	}
	r.layout.rowsSeen++
	if n := len(b.c.vals); n != len(r.layout.names) {
		err := fmt.Errorf("the row has %d values, expected %s", n, r.layout.expected())
		if r.layout.rowsSeen == 1 {
			return nil, fmt.Errorf("line %d: %w; export again with that -out list or pass the list that was used", start, err)
		}
		return nil, &RowError{Line: start, Err: err}
	}
	return b.c, nil
}

// rowBlock reads the lines of one row.
type rowBlock struct {
	r       *Reader
	c       *cells
	size    int
	inPEM   bool
	keepPEM bool // the PEM block belongs to the RawCertificate column
	certCol int
	pemType string
	body    []byte
}

func (b *rowBlock) read() error {
	for {
		line, err := b.r.lines.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if b.size += len(line) + 1; b.size > MaxRow {
			return &RowError{Line: b.c.line, Err: fmt.Errorf("the row is longer than %d bytes", MaxRow)}
		}
		if b.inPEM {
			if err := b.pemLine(line); err != nil {
				return err
			}
			continue
		}
		t := bytes.TrimSpace(line)
		switch {
		case len(t) == 0:
		case bytes.HasPrefix(t, []byte("-----BEGIN ")):
			b.beginPEM(t)
		case line[0] != ' ' && line[0] != '\t':
			if isRowHeader(line) {
				b.r.pending = b.r.lines.n
			}
			return b.end()
		case len(line) > 2 && line[1] == ' ' && line[2] != ' ' && line[2] != '\t':
			b.label(line[2:])
		}
		// deeper indents are the rest of a multi-line value (hex dumps): skipped
	}
	return b.end()
}

// label takes the value of a "Label: value" line.
func (b *rowBlock) label(s []byte) {
	if i := bytes.Index(s, []byte(": ")); i >= 0 {
		b.c.vals = append(b.c.vals, string(bytes.TrimSpace(s[i+2:])))
		return
	}
	if bytes.HasSuffix(bytes.TrimSpace(s), []byte(":")) {
		b.c.vals = append(b.c.vals, "") // a binary value follows on the next lines
	}
}

func (b *rowBlock) beginPEM(t []byte) {
	b.inPEM = true
	col := len(b.c.vals) - 1
	b.keepPEM = col >= 0 && b.r.layout.fields[col] == fRawCertificate
	if b.keepPEM {
		b.certCol = col
		b.pemType = string(bytes.TrimSuffix(bytes.TrimPrefix(t, []byte("-----BEGIN ")), []byte("-----")))
		if b.body == nil {
			b.body = make([]byte, 0, 4096)
		}
		b.body = b.body[:0]
	}
}

func (b *rowBlock) pemLine(line []byte) error {
	t := bytes.TrimSpace(line)
	if !bytes.HasPrefix(t, []byte("-----END ")) {
		if len(t) == 0 || isRowHeader(line) || bytes.HasPrefix(line, []byte("  ")) && !isBase64(t) {
			// the block ends without its END line: do not eat the next row
			if isRowHeader(line) {
				b.r.pending = b.r.lines.n
			}
			b.inPEM = false
			return &RowError{Line: b.c.line, Err: errors.New("a PEM block without its -----END line")}
		}
		if b.keepPEM {
			b.body = append(b.body, t...)
		}
		return nil
	}
	b.inPEM = false
	if !b.keepPEM {
		return nil
	}
	fail := func(err error) error {
		return &RowError{Line: b.c.line, Field: b.r.layout.names[b.certCol], Err: err}
	}
	if b.c.cert != nil {
		return fail(errors.New("two PEM blocks"))
	}
	if b.pemType != "CERTIFICATE" {
		return fail(fmt.Errorf("a PEM block of type %q, not CERTIFICATE", b.pemType))
	}
	der, err := decodeBase64(b.body)
	if err != nil {
		return fail(err)
	}
	b.c.cert = der
	return nil
}

func (b *rowBlock) end() error {
	if b.inPEM {
		return &RowError{Line: b.c.line, Err: errors.New("a PEM block without its -----END line")}
	}
	return nil
}

func isBase64(t []byte) bool {
	if len(t) == 0 {
		return false
	}
	for _, c := range t {
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '+' || c == '/' || c == '=') {
			return false
		}
	}
	return true
}

// isRowHeader matches "Row 12:" and its translations ("Fila 12:", "Zeile 12:"):
// a line at column 0 ending in a space, digits and a colon.
func isRowHeader(line []byte) bool {
	line = bytes.TrimRight(line, " \t")
	n := len(line)
	if n < 3 || n > 64 || line[0] == ' ' || line[0] == '\t' || line[n-1] != ':' {
		return false
	}
	i := n - 2
	for i >= 0 && line[i] >= '0' && line[i] <= '9' {
		i--
	}
	return i < n-2 && i >= 1 && line[i] == ' '
}
