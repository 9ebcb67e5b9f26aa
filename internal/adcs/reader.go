package adcs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Reader reads the rows of a certutil -view export, one at a time, in
// memory bounded by MaxLine and MaxRow whatever the size of the file.
type Reader struct {
	lines  *lineReader
	layout *layout
	dates  *dateParser
	csv    bool
	err    error // sticky: the file cannot be read further

	// text mode
	pending int // the line of a "Row N:" header already consumed, or 0
}

// NewReader sniffs the encoding (see sniff) and the mode of r: CSV when the
// first non-blank line starts with a double quote (certutil quotes every
// CSV cell, the header too), text mode otherwise. In CSV mode it reads the
// header and checks that it has one cell per -out column.
func NewReader(r io.Reader, o Options) (*Reader, error) {
	lay, err := newLayout(o.Columns)
	if err != nil {
		return nil, err
	}
	dates, err := newDateParser(o.DateFormat, o.Location)
	if err != nil {
		return nil, err
	}
	src, err := sniff(bufio.NewReaderSize(r, 64<<10))
	if err != nil {
		return nil, err
	}
	rd := &Reader{lines: newLineReader(src), layout: lay, dates: dates}
	first, err := rd.firstLine()
	if err != nil {
		return nil, err
	}
	rd.csv = first[0] == '"'
	if rd.csv {
		if err := rd.readHeader(first); err != nil {
			return nil, err
		}
		return rd, nil
	}
	rd.lines.unread(first)
	return rd, nil
}

// firstLine returns the first non-blank line.
func (r *Reader) firstLine() ([]byte, error) {
	for {
		line, err := r.lines.next()
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the file is empty: no certutil -view output in it")
		}
		if err != nil {
			return nil, err
		}
		if t := bytes.TrimSpace(line); len(t) > 0 {
			if bytes.IndexByte(t, 0) >= 0 {
				return nil, fmt.Errorf("line %d: NUL bytes: not a text file, or UTF-16 this reader did not detect (save it with a BOM)", r.lines.n)
			}
			return t, nil
		}
	}
}

// Next returns the next row, io.EOF after the last one, or a *RowError for
// a row with a bad value (the following call reads the next row). Any other
// error means the rest of the file cannot be read; Next keeps returning it.
func (r *Reader) Next() (*Row, error) {
	if r.err != nil {
		return nil, r.err
	}
	var c *cells
	var err error
	if r.csv {
		c, err = r.nextCSV()
	} else {
		c, err = r.nextText()
	}
	if err != nil {
		var re *RowError
		if !errors.As(err, &re) {
			r.err = err
		}
		return nil, err
	}
	return r.build(c)
}
