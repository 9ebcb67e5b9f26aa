package adcs

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// MaxCRL bounds a CRL file; a 1M-entry CRL is about 40 MB.
const MaxCRL = 256 << 20

var (
	oidDeltaCRLIndicator = asn1.ObjectIdentifier{2, 5, 29, 27}
	oidIDP               = asn1.ObjectIdentifier{2, 5, 29, 28}
	oidFreshestCRL       = asn1.ObjectIdentifier{2, 5, 29, 46}
)

// knownCRLExtensions may be critical in a CRL ADCS published: RFC 5280
// ones and Microsoft's (CA Version, Next CRL Publish, Virtual Base,
// Published CRL Locations). Any other critical extension fails the read.
var knownCRLExtensions = map[string]bool{
	"2.5.29.35": true, "2.5.29.20": true, "2.5.29.27": true, "2.5.29.28": true,
	"2.5.29.46": true, "2.5.29.18": true, "2.5.29.60": true,
	"1.3.6.1.4.1.311.21.1": true, "1.3.6.1.4.1.311.21.3": true,
	"1.3.6.1.4.1.311.21.4": true, "1.3.6.1.4.1.311.21.14": true,
}

// knownEntryExtensions may be critical in a CRL entry. The certificate
// issuer extension (2.5.29.29) of indirect CRLs is refused: ADCS does not
// write indirect CRLs and the importer cannot attribute such entries.
var knownEntryExtensions = map[string]bool{
	"2.5.29.21": true, "2.5.29.24": true, "2.5.29.23": true,
}

// CRLFile is a CRL ADCS published.
type CRLFile struct {
	Number                 *big.Int
	Delta                  bool     // the Delta CRL Indicator (2.5.29.27) is present
	BaseNumber             *big.Int // the Delta CRL Indicator's base CRL number, or nil
	ThisUpdate, NextUpdate time.Time
	Entries                []x509.RevocationListEntry
	IDP, FreshestCRL       []byte // the raw values of those extensions, or nil
	Raw                    []byte // DER
}

// ReadCRL parses a DER or PEM CRL, checks its signature against issuer and
// refuses critical extensions it does not know, a CRL without a CRL number
// and numbers over 20 octets.
func ReadCRL(data []byte, issuer *x509.Certificate) (*CRLFile, error) {
	if issuer == nil {
		return nil, errors.New("no issuer certificate to check the CRL against")
	}
	if len(data) > MaxCRL {
		return nil, fmt.Errorf("the CRL is %d bytes, more than the %d allowed", len(data), MaxCRL)
	}
	der, err := crlDER(data)
	if err != nil {
		return nil, err
	}
	rl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("parse the CRL: %w", err)
	}
	if err := checkIssuer(rl, issuer); err != nil {
		return nil, err
	}
	f := &CRLFile{Number: rl.Number, ThisUpdate: rl.ThisUpdate, NextUpdate: rl.NextUpdate,
		Entries: rl.RevokedCertificateEntries, Raw: der}
	if err := f.extensions(rl); err != nil {
		return nil, err
	}
	if err := checkEntries(rl); err != nil {
		return nil, err
	}
	if err := checkNumber("CRL number", f.Number); err != nil {
		return nil, err
	}
	return f, nil
}

// crlDER returns the DER of a PEM ("X509 CRL") or DER CRL.
func crlDER(data []byte) ([]byte, error) {
	t := bytes.TrimLeft(data, " \t\r\n\xef\xbb\xbf")
	if !bytes.HasPrefix(t, []byte("-----BEGIN")) {
		return data, nil
	}
	b, _ := pem.Decode(t)
	if b == nil {
		return nil, errors.New("the CRL file starts like PEM but is not valid PEM")
	}
	if b.Type != "X509 CRL" && b.Type != "CRL" {
		return nil, fmt.Errorf("the PEM block is a %q, not an X509 CRL", b.Type)
	}
	return b.Bytes, nil
}

// checkIssuer checks the signature, telling a CRL of another CA from a bad signature.
func checkIssuer(rl *x509.RevocationList, issuer *x509.Certificate) error {
	if !bytes.Equal(rl.RawIssuer, issuer.RawSubject) {
		return fmt.Errorf("the CRL was issued by %q, not by the issuer %q", rl.Issuer, issuer.Subject)
	}
	if len(rl.AuthorityKeyId) > 0 && len(issuer.SubjectKeyId) > 0 && !bytes.Equal(rl.AuthorityKeyId, issuer.SubjectKeyId) {
		return fmt.Errorf("the CRL of %q was signed by another key of that CA (authority key ID %x, the certificate's key ID %x): use the CRL of this key or this key's certificate",
			rl.Issuer, rl.AuthorityKeyId, issuer.SubjectKeyId)
	}
	if err := issuer.CheckSignature(rl.SignatureAlgorithm, rl.RawTBSRevocationList, rl.Signature); err != nil {
		return fmt.Errorf("the CRL's signature does not verify with the key of %q: %w", issuer.Subject, err)
	}
	return nil
}

// extensions reads the delta indicator, IDP and Freshest CRL, and refuses
// unknown critical extensions.
func (f *CRLFile) extensions(rl *x509.RevocationList) error {
	for _, e := range rl.Extensions {
		switch {
		case e.Id.Equal(oidDeltaCRLIndicator):
			f.Delta = true
			f.BaseNumber = new(big.Int)
			if rest, err := asn1.Unmarshal(e.Value, &f.BaseNumber); err != nil || len(rest) > 0 {
				return errors.New("the Delta CRL Indicator (2.5.29.27) is not an INTEGER")
			}
			if err := checkNumber("base CRL number", f.BaseNumber); err != nil {
				return err
			}
		case e.Id.Equal(oidIDP):
			f.IDP = e.Value
		case e.Id.Equal(oidFreshestCRL):
			f.FreshestCRL = e.Value
		case e.Critical && !knownCRLExtensions[e.Id.String()]:
			return fmt.Errorf("the CRL has a critical extension %s this reader does not know", e.Id)
		}
	}
	return nil
}

func checkEntries(rl *x509.RevocationList) error {
	for _, en := range rl.RevokedCertificateEntries {
		for _, e := range en.Extensions {
			if e.Critical && !knownEntryExtensions[e.Id.String()] {
				return fmt.Errorf("the CRL entry for serial %x has a critical extension %s this reader does not know", en.SerialNumber, e.Id)
			}
		}
	}
	return nil
}

func checkNumber(what string, n *big.Int) error {
	switch {
	case n == nil:
		return fmt.Errorf("the CRL has no %s", what)
	case n.Sign() < 0:
		return fmt.Errorf("the %s %s is negative", what, n)
	case len(n.Bytes()) > 20:
		return fmt.Errorf("the %s is longer than 20 octets (RFC 5280 5.2.3)", what)
	}
	return nil
}
