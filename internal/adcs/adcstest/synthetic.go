package adcstest

import (
	"errors"
	"iter"
	"math/big"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/stepfort/stepfort/internal/adcs"
)

// SyntheticStart is NotBefore of the first synthetic row.
var SyntheticStart = time.Date(2024, 1, 2, 3, 4, 0, 0, time.UTC)

// Synthetic yields n rows like a busy ADCS CA's, for benchmarks and large
// tests: request IDs from 2, 19-octet serials "44" + 8 hex of the ID + ...,
// every tenth row revoked (key compromise, to the minute), times to the
// minute so they survive certutil's format. With a template certificate
// (DER whose serial is 19 octets), each row carries a copy with the row's
// serial patched in: the signature no longer verifies, the rest is real.
func Synthetic(n int, template []byte) (iter.Seq[adcs.Row], error) {
	off := -1
	if template != nil {
		var err error
		if off, err = serialOffset(template); err != nil {
			return nil, err
		}
	}
	return func(yield func(adcs.Row) bool) {
		for i := 0; i < n; i++ {
			if !yield(SyntheticRow(i, template, off)) {
				return
			}
		}
	}, nil
}

// SyntheticRow is row i of Synthetic; off is the serial's offset in template.
func SyntheticRow(i int, template []byte, off int) adcs.Row {
	id := int64(i + 2)
	s := SyntheticSerial(id)
	nb := SyntheticStart.Add(time.Duration(i) * time.Minute)
	row := adcs.Row{RequestID: id, Serial: s, Disposition: adcs.DispositionIssued,
		NotBefore: nb, NotAfter: nb.AddDate(1, 0, 0), Reason: -1,
		CommonName: "host-" + s.Text(16)[30:] + ".corp.example", Template: "WebServer"}
	if i%10 == 9 {
		row.Disposition = adcs.DispositionRevoked
		row.RevokedAt = nb.Add(30 * 24 * time.Hour)
		row.Reason = 1
	}
	if template != nil {
		c := append([]byte(nil), template...)
		s.FillBytes(c[off : off+19])
		row.Certificate = c
	}
	return row
}

// SyntheticSerial is the serial of request id: 19 octets, as ADCS makes them.
func SyntheticSerial(id int64) *big.Int {
	s := new(big.Int).Lsh(big.NewInt(0x44), 144)
	return s.Or(s, new(big.Int).Lsh(big.NewInt(id), 8)).Or(s, big.NewInt(4))
}

// serialOffset finds the content octets of a certificate's serial.
func serialOffset(der []byte) (int, error) {
	in := cryptobyte.String(der)
	var cert, tbs, serial cryptobyte.String
	if !in.ReadASN1(&cert, cbasn1.SEQUENCE) || !cert.ReadASN1(&tbs, cbasn1.SEQUENCE) ||
		!tbs.SkipOptionalASN1(cbasn1.Tag(0).Constructed().ContextSpecific()) ||
		!tbs.ReadASN1(&serial, cbasn1.INTEGER) {
		return 0, errors.New("adcstest: the template is not a DER certificate")
	}
	if len(serial) != 19 {
		return 0, errors.New("adcstest: the template's serial must be 19 octets")
	}
	return len(der) - len(in) - len(cert) - len(tbs) - len(serial), nil
}
