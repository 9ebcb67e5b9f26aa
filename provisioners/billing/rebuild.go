package billing

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/plugins"
)

// Upstream step-ca's tables (db/db.go), keyed by the decimal serial.
var (
	upstreamCerts    = []byte("x509_certs")
	upstreamCertData = []byte("x509_certs_data")
	upstreamRevoked  = []byte("revoked_x509_certs")
)

// upstreamCertificate reads one certificate and the provisioner that signed
// it from upstream's tables.
func upstreamCertificate(d nosql.DB, serial string) (*x509.Certificate, plugins.ProvisionerRef, error) {
	var ref plugins.ProvisionerRef
	der, err := d.Get(upstreamCerts, []byte(serial))
	if database.IsErrNotFound(err) {
		return nil, ref, fmt.Errorf("certificate %s: %w", serial, errUnknownCertificate)
	}
	if err != nil {
		return nil, ref, fmt.Errorf("read certificate %s: %w", serial, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, ref, fmt.Errorf("parse certificate %s: %w", serial, err)
	}
	ref, err = upstreamProvisioner(d, serial)
	return cert, ref, err
}

func upstreamProvisioner(d nosql.DB, serial string) (plugins.ProvisionerRef, error) {
	var ref plugins.ProvisionerRef
	b, err := d.Get(upstreamCertData, []byte(serial))
	if database.IsErrNotFound(err) {
		return ref, nil
	}
	if err != nil {
		return ref, fmt.Errorf("read data of certificate %s: %w", serial, err)
	}
	var cd db.CertificateData
	if err := json.Unmarshal(b, &cd); err != nil {
		return ref, fmt.Errorf("decode data of certificate %s: %w", serial, err)
	}
	if cd.Provisioner != nil {
		ref = plugins.ProvisionerRef{ID: cd.Provisioner.ID, Name: cd.Provisioner.Name, Type: cd.Provisioner.Type}
	}
	return ref, nil
}

// RebuildResult summarises a rebuild.
type RebuildResult struct {
	Scanned       int      `json:"scanned"`
	Recorded      int      `json:"recorded"`
	AlreadyKnown  int      `json:"alreadyKnown"`
	InferredLinks int      `json:"inferredRenewals"`
	Revoked       int      `json:"revocationsApplied"`
	Errors        []string `json:"errors,omitempty"`
}

// Rebuild records every certificate in upstream's tables that the billing
// tables do not know yet, so a database moved from step-ca gets its history.
// Certificates already recorded are left alone, so it is safe to run on a
// live CA and to run twice.
//
// Upstream stores no link from a renewed certificate to its parent, so for
// renewal-enabled provisioners the lineage is inferred (best effort): in
// notBefore order, a certificate whose subject key and provisioner equal
// those of an earlier certificate that was still valid when it was issued
// is taken as that certificate's renewal. Two distinct devices with
// identical names on such a provisioner become one Endpoint.
func (s *Store) Rebuild(now time.Time) (*RebuildResult, error) {
	entries, err := s.db.List(upstreamCerts)
	if err != nil && !database.IsErrNotFound(err) {
		return nil, fmt.Errorf("list x509_certs: %w", err)
	}
	type item struct {
		serial string
		cert   *x509.Certificate
	}
	res := &RebuildResult{}
	var items []item
	for _, en := range entries {
		res.Scanned++
		cert, err := x509.ParseCertificate(en.Value)
		if err != nil {
			res.Errors = append(res.Errors, fmt.Sprintf("%s: parse: %v", en.Key, err))
			continue
		}
		items = append(items, item{string(en.Key), cert})
	}
	entries = nil
	sort.SliceStable(items, func(i, j int) bool { return items[i].cert.NotBefore.Before(items[j].cert.NotBefore) })

	// latest certificate per provisioner + subject key, for inferring renewals
	type tip struct {
		serial   string
		notAfter time.Time
	}
	latest := map[string]tip{}
	for _, it := range items {
		rec, err := s.getCert(it.serial)
		if err != nil {
			return res, err
		}
		ref, err := upstreamProvisioner(s.db, it.serial)
		if err != nil {
			res.Errors = append(res.Errors, fmt.Sprintf("%s: %v", it.serial, err))
			continue
		}
		key := provisionerKey(ref) + "\x00" + SubjectKey(it.cert)
		prev, havePrev := latest[key]
		latest[key] = tip{it.serial, it.cert.NotAfter}
		if rec != nil && rec.Recorded {
			res.AlreadyKnown++
			continue
		}
		f := certFacts{serial: it.serial, cert: it.cert, provisioner: ref, obtainedBy: ObtainedSign, at: it.cert.NotBefore}
		if havePrev && !it.cert.NotBefore.After(prev.notAfter) {
			grouping, err := s.policy.Grouping(ref)
			if err != nil {
				res.Errors = append(res.Errors, fmt.Sprintf("%s: %v", it.serial, err))
				continue
			}
			if grouping == GroupingLineage {
				f.obtainedBy, f.parent, f.inferred = ObtainedRenew, prev.serial, true
				res.InferredLinks++
			}
		}
		if err := s.add(f); err != nil {
			res.Errors = append(res.Errors, fmt.Sprintf("%s: %v", it.serial, err))
			continue
		}
		res.Recorded++
	}

	revoked, err := s.db.List(upstreamRevoked)
	if err != nil && !database.IsErrNotFound(err) {
		return res, fmt.Errorf("list revoked_x509_certs: %w", err)
	}
	for _, en := range revoked {
		var rci db.RevokedCertificateInfo
		if err := json.Unmarshal(en.Value, &rci); err != nil {
			res.Errors = append(res.Errors, fmt.Sprintf("revocation %s: %v", en.Key, err))
			continue
		}
		rec, err := s.getCert(string(en.Key))
		if err != nil {
			return res, err
		}
		if rec == nil || rec.Revoked {
			continue // not a certificate we hold, or already applied
		}
		if err := s.revoke(string(en.Key), plugins.Revocation{ReasonCode: rci.ReasonCode, Reason: rci.Reason, RevokedAt: rci.RevokedAt}, now); err != nil {
			res.Errors = append(res.Errors, fmt.Sprintf("revocation %s: %v", en.Key, err))
			continue
		}
		res.Revoked++
	}
	return res, nil
}
