package audit

import (
	"bufio"
	"crypto"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/stepfort/stepfort/plugins"
)

// WriteSyntheticExport writes a valid export of n generated records (a
// certificate issuance each) signed by key, for benchmarks and tests of
// verification at scale. It holds the tree's stored hashes in memory
// (about 64 bytes a record).
func WriteSyntheticExport(w io.Writer, n int64, key crypto.Signer, start time.Time) error {
	hashes := mapReader{}
	entries := make([]Entry, 0, min(n, 1<<20))
	var last string
	for i := range n {
		r := Record{Seq: i, Time: formatTime(start.Add(time.Duration(i) * time.Millisecond)), Prev: last, Replica: "bench",
			EventID: fmt.Sprintf("ev%012d", i), AuditRecord: plugins.AuditRecord{
				Action: "certificate.issue", Outcome: plugins.AuditSuccess,
				Actor:   plugins.AuditActor{Kind: "provisioner", Name: "admin"},
				Object:  plugins.AuditObject{Serial: fmt.Sprint(1_000_000_000 + i), Subject: fmt.Sprintf("host%d.example", i), Provisioner: "admin"},
				Details: map[string]string{"notAfter": "2027-01-01T00:00:00Z"}}}
		b, h, err := seal(r)
		if err != nil {
			return err
		}
		stored, err := tlog.StoredHashes(i, b, hashes)
		if err != nil {
			return err
		}
		base := tlog.StoredHashIndex(0, i)
		for j, sh := range stored {
			hashes[base+int64(j)] = sh
		}
		entries = append(entries, Entry{Record: b, Hash: hexHash(h)})
		last = hexHash(h)
	}
	root, err := tlog.TreeHash(n, hashes)
	if err != nil {
		return err
	}
	cp, err := sign(key, n, root, formatTime(start))
	if err != nil {
		return err
	}
	hd := &Header{From: 0, To: n, Checkpoint: cp}
	if hd.FirstProof, err = tlog.ProveRecord(n, 0, hashes); err != nil {
		return err
	}
	if hd.LastProof, err = tlog.ProveRecord(n, n-1, hashes); err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(exportLine{Header: hd}); err != nil {
		return err
	}
	for _, e := range entries {
		if err := enc.Encode(e); err != nil {
			return err
		}
	}
	return bw.Flush()
}
