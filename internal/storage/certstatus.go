// Package certstatus reads what upstream step-ca stored about a certificate:
// whether this CA issued it and whether it is revoked. It names upstream's
// table layout in one place.
package storage

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"
)

// Upstream's tables (unexported in smallstep/certificates/db v0.30.2). Keys
// are the certificate serial number in decimal.
var (
	CertsTable        = []byte("x509_certs")         // value: certificate DER
	CertsDataTable    = []byte("x509_certs_data")    // value: JSON db.CertificateData
	RevokedCertsTable = []byte("revoked_x509_certs") // value: JSON db.RevokedCertificateInfo
)

// Issued reports whether this CA stored a certificate with the serial.
func Issued(store nosql.DB, serial string) (bool, error) {
	_, err := store.Get(CertsTable, []byte(serial))
	switch {
	case err == nil:
		return true, nil
	case database.IsErrNotFound(err):
		return false, nil
	default:
		return false, fmt.Errorf("look up certificate %s: %w", serial, err)
	}
}

// Revocation returns the revocation of serial, or nil if it is not revoked.
func Revocation(store nosql.DB, serial string) (*db.RevokedCertificateInfo, error) {
	b, err := store.Get(RevokedCertsTable, []byte(serial))
	if err != nil {
		if database.IsErrNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("look up revocation of %s: %w", serial, err)
	}
	var rci db.RevokedCertificateInfo
	if err := json.Unmarshal(b, &rci); err != nil {
		return nil, fmt.Errorf("decode revocation of %s: %w", serial, err)
	}
	if rci.Serial == "" {
		return nil, errors.New("revocation record without serial")
	}
	return &rci, nil
}
