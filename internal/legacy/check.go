package legacy

import (
	"crypto/x509"
	"fmt"
	"math/big"
	"sort"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/stepfort/stepfort/internal/adcs"
)

// MaxReportedDifferences bounds the differences Check returns; the rest
// are only counted.
const MaxReportedDifferences = 1000

// CheckReport is what Check found.
type CheckReport struct {
	// CRLEntries is the number of serials the CRLs list as revoked;
	// StoredRevoked the stored revocations Check compared with them.
	CRLEntries, StoredRevoked int
	// ThisUpdate is the newest CRL's thisUpdate: stored revocations after
	// it (made through stepfort since) are not compared.
	ThisUpdate time.Time
	// Differences, at most MaxReportedDifferences of them; Total counts all.
	Differences []string
	Total       int
}

func (r *CheckReport) add(format string, a ...any) {
	r.Total++
	if len(r.Differences) < MaxReportedDifferences {
		r.Differences = append(r.Differences, fmt.Sprintf(format, a...))
	}
}

// Check compares the stored import of issuer with the CRLs it came from
// (files: DER or PEM CRLs signed by issuerCert): every CRL entry must be
// revoked in the store with the same time (to the second) and reason, and
// every stored revocation of a certificate not expired at the CRL's
// thisUpdate, made before it, must be on the CRLs.
func (s *Store) Check(issuer string, issuerCert *x509.Certificate, files []string) (*CheckReport, error) {
	var crls []*adcs.CRLFile
	for _, f := range files {
		c, err := readCRLFile(f, issuerCert)
		if err != nil {
			return nil, err
		}
		crls = append(crls, c)
	}
	if len(crls) == 0 {
		return nil, fmt.Errorf("no CRL to compare with")
	}
	entries := mergeCRLs(crls)
	rep := &CheckReport{CRLEntries: len(entries)}
	for _, c := range crls {
		if c.ThisUpdate.After(rep.ThisUpdate) {
			rep.ThisUpdate = c.ThisUpdate
		}
	}
	keys := make([]string, 0, len(entries))
	for k := range entries {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		e := entries[k]
		serial, _ := new(big.Int).SetString(k, 10)
		st, err := s.Status(issuer, serial)
		if err != nil {
			return nil, err
		}
		switch {
		case st.Code != ocsp.Revoked:
			rep.add("serial %X: revoked on the CRL (%s, %s) but not revoked in the store", serial, e.at.Format(time.RFC3339), ReasonName(e.reason))
		case !st.RevokedAt.Truncate(time.Second).Equal(e.at.Truncate(time.Second)) || st.Reason != e.reason:
			rep.add("serial %X: the CRL says %s, %s; the store says %s, %s", serial,
				e.at.Format(time.RFC3339), ReasonName(e.reason), st.RevokedAt.Format(time.RFC3339), ReasonName(st.Reason))
		}
	}
	err := s.ForEachRevoked(issuer, func(serialDec []byte, at time.Time, reason int, notAfter time.Time) error {
		if !at.Before(rep.ThisUpdate) || !notAfter.IsZero() && notAfter.Before(rep.ThisUpdate) {
			return nil
		}
		rep.StoredRevoked++
		if _, ok := entries[string(serialDec)]; !ok {
			serial, _ := new(big.Int).SetString(string(serialDec), 10)
			rep.add("serial %X: revoked in the store (%s, %s) but not on the CRL", serial, at.Format(time.RFC3339), ReasonName(reason))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return rep, nil
}

// mergeCRLs applies CRLs in number order: a later entry overrides an
// earlier one, and a delta's removeFromCRL drops the serial.
func mergeCRLs(crls []*adcs.CRLFile) map[string]*crlEntry {
	sort.SliceStable(crls, func(i, j int) bool { return number(crls[i]).Cmp(number(crls[j])) < 0 })
	out := map[string]*crlEntry{}
	for _, c := range crls {
		for _, e := range c.Entries {
			k := e.SerialNumber.String()
			if c.Delta && e.ReasonCode == ReasonRemoveFromCRL {
				delete(out, k)
				continue
			}
			out[k] = &crlEntry{at: e.RevocationTime.UTC(), reason: e.ReasonCode}
		}
	}
	return out
}
