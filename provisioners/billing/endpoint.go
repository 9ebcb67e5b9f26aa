package billing

import (
	"crypto/x509"
	"time"

	"github.com/stepfort/stepfort/internal/endpoint"
	"github.com/stepfort/stepfort/plugins"
)

// Grouping says how an Endpoint gathers its certificates.
const (
	// GroupingLineage: a /sign certificate starts the Endpoint and /renew or
	// /rekey certificates join the Endpoint of their parent.
	GroupingLineage = "lineage"
	// GroupingSubject: certificates of one provisioner with the same subject
	// key (CN + SANs, order and case ignored) share the Endpoint.
	GroupingSubject = "subject"
)

// Endpoint states and end reasons.
const (
	StateActive = "active"
	StateEnded  = "ended"

	EndExpired = "expired"
	EndRevoked = "revoked"
)

// How a certificate was obtained.
const (
	ObtainedSign  = "sign"
	ObtainedRenew = "renew"
	ObtainedRekey = "rekey"
)

// Interval is the billable life of one certificate of an Endpoint:
// [Start, End) in Unix seconds, where End is notAfter, or the revocation time
// if that is earlier. Seconds keep the record small; certificates carry
// second precision anyway.
type Interval struct {
	Serial  string `json:"s"`
	Seq     int    `json:"q"`
	Start   int64  `json:"b"`
	End     int64  `json:"e"`
	Revoked bool   `json:"r,omitempty"`
}

// MonthUsage is an Endpoint's usage in one UTC calendar month.
type MonthUsage struct {
	// Peak is the largest number of certificates active at one instant of
	// the month (0 = not active in the month).
	Peak int `json:"peak"`
	// Certificates is the number of certificates active at some instant of
	// the month (certificate mode).
	Certificates int `json:"certificates"`
}

// Alert records the expiry alert raised for an Endpoint. An Endpoint is
// alerted at most once per certificate: Serial is the certificate whose
// expiry was announced.
type Alert struct {
	ID          string    `json:"id"`
	Serial      string    `json:"serial"`
	ExpiresAt   time.Time `json:"expiresAt"`
	RaisedAt    time.Time `json:"raisedAt"`
	Delivered   bool      `json:"delivered"`
	Attempts    int       `json:"attempts,omitempty"`
	NextAttempt time.Time `json:"nextAttempt,omitempty"`
	LastError   string    `json:"lastError,omitempty"`
}

// Endpoint is one entity (person, device, workload) that is issued
// certificates. The stored record holds counters and a compact usage summary;
// the full lineage lives in the lineage and certificate tables (store.go).
//
// Invariant: Intervals holds every certificate whose interval ends after
// Compacted; usage of months before Compacted is frozen in Months.
type Endpoint struct {
	ID          string                 `json:"id"`
	Provisioner plugins.ProvisionerRef `json:"provisioner"`
	Grouping    string                 `json:"grouping"`
	SubjectKey  string                 `json:"subjectKey"`
	CreatedAt   time.Time              `json:"createdAt"`
	FirstSerial string                 `json:"firstSerial"`
	// LastSerial is the certificate with the latest end: the one whose
	// expiry ends the Endpoint unless it is renewed.
	LastSerial   string `json:"lastSerial"`
	Certificates int    `json:"certificates"`
	// NextSeq is the next lineage position. Positions are never reused; a
	// position whose certificate was withdrawn stays empty.
	NextSeq     int `json:"nextSeq"`
	Renewals    int `json:"renewals"`
	Rekeys      int `json:"rekeys"`
	Revocations int `json:"revocations"`
	// EndsAt is the end of the latest certificate interval: billing for the
	// Endpoint stops there unless another certificate joins.
	EndsAt    time.Time             `json:"endsAt"`
	EndReason string                `json:"endReason"`
	Intervals []Interval            `json:"intervals,omitempty"`
	Months    map[string]MonthUsage `json:"months,omitempty"`
	Compacted time.Time             `json:"compacted,omitempty"`
	Alert     *Alert                `json:"alert,omitempty"`
	UpdatedAt time.Time             `json:"updatedAt"`
}

// State is the Endpoint's state at now: active until its last certificate
// expires or is revoked. It is computed, never stored, so it is always
// current without a job flipping it.
func (e *Endpoint) State(now time.Time) string {
	if now.Before(e.EndsAt) {
		return StateActive
	}
	return StateEnded
}

// ActiveCertificates counts the certificates active at now.
func (e *Endpoint) ActiveCertificates(now time.Time) int {
	t := now.Unix()
	n := 0
	for _, iv := range e.Intervals {
		if iv.Start <= t && t < iv.End {
			n++
		}
	}
	return n
}

func (e *Endpoint) interval(serial string) (int, bool) {
	for i, iv := range e.Intervals {
		if iv.Serial == serial {
			return i, true
		}
	}
	return -1, false
}

// refresh recomputes EndsAt, EndReason and LastSerial from the intervals.
// Compaction never drops the latest interval's information: an Endpoint
// whose intervals were all compacted keeps its previous values.
func (e *Endpoint) refresh() {
	if len(e.Intervals) == 0 {
		return
	}
	best := e.Intervals[0]
	for _, iv := range e.Intervals[1:] {
		if iv.End > best.End || (iv.End == best.End && iv.Start > best.Start) {
			best = iv
		}
	}
	e.EndsAt = time.Unix(best.End, 0).UTC()
	e.LastSerial = best.Serial
	e.EndReason = EndExpired
	if best.Revoked {
		e.EndReason = EndRevoked
	}
}

// CertRecord is one certificate in an Endpoint's lineage.
type CertRecord struct {
	Serial       string `json:"serial"`
	EndpointID   string `json:"endpointId"`
	Seq          int    `json:"seq"`
	Recorded     bool   `json:"recorded"`
	ObtainedBy   string `json:"obtainedBy"`
	ParentSerial string `json:"parentSerial,omitempty"`
	// Inferred marks a parent link guessed by rebuild (upstream stores none).
	Inferred         bool      `json:"inferred,omitempty"`
	Subject          string    `json:"subject"`
	NotBefore        time.Time `json:"notBefore"`
	NotAfter         time.Time `json:"notAfter"`
	Revoked          bool      `json:"revoked,omitempty"`
	RevokedAt        time.Time `json:"revokedAt,omitempty"`
	RevocationReason string    `json:"revocationReason,omitempty"`
}

// Status is the certificate's status at now: active, expired or revoked.
func (c *CertRecord) Status(now time.Time) string {
	switch {
	case c.Revoked:
		return "revoked"
	case !now.Before(c.NotAfter):
		return "expired"
	default:
		return "active"
	}
}

// The Endpoint rule itself (subject key, Endpoint IDs) is internal/endpoint,
// which the certificate index runs too, so both give a certificate the same
// Endpoint. The names below are what billing's store, rebuild and report
// call; they hold no logic.

// SubjectKey normalises a certificate's subject for grouping
// (endpoint.SubjectKey): CN and SANs, order and case ignored.
func SubjectKey(c *x509.Certificate) string { return endpoint.SubjectKey(c) }

// lineageEndpointID is the Endpoint started by a /sign certificate.
func lineageEndpointID(serial string) string { return endpoint.LineageID(serial) }

// subjectEndpointID is the Endpoint of a subject under one provisioner.
func subjectEndpointID(prov plugins.ProvisionerRef, subjectKey string) string {
	return endpoint.SubjectID(prov, subjectKey)
}

// provisionerKey identifies a provisioner: its ID, else its type and name.
func provisionerKey(p plugins.ProvisionerRef) string { return endpoint.ProvisionerKey(p) }
