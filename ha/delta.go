package ha

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"strings"
	"time"
)

// Delta CRLs (RFC 5280 5.2.4): a base CRL names where its deltas are
// (Freshest CRL, 5.2.6), and a delta names the lowest base it completes
// (the critical Delta CRL Indicator). Base and delta share the IDP (both
// absent here by default), the issuer and its key, and one numbering
// sequence.
var (
	oidIDP               = asn1.ObjectIdentifier{2, 5, 29, 28}
	oidDeltaCRLIndicator = asn1.ObjectIdentifier{2, 5, 29, 27}
	oidFreshestCRL       = asn1.ObjectIdentifier{2, 5, 29, 46}
)

// Default publication periods, as ADCS: a base every week, a delta every
// day.
const (
	DefaultBasePeriod  = 7 * 24 * time.Hour
	DefaultDeltaPeriod = 24 * time.Hour
)

// overlap is how long a CRL stays valid past its period, so clients never
// hold an expired one while the next is being fetched: 10% of the period,
// at most 12 hours, as ADCS does when no overlap is configured.
func overlap(period time.Duration) time.Duration { return min(period/10, 12*time.Hour) }

// DeltaScope is what a series publishes as deltas: where, and how often.
type DeltaScope struct {
	URL         string
	BasePeriod  time.Duration
	DeltaPeriod time.Duration
}

// DeltaURL is the default delta CRL URL for a CRL at crlURL: "+" before a
// trailing ".crl" as ADCS names its delta files ("CA.crl" → "CA+.crl"),
// otherwise "/delta" appended.
func DeltaURL(crlURL string) string {
	end := len(crlURL)
	if i := strings.IndexAny(crlURL, "?#"); i >= 0 {
		end = i
	}
	head, tail := crlURL[:end], crlURL[end:]
	if strings.HasSuffix(strings.ToLower(head), ".crl") {
		return head[:len(head)-4] + "+" + head[len(head)-4:] + tail
	}
	return strings.TrimSuffix(head, "/") + "/delta" + tail
}

// distributionPoints is a CRLDistributionPoints value naming one URI, the
// syntax of the Freshest CRL extension and of certificates' CDP.
func distributionPoints(uri string) ([]byte, error) {
	type distributionPointName struct {
		FullName []asn1.RawValue `asn1:"optional,tag:0"`
	}
	type distributionPoint struct {
		DistributionPoint distributionPointName `asn1:"optional,tag:0"`
	}
	return asn1.Marshal([]distributionPoint{{DistributionPoint: distributionPointName{
		FullName: []asn1.RawValue{{Tag: 6, Class: asn1.ClassContextSpecific, Bytes: []byte(uri)}},
	}}})
}

// freshestCRL is the non-critical Freshest CRL extension naming uri.
func freshestCRL(uri string) (pkix.Extension, error) {
	v, err := distributionPoints(uri)
	if err != nil {
		return pkix.Extension{}, err
	}
	return pkix.Extension{Id: oidFreshestCRL, Value: v}, nil
}

// deltaIndicator is the critical Delta CRL Indicator naming base.
func deltaIndicator(base int64) (pkix.Extension, error) {
	v, err := asn1.Marshal(big.NewInt(base))
	if err != nil {
		return pkix.Extension{}, err
	}
	return pkix.Extension{Id: oidDeltaCRLIndicator, Critical: true, Value: v}, nil
}

// findExtension returns the extension id of exts, nil if absent.
func findExtension(exts []pkix.Extension, id asn1.ObjectIdentifier) *pkix.Extension {
	for i := range exts {
		if exts[i].Id.Equal(id) {
			return &exts[i]
		}
	}
	return nil
}

// sameExtension reports whether crl carries want (nil: carries none of
// that id), critical flag and bytes equal.
func sameExtension(crl *x509.RevocationList, id asn1.ObjectIdentifier, want *pkix.Extension) bool {
	got := findExtension(crl.Extensions, id)
	if got == nil || want == nil {
		return got == nil && want == nil
	}
	return got.Critical == want.Critical && bytes.Equal(got.Value, want.Value)
}
