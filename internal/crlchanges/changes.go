// Package crlchanges is the log of revocation-status changes that delta
// CRLs list: every change recorded since the base CRL of its series
// (stepfort's own issuer, or one legacy issuer) was scanned.
//
// Entries are immutable: each is written once under a key that ends in its
// recording time, and only ever deleted. That makes pruning exact without
// a conditional delete (which nosql does not offer on every backend): a
// base publication lists the entries first, scans the revocation table,
// and after storing the base deletes exactly the entries it listed. An
// entry recorded while the scan runs stays for the next delta, even when
// the base already includes it, which is harmless.
//
// The writer must record a change only after the revocation row it
// describes is committed (or in the same transaction), so that a base
// whose scan starts after the entry was listed includes the row.
package crlchanges

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"sort"
	"strconv"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/storage"
)

// Table holds the entries, keyed "<series>/<serial>/<recordedAt unix nanos>".
var Table = []byte("stepfort_crl_changes")

// RemoveFromCRL is the CRLReason of a delta entry for a certificate
// released from hold (RFC 5280 5.3.1).
const RemoveFromCRL = 8

// Change is one status change of one certificate of a series.
type Change struct {
	// Serial is the certificate serial in decimal, as the CRL encoder and
	// upstream's tables use.
	Serial    string    `json:"serial"`
	RevokedAt time.Time `json:"revokedAt"`
	// Reason is the RFC 5280 CRLReason; RemoveFromCRL when a held
	// certificate was released.
	Reason int `json:"reason"`
	// NotAfter lets the publisher leave expired certificates out; zero
	// when unknown.
	NotAfter   time.Time `json:"notAfter,omitzero"`
	RecordedAt time.Time `json:"recordedAt"`

	key []byte
}

// Init creates the table.
func Init(store nosql.DB) error { return store.CreateTable(Table) }

// Record adds c to series. RecordedAt is set to now when zero.
func Record(store nosql.DB, series string, c Change, now time.Time) error {
	if _, ok := new(big.Int).SetString(c.Serial, 10); !ok {
		return fmt.Errorf("crl change: serial %q is not a decimal number", c.Serial)
	}
	if c.RecordedAt.IsZero() {
		c.RecordedAt = now
	}
	c.RecordedAt = c.RecordedAt.UTC()
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return store.Set(Table, entryKey(series, c.Serial, c.RecordedAt), b)
}

func entryKey(series, serial string, at time.Time) []byte {
	return []byte(series + "/" + serial + "/" + strconv.FormatInt(at.UnixNano(), 10))
}

// List returns the latest change per serial of series, sorted by serial,
// and every entry it read (the ones a base publication deletes once it is
// stored, see Remove).
func List(store nosql.DB, series string) (latest []Change, read []Change, err error) {
	prefix := []byte(series + "/")
	err = storage.ForEach(store, Table, func(key, value []byte) error {
		if !bytes.HasPrefix(key, prefix) {
			return nil
		}
		var c Change
		if err := json.Unmarshal(value, &c); err != nil {
			return fmt.Errorf("decode CRL change %s: %w", key, err)
		}
		c.key = bytes.Clone(key)
		read = append(read, c)
		return nil
	})
	if database.IsErrNotFound(err) {
		err = nil
	}
	if err != nil {
		return nil, nil, err
	}
	bySerial := map[string]Change{}
	for _, c := range read {
		if old, ok := bySerial[c.Serial]; !ok || c.RecordedAt.After(old.RecordedAt) {
			bySerial[c.Serial] = c
		}
	}
	latest = make([]Change, 0, len(bySerial))
	for _, c := range bySerial {
		latest = append(latest, c)
	}
	sort.Slice(latest, func(i, j int) bool { return latest[i].Serial < latest[j].Serial })
	return latest, read, nil
}

// Remove deletes entries returned by List (and only those: entries recorded
// since stay).
func Remove(store nosql.DB, entries []Change) error {
	for _, c := range entries {
		if c.key == nil {
			return fmt.Errorf("crl change of %s was not read by List", c.Serial)
		}
		if err := store.Del(Table, c.key); err != nil && !database.IsErrNotFound(err) {
			return fmt.Errorf("remove CRL change %s: %w", c.key, err)
		}
	}
	return nil
}
