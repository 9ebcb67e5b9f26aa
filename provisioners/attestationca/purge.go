package attestationca

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/storage"
)

// Purge bounds. A scan streams the table and keeps at most purgeScanRows
// candidates (a copy of key and value, under 1 KiB each) before it stops
// to delete them, so memory does not grow with the table; each
// transaction handles at most purgeBatch rows.
const (
	purgeScanRows = 1024
	purgeBatch    = 128
	// purgeAbandoned is how old a purging mark must be before another
	// purge may delete it: the purge that wrote it deletes it
	// milliseconds later unless it died in between.
	purgeAbandoned = time.Minute
)

// errScanFull stops a scan that has collected purgeScanRows candidates.
var errScanFull = errors.New("scan full")

// row is a copy of one stored key and value.
type row struct{ key, value []byte }

// Purge deletes what no request can use any more and returns the number
// of sessions deleted: sessions that expired more than grace ago (consumed
// ones are kept until then so a replay is reported as such) and whose rate
// limit state has run out, and secret references that expired more than
// grace ago.
//
// A session row is deleted in two steps, each one transaction per batch:
// first it is marked purging with a compare-and-swap against the value
// the scan read, then the marked rows are deleted. nosql has no
// conditional delete, and a plain delete could remove a session that
// /attest wrote over the expired one after the scan; /attest never writes
// over a purging mark, it waits for the delete. Secret references are
// never rewritten, so they are deleted in one step.
func (s *SessionStore) Purge(now time.Time, grace time.Duration) (int, error) {
	return s.purge(context.Background(), now, grace)
}

func (s *SessionStore) purge(ctx context.Context, now time.Time, grace time.Duration) (int, error) {
	n, err := drain(ctx, func() (int, bool, error) {
		cands, more, err := scan(s, SessionsTable, func(v []byte) bool { return sessionPurgeable(v, now, grace) })
		if err != nil {
			return 0, false, err
		}
		deleted, err := s.deleteSessions(cands, now)
		return deleted, more, err
	})
	if err != nil {
		return n, err
	}
	_, err = drain(ctx, func() (int, bool, error) {
		cands, more, err := scan(s, SecretsTable, func(v []byte) bool { return refPurgeable(v, now, grace) })
		if err != nil {
			return 0, false, err
		}
		deleted, err := s.deleteRows(SecretsTable, cands)
		return deleted, more, err
	})
	return n, err
}

// drain runs round until it reports nothing more to do, no progress, an
// error, or ctx ends; it sums what the rounds deleted.
func drain(ctx context.Context, round func() (int, bool, error)) (int, error) {
	total := 0
	for ctx.Err() == nil {
		n, more, err := round()
		total += n
		if err != nil || !more || n == 0 {
			return total, err
		}
	}
	return total, nil
}

// scan streams table and returns copies of up to purgeScanRows rows whose
// value pick selects; more reports that it stopped early.
func scan(s *SessionStore, table []byte, pick func(v []byte) bool) (rows []row, more bool, err error) {
	err = storage.ForEach(s.db, table, func(k, v []byte) error {
		if !pick(v) {
			return nil
		}
		rows = append(rows, row{key: append([]byte(nil), k...), value: append([]byte(nil), v...)})
		if len(rows) == purgeScanRows {
			return errScanFull
		}
		return nil
	})
	if errors.Is(err, errScanFull) {
		return rows, true, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("scan %s: %w", table, err)
	}
	return rows, false, nil
}

// sessionPurgeable: expired more than grace ago with its rate limit state
// run out, a purging mark left by a purge that died, or unreadable.
func sessionPurgeable(v []byte, now time.Time, grace time.Duration) bool {
	var sess AttestationSession
	if json.Unmarshal(v, &sess) != nil {
		return true
	}
	if sess.PurgingSince != nil {
		return !now.Before(sess.PurgingSince.Add(purgeAbandoned))
	}
	return !now.Before(sess.ExpiresAt.Add(grace)) && !now.Before(sess.RateTAT)
}

func refPurgeable(v []byte, now time.Time, grace time.Duration) bool {
	var ref secretRef
	return json.Unmarshal(v, &ref) != nil || !now.Before(ref.ExpiresAt.Add(grace))
}

// deleteSessions marks, then deletes, the candidate sessions batch by
// batch; an abandoned purging mark is deleted without a new mark.
func (s *SessionStore) deleteSessions(cands []row, now time.Time) (int, error) {
	mark, err := json.Marshal(AttestationSession{PurgingSince: &now})
	if err != nil {
		return 0, err
	}
	n := 0
	for batch := range slices.Chunk(cands, purgeBatch) {
		var tx database.Tx
		var doomed []row
		for _, r := range batch {
			if isPurgingMark(r.value) {
				doomed = append(doomed, r)
				continue
			}
			tx.Operations = append(tx.Operations, &database.TxEntry{Bucket: SessionsTable, Key: r.key, CmpValue: r.value, Value: mark, Cmd: database.CmpAndSwap})
		}
		if len(tx.Operations) > 0 {
			if err := s.db.Update(&tx); err != nil {
				return n, fmt.Errorf("mark expired attestation sessions: %w", err)
			}
		}
		for _, op := range tx.Operations {
			if op.Swapped { // otherwise /attest or /secret changed it since the scan
				doomed = append(doomed, row{key: op.Key})
			}
		}
		deleted, err := s.deleteRows(SessionsTable, doomed)
		n += deleted
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func isPurgingMark(v []byte) bool {
	var sess AttestationSession
	return json.Unmarshal(v, &sess) == nil && sess.PurgingSince != nil
}

// deleteRows deletes rows in transactions of purgeBatch.
func (s *SessionStore) deleteRows(table []byte, rows []row) (int, error) {
	n := 0
	for batch := range slices.Chunk(rows, purgeBatch) {
		var tx database.Tx
		for _, r := range batch {
			tx.Del(table, r.key)
		}
		if err := s.db.Update(&tx); err != nil {
			return n, fmt.Errorf("purge %s: %w", table, err)
		}
		n += len(batch)
	}
	return n, nil
}
