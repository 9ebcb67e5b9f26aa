package audit

import (
	"bufio"
	"bytes"
	"crypto"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"golang.org/x/mod/sumdb/tlog"
)

// Header is the first line of an export: the range it holds, the signed
// checkpoint that covers it, and RFC 6962 inclusion proofs of its first
// and last records in that checkpoint's tree. The hash chain ties every
// record in between to those two.
type Header struct {
	From       int64            `json:"from"`
	To         int64            `json:"to"` // exclusive
	Checkpoint *Checkpoint      `json:"checkpoint"`
	FirstProof tlog.RecordProof `json:"firstProof"`
	LastProof  tlog.RecordProof `json:"lastProof"`
}

// exportLine is one line of an export: the header or an entry.
type exportLine struct {
	Header *Header `json:"header,omitempty"`
	Entry
}

// VerifyError names the first sequence number at which verification failed.
type VerifyError struct {
	Seq    int64
	Reason string
}

func (e *VerifyError) Error() string { return fmt.Sprintf("seq %d: %s", e.Seq, e.Reason) }

// Summary is what a successful verification checked.
type Summary struct {
	From, To       int64
	CheckpointSize int64
	CheckpointTime string
	KeyID          string
}

// MaxLine bounds one line of an export.
const MaxLine = 1 << 20

// Verify checks an export: the checkpoint's signature with pub, then every
// record in order (consecutive sequence numbers from From, each hash
// matching its bytes, each prev matching the previous hash, none after To
// and none missing before To), and the inclusion proofs of the first and
// last records. An edited, deleted, reordered or truncated record is a
// *VerifyError naming the first bad sequence number.
func Verify(r io.Reader, pub crypto.PublicKey) (*Summary, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), MaxLine)
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("line 1: %w", err)
		}
		return nil, errors.New("empty export: no header line")
	}
	var first exportLine
	if err := json.Unmarshal(sc.Bytes(), &first); err != nil || first.Header == nil || first.Header.Checkpoint == nil {
		return nil, errors.New("line 1: not an export header with a checkpoint")
	}
	hd := first.Header
	cp := hd.Checkpoint
	if err := cp.Verify(pub); err != nil {
		return nil, err
	}
	root, err := cp.root()
	if err != nil {
		return nil, fmt.Errorf("checkpoint %d: %w", cp.Size, err)
	}
	if hd.From < 0 || hd.To <= hd.From || hd.To > cp.Size {
		return nil, fmt.Errorf("header: range [%d, %d) is not within checkpoint size %d", hd.From, hd.To, cp.Size)
	}
	want, prev, line := hd.From, "", 1
	for sc.Scan() {
		line++
		if want >= hd.To {
			return nil, &VerifyError{Seq: want, Reason: fmt.Sprintf("line %d: record after the end of the export (to %d)", line, hd.To)}
		}
		raw, hashHex, seq, recPrev, err := parseLine(sc.Bytes())
		if err != nil {
			return nil, &VerifyError{Seq: want, Reason: fmt.Sprintf("line %d: %v", line, err)}
		}
		rec := struct {
			Seq  int64
			Prev string
		}{seq, recPrev}
		if rec.Seq != want {
			return nil, &VerifyError{Seq: want, Reason: fmt.Sprintf("line %d: found seq %d where %d belongs (record deleted, reordered or edited)", line, rec.Seq, want)}
		}
		h := tlog.RecordHash(raw)
		var hx [2 * tlog.HashSize]byte
		hex.Encode(hx[:], h[:])
		if string(hx[:]) != hashHex {
			return nil, &VerifyError{Seq: want, Reason: fmt.Sprintf("line %d: record does not match its hash (edited)", line)}
		}
		if want > hd.From && rec.Prev != prev {
			return nil, &VerifyError{Seq: want, Reason: fmt.Sprintf("line %d: prev does not match the hash of seq %d (a record before it was edited or replaced)", line, want-1)}
		}
		if want == 0 && rec.Prev != "" {
			return nil, &VerifyError{Seq: 0, Reason: "first record of the trail has a prev hash"}
		}
		if want == hd.From {
			if err := tlog.CheckRecord(hd.FirstProof, cp.Size, root, want, h); err != nil {
				return nil, &VerifyError{Seq: want, Reason: fmt.Sprintf("not in the checkpoint's tree: %v", err)}
			}
		}
		if want == hd.To-1 {
			if err := tlog.CheckRecord(hd.LastProof, cp.Size, root, want, h); err != nil {
				return nil, &VerifyError{Seq: want, Reason: fmt.Sprintf("not in the checkpoint's tree: %v", err)}
			}
		}
		prev = hashHex
		want++
	}
	if err := sc.Err(); err != nil {
		return nil, &VerifyError{Seq: want, Reason: fmt.Sprintf("line %d: %v", line+1, err)}
	}
	if want < hd.To {
		return nil, &VerifyError{Seq: want, Reason: fmt.Sprintf("missing: the export ends after %d of %d records (truncated)", want-hd.From, hd.To-hd.From)}
	}
	return &Summary{From: hd.From, To: hd.To, CheckpointSize: cp.Size, CheckpointTime: cp.Time, KeyID: cp.KeyID}, nil
}

// parseLine splits an export line into the record's bytes, its hash and
// the record's seq and prev. The lines stepfort writes take a fast path
// (no JSON decoding); anything else is decoded as JSON. Either way the
// checks that follow bind what is returned: the hash is computed over the
// record bytes themselves, and seq and prev are read from those bytes.
func parseLine(b []byte) (raw []byte, hash string, seq int64, prev string, err error) {
	if raw, hash, seq, prev, ok := fastLine(b); ok {
		return raw, hash, seq, prev, nil
	}
	var l exportLine
	if err := json.Unmarshal(b, &l); err != nil || l.Record == nil {
		return nil, "", 0, "", errors.New("not a record line")
	}
	var r struct {
		Seq  int64  `json:"seq"`
		Prev string `json:"prev"`
	}
	if err := json.Unmarshal(l.Record, &r); err != nil {
		return nil, "", 0, "", fmt.Errorf("record is not JSON: %v", err)
	}
	return l.Record, l.Hash, r.Seq, r.Prev, nil
}

var (
	linePrefix = []byte(`{"record":{"seq":`)
	hashInfix  = []byte(`},"hash":"`)
	timeInfix  = []byte(`,"time":"`)
	prevInfix  = []byte(`","prev":"`)
)

// fastLine parses `{"record":{"seq":N,"time":"T","prev":"P",...},"hash":"H"}`.
func fastLine(b []byte) (raw []byte, hash string, seq int64, prev string, ok bool) {
	const hexLen = 2 * tlog.HashSize
	n := len(b)
	if !bytes.HasPrefix(b, linePrefix) || n < len(linePrefix)+len(hashInfix)+hexLen+2 || b[n-2] != '"' || b[n-1] != '}' {
		return
	}
	hs := n - 2 - hexLen
	if !bytes.Equal(b[hs-len(hashInfix):hs], hashInfix) {
		return
	}
	raw = b[len(`{"record":`) : hs-len(hashInfix)+1]
	rest := b[len(linePrefix):]
	i := bytes.IndexByte(rest, ',')
	if i < 0 {
		return
	}
	var err error
	if seq, err = strconv.ParseInt(string(rest[:i]), 10, 64); err != nil {
		return
	}
	rest = rest[i:]
	if !bytes.HasPrefix(rest, timeInfix) {
		return
	}
	j := bytes.Index(rest, prevInfix)
	if j < 0 || bytes.IndexByte(rest[len(timeInfix):j], '"') >= 0 {
		return
	}
	rest = rest[j+len(prevInfix):]
	k := bytes.IndexByte(rest, '"')
	if k < 0 || (k != 0 && k != hexLen) {
		return
	}
	return raw, string(b[hs : n-2]), seq, string(rest[:k]), true
}
