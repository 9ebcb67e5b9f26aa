package deviceattest

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"
	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// Tables; the key layout is documented in docs/deviceattest.md.
var (
	// CertsTable maps a certificate serial (decimal) to its JSON Link.
	CertsTable = []byte("stepfort_deviceattest_certs")
	// DevicesTable maps an inventory device ID to its JSON DeviceCerts:
	// every certificate linked to the device, until Purge removes it
	// (linkRetention after it expired).
	DevicesTable = []byte("stepfort_deviceattest_devices")
	// PendingTable maps hex SHA-256 of a subject public key (PKIX DER) to a
	// JSON Pending: an account certificate authorized for that key by an
	// X5C device certificate and not yet seen issued.
	PendingTable = []byte("stepfort_deviceattest_pending")
)

// Certificate kinds.
const (
	KindDevice  = "device"  // issued through a gated ACME provisioner
	KindAccount = "account" // issued through an X5C account provisioner
)

// Link ties one certificate to one inventory device.
type Link struct {
	Serial       string    `json:"serial"`
	DeviceID     string    `json:"deviceId"`
	Kind         string    `json:"kind"`
	ParentSerial string    `json:"parentSerial,omitempty"` // account: the device certificate; renewal: the renewed certificate
	Provisioner  string    `json:"provisioner,omitempty"`
	NotAfter     time.Time `json:"notAfter"`
}

// DeviceCerts is the per-device list the revocation walks. Revoked marks
// entries already revoked so sweeps do not retry them.
type DeviceCerts = inventory.CertList

// DeviceCert is one entry of DeviceCerts.
type DeviceCert = inventory.DeviceCert

// Pending is an X5C authorization waiting for its issued event. Expires
// is when the authorization was meant to be used by; the row is kept
// pendingRetention longer, for an issued event delivered late, then
// purged.
type Pending struct {
	DeviceID     string    `json:"deviceId"`
	DeviceSerial string    `json:"deviceSerial"`
	Expires      time.Time `json:"expires"`
}

// Links stores certificate-to-device links in the shared database. Every
// write is a CmpAndSwap or an idempotent Set, so it is correct with several
// replicas and with at-least-once events.
type Links struct {
	db    nosql.DB
	lists *inventory.CertLists // DevicesTable
}

// NewLinks creates the tables if needed.
func NewLinks(db nosql.DB) (*Links, error) {
	if db == nil {
		return nil, errors.New("deviceattest: a database is required")
	}
	for _, t := range [][]byte{CertsTable, PendingTable} {
		if err := db.CreateTable(t); err != nil {
			return nil, fmt.Errorf("create table %s: %w", t, err)
		}
	}
	lists, err := inventory.NewCertLists(db, DevicesTable)
	if err != nil {
		return nil, err
	}
	return &Links{db: db, lists: lists}, nil
}

// Get returns the link of a serial; found is false if there is none.
func (l *Links) Get(serial string) (*Link, bool, error) {
	b, err := l.db.Get(CertsTable, []byte(serial))
	if database.IsErrNotFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read link %s: %w", serial, err)
	}
	var k Link
	if err := json.Unmarshal(b, &k); err != nil {
		return nil, false, fmt.Errorf("decode link %s: %w", serial, err)
	}
	return &k, true, nil
}

// Record stores a link and adds it to its device's list. Recording the same
// link twice is harmless. Expired entries are removed by Purge, with their
// links, not here.
func (l *Links) Record(k Link, _ time.Time) error {
	b, _ := json.Marshal(k)
	if err := l.db.Set(CertsTable, []byte(k.Serial), b); err != nil {
		return fmt.Errorf("write link %s: %w", k.Serial, err)
	}
	return l.lists.Add(k.DeviceID, DeviceCert{Serial: k.Serial, Kind: k.Kind, NotAfter: k.NotAfter})
}

// DeviceCerts returns the certificates linked to a device.
func (l *Links) DeviceCerts(deviceID string) (*DeviceCerts, error) {
	dc, _, err := l.lists.Get(deviceID)
	return dc, err
}

// MarkRevoked flags serials as revoked in a device's list.
func (l *Links) MarkRevoked(deviceID string, serials []string) error {
	return l.lists.MarkRevoked(deviceID, serials)
}

// Devices lists the device IDs that have linked certificates.
func (l *Links) Devices() ([]string, error) {
	entries, err := l.db.List(DevicesTable)
	if database.IsErrNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", DevicesTable, err)
	}
	ids := make([]string, 0, len(entries))
	for _, e := range entries {
		ids = append(ids, string(e.Key))
	}
	return ids, nil
}

// KeyID is the PendingTable key of a public key.
func KeyID(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

func keyIDOfPublic(pub any) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// SetPending records that the key keyID was authorized for an account
// certificate by the device certificate deviceSerial.
func (l *Links) SetPending(keyID string, p Pending) error {
	b, _ := json.Marshal(p)
	if err := l.db.Set(PendingTable, []byte(keyID), b); err != nil {
		return fmt.Errorf("write pending account link: %w", err)
	}
	return nil
}

// Pending returns the pending authorization for a key.
func (l *Links) Pending(keyID string) (*Pending, bool, error) {
	p, b, err := storage.GetJSON[Pending](l.db, PendingTable, []byte(keyID))
	if err != nil {
		return nil, false, fmt.Errorf("pending account link: %w", err)
	}
	return p, b != nil, nil
}
