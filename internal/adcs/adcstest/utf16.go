package adcstest

import (
	"io"
	"unicode/utf16"
	"unicode/utf8"
)

// utf16Writer encodes UTF-8 to UTF-16LE. A rune split across two writes is
// carried over.
type utf16Writer struct {
	w     io.Writer
	carry []byte
	buf   []byte
}

func (u *utf16Writer) Write(p []byte) (int, error) {
	in := p
	if len(u.carry) > 0 {
		in = append(u.carry, p...)
		u.carry = nil
	}
	out := u.buf[:0]
	for len(in) > 0 {
		if c := in[0]; c < 0x80 {
			out = append(out, c, 0)
			in = in[1:]
			continue
		}
		if !utf8.FullRune(in) {
			u.carry = append([]byte(nil), in...)
			break
		}
		r, n := utf8.DecodeRune(in)
		in = in[n:]
		if r >= 0x10000 {
			h, l := utf16.EncodeRune(r)
			out = append(out, byte(h), byte(h>>8), byte(l), byte(l>>8))
			continue
		}
		out = append(out, byte(r), byte(r>>8))
	}
	u.buf = out
	if _, err := u.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}
