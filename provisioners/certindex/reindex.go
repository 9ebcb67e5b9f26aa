package certindex

import (
	"crypto/x509"
	"encoding/json"
	"fmt"

	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
)

// reindexBatch is how many certificates one reindex write carries.
const reindexBatch = 1000

// ReindexResult summarises a reindex.
type ReindexResult struct {
	Certificates int      `json:"certificates"`
	Revocations  int      `json:"revocations"`
	Errors       []string `json:"errors,omitempty"`
}

const maxReindexErrors = 100

// Reindex merges into store a record for every certificate in upstream's
// tables (x509_certs, x509_certs_data for the provisioner,
// revoked_x509_certs), so a CA that ran without the index, or without
// stepfort, gets a full index. It is a merge, like an event: running it on
// a live index changes nothing the events wrote and adds what they missed.
// What the tables do not hold stays as the events left it: the device, the
// parent of a renewal and, for provisioners that may renew (whose Endpoint
// follows the renewal lineage, which upstream does not store), the
// Endpoint. A certificate that cannot be parsed is reported, not fatal.
//
// It reads the serials first (bbolt forbids writing while a scan holds its
// read transaction): about 50 bytes of memory per certificate.
func Reindex(d nosql.DB, store Store) (*ReindexResult, error) {
	res := &ReindexResult{}
	certs, err := keys(d, storage.CertsTable)
	if err != nil {
		return nil, err
	}
	for i := 0; i < len(certs); i += reindexBatch {
		batch := certs[i:min(i+reindexBatch, len(certs))]
		recs, err := certRecords(d, batch, res)
		if err != nil {
			return nil, err
		}
		if err := store.Put(recs); err != nil {
			return nil, err
		}
		res.Certificates += len(recs)
	}
	revoked, err := keys(d, storage.RevokedCertsTable)
	if err != nil {
		return nil, err
	}
	for i := 0; i < len(revoked); i += reindexBatch {
		batch := revoked[i:min(i+reindexBatch, len(revoked))]
		recs, err := revocationRecords(d, batch, res)
		if err != nil {
			return nil, err
		}
		if err := store.Put(recs); err != nil {
			return nil, err
		}
		res.Revocations += len(recs)
	}
	if a, ok := store.(Analyzer); ok {
		if err := a.Analyze(); err != nil {
			return nil, err
		}
	}
	return res, nil
}

func (r *ReindexResult) fail(format string, args ...any) {
	if len(r.Errors) < maxReindexErrors {
		r.Errors = append(r.Errors, fmt.Sprintf(format, args...))
	}
}

func keys(d nosql.DB, table []byte) ([][]byte, error) {
	var out [][]byte
	err := storage.ForEach(d, table, func(k, _ []byte) error {
		out = append(out, append([]byte(nil), k...))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", table, err)
	}
	return out, nil
}

// certRecords builds the records of a batch of x509_certs keys.
func certRecords(d nosql.DB, serials [][]byte, res *ReindexResult) ([]*Record, error) {
	ders, err := storage.GetMany(d, storage.CertsTable, serials)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", storage.CertsTable, err)
	}
	data, err := storage.GetMany(d, storage.CertsDataTable, serials)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", storage.CertsDataTable, err)
	}
	revs, err := storage.GetMany(d, storage.RevokedCertsTable, serials)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", storage.RevokedCertsTable, err)
	}
	out := make([]*Record, 0, len(serials))
	for i, sn := range serials {
		if ders[i] == nil {
			continue // deleted since the scan
		}
		cert, err := x509.ParseCertificate(ders[i])
		if err != nil {
			res.fail("x509_certs/%s: %v", sn, err)
			continue
		}
		rec := fromCertificate(cert)
		if rec.Serial != string(sn) {
			res.fail("x509_certs/%s: holds the certificate of serial %s", sn, rec.Serial)
			continue
		}
		if data[i] != nil {
			var cd db.CertificateData
			if err := json.Unmarshal(data[i], &cd); err != nil {
				res.fail("x509_certs_data/%s: %v", sn, err)
			} else if cd.Provisioner != nil {
				rec.Provisioner = plugins.ProvisionerRef{ID: cd.Provisioner.ID, Name: cd.Provisioner.Name, Type: cd.Provisioner.Type}
			}
		}
		if rev := revocation(revs[i], string(sn), res); rev != nil {
			rec.Revocation = rev
		}
		// Without the running authority only the type decides: ACME and
		// SCEP always group by subject.
		if ep, err := signEndpoint(typeGrouping, cert, rec.Provisioner); err == nil {
			rec.Endpoint = ep
		}
		out = append(out, rec)
	}
	return out, nil
}

// revocationRecords builds stubs for revocations of serials x509_certs
// does not hold (upstream accepts a token revocation of any serial).
func revocationRecords(d nosql.DB, serials [][]byte, res *ReindexResult) ([]*Record, error) {
	ders, err := storage.GetMany(d, storage.CertsTable, serials)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", storage.CertsTable, err)
	}
	revs, err := storage.GetMany(d, storage.RevokedCertsTable, serials)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", storage.RevokedCertsTable, err)
	}
	var out []*Record
	for i, sn := range serials {
		if ders[i] != nil {
			continue // indexed with its certificate
		}
		rev := revocation(revs[i], string(sn), res)
		rec, err := stub(string(sn))
		if err != nil || rev == nil {
			if err != nil {
				res.fail("revoked_x509_certs/%s: %v", sn, err)
			}
			continue
		}
		rec.Revocation = rev
		out = append(out, rec)
	}
	return out, nil
}

func revocation(b []byte, serial string, res *ReindexResult) *Revocation {
	if b == nil {
		return nil
	}
	var rci db.RevokedCertificateInfo
	if err := json.Unmarshal(b, &rci); err != nil {
		res.fail("revoked_x509_certs/%s: %v", serial, err)
		return nil
	}
	return &Revocation{ReasonCode: rci.ReasonCode, Reason: rci.Reason, RevokedAt: rci.RevokedAt.UTC()}
}
