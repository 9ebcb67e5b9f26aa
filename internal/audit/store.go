package audit

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/stepfort/stepfort/internal/storage"
)

// Tables of the trail, in the shared database so every replica appends to
// and serves the one chain.
var (
	recordsTable     = []byte("stepfort_audit_records")     // seq → Entry
	treeTable        = []byte("stepfort_audit_tree")        // tlog stored hash index → 32 bytes
	headTable        = []byte("stepfort_audit_head")        // "head" → head; "anchor" → anchor
	checkpointsTable = []byte("stepfort_audit_checkpoints") // size → Checkpoint; "latest"
	eventsTable      = []byte("stepfort_audit_events")      // certificate event id → seq
)

var (
	headKey   = []byte("head")
	anchorKey = []byte("anchor")
	latestKey = []byte("latest")
)

func seqKey(n int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(n)) }

// head is the one row every append compares and swaps: the tree size, the
// last hash, the RFC 6962 frontier (the stored hashes TreeHash and the
// next StoredHashes read), and the last batch itself. The batch in the
// head is the write-ahead copy: whoever appends next first copies it to
// the records table (idempotently), so a crash between the swap and the
// copy loses nothing.
type head struct {
	Size     int64     `json:"size"`
	Last     string    `json:"last"`
	Frontier []idxHash `json:"frontier,omitempty"`
	Pending  []pending `json:"pending,omitempty"`
}

type idxHash struct {
	I int64     `json:"i"`
	H tlog.Hash `json:"h"`
}

type pending struct {
	Entry   Entry       `json:"entry"`
	Seq     int64       `json:"seq"`
	Tree    []tlog.Hash `json:"tree"` // stored hashes from StoredHashIndex(0, Seq)
	EventID string      `json:"eventId,omitempty"`
}

// anchor is where the retained trail starts after pruning.
type anchor struct {
	First int64  `json:"first"`
	Prev  string `json:"prev"` // hash of record First-1
}

// store appends to and reads the chain.
type store struct {
	db      nosql.DB
	mu      sync.Mutex // one append at a time in this process
	raw     []byte     // the head as last swapped or read
	flushed int64      // the batch of a head of this size is in the tables
}

func openStore(db nosql.DB) (*store, error) {
	for _, t := range [][]byte{recordsTable, treeTable, headTable, checkpointsTable, eventsTable} {
		if err := db.CreateTable(t); err != nil {
			return nil, fmt.Errorf("create table %s: %w", t, err)
		}
	}
	return &store{db: db, flushed: -1}, nil
}

// item is one record waiting to be appended.
type item struct {
	rec  Record
	done chan error // nil: nobody waits
}

// readHead returns the stored head (empty when the trail is new).
func (s *store) readHead() (*head, []byte, error) {
	b, err := s.db.Get(headTable, headKey)
	if database.IsErrNotFound(err) {
		return &head{}, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read audit head: %w", err)
	}
	var h head
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, nil, fmt.Errorf("decode audit head: %w", err)
	}
	return &h, b, nil
}

// appendBatch appends items in order with one compare-and-swap of the head
// (retried when another replica appended meanwhile). Items whose EventID is
// already recorded are skipped. It returns the new head, nil when nothing
// was appended.
func (s *store) appendBatch(items []*item) (*head, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	raw := s.raw
	h := &head{}
	if raw == nil {
		var err error
		if h, raw, err = s.readHead(); err != nil {
			return nil, err
		}
	} else if err := json.Unmarshal(raw, h); err != nil {
		return nil, err
	}
	for range 1000 {
		todo, err := s.unrecorded(h, items)
		if err != nil {
			return nil, err
		}
		if len(todo) == 0 {
			return nil, nil
		}
		next, err := extend(h, todo)
		if err != nil {
			return nil, err
		}
		nb, err := json.Marshal(next)
		if err != nil {
			return nil, err
		}
		// One transaction: copy the previous batch out of the head
		// (idempotent, harmless if the swap fails) and swap the head.
		tx := new(database.Tx)
		if s.flushed < h.Size {
			for _, w := range pendingWrites(h) {
				tx.Set(w.Table, w.Key, w.Value)
			}
		}
		cas := &database.TxEntry{Bucket: headTable, Key: headKey, CmpValue: raw, Value: nb, Cmd: database.CmpAndSwap}
		tx.Operations = append(tx.Operations, cas)
		if err := storage.Update(s.db, tx); err != nil {
			return nil, fmt.Errorf("append audit records: %w", err)
		}
		s.flushed = max(s.flushed, h.Size)
		if cas.Swapped {
			s.raw = nb
			return next, nil
		}
		raw = cas.Result
		h = &head{}
		if err := json.Unmarshal(raw, h); err != nil {
			return nil, fmt.Errorf("decode audit head: %w", err)
		}
	}
	return nil, errors.New("append audit records: head contended too long")
}

// pendingWrites are the rows of the head's batch: records, tree hashes
// and event ids.
func pendingWrites(h *head) []storage.Write {
	writes := make([]storage.Write, 0, 3*len(h.Pending))
	for _, p := range h.Pending {
		e, _ := json.Marshal(p.Entry)
		writes = append(writes, storage.Write{Table: recordsTable, Key: seqKey(p.Seq), Value: e})
		base := tlog.StoredHashIndex(0, p.Seq)
		for i, th := range p.Tree {
			writes = append(writes, storage.Write{Table: treeTable, Key: seqKey(base + int64(i)), Value: th[:]})
		}
		if p.EventID != "" {
			writes = append(writes, storage.Write{Table: eventsTable, Key: []byte(p.EventID), Value: seqKey(p.Seq)})
		}
	}
	return writes
}

// unrecorded drops items whose certificate event is already in the trail:
// in the events table or in the head's batch.
func (s *store) unrecorded(h *head, items []*item) ([]*item, error) {
	var keys [][]byte
	for _, it := range items {
		if it.rec.EventID != "" {
			keys = append(keys, []byte(it.rec.EventID))
		}
	}
	if len(keys) == 0 {
		return items, nil
	}
	vals, err := storage.GetMany(s.db, eventsTable, keys)
	if err != nil {
		return nil, fmt.Errorf("read audit event ids: %w", err)
	}
	seen := map[string]bool{}
	for _, p := range h.Pending {
		if p.EventID != "" {
			seen[p.EventID] = true
		}
	}
	for i, v := range vals {
		if v != nil {
			seen[string(keys[i])] = true
		}
	}
	out := items[:0:0]
	for _, it := range items {
		if id := it.rec.EventID; id != "" {
			if seen[id] {
				continue
			}
			seen[id] = true // twice in one batch: once
		}
		out = append(out, it)
	}
	return out, nil
}

// extend returns h with items appended: seq, prev, hashes, frontier.
func extend(h *head, items []*item) (*head, error) {
	fr := make(map[int64]tlog.Hash, len(h.Frontier)+2*len(items))
	for _, f := range h.Frontier {
		fr[f.I] = f.H
	}
	next := &head{Size: h.Size, Last: h.Last}
	for _, it := range items {
		r := it.rec
		r.Seq, r.Prev = next.Size, next.Last
		b, hash, err := seal(r)
		if err != nil {
			return nil, err
		}
		stored, err := tlog.StoredHashes(r.Seq, b, mapReader(fr))
		if err != nil {
			return nil, fmt.Errorf("audit tree at %d: %w", r.Seq, err)
		}
		base := tlog.StoredHashIndex(0, r.Seq)
		for i, sh := range stored {
			fr[base+int64(i)] = sh
		}
		next.Pending = append(next.Pending, pending{Entry: Entry{Record: b, Hash: hexHash(hash)}, Seq: r.Seq, Tree: stored, EventID: r.EventID})
		next.Size++
		next.Last = hexHash(hash)
	}
	for _, i := range frontierIndexes(next.Size) {
		next.Frontier = append(next.Frontier, idxHash{I: i, H: fr[i]})
	}
	return next, nil
}

// frontierIndexes are the stored hash indexes of the complete subtrees
// that make up a tree of n records: what TreeHash(n) and StoredHashes(n)
// read.
func frontierIndexes(n int64) []int64 {
	var out []int64
	lo := int64(0)
	for l := 62; l >= 0; l-- {
		if n&(1<<l) != 0 {
			out = append(out, tlog.StoredHashIndex(l, lo>>l))
			lo += 1 << l
		}
	}
	return out
}

// mapReader serves stored hashes from a map.
type mapReader map[int64]tlog.Hash

func (m mapReader) ReadHashes(idx []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(idx))
	for i, x := range idx {
		h, ok := m[x]
		if !ok {
			return nil, fmt.Errorf("stored hash %d not available", x)
		}
		out[i] = h
	}
	return out, nil
}

// root is the RFC 6962 root of the first h.Size records.
func (h *head) root() (tlog.Hash, error) {
	fr := make(mapReader, len(h.Frontier))
	for _, f := range h.Frontier {
		fr[f.I] = f.H
	}
	return tlog.TreeHash(h.Size, fr)
}

// dbReader serves stored hashes from the tree table, falling back to the
// current head (its batch may not be copied yet).
type dbReader struct{ s *store }

func (r dbReader) ReadHashes(idx []int64) ([]tlog.Hash, error) {
	keys := make([][]byte, len(idx))
	for i, x := range idx {
		keys[i] = seqKey(x)
	}
	vals, err := storage.GetMany(r.s.db, treeTable, keys)
	if err != nil {
		return nil, err
	}
	out := make([]tlog.Hash, len(idx))
	var h *head
	for i, v := range vals {
		if len(v) == len(out[i]) {
			copy(out[i][:], v)
			continue
		}
		if h == nil {
			if h, _, err = r.s.readHead(); err != nil {
				return nil, err
			}
		}
		found := false
		for _, p := range h.Pending {
			base := tlog.StoredHashIndex(0, p.Seq)
			if idx[i] >= base && idx[i] < base+int64(len(p.Tree)) {
				out[i], found = p.Tree[idx[i]-base], true
			}
		}
		if !found {
			return nil, fmt.Errorf("audit tree hash %d missing", idx[i])
		}
	}
	return out, nil
}

// readRange returns entries [from, to), from the records table or the
// head's batch.
func (s *store) readRange(from, to int64) ([]Entry, error) {
	keys := make([][]byte, 0, to-from)
	for n := from; n < to; n++ {
		keys = append(keys, seqKey(n))
	}
	vals, err := storage.GetMany(s.db, recordsTable, keys)
	if err != nil {
		return nil, fmt.Errorf("read audit records: %w", err)
	}
	out := make([]Entry, len(vals))
	var missing []int
	for i, v := range vals {
		if v == nil {
			missing = append(missing, i)
			continue
		}
		if err := json.Unmarshal(v, &out[i]); err != nil {
			return nil, fmt.Errorf("audit record %d: %w", from+int64(i), err)
		}
	}
	if len(missing) > 0 {
		if err := s.readMissing(from, keys, missing, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// readMissing fills out[i] for each index in missing, records the table
// did not have: they are in the head's pending batch or, if an append
// replaced the head since, in the table now. The append that replaces a
// head writes its pending batch to the table in the same transaction, so
// one more read of the table after reading the head finds every record
// that existed when the range was asked for.
func (s *store) readMissing(from int64, keys [][]byte, missing []int, out []Entry) error {
	h, _, err := s.readHead()
	if err != nil {
		return err
	}
	pending := make(map[int64]Entry, len(h.Pending))
	for _, p := range h.Pending {
		pending[p.Seq] = p.Entry
	}
	var again []int
	for _, i := range missing {
		if e, ok := pending[from+int64(i)]; ok {
			out[i] = e
		} else {
			again = append(again, i)
		}
	}
	if len(again) == 0 {
		return nil
	}
	reKeys := make([][]byte, len(again))
	for j, i := range again {
		reKeys[j] = keys[i]
	}
	vals, err := storage.GetMany(s.db, recordsTable, reKeys)
	if err != nil {
		return fmt.Errorf("read audit records: %w", err)
	}
	for j, i := range again {
		if vals[j] == nil {
			return fmt.Errorf("audit record %d missing from the database", from+int64(i))
		}
		if err := json.Unmarshal(vals[j], &out[i]); err != nil {
			return fmt.Errorf("audit record %d: %w", from+int64(i), err)
		}
	}
	return nil
}

// readAnchor returns where the retained trail starts.
func (s *store) readAnchor() (anchor, error) {
	a, _, err := storage.GetJSON[anchor](s.db, headTable, anchorKey)
	if err != nil {
		return anchor{}, err
	}
	if a == nil {
		return anchor{}, nil
	}
	return *a, nil
}
