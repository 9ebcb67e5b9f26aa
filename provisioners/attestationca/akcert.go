package attestationca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// OIDs of the AK certificate (TCG EK Credential Profile, RFC 4043).
var (
	oidSubjectAltName         = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidTCGKpAIKCertificate    = asn1.ObjectIdentifier{2, 23, 133, 8, 3}
	oidTPMManufacturer        = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel               = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion             = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
	oidPermanentIdentifier    = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 8, 3}
	maxModelLen               = 64
	sanCriticalWithoutSubject = true
)

// tpmDetails turns the client's tpmInfo claims into the TCG directoryName
// values: manufacturer "id:XXXXXXXX" (the 4-byte vendor ID), model as sent,
// version "id:MMMMmmmm". They are claims, not verified facts (the TPM
// signs none of them); the EK binding is what the certificate vouches for.
func tpmDetails(info TPMInfo) (manufacturer, model, version string, err error) {
	id, err := strconv.ParseUint(info.Manufacturer, 10, 32)
	if err != nil {
		return "", "", "", fmt.Errorf("tpmInfo.manufacturer: %q is not a decimal 32-bit vendor ID", trunc(info.Manufacturer))
	}
	model = strings.TrimRight(info.Model, "\x00")
	if model == "" || len(model) > maxModelLen || strings.IndexFunc(model, func(r rune) bool { return r > unicode.MaxASCII || !unicode.IsPrint(r) }) >= 0 {
		return "", "", "", fmt.Errorf("tpmInfo.model: %q must be 1-%d printable ASCII characters", trunc(info.Model), maxModelLen)
	}
	maj, min, ok := strings.Cut(info.FirmwareVersion, ".")
	a, err1 := strconv.ParseUint(maj, 10, 16)
	b, err2 := strconv.ParseUint(min, 10, 16)
	if !ok || err1 != nil || err2 != nil {
		return "", "", "", fmt.Errorf("tpmInfo.firmwareVersion: %q is not <major>.<minor>", trunc(info.FirmwareVersion))
	}
	return fmt.Sprintf("id:%08X", id), model, fmt.Sprintf("id:%04X%04X", a, b), nil
}

func trunc(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}

type permanentIdentifier struct {
	IdentifierValue string `asn1:"utf8"`
}

// subjectAltName encodes the AK certificate SAN: URI = EK URN (what the step
// CLI and tpmkms look for), otherName PermanentIdentifier = EK URN (what
// step-ca compares with the ACME identifier), and the TPM directoryName
// (what step-ca requires as hardware details).
func subjectAltName(ekURN, manufacturer, model, version string) ([]byte, error) {
	pi, err := asn1.Marshal(permanentIdentifier{IdentifierValue: ekURN})
	if err != nil {
		return nil, err
	}
	explicit, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: pi})
	if err != nil {
		return nil, err
	}
	oid, err := asn1.Marshal(oidPermanentIdentifier)
	if err != nil {
		return nil, err
	}
	name, err := asn1.Marshal(pkix.RDNSequence{
		{{Type: oidTPMManufacturer, Value: manufacturer}},
		{{Type: oidTPMModel, Value: model}},
		{{Type: oidTPMVersion, Value: version}},
	})
	if err != nil {
		return nil, err
	}
	return asn1.Marshal([]asn1.RawValue{
		{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(ekURN)},                              // uniformResourceIdentifier
		{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: append(oid, explicit...)}, // otherName
		{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: name},                     // directoryName
	})
}

// issuer is the Attestation CA's signing intermediate.
type issuer struct {
	chain  []*x509.Certificate // intermediate first
	signer crypto.Signer
}

// issueAKCertificate signs the AK certificate: v3, empty subject, critical
// SAN, first EKU tcg-kp-AIKCertificate, not a CA.
func (is *issuer) issueAKCertificate(akPub crypto.PublicKey, sess *AttestationSession, now time.Time, lifetime time.Duration) (*x509.Certificate, error) {
	san, err := subjectAltName(sess.EKURN, sess.Manufacturer, sess.Model, sess.Version)
	if err != nil {
		return nil, fmt.Errorf("encode SAN: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	notBefore := now.Add(-time.Minute)
	notAfter := now.Add(lifetime)
	if ca := is.chain[0]; notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		UnknownExtKeyUsage:    []asn1.ObjectIdentifier{oidTCGKpAIKCertificate},
		BasicConstraintsValid: true,
		IsCA:                  false,
		ExtraExtensions:       []pkix.Extension{{Id: oidSubjectAltName, Critical: sanCriticalWithoutSubject, Value: san}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, is.chain[0], akPub, is.signer)
	if err != nil {
		return nil, fmt.Errorf("sign AK certificate for %s: %w", sess.EKURN, err)
	}
	return x509.ParseCertificate(der)
}
