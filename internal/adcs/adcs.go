package adcs

import (
	"fmt"
	"math/big"
	"time"
)

// Options say how an export was made.
type Options struct {
	Columns    []string       // the -out column names in order; nil: DefaultColumns
	DateFormat string         // "US", "UK", "ISO", "DE" or a Go layout; "" tries US then ISO
	Location   *time.Location // the CA's time zone (nil: UTC, i.e. exported with -gmt)
}

// DefaultColumns is the -out list the runbook tells admins to use.
var DefaultColumns = []string{"Request.RequestID", "SerialNumber", "Request.Disposition",
	"NotBefore", "NotAfter", "Request.RevokedEffectiveWhen", "Request.RevokedReason",
	"CommonName", "CertificateTemplate", "RawCertificate"}

// Row is one row of the export.
type Row struct {
	Line                int // first line of the row in the file
	RequestID           int64
	Serial              *big.Int
	Disposition         int // 20 issued, 21 revoked, others reported and skipped by the importer
	NotBefore, NotAfter time.Time
	RevokedAt           time.Time // zero unless revoked
	Reason              int       // CRLReason; -1 when empty
	CommonName          string
	Template            string // the template's display name, or its OID when it has none
	TemplateOID         string // added: the template OID of a version 2+ template, or ""
	Certificate         []byte // DER when the export carried RawCertificate (text mode)
}

var timeZero time.Time

// RowError is one bad value in one row; the reader continues with the next row.
type RowError struct {
	Line  int
	Field string
	Err   error
}

func (e *RowError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("line %d: %v", e.Line, e.Err)
	}
	return fmt.Sprintf("line %d: column %s: %v", e.Line, e.Field, e.Err)
}

func (e *RowError) Unwrap() error { return e.Err }
