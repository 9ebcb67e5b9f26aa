// Package inventory is stepfort's device inventory: the registry of devices
// (by permanent identifier, for TPMs the EK URN), their collections, and the
// admin API and bulk import that maintain it. The Attestation CA and the
// device-attest-01 gate consult it; a device that is not here, or is
// disabled, gets nothing.
//
// Storage layout (nosql tables, bbolt or PostgreSQL) is documented in
// docs/inventory.md.
package inventory

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/smallstep/go-attestation/attest"
)

// Status is a device's administrative state.
type Status string

// Device states. Only active devices may attest or get certificates.
const (
	StatusActive   Status = "active"
	StatusDisabled Status = "disabled"
)

// Valid reports whether s is a known status.
func (s Status) Valid() bool { return s == StatusActive || s == StatusDisabled }

// Device is one registered device. Identifiers holds its permanent
// identifiers (each claimed by exactly one device); for TPMs this includes the
// EK URN computed by stepfort from EKPublic.
type Device struct {
	ID          string            `json:"id"`
	Identifiers []string          `json:"identifiers"`
	EKPublic    []byte            `json:"ekPublic,omitempty"`      // PKIX DER
	EKCert      []byte            `json:"ekCertificate,omitempty"` // DER
	Name        string            `json:"name,omitempty"`
	Type        string            `json:"type,omitempty"` // e.g. laptop, server, phone
	OS          string            `json:"os,omitempty"`
	Serial      string            `json:"serial,omitempty"`
	Collection  string            `json:"collection,omitempty"`
	Owner       string            `json:"owner,omitempty"`
	Source      string            `json:"source,omitempty"` // manual, import, import:jamf, ...
	Metadata    map[string]string `json:"metadata,omitempty"`
	Status      Status            `json:"status"`
	CreatedAt   time.Time         `json:"createdAt"`
	UpdatedAt   time.Time         `json:"updatedAt"`
	LastSeenAt  *time.Time        `json:"lastSeenAt,omitempty"`
	// LastAttestation is set by the Attestation CA when it issues an AK
	// certificate for this device.
	LastAttestation *Attestation `json:"lastAttestation,omitempty"`
}

// Attestation records one successful AK enrollment.
type Attestation struct {
	At            time.Time `json:"at"`
	EKURN         string    `json:"ekURN"`
	AKFingerprint string    `json:"akFingerprint"` // hex SHA-256 of the AK public key (PKIX DER)
	AKCertSerial  string    `json:"akCertificateSerial"`
}

// Active reports whether the device may attest and get certificates.
func (d *Device) Active() bool { return d.Status == StatusActive }

// Collection is a named group of devices of one type that share
// configuration.
type Collection struct {
	Name        string            `json:"name"`
	Description string            `json:"description,omitempty"`
	DeviceType  string            `json:"deviceType,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	CreatedAt   time.Time         `json:"createdAt"`
	UpdatedAt   time.Time         `json:"updatedAt"`
}

// Limits on stored values; they bound what an import can make us store.
const (
	maxIdentifiers = 8
	// maxIdentifierLen is the longest key every nosql backend accepts: an
	// identifier is the key of its claim, and PostgreSQL's tables have
	// CHECK (octet_length(nkey) <= 255) (MySQL: VARBINARY(255)). A longer
	// one would pass on bbolt and fail on PostgreSQL at write time.
	maxIdentifierLen = 255
	maxFieldLen      = 256
	maxMetadataKeys  = 32
	maxMetadataLen   = 1024
	maxEKBytes       = 4096
)

// EKURN returns the permanent identifier of a TPM with endorsement key pub:
// urn:ek:sha256:<base64 std of SHA-256 of the PKIX DER of pub>, the value
// go.step.sm/crypto/tpm (EK).FingerprintURI computes on the client.
func EKURN(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("marshal EK public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return "urn:ek:sha256:" + base64.StdEncoding.EncodeToString(sum[:]), nil
}

// IsEKURN reports whether s has the shape of an EK URN.
func IsEKURN(s string) bool {
	b64, ok := strings.CutPrefix(s, "urn:ek:sha256:")
	if !ok {
		return false
	}
	b, err := base64.StdEncoding.DecodeString(b64)
	return err == nil && len(b) == sha256.Size
}

// decodePEMOrDER returns the DER of data, which is PEM (first block of the
// given types) or raw DER, or base64 of DER (how CSV and JSON carry it).
func decodePEMOrDER(data []byte, types ...string) ([]byte, error) {
	if len(data) == 0 {
		return nil, errors.New("empty")
	}
	if len(data) > 4*maxEKBytes {
		return nil, fmt.Errorf("too large (%d bytes)", len(data))
	}
	trimmed := strings.TrimSpace(string(data))
	if strings.HasPrefix(trimmed, "-----BEGIN") {
		rest := []byte(trimmed)
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				return nil, fmt.Errorf("no PEM block of type %s", strings.Join(types, " or "))
			}
			for _, t := range types {
				if block.Type == t {
					return block.Bytes, nil
				}
			}
		}
	}
	if len(data) > 0 && data[0] == 0x30 { // DER SEQUENCE
		return data, nil
	}
	if utf8.Valid(data) {
		if b, err := base64.StdEncoding.DecodeString(trimmed); err == nil {
			return b, nil
		}
	}
	return nil, errors.New("neither PEM, DER nor base64 DER")
}

// ParseEKPublic parses an EK public key given as PEM, DER or base64 DER
// (PKIX SubjectPublicKeyInfo).
func ParseEKPublic(data []byte) (crypto.PublicKey, []byte, error) {
	der, err := decodePEMOrDER(data, "PUBLIC KEY")
	if err != nil {
		return nil, nil, fmt.Errorf("EK public key: %w", err)
	}
	if len(der) > maxEKBytes {
		return nil, nil, fmt.Errorf("EK public key: too large (%d bytes)", len(der))
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, nil, fmt.Errorf("EK public key: %w", err)
	}
	canon, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, nil, fmt.Errorf("EK public key: %w", err)
	}
	return pub, canon, nil
}

// ParseEKCertificate parses an EK certificate given as PEM, DER or base64
// DER. TPM NV storage pads certificates, so trailing bytes are tolerated the
// way go-attestation's ParseEKCertificate tolerates them.
func ParseEKCertificate(data []byte) (*x509.Certificate, error) {
	der, err := decodePEMOrDER(data, "CERTIFICATE")
	if err != nil {
		return nil, fmt.Errorf("EK certificate: %w", err)
	}
	if len(der) > maxEKBytes {
		return nil, fmt.Errorf("EK certificate: too large (%d bytes)", len(der))
	}
	c, err := attest.ParseEKCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("EK certificate: %w", err)
	}
	return c, nil
}

// validate checks the invariants of a device before it is stored.
func (d *Device) validate() error {
	if len(d.Identifiers) == 0 {
		return errors.New("at least one permanent identifier (or an EK) is required")
	}
	if len(d.Identifiers) > maxIdentifiers {
		return fmt.Errorf("at most %d identifiers", maxIdentifiers)
	}
	seen := map[string]bool{}
	for i, id := range d.Identifiers {
		if err := validIdentifier(id); err != nil {
			return fmt.Errorf("identifiers[%d] %q: %w", i, truncate(id), err)
		}
		if seen[id] {
			return fmt.Errorf("identifiers[%d]: duplicate identifier %q", i, id)
		}
		seen[id] = true
	}
	for name, v := range map[string]string{"name": d.Name, "type": d.Type, "os": d.OS, "serial": d.Serial, "collection": d.Collection, "owner": d.Owner, "source": d.Source} {
		if len(v) > maxFieldLen || !utf8.ValidString(v) {
			return fmt.Errorf("%s: too long or not UTF-8", name)
		}
	}
	if len(d.Metadata) > maxMetadataKeys {
		return fmt.Errorf("metadata: at most %d keys", maxMetadataKeys)
	}
	for k, v := range d.Metadata {
		if k == "" || len(k) > maxFieldLen || len(v) > maxMetadataLen {
			return fmt.Errorf("metadata: key %q or its value too long", truncate(k))
		}
	}
	if !d.Status.Valid() {
		return fmt.Errorf("status: must be %q or %q, got %q", StatusActive, StatusDisabled, d.Status)
	}
	if len(d.EKPublic) > maxEKBytes || len(d.EKCert) > maxEKBytes {
		return errors.New("EK too large")
	}
	return nil
}

// validIdentifier checks one permanent identifier; it is used as a
// database key, so its length is bounded by what every backend accepts.
func validIdentifier(id string) error {
	switch {
	case id == "":
		return errors.New("empty")
	case len(id) > maxIdentifierLen:
		return fmt.Errorf("%d bytes, at most %d (the longest database key every backend accepts)", len(id), maxIdentifierLen)
	case !utf8.ValidString(id):
		return errors.New("not UTF-8")
	case strings.ContainsAny(id, "\x00\n\r"):
		return errors.New("contains NUL, CR or LF")
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// validCollectionName allows names usable in URLs and CSV cells.
func validCollectionName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}
