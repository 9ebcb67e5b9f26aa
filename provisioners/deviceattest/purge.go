package deviceattest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/storage"
)

// Retention of link rows: how long they outlive what they describe.
const (
	// linkRetention is how long a certificate's link is kept after the
	// certificate expired: a renewal after expiry (where a provisioner
	// allows it) and a renewed event delivered late still find their
	// parent. Once every certificate of a device is past it, the device's
	// row goes too.
	linkRetention = 7 * 24 * time.Hour
	// pendingRetention is how long a pending account authorization is kept
	// after it expired, for an issued event delivered late (the event
	// outbox retries with a back-off of at most 10 minutes).
	pendingRetention = 24 * time.Hour
)

// Purge removes what no longer describes a live certificate: links of
// certificates expired more than linkRetention ago (and the list of a
// device once all of its are), and pending account authorizations
// expired more than pendingRetention ago. It is part of the sweep.
func (l *Links) Purge(ctx context.Context, now time.Time) error {
	ids, err := l.Devices()
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := l.purgeDevice(id, now.Add(-linkRetention)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := l.purgePending(ctx, now.Add(-pendingRetention)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// purgeDevice drops the device's certificates that expired before cutoff:
// their links first, then their entries in the list, then the list
// itself if it is empty.
func (l *Links) purgeDevice(id string, cutoff time.Time) error {
	dc, _, err := l.lists.Get(id)
	if err != nil {
		return err
	}
	stale := func(c DeviceCert) bool { return c.NotAfter.Before(cutoff) }
	var gone []string
	for _, c := range dc.Certs {
		if stale(c) {
			gone = append(gone, c.Serial)
		}
	}
	if len(gone) == 0 {
		return nil
	}
	for _, serial := range gone {
		if err := l.db.Del(CertsTable, []byte(serial)); err != nil && !database.IsErrNotFound(err) {
			return fmt.Errorf("delete link %s: %w", serial, err)
		}
	}
	err = l.lists.Modify(id, func(dc *DeviceCerts) bool {
		n := len(dc.Certs)
		dc.Certs = slices.DeleteFunc(dc.Certs, stale)
		return len(dc.Certs) != n
	})
	if err != nil {
		return err
	}
	return l.deleteEmptyDevice(id)
}

// deleteEmptyDevice deletes the device's list if it is empty. A link
// recorded at the same moment is never lost: the delete is conditional on
// the empty list (deleteIf), and what it removed otherwise is put back.
func (l *Links) deleteEmptyDevice(id string) error {
	dc, old, err := l.lists.Get(id)
	if err != nil || old == nil || len(dc.Certs) > 0 {
		return err
	}
	lost, err := deleteIf(l.db, DevicesTable, []byte(id), old)
	if err != nil || lost == nil {
		return err
	}
	var back DeviceCerts
	if err := json.Unmarshal(lost, &back); err != nil {
		return fmt.Errorf("decode certificates of device %s: %w", id, err)
	}
	return l.lists.Modify(id, func(dc *DeviceCerts) bool {
		changed := false
		for _, c := range back.Certs {
			if !slices.ContainsFunc(dc.Certs, func(x DeviceCert) bool { return x.Serial == c.Serial }) {
				dc.Certs, changed = append(dc.Certs, c), true
			}
		}
		return changed
	})
}

// purgePending deletes pending authorizations that expired before cutoff.
// A key authorized again meanwhile keeps its new row (deleteIf).
func (l *Links) purgePending(ctx context.Context, cutoff time.Time) error {
	entries, err := l.db.List(PendingTable)
	if err != nil && !database.IsErrNotFound(err) {
		return fmt.Errorf("list %s: %w", PendingTable, err)
	}
	for _, e := range entries {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var p Pending
		if json.Unmarshal(e.Value, &p) == nil && !p.Expires.Before(cutoff) {
			continue
		}
		lost, err := deleteIf(l.db, PendingTable, e.Key, e.Value)
		if err != nil {
			return err
		}
		if lost != nil {
			// A newer authorization was deleted instead: put it back
			// unless an even newer one is there already.
			if _, _, err := storage.CmpAndSwap(l.db, PendingTable, e.Key, nil, lost); err != nil {
				return fmt.Errorf("restore pending account link: %w", err)
			}
		}
	}
	return nil
}

// deleteIf deletes table/key if it holds old. nosql has no conditional
// delete, so it runs a compare-and-swap of old with itself and the delete
// in one transaction: when the compare matches, the row (locked by the
// compare on SQL backends, in a serialised transaction on bbolt) is what
// is deleted. When it does not, the delete removed the value a concurrent
// writer stored, and deleteIf returns it (lost) for the caller to put
// back; lost is nil when the row was deleted as asked or was absent.
func deleteIf(db nosql.DB, table, key, old []byte) (lost []byte, err error) {
	cas := &database.TxEntry{Bucket: table, Key: key, CmpValue: old, Value: old, Cmd: database.CmpAndSwap}
	del := &database.TxEntry{Bucket: table, Key: key, Cmd: database.Delete}
	if err := storage.Update(db, &database.Tx{Operations: []*database.TxEntry{cas, del}}); err != nil {
		return nil, fmt.Errorf("delete %s/%s: %w", table, key, err)
	}
	if cas.Swapped || len(cas.Result) == 0 {
		return nil, nil
	}
	return cas.Result, nil
}
