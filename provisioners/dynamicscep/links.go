package dynamicscep

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// Tables; the key layout is documented in docs/scep.md.
var (
	// DeviceLinksTable maps an inventory device ID to its JSON DeviceCerts:
	// the SCEP certificates enrolled with challenges bound to it.
	DeviceLinksTable = []byte("stepfort_scep_device_links")
	// PendingTable maps the hex SHA-256 of a CSR's subject public key
	// (PKIX DER) to a JSON Pending: a device-bound challenge accepted for
	// that key whose certificate is not linked yet.
	PendingTable = []byte("stepfort_scep_pending")
)

// pendingRetention is how long a pending link outlives its challenge's
// acceptance: the certificate event that links it is delivered within
// minutes even after retries (the outbox back-off is at most 10 minutes).
const pendingRetention = 24 * time.Hour

// Pending is a device-bound challenge accepted for a public key.
type Pending struct {
	DeviceID    string    `json:"deviceId"`
	ChallengeID string    `json:"challengeId"`
	Provisioner string    `json:"provisioner"`
	AcceptedAt  time.Time `json:"acceptedAt"`
}

// DeviceCerts is the list of SCEP certificates linked to one device; each
// entry's Ref is the challenge that enrolled it.
type DeviceCerts = inventory.CertList

// DeviceCert is one linked certificate. Revoked marks it done.
type DeviceCert = inventory.DeviceCert

// Links stores certificate-to-device links. Every write is a
// compare-and-swap or an idempotent Set, so it is correct with several
// replicas and with events delivered more than once.
type Links struct {
	db    nosql.DB
	lists *inventory.CertLists // DeviceLinksTable
}

// NewLinks creates the tables if needed.
func NewLinks(db nosql.DB) (*Links, error) {
	if err := db.CreateTable(PendingTable); err != nil {
		return nil, fmt.Errorf("create table %s: %w", PendingTable, err)
	}
	lists, err := inventory.NewCertLists(db, DeviceLinksTable)
	if err != nil {
		return nil, err
	}
	return &Links{db: db, lists: lists}, nil
}

// keyID is the PendingTable key of a PKIX public key.
func keyID(spki []byte) string {
	sum := sha256.Sum256(spki)
	return hex.EncodeToString(sum[:])
}

// SetPending records that challenge c (bound to a device) was accepted
// for the CSR's key; the issued certificate carries the same key.
func (l *Links) SetPending(csr *x509.CertificateRequest, c *Challenge, now time.Time) error {
	b, _ := json.Marshal(Pending{DeviceID: c.Device, ChallengeID: c.ID, Provisioner: c.Provisioner, AcceptedAt: now.UTC()})
	if err := l.db.Set(PendingTable, []byte(keyID(csr.RawSubjectPublicKeyInfo)), b); err != nil {
		return fmt.Errorf("record pending device link of challenge %s: %w", c.ID, err)
	}
	return nil
}

// PendingFor returns the pending link of a certificate's key.
func (l *Links) PendingFor(cert *x509.Certificate) (*Pending, bool, error) {
	p, b, err := storage.GetJSON[Pending](l.db, PendingTable, []byte(keyID(cert.RawSubjectPublicKeyInfo)))
	if err != nil {
		return nil, false, fmt.Errorf("pending device link: %w", err)
	}
	return p, b != nil, nil
}

// Record adds a certificate to its device's list; recording it twice is
// harmless.
func (l *Links) Record(deviceID string, dc DeviceCert) error { return l.lists.Add(deviceID, dc) }

// DeviceCerts returns the certificates linked to a device.
func (l *Links) DeviceCerts(deviceID string) (*DeviceCerts, error) {
	d, _, err := l.lists.Get(deviceID)
	return d, err
}

// MarkRevoked flags serials of a device as revoked.
func (l *Links) MarkRevoked(deviceID string, serials []string) error {
	return l.lists.MarkRevoked(deviceID, serials)
}

// PurgePending deletes pending links accepted more than pendingRetention
// before now, streamed and in batches of at most purgeBatch. A key
// accepted again meanwhile keeps its new row: the delete is conditional
// on the bytes read.
func (l *Links) PurgePending(ctx context.Context, now time.Time) (int, error) {
	cutoff := now.Add(-pendingRetention)
	total := 0
	for ctx.Err() == nil {
		type row struct{ k, v []byte }
		var batch []row
		err := storage.ForEach(l.db, PendingTable, func(k, v []byte) error {
			var p Pending
			if json.Unmarshal(v, &p) == nil && !p.AcceptedAt.Before(cutoff) {
				return nil
			}
			batch = append(batch, row{slices.Clone(k), slices.Clone(v)})
			if len(batch) >= purgeBatch {
				return errBatchFull
			}
			return nil
		})
		if err != nil && !errors.Is(err, errBatchFull) {
			return total, fmt.Errorf("scan %s: %w", PendingTable, err)
		}
		for _, r := range batch {
			if err := l.deleteIf(r.k, r.v); err != nil {
				return total, err
			}
		}
		total += len(batch)
		if len(batch) < purgeBatch {
			return total, nil
		}
	}
	return total, ctx.Err()
}

// deleteIf deletes a pending row if it still holds old; a newer value a
// concurrent writer stored is put back.
func (l *Links) deleteIf(key, old []byte) error {
	cas := &database.TxEntry{Bucket: PendingTable, Key: key, CmpValue: old, Value: old, Cmd: database.CmpAndSwap}
	del := &database.TxEntry{Bucket: PendingTable, Key: key, Cmd: database.Delete}
	if err := storage.Update(l.db, &database.Tx{Operations: []*database.TxEntry{cas, del}}); err != nil {
		return fmt.Errorf("delete pending device link: %w", err)
	}
	if cas.Swapped || len(cas.Result) == 0 {
		return nil
	}
	if _, _, err := storage.CmpAndSwap(l.db, PendingTable, key, nil, cas.Result); err != nil {
		return fmt.Errorf("restore pending device link: %w", err)
	}
	return nil
}
