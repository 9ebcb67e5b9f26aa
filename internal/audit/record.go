package audit

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/stepfort/stepfort/plugins"
)

// Record is one entry of the trail as it is hashed: its canonical encoding
// is json.Marshal of this struct (fields in this order, map keys sorted,
// no HTML escaping needed: records are hashed as stored, never re-encoded).
type Record struct {
	Seq  int64  `json:"seq"`
	Time string `json:"time"` // RFC 3339, UTC, nanoseconds
	// Prev is the hex hash of record Seq-1 ("" for seq 0).
	Prev    string `json:"prev"`
	Replica string `json:"replica,omitempty"`
	// EventID is the certificate event a record was made from: a
	// redelivered event is recorded once.
	EventID string `json:"eventId,omitempty"`
	plugins.AuditRecord
}

// Entry is a stored record: the exact bytes that were hashed and their
// hash, tlog.RecordHash (SHA-256 of 0x00 || record), the RFC 6962 leaf hash.
// It is one line of an export and one row of the records table.
type Entry struct {
	Record json.RawMessage `json:"record"`
	Hash   string          `json:"hash"`
}

// Field bounds: a record is small whatever a caller hands in.
const (
	maxField   = 512
	maxDetails = 32
)

// seal fills in the chain fields and returns the canonical bytes and hash.
func seal(r Record) ([]byte, tlog.Hash, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, tlog.Hash{}, fmt.Errorf("encode audit record: %w", err)
	}
	return b, tlog.RecordHash(b), nil
}

// clean bounds and sanitises what a caller hands in: valid UTF-8, no
// control characters (log injection), bounded lengths and detail count.
func clean(r plugins.AuditRecord) plugins.AuditRecord {
	s := func(v string) string {
		if !utf8.ValidString(v) {
			v = strings.ToValidUTF8(v, "\uFFFD")
		}
		v = strings.Map(func(c rune) rune {
			if c < 0x20 || c == 0x7f {
				return ' '
			}
			return c
		}, v)
		if len(v) > maxField {
			v = v[:maxField]
			v = strings.ToValidUTF8(v, "")
		}
		return v
	}
	r.Action, r.Reason = s(r.Action), s(r.Reason)
	r.Outcome = plugins.AuditOutcome(s(string(r.Outcome)))
	a := &r.Actor
	a.Kind, a.ID, a.Name, a.Subject, a.RemoteAddr = s(a.Kind), s(a.ID), s(a.Name), s(a.Subject), s(a.RemoteAddr)
	o := &r.Object
	o.Serial, o.Issuer, o.Subject, o.Provisioner, o.Device, o.Token, o.Config = s(o.Serial), s(o.Issuer), s(o.Subject), s(o.Provisioner), s(o.Device), s(o.Token), s(o.Config)
	if len(r.Details) > 0 {
		d := make(map[string]string, min(len(r.Details), maxDetails))
		for k, v := range r.Details {
			if len(d) == maxDetails {
				d["truncated"] = "true"
				break
			}
			d[s(k)] = s(v)
		}
		r.Details = d
	}
	return r
}

// formatTime is the record time format.
func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func hexHash(h tlog.Hash) string { return hex.EncodeToString(h[:]) }

func parseHexHash(s string) (tlog.Hash, error) {
	var h tlog.Hash
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(h) {
		return h, fmt.Errorf("not a hex SHA-256 hash: %q", s)
	}
	copy(h[:], b)
	return h, nil
}
