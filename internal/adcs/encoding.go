package adcs

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"unicode/utf16"
	"unicode/utf8"
)

// Encodings, as sniffed from the first bytes of an export:
//
//   - FF FE: UTF-16LE with a BOM (Windows PowerShell 5.1 "> file", certutil -Unicode).
//   - EF BB BF: UTF-8 with a BOM.
//   - FE FF: UTF-16BE, which Windows does not write: refused.
//   - a NUL second byte after a non-NUL first byte: UTF-16LE without a BOM
//     (the first character of an export is always ASCII, and UTF-8 text never
//     holds NUL).
//   - anything else: UTF-8 (PowerShell 6+). A line that is not valid UTF-8 is
//     decoded as Windows-1252, the ANSI code page of western Windows, so that
//     an 8-bit "> file" from cmd.exe still reads; only non-ASCII letters in
//     names can come out wrong that way, never the numbers, dates or serials.
func sniff(br *bufio.Reader) (io.Reader, error) {
	head, err := br.Peek(3)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
		return nil, err
	}
	switch {
	case bytes.HasPrefix(head, []byte{0xFF, 0xFE}):
		br.Discard(2)
		return newUTF16Reader(br), nil
	case bytes.HasPrefix(head, []byte{0xFE, 0xFF}):
		return nil, errors.New("the file is UTF-16 big-endian; export it again as UTF-16LE (certutil -Unicode or Windows PowerShell >) or UTF-8")
	case bytes.HasPrefix(head, []byte{0xEF, 0xBB, 0xBF}):
		br.Discard(3)
		return br, nil
	case len(head) >= 2 && head[0] != 0 && head[1] == 0:
		return newUTF16Reader(br), nil
	}
	return br, nil
}

// utf16Reader transcodes UTF-16LE to UTF-8 while streaming, in constant memory.
type utf16Reader struct {
	src  io.Reader
	in   []byte // raw input, at most one odd byte carried over
	odd  int    // 1 when in[0] is the first half of a code unit
	high rune   // a high surrogate waiting for its low half, or 0
	out  []byte // transcoded, not yet returned
	buf  []byte // backs out, reused
	err  error
}

func newUTF16Reader(src io.Reader) *utf16Reader {
	return &utf16Reader{src: src, in: make([]byte, 32<<10), buf: make([]byte, 0, 48<<10+8)}
}

func (u *utf16Reader) Read(p []byte) (int, error) {
	for len(u.out) == 0 {
		if u.err != nil {
			return 0, u.err
		}
		u.fill()
	}
	n := copy(p, u.out)
	u.out = u.out[n:]
	return n, nil
}

// fill reads one chunk of input and transcodes the whole code units in it.
func (u *utf16Reader) fill() {
	n, err := u.src.Read(u.in[u.odd:])
	n += u.odd
	out := u.buf[:0] // Read has returned all of the previous out
	if need := n/2*3 + 8; cap(out) < need {
		out = make([]byte, 0, need)
	}
	i := 0
	for ; i+1 < n; i += 2 {
		c := rune(u.in[i]) | rune(u.in[i+1])<<8
		if c < 0x80 && u.high == 0 {
			out = append(out, byte(c))
			continue
		}
		out = u.appendRune(out, c)
	}
	u.odd = n - i
	if u.odd == 1 {
		u.in[0] = u.in[i]
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			if u.high != 0 {
				out = utf8.AppendRune(out, utf8.RuneError)
				u.high = 0
			}
			if u.odd == 1 {
				err = errors.New("the UTF-16 file ends in the middle of a character (truncated?)")
			}
		}
		u.err = err
	}
	u.out = out
}

func (u *utf16Reader) appendRune(out []byte, c rune) []byte {
	if u.high != 0 {
		h := u.high
		u.high = 0
		if utf16.IsSurrogate(c) && c >= 0xDC00 {
			return utf8.AppendRune(out, utf16.DecodeRune(h, c))
		}
		out = utf8.AppendRune(out, utf8.RuneError)
	}
	switch {
	case c >= 0xD800 && c < 0xDC00:
		u.high = c
		return out
	case c >= 0xDC00 && c < 0xE000:
		return utf8.AppendRune(out, utf8.RuneError)
	}
	return utf8.AppendRune(out, c)
}

// cp1252 maps 0x80-0x9F of Windows-1252; the rest of the code page is Latin-1.
var cp1252 = [32]rune{
	0x20AC, 0xFFFD, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021,
	0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0xFFFD, 0x017D, 0xFFFD,
	0xFFFD, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
	0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0xFFFD, 0x017E, 0x0178,
}

// fromWindows1252 decodes a line that is not valid UTF-8.
func fromWindows1252(b []byte) []byte {
	out := make([]byte, 0, len(b)+len(b)/2)
	for _, c := range b {
		switch {
		case c < 0x80:
			out = append(out, c)
		case c < 0xA0:
			out = utf8.AppendRune(out, cp1252[c-0x80])
		default:
			out = utf8.AppendRune(out, rune(c))
		}
	}
	return out
}
