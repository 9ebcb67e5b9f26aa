package adcs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// MaxLine bounds one line, and MaxRow one row (a CSV record or a text-mode
// row block with its PEM certificate), so memory stays bounded whatever the
// file holds.
const (
	MaxLine = 1 << 20
	MaxRow  = 1 << 20
)

// lineReader yields lines without their line ending, with their numbers.
type lineReader struct {
	br   *bufio.Reader
	n    int    // number of the line last returned
	long []byte // assembles a line longer than the bufio buffer
	back []byte // a line pushed back, or nil
	err  error
}

func newLineReader(r io.Reader) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, 64<<10)}
}

// next returns the next line; it is valid until the following call.
func (l *lineReader) next() ([]byte, error) {
	if l.back != nil {
		b := l.back
		l.back = nil
		l.n++
		return b, nil
	}
	if l.err != nil {
		return nil, l.err
	}
	line, err := l.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		line, err = l.readLong(line)
	}
	if err != nil {
		if !errors.Is(err, io.EOF) || len(line) == 0 {
			l.err = err
			return nil, err
		}
		l.err = err // the last line has no newline
	}
	l.n++
	line = bytes.TrimSuffix(line, []byte{'\n'})
	line = bytes.TrimSuffix(line, []byte{'\r'})
	if !utf8.Valid(line) {
		line = fromWindows1252(line)
	}
	return line, nil
}

// readLong assembles a line that did not fit the bufio buffer, up to MaxLine.
func (l *lineReader) readLong(first []byte) ([]byte, error) {
	l.long = append(l.long[:0], first...)
	for {
		part, err := l.br.ReadSlice('\n')
		if len(l.long)+len(part) > MaxLine+2 {
			return nil, fmt.Errorf("line %d: longer than %d bytes; this is not a certutil -view export", l.n+1, MaxLine)
		}
		l.long = append(l.long, part...)
		if !errors.Is(err, bufio.ErrBufferFull) {
			return l.long, err
		}
	}
}

// unread pushes line back; the next call to next returns it again.
func (l *lineReader) unread(line []byte) {
	l.back = append([]byte(nil), line...)
	if len(l.back) == 0 {
		l.back = []byte{}
	}
	l.n--
}
