package adcs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
)

// readHeader checks the CSV header: one cell per -out column. Its text is
// localized, so only the count is compared.
func (r *Reader) readHeader(first []byte) error {
	rec, err := r.record(string(first))
	if err != nil {
		return fmt.Errorf("line %d: the CSV header: %w", r.lines.n, err)
	}
	if len(rec) != len(r.layout.names) {
		return fmt.Errorf("line %d: the CSV header has %d columns, expected %s; export again with that -out list or pass the list that was used",
			r.lines.n, len(rec), r.layout.expected())
	}
	return nil
}

// nextCSV reads the next record, skipping blank lines and the
// "CertUtil: -view command completed successfully." trailer.
func (r *Reader) nextCSV() (*cells, error) {
	for {
		line, err := r.lines.next()
		if err != nil {
			return nil, err
		}
		t := bytes.TrimSpace(line)
		if len(t) == 0 || (t[0] != '"' && bytes.HasPrefix(t, []byte("CertUtil:"))) {
			continue
		}
		start := r.lines.n
		rec, err := r.record(string(line))
		if err != nil {
			var re *RowError
			if errors.As(err, &re) {
				return nil, err
			}
			return nil, &RowError{Line: start, Err: err}
		}
		if len(rec) != len(r.layout.names) {
			return nil, &RowError{Line: start, Err: fmt.Errorf("%d cells, expected %s", len(rec), r.layout.expected())}
		}
		return &cells{line: start, vals: rec, csv: true}, nil
	}
}

// record splits one CSV record; a quoted cell may go on over several
// lines, up to MaxRow bytes. Quotes inside a quoted cell are "" or, when
// not followed by a comma or the end of the line, taken literally.
func (r *Reader) record(s string) ([]string, error) {
	var rec []string
	start := r.lines.n
	for {
		s = strings.TrimLeft(s, " \t")
		if !strings.HasPrefix(s, `"`) {
			cell, rest, more := strings.Cut(s, ",")
			rec = append(rec, strings.TrimSpace(cell))
			if !more {
				return rec, nil
			}
			s = rest
			continue
		}
		cell, rest, err := r.quoted(s[1:], start)
		if err != nil {
			return nil, err
		}
		rec = append(rec, cell)
		rest = strings.TrimLeft(rest, " \t")
		if rest == "" {
			return rec, nil
		}
		s = rest[1:] // a comma: quoted stops only there
	}
}

// quoted reads a quoted cell after its opening quote.
func (r *Reader) quoted(s string, start int) (cell, rest string, err error) {
	var b strings.Builder
	size := len(s)
	for {
		i := strings.IndexByte(s, '"')
		if i < 0 { // the cell goes on on the next line
			if size > MaxRow {
				return "", "", &RowError{Line: start, Err: fmt.Errorf("a CSV record longer than %d bytes (a quote not closed?)", MaxRow)}
			}
			b.WriteString(s)
			b.WriteByte('\n')
			line, err := r.lines.next()
			if errors.Is(err, io.EOF) {
				return "", "", &RowError{Line: start, Err: errors.New("the file ends inside a quoted CSV cell")}
			}
			if err != nil {
				return "", "", err
			}
			s = string(line)
			size += len(s) + 1
			continue
		}
		after := s[i+1:]
		switch {
		case strings.HasPrefix(after, `"`):
			b.WriteString(s[:i+1])
			s = after[1:]
		case endOfCell(after):
			if b.Len() == 0 {
				return s[:i], after, nil
			}
			b.WriteString(s[:i])
			return b.String(), after, nil
		default:
			b.WriteString(s[:i+1])
			s = after
		}
	}
}

func endOfCell(s string) bool {
	s = strings.TrimLeft(s, " \t")
	return s == "" || s[0] == ','
}
