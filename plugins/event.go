package plugins

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"time"
)

// EventKind says what happened to a certificate.
type EventKind string

// Event kinds.
const (
	EventIssued  EventKind = "issued"  // /sign, ACME finalize, SCEP
	EventRenewed EventKind = "renewed" // /renew and /rekey (ParentSerial is set)
	EventRevoked EventKind = "revoked"
)

// Revocation carries the reason and time of a revocation event.
type Revocation struct {
	ReasonCode int       `json:"reasonCode"`
	Reason     string    `json:"reason,omitempty"`
	RevokedAt  time.Time `json:"revokedAt"`
	MTLS       bool      `json:"mtls,omitempty"`
	ACME       bool      `json:"acme,omitempty"`
	// Actor names who revoked administratively (Host.Revoke): for example
	// "plugin:deviceAttest". Empty for token, mTLS and ACME revocations.
	Actor string `json:"actor,omitempty"`
}

// CertificateEvent is one durable record of an issuance, renewal or
// revocation. It is written in the same database transaction as the
// certificate (or revocation) it describes.
type CertificateEvent struct {
	ID           string          `json:"id"`
	Kind         EventKind       `json:"kind"`
	Serial       string          `json:"serial"` // decimal, as upstream keys certificates
	OccurredAt   time.Time       `json:"occurredAt"`
	Provisioner  *ProvisionerRef `json:"provisioner,omitempty"`
	ParentSerial string          `json:"parentSerial,omitempty"`
	// PermanentIdentifier is the attested device identity (ACME
	// device-attest-01), empty for other flows.
	PermanentIdentifier string      `json:"permanentIdentifier,omitempty"`
	Rekey               bool        `json:"rekey,omitempty"`
	Revocation          *Revocation `json:"revocation,omitempty"`
	// CertificateDER is the leaf; empty for revocations of certificates the
	// database does not hold.
	CertificateDER []byte `json:"certificate,omitempty"`
}

// Certificate parses CertificateDER.
func (e *CertificateEvent) Certificate() (*x509.Certificate, error) {
	if len(e.CertificateDER) == 0 {
		return nil, fmt.Errorf("event %s has no certificate", e.ID)
	}
	return x509.ParseCertificate(e.CertificateDER)
}

// DeviceEventKind says what happened to a device.
type DeviceEventKind string

// Device event kinds.
const (
	DeviceDisabled DeviceEventKind = "device.disabled"
	DeviceRemoved  DeviceEventKind = "device.removed"
)

// DeviceEvent is one durable record of a device that stopped being active,
// written in the same transaction as the change (Host.Events).
type DeviceEvent struct {
	ID         string          `json:"id"`
	Kind       DeviceEventKind `json:"kind"`
	DeviceID   string          `json:"deviceId"`
	OccurredAt time.Time       `json:"occurredAt"`
	// Device is the inventory record as stored after the change (for a
	// removal, as it was before).
	Device json.RawMessage `json:"device,omitempty"`
}
