package audit

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/stepfort/stepfort/internal/storage"
)

// MinRetention is the shortest retention allowed: BR §5.4.3 asks for two
// years.
const MinRetention = 2 * 365 * 24 * time.Hour

// Prune deletes the records older than cutoff, but only up to a
// checkpoint: the trail then starts at that checkpoint's size (the
// anchor), and an export of what remains still verifies against the
// checkpoints, whose tree hashes are kept. It returns how many records it
// deleted.
func (t *Trail) Prune(cutoff time.Time) (int64, error) {
	first, size, err := t.Bounds()
	if err != nil {
		return 0, err
	}
	// The first record at or after cutoff.
	end := first
	const chunk = 1000
scan:
	for lo := first; lo < size; lo += chunk {
		es, err := t.st.readRange(lo, min(lo+chunk, size))
		if err != nil {
			return 0, err
		}
		for i, e := range es {
			var r Record
			if err := json.Unmarshal(e.Record, &r); err != nil {
				return 0, fmt.Errorf("audit record %d: %w", lo+int64(i), err)
			}
			if tm, err := time.Parse(time.RFC3339Nano, r.Time); err != nil || !tm.Before(cutoff) {
				break scan
			}
			end = lo + int64(i) + 1
		}
	}
	// The largest checkpoint size <= end.
	var to int64
	err = storage.ForEach(t.st.db, checkpointsTable, func(k, v []byte) error {
		if len(k) != 8 {
			return nil
		}
		var c Checkpoint
		if json.Unmarshal(v, &c) == nil && c.Size <= end && c.Size > to {
			to = c.Size
		}
		return nil
	})
	if err != nil || to <= first {
		return 0, err
	}
	prev, err := t.st.readRange(to-1, to)
	if err != nil {
		return 0, err
	}
	// Move the anchor first: a crash mid-delete leaves records before it,
	// which are simply outside the trail.
	if err := storage.WriteBatch(t.st.db, []storage.Write{{Table: headTable, Key: anchorKey, Value: mustJSON(anchor{First: to, Prev: prev[0].Hash})}}); err != nil {
		return 0, err
	}
	for lo := first; lo < to; lo += chunk {
		var ws []storage.Write
		for n := lo; n < min(lo+chunk, to); n++ {
			ws = append(ws, storage.Write{Table: recordsTable, Key: seqKey(n), Delete: true})
		}
		if err := storage.WriteBatch(t.st.db, ws); err != nil {
			return 0, err
		}
	}
	return to - first, nil
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
