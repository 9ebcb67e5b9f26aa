package inventory

import (
	"fmt"
	"slices"
	"time"

	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/internal/storage"
)

// DeviceCert is a certificate linked to a device: it is revoked when the
// device is disabled or removed.
type DeviceCert struct {
	Serial   string    `json:"serial"`
	Kind     string    `json:"kind,omitempty"` // what the plugin that linked it calls it
	Ref      string    `json:"ref,omitempty"`  // what linked it, e.g. a SCEP challenge id
	NotAfter time.Time `json:"notAfter"`
	Revoked  bool      `json:"revoked,omitempty"`
}

// CertList is the certificates a plugin linked to one device.
type CertList struct {
	Certs []DeviceCert `json:"certs"`
}

// CertLists keeps one CertList per device in a plugin's own table, keyed
// by device id. Every write is a compare-and-swap (storage.ModifyJSON), so
// replicas and redelivered events never lose an entry.
type CertLists struct {
	db    nosql.DB
	table []byte
}

// NewCertLists creates table if needed.
func NewCertLists(db nosql.DB, table []byte) (*CertLists, error) {
	if err := db.CreateTable(table); err != nil {
		return nil, fmt.Errorf("create table %s: %w", table, err)
	}
	return &CertLists{db: db, table: table}, nil
}

// Get returns a device's list (empty when it has none) and its stored
// bytes (nil when absent).
func (l *CertLists) Get(deviceID string) (*CertList, []byte, error) {
	c, b, err := storage.GetJSON[CertList](l.db, l.table, []byte(deviceID))
	if err != nil {
		return nil, nil, fmt.Errorf("certificates of device %s: %w", deviceID, err)
	}
	return c, b, nil
}

// Modify applies fn to a device's list with compare-and-swap, retried on
// conflict; the first entry creates the row, atomically on PostgreSQL too.
// fn returns false to leave the list as it is.
func (l *CertLists) Modify(deviceID string, fn func(*CertList) bool) error {
	if _, err := storage.ModifyJSON(l.db, l.table, []byte(deviceID), fn); err != nil {
		return fmt.Errorf("certificates of device %s: %w", deviceID, err)
	}
	return nil
}

// Add links a certificate to a device; adding it twice is harmless.
func (l *CertLists) Add(deviceID string, c DeviceCert) error {
	return l.Modify(deviceID, func(list *CertList) bool {
		if slices.ContainsFunc(list.Certs, func(e DeviceCert) bool { return e.Serial == c.Serial }) {
			return false
		}
		list.Certs = append(list.Certs, c)
		return true
	})
}

// MarkRevoked flags serials of a device as revoked.
func (l *CertLists) MarkRevoked(deviceID string, serials []string) error {
	if len(serials) == 0 {
		return nil
	}
	return l.Modify(deviceID, func(list *CertList) bool {
		changed := false
		for i := range list.Certs {
			if !list.Certs[i].Revoked && slices.Contains(serials, list.Certs[i].Serial) {
				list.Certs[i].Revoked, changed = true, true
			}
		}
		return changed
	})
}
