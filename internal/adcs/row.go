package adcs

import (
	"errors"
	"fmt"
	"math/big"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// cells are the raw values of one row, by -out position.
type cells struct {
	line int
	vals []string
	cert []byte // DER of a PEM block (text mode), or nil
	csv  bool
}

// build converts the cells of one row; the first bad value is returned as a *RowError.
func (r *Reader) build(c *cells) (*Row, error) {
	row := &Row{Line: c.line, Reason: -1}
	var effective, when string
	haveCert := false
	for i, v := range c.vals {
		f := r.layout.fields[i]
		if f == fIgnored || (isEmpty(v) && f != fRawCertificate) {
			continue
		}
		var err error
		switch f {
		case fRequestID:
			row.RequestID, err = parseRequestID(v)
		case fSerial:
			row.Serial, err = parseSerial(v)
		case fDisposition:
			row.Disposition, err = parseDisposition(v)
		case fNotBefore:
			row.NotBefore, err = r.dates.parse(v)
		case fNotAfter:
			row.NotAfter, err = r.dates.parse(v)
		case fRevokedEffective:
			effective = v
		case fRevokedWhen:
			when = v
		case fReason:
			row.Reason, err = parseReason(v)
		case fCommonName:
			row.CommonName = unquote(v)
		case fRequestCommonName:
			if !r.layout.has[fCommonName] {
				row.CommonName = unquote(v)
			}
		case fTemplate:
			row.Template, row.TemplateOID = parseTemplate(v)
		case fRawCertificate:
			haveCert = true
			if c.csv {
				row.Certificate, err = parseCSVCertificate(v)
			} else {
				row.Certificate = c.cert
			}
		}
		if err != nil {
			return nil, &RowError{Line: c.line, Field: r.layout.names[i], Err: err}
		}
	}
	if err := r.revocation(row, effective, when); err != nil {
		return nil, err
	}
	if !haveCert && c.cert != nil {
		return nil, &RowError{Line: c.line, Err: errors.New("a PEM block outside the RawCertificate column")}
	}
	return row, r.check(row)
}

// revocation sets RevokedAt from the effective revocation date, or the
// revocation date when the effective one is empty.
func (r *Reader) revocation(row *Row, effective, when string) error {
	v, col := effective, r.nameOf(fRevokedEffective)
	if v == "" {
		v, col = when, r.nameOf(fRevokedWhen)
	}
	if v == "" {
		return nil
	}
	t, err := r.dates.parse(v)
	if err != nil {
		return &RowError{Line: row.Line, Field: col, Err: err}
	}
	row.RevokedAt = t
	return nil
}

// check applies the rules across columns. Rows that are neither issued nor
// revoked (pending, denied, failed) may lack everything but the disposition.
func (r *Reader) check(row *Row) error {
	fail := func(f field, err error) error {
		return &RowError{Line: row.Line, Field: r.nameOf(f), Err: err}
	}
	if row.Disposition != DispositionRevoked {
		row.RevokedAt, row.Reason = timeZero, -1
	}
	if row.Disposition == 0 {
		return fail(fDisposition, errors.New("empty"))
	}
	if row.Disposition != DispositionIssued && row.Disposition != DispositionRevoked {
		return nil
	}
	switch {
	case row.Serial == nil:
		return fail(fSerial, errors.New("empty in an issued or revoked row"))
	case row.NotAfter.IsZero():
		return fail(fNotAfter, errors.New("empty in an issued or revoked row"))
	case row.Disposition == DispositionRevoked && row.RevokedAt.IsZero():
		f := fRevokedEffective
		if !r.layout.has[f] {
			f = fRevokedWhen
		}
		return fail(f, errors.New("empty in a revoked row"))
	}
	if row.Certificate != nil {
		s, err := certSerial(row.Certificate)
		if err != nil {
			return fail(fRawCertificate, err)
		}
		if s.Cmp(row.Serial) != 0 {
			return fail(fRawCertificate, fmt.Errorf("the certificate has serial %x, the row %x", s, row.Serial))
		}
	}
	return nil
}

// nameOf is the -out name of the column feeding f.
func (r *Reader) nameOf(f field) string {
	for i, g := range r.layout.fields {
		if g == f {
			return r.layout.names[i]
		}
	}
	return ""
}

// certSerial reads the serial of a DER certificate without parsing all of
// it: a full parse would cost more than the rest of the import.
func certSerial(der []byte) (*big.Int, error) {
	in := cryptobyte.String(der)
	var cert, tbs cryptobyte.String
	s := new(big.Int)
	if !in.ReadASN1(&cert, cbasn1.SEQUENCE) || !in.Empty() ||
		!cert.ReadASN1(&tbs, cbasn1.SEQUENCE) ||
		!tbs.SkipOptionalASN1(cbasn1.Tag(0).Constructed().ContextSpecific()) ||
		!tbs.ReadASN1Integer(s) {
		return nil, errors.New("not a DER certificate")
	}
	return s, nil
}
