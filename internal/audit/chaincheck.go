package audit

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/stepfort/stepfort/internal/storage"
)

// VerifyInterval is how often each replica verifies the live trail from
// where it stopped last time (the first run is at start).
const VerifyInterval = time.Minute

// Chain verification states.
const (
	ChainPending = "pending" // not verified yet
	ChainOK      = "ok"
	ChainFailed  = "failed"
)

// ChainStatus is the last verification of the live trail in the database:
// every record of [From, Verified) was read in order and checked (seq
// without gaps, the hash of its bytes, prev = the hash before it), and
// every checkpoint passed on the way had a valid signature and the RFC
// 6962 root of the records before it. Each replica verifies on its own and
// caches the result: GET /api/v1/audit/status answers from it.
type ChainStatus struct {
	State string `json:"state"`
	// From is the first retained record (after retention pruning).
	From     int64 `json:"from"`
	Verified int64 `json:"verified"`
	// Size is the trail's size when the last run started.
	Size      int64     `json:"size"`
	CheckedAt time.Time `json:"checkedAt,omitzero"`
	// Duration of the last run.
	Duration string `json:"duration,omitempty"`
	// Error names the first bad record (Seq) when State is failed, or a
	// run that could not read the database (Seq -1; State is then kept).
	Error *ChainError `json:"error,omitempty"`
	// Checkpoint is the latest signed checkpoint, read when asked.
	Checkpoint *CheckpointStatus `json:"checkpoint,omitempty"`

	rootAt int64 // largest checkpoint size whose root matched
}

// ChainError is where and why verification stopped.
type ChainError struct {
	Seq    int64  `json:"seq"`
	Reason string `json:"reason"`
}

// CheckpointStatus is the latest checkpoint and what was checked of it.
type CheckpointStatus struct {
	Checkpoint
	// SignatureValid: the checkpoint's signature (Ed25519 or ECDSA, per
	// its alg) verifies with this replica's audit key; SignatureError says why not.
	SignatureValid bool   `json:"signatureValid"`
	SignatureError string `json:"signatureError,omitempty"`
	// RootVerified: the records verified hash to its root.
	RootVerified bool `json:"rootVerified"`
}

// chainVerifier walks the trail forward from where it stopped, keeping
// the last hash and the RFC 6962 frontier (at most 63 hashes), so each
// run costs the records appended since the last one.
type chainVerifier struct {
	mu       sync.Mutex // one run at a time
	first    int64      // From of the walk in progress
	verified int64      // next seq to check
	prev     string     // hash of record verified-1
	frontier mapReader  // stored hashes of the complete subtrees of [0, verified)
	rootAt   int64      // size of the largest checkpoint whose root matched

	statusMu sync.Mutex
	status   ChainStatus
}

// ChainStatus returns the cached result of the last verification with
// the latest checkpoint (one database read).
func (t *Trail) ChainStatus() ChainStatus {
	s := t.cachedStatus()
	s.Checkpoint = t.checkpointStatus(s.rootAt)
	return s
}

func (t *Trail) cachedStatus() ChainStatus {
	v := &t.verifier
	v.statusMu.Lock()
	defer v.statusMu.Unlock()
	s := v.status
	if s.State == "" {
		s.State = ChainPending
	}
	return s
}

// VerifyChain verifies the records appended since the last run (all of
// them the first time; about 1.5 s per million) and the checkpoints among
// them, and caches the result. It returns the new status.
func (t *Trail) VerifyChain(ctx context.Context) ChainStatus {
	v := &t.verifier
	v.mu.Lock()
	defer v.mu.Unlock()
	start := t.o.Now()
	st := t.cachedStatus()
	st.CheckedAt = start
	err := t.verifyForward(ctx, &st)
	st.Duration = t.o.Now().Sub(start).Round(time.Millisecond).String()
	st.From, st.Verified = v.first, v.verified
	switch e := err.(type) {
	case nil:
		st.State, st.Error = ChainOK, nil
	case *VerifyError:
		st.State, st.Error = ChainFailed, &ChainError{Seq: e.Seq, Reason: e.Reason}
		t.o.Log.Error("audit chain verification failed", "seq", e.Seq, "reason", e.Reason)
	default:
		// The database could not be read: the last verdict stands.
		st.Error = &ChainError{Seq: -1, Reason: err.Error()}
		t.o.Log.Warn("audit chain verification could not run", "error", err)
	}
	st.rootAt = v.rootAt
	v.statusMu.Lock()
	v.status = st
	v.statusMu.Unlock()
	st.Checkpoint = t.checkpointStatus(st.rootAt)
	return st
}

// verifyForward checks [v.verified, size). Errors are *VerifyError for a
// bad record or checkpoint, anything else for a failed read.
func (t *Trail) verifyForward(ctx context.Context, st *ChainStatus) error {
	v := &t.verifier
	a, err := t.st.readAnchor()
	if err != nil {
		return err
	}
	h, _, err := t.st.readHead()
	if err != nil {
		return err
	}
	st.Size = h.Size
	if v.frontier == nil || a.First > v.verified {
		if err := v.reset(t.st, a); err != nil {
			return err
		}
	}
	cps, err := t.checkpointsFrom(v.verified, h.Size)
	if err != nil {
		return err
	}
	if err := v.checkRoot(cps, t); err != nil {
		return err
	}
	const chunk = 1000
	for v.verified < h.Size {
		if err := ctx.Err(); err != nil {
			return err
		}
		from, hi := v.verified, min(v.verified+chunk, h.Size)
		var after []byte
		if from > 0 {
			after = seqKey(from - 1)
		}
		_, err := storage.ForEachPage(t.st.db, recordsTable, after, int(hi-from), func(k, val []byte) error {
			if v.verified >= hi || !bytes.Equal(k, seqKey(v.verified)) {
				return errStopPage // a gap: fill it below from the head or fail
			}
			return v.check(val, cps, t)
		})
		if err != nil && !errors.Is(err, errStopPage) {
			return err
		}
		if v.verified < hi {
			// Not in the records table: the head's batch (not copied
			// yet) or missing.
			es, err := t.st.readRange(v.verified, v.verified+1)
			if err != nil {
				return &VerifyError{Seq: v.verified, Reason: fmt.Sprintf("missing: %v (record deleted)", err)}
			}
			b, _ := json.Marshal(es[0])
			if err := v.check(b, cps, t); err != nil {
				return err
			}
		}
		v.trim()
	}
	return nil
}

var errStopPage = errors.New("stop page")

// reset starts the walk at the anchor: from 0, or after pruning at the
// first retained record, with the frontier read from the kept tree hashes.
func (v *chainVerifier) reset(s *store, a anchor) error {
	v.first, v.verified, v.prev, v.frontier, v.rootAt = a.First, a.First, a.Prev, mapReader{}, 0
	if a.First == 0 {
		return nil
	}
	idx := frontierIndexes(a.First)
	hs, err := dbReader{s}.ReadHashes(idx)
	if err != nil {
		return err
	}
	for i, x := range idx {
		v.frontier[x] = hs[i]
	}
	return nil
}

// check verifies one stored entry (an export line: {"record":…,"hash":…})
// as record v.verified and advances.
func (v *chainVerifier) check(line []byte, cps map[int64]*Checkpoint, t *Trail) error {
	want := v.verified
	raw, hashHex, seq, prev, err := parseLine(line)
	if err != nil {
		return &VerifyError{Seq: want, Reason: err.Error()}
	}
	if seq != want {
		return &VerifyError{Seq: want, Reason: fmt.Sprintf("found seq %d where %d belongs (record deleted, reordered or edited)", seq, want)}
	}
	hash := tlog.RecordHash(raw)
	if hexHash(hash) != hashHex {
		return &VerifyError{Seq: want, Reason: "record does not match its hash (edited)"}
	}
	if prev != v.prev {
		return &VerifyError{Seq: want, Reason: fmt.Sprintf("prev does not match the hash of seq %d (a record before it was edited or replaced)", want-1)}
	}
	stored, err := tlog.StoredHashes(want, raw, v.frontier)
	if err != nil {
		return fmt.Errorf("audit tree at %d: %w", want, err)
	}
	base := tlog.StoredHashIndex(0, want)
	for i, sh := range stored {
		v.frontier[base+int64(i)] = sh
	}
	v.verified, v.prev = want+1, hashHex
	return v.checkRoot(cps, t)
}

// checkRoot compares the checkpoint of size v.verified, if any, with the
// root of the records verified.
func (v *chainVerifier) checkRoot(cps map[int64]*Checkpoint, t *Trail) error {
	cp := cps[v.verified]
	if cp == nil || v.verified == 0 {
		return nil
	}
	if err := cp.Verify(t.PublicKey()); err != nil {
		return &VerifyError{Seq: v.verified, Reason: err.Error()}
	}
	v.trim()
	root, err := tlog.TreeHash(v.verified, v.frontier)
	if err != nil {
		return fmt.Errorf("audit tree root at %d: %w", v.verified, err)
	}
	if hexHash(root) != cp.Root {
		return &VerifyError{Seq: v.verified - 1, Reason: fmt.Sprintf("records [0, %d) do not hash to the root of checkpoint %d (a record was edited, or the checkpoint replaced)", cp.Size, cp.Size)}
	}
	v.rootAt = max(v.rootAt, cp.Size)
	return nil
}

// trim drops the stored hashes the next records will not read.
func (v *chainVerifier) trim() {
	keep := map[int64]bool{}
	for _, i := range frontierIndexes(v.verified) {
		keep[i] = true
	}
	for i := range v.frontier {
		if !keep[i] {
			delete(v.frontier, i)
		}
	}
}

// checkpointsFrom returns the stored checkpoints of sizes [from, to].
func (t *Trail) checkpointsFrom(from, to int64) (map[int64]*Checkpoint, error) {
	out := map[int64]*Checkpoint{}
	after := []byte(nil)
	if from > 0 {
		after = seqKey(from - 1)
	}
	for {
		next, err := storage.ForEachPage(t.st.db, checkpointsTable, after, 1000, func(k, val []byte) error {
			if len(k) != 8 || int64(binary.BigEndian.Uint64(k)) > to {
				return errStopPage // "latest" and beyond
			}
			var c Checkpoint
			if err := json.Unmarshal(val, &c); err != nil {
				return &VerifyError{Seq: int64(binary.BigEndian.Uint64(k)), Reason: fmt.Sprintf("checkpoint is not JSON: %v", err)}
			}
			if c.Size != int64(binary.BigEndian.Uint64(k)) {
				return &VerifyError{Seq: c.Size, Reason: "checkpoint stored under another size (moved)"}
			}
			out[c.Size] = &c
			return nil
		})
		if errors.Is(err, errStopPage) || (err == nil && next == nil) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		after = next
	}
}

// checkpointStatus describes the latest checkpoint; rootAt is the largest
// checkpoint size whose root the verifier matched.
func (t *Trail) checkpointStatus(rootAt int64) *CheckpointStatus {
	cp, err := t.Latest()
	if err != nil || cp == nil {
		return nil
	}
	cs := &CheckpointStatus{Checkpoint: *cp, RootVerified: rootAt == cp.Size}
	if err := cp.Verify(t.PublicKey()); err != nil {
		cs.SignatureError = err.Error()
	} else {
		cs.SignatureValid = true
	}
	return cs
}

// FullVerifyEvery is how often a replica verifies the whole trail again
// from its start, so a record edited after it was verified is caught
// without a restart.
const FullVerifyEvery = time.Hour

// runVerifier verifies at start and every interval until ctx ends, from
// the start of the trail every FullVerifyEvery.
func (t *Trail) runVerifier(ctx context.Context, every time.Duration) {
	tk := time.NewTicker(every)
	defer tk.Stop()
	var full time.Time
	for {
		if now := t.o.Now(); now.Sub(full) >= FullVerifyEvery {
			t.restartVerification()
			full = now
		}
		t.VerifyChain(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
	}
}

// restartVerification makes the next VerifyChain start from the first
// retained record.
func (t *Trail) restartVerification() {
	t.verifier.mu.Lock()
	t.verifier.frontier = nil
	t.verifier.mu.Unlock()
}
