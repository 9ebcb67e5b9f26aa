package ha

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"math/bits"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// The CRL is DER-encoded here rather than by x509.CreateRevocationList,
// which needs every entry as a big.Int in a slice of structs and then
// marshals them through reflection: for a million entries that was
// gigabytes of garbage and seconds of CPU. crlEncoder appends each
// revokedCertificate's DER to a buffer as the table is scanned and wraps
// the entries in the TBSCertList afterwards; the output is the bytes Go's
// encoder produces for the same input (crlencode_test.go and crl_test.go
// compare them).

var (
	oidReasonCode   = asn1.ObjectIdentifier{2, 5, 29, 21}
	oidAuthKeyID    = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidCRLNumber    = asn1.ObjectIdentifier{2, 5, 29, 20}
	oidSHA256RSA    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
	oidECDSASHA256  = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidECDSASHA384  = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}
	oidECDSASHA512  = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 4}
	oidEd25519      = asn1.ObjectIdentifier{1, 3, 101, 112}
	derVersion2     = []byte{0x02, 0x01, 0x01} // INTEGER 1 (v2)
	errSignerVerify = errors.New("signature returned by the CRL signer does not verify")
)

// crlSigner is the signature algorithm x509.CreateRevocationList picks
// for a key when the template names none.
type crlSigner struct {
	signer crypto.Signer
	hash   crypto.Hash // 0 for Ed25519, which signs the message itself
	algID  []byte      // DER AlgorithmIdentifier
}

func newCRLSigner(s crypto.Signer) (*crlSigner, error) {
	var (
		oid    asn1.ObjectIdentifier
		hash   crypto.Hash
		params asn1.RawValue // empty: absent
	)
	switch pub := s.Public().(type) {
	case *rsa.PublicKey:
		oid, hash, params = oidSHA256RSA, crypto.SHA256, asn1.NullRawValue
	case *ecdsa.PublicKey:
		switch pub.Curve {
		case elliptic.P224(), elliptic.P256():
			oid, hash = oidECDSASHA256, crypto.SHA256
		case elliptic.P384():
			oid, hash = oidECDSASHA384, crypto.SHA384
		case elliptic.P521():
			oid, hash = oidECDSASHA512, crypto.SHA512
		default:
			return nil, errors.New("unsupported elliptic curve for the CRL signer")
		}
	case ed25519.PublicKey:
		oid = oidEd25519
	default:
		return nil, fmt.Errorf("CRL signer key %T: only RSA, ECDSA and Ed25519 are supported", pub)
	}
	algID, err := asn1.Marshal(pkix.AlgorithmIdentifier{Algorithm: oid, Parameters: params})
	if err != nil {
		return nil, err
	}
	return &crlSigner{signer: s, hash: hash, algID: algID}, nil
}

// sign signs tbs as x509's signTBS does (hash, then Sign; the message
// itself for Ed25519 or a crypto.MessageSigner) and checks the signature
// against the public key, as Go does, so a misbehaving KMS is caught here.
func (s *crlSigner) sign(tbs []byte) ([]byte, error) {
	if _, ok := s.signer.(crypto.MessageSigner); ok || s.hash == 0 {
		sig, err := crypto.SignMessage(s.signer, rand.Reader, tbs, s.hash)
		if err != nil {
			return nil, err
		}
		return sig, s.verify(tbs, nil, sig)
	}
	h := s.hash.New()
	h.Write(tbs)
	digest := h.Sum(nil)
	sig, err := s.signer.Sign(rand.Reader, digest, s.hash)
	if err != nil {
		return nil, err
	}
	return sig, s.verify(tbs, digest, sig)
}

func (s *crlSigner) verify(msg, digest, sig []byte) error {
	if digest == nil && s.hash != 0 {
		h := s.hash.New()
		h.Write(msg)
		digest = h.Sum(nil)
	}
	ok := false
	switch pub := s.signer.Public().(type) {
	case *rsa.PublicKey:
		ok = rsa.VerifyPKCS1v15(pub, s.hash, digest, sig) == nil
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(pub, digest, sig)
	case ed25519.PublicKey:
		ok = ed25519.Verify(pub, msg, sig)
	}
	if !ok {
		return errSignerVerify
	}
	return nil
}

// derMaxHeader is the most bytes a DER tag and length take here (lengths
// below 2^32).
const derMaxHeader = 6

// crlTail is room kept after the entries for the extensions and the
// signature, and sigMax the largest signature expected (RSA-16384).
const (
	crlTail = 8 << 10
	sigMax  = 2048 + 16
)

// crlChunk bounds the chunks entries overflow into when the first buffer,
// sized from the previous CRL, is full: the entries are then copied once,
// at the end, instead of at every growth of one slice (a growing 50 MB
// slice was most of the encoding time, and a copy that long also holds up
// the garbage collector's stop-the-world).
const crlChunk = 4 << 20

// crlEncoder builds a CertificateList. Entries are appended to chunks as
// they come. The first chunk starts with room for the headers whose
// lengths are only known at the end and is sized from the previous CRL:
// when everything fits there, the CRL is finished in place; otherwise
// finish copies the chunks once into a buffer of the final size.
type crlEncoder struct {
	chunks  [][]byte
	room    int            // headroom at the start of chunks[0]
	size    int            // bytes of entries in chunks
	entries int            // number of entries
	fixed   []byte         // version, signature, issuer, thisUpdate, nextUpdate
	reasons map[int][]byte // crlEntryExtensions per reason code
	scratch []byte
	issuer  *x509.Certificate
	sig     *crlSigner
}

// newCRLEncoder starts a CRL from issuer, checked as x509 checks it.
// sizeHint is the expected size of the CRL (the previous one's).
func newCRLEncoder(issuer *x509.Certificate, sig *crlSigner, thisUpdate, nextUpdate time.Time, sizeHint int) (*crlEncoder, error) {
	if issuer.KeyUsage&x509.KeyUsageCRLSign == 0 {
		return nil, errors.New("the CRL issuer must have the crlSign key usage bit set")
	}
	if len(issuer.SubjectKeyId) == 0 {
		return nil, errors.New("the CRL issuer certificate has no subject key identifier")
	}
	if nextUpdate.Before(thisUpdate) {
		return nil, errors.New("CRL thisUpdate is after nextUpdate")
	}
	subject := issuer.RawSubject
	if len(subject) == 0 {
		var err error
		if subject, err = asn1.Marshal(issuer.Subject.ToRDNSequence()); err != nil {
			return nil, err
		}
	}
	fixed := append([]byte(nil), derVersion2...)
	fixed = append(fixed, sig.algID...)
	fixed = append(fixed, subject...)
	var err error
	if fixed, err = derTime(fixed, thisUpdate); err != nil {
		return nil, err
	}
	if fixed, err = derTime(fixed, nextUpdate); err != nil {
		return nil, err
	}
	room := 3*derMaxHeader + len(fixed) // CertificateList, TBSCertList, revokedCertificates
	first := make([]byte, room, room+max(sizeHint, 64<<10)+crlTail)
	return &crlEncoder{chunks: [][]byte{first}, room: room, fixed: fixed, reasons: map[int][]byte{}, issuer: issuer, sig: sig}, nil
}

// add appends one revokedCertificate: the serial (decimal digits, as
// upstream stores it), revocationDate, and the reasonCode extension only
// when reason is not 0 (unspecified), as x509.CreateRevocationList does.
func (e *crlEncoder) add(serial []byte, revokedAt time.Time, reason int) error {
	if revokedAt.IsZero() {
		return fmt.Errorf("revocation %s has no revocation time", serial)
	}
	// Content after room for the SEQUENCE header: serial INTEGER, Time,
	// optional extensions.
	c := append(e.scratch[:0], make([]byte, derMaxHeader)...)
	var err error
	if c, err = derSerial(c, serial); err != nil {
		return err
	}
	if c, err = derTime(c, revokedAt); err != nil {
		return fmt.Errorf("revocation %s: %w", serial, err)
	}
	if reason != 0 {
		ext, ok := e.reasons[reason]
		if !ok {
			if ext, err = reasonExtensions(reason); err != nil {
				return err
			}
			e.reasons[reason] = ext
		}
		c = append(c, ext...)
	}
	e.scratch = c
	n := len(c) - derMaxHeader
	h := derHeaderLen(n)
	derHeader(c[derMaxHeader-h:derMaxHeader-h], 0x30, n)
	entry := c[derMaxHeader-h:]

	last := len(e.chunks) - 1
	free := cap(e.chunks[last]) - len(e.chunks[last])
	if last == 0 {
		free -= crlTail
	}
	if free < len(entry) {
		size := min(max(2*cap(e.chunks[last]), 64<<10), crlChunk)
		e.chunks = append(e.chunks, make([]byte, 0, max(size, len(entry))))
		last++
	}
	e.chunks[last] = append(e.chunks[last], entry...)
	e.size += len(entry)
	e.entries++
	return nil
}

// finish adds the extensions (AuthorityKeyIdentifier, CRLNumber, then
// extra, as Go orders them), signs and returns the CRL's DER. The encoder
// cannot be used afterwards.
func (e *crlEncoder) finish(number int64, extra ...pkix.Extension) ([]byte, error) {
	aki, err := asn1.Marshal(struct {
		ID []byte `asn1:"optional,tag:0"`
	}{e.issuer.SubjectKeyId})
	if err != nil {
		return nil, err
	}
	num, err := asn1.Marshal(big.NewInt(number))
	if err != nil {
		return nil, err
	}
	var list []byte
	for _, ext := range append([]pkix.Extension{{Id: oidAuthKeyID, Value: aki}, {Id: oidCRLNumber, Value: num}}, extra...) {
		b, err := asn1.Marshal(ext)
		if err != nil {
			return nil, err
		}
		list = append(list, b...)
	}
	exts := derHeader(nil, 0xa0, len(list)+derHeaderLen(len(list)))
	exts = derHeader(exts, 0x30, len(list))
	exts = append(exts, list...)

	revoked := 0
	if e.entries > 0 { // Go omits an empty revokedCertificates
		revoked = derHeaderLen(e.size) + e.size
	}
	tbsLen := len(e.fixed) + revoked + len(exts)
	if tbsLen > 1<<32-1-sigMax-64 {
		return nil, fmt.Errorf("CRL of %d entries too large for DER lengths", e.entries)
	}
	head := derHeader(nil, 0x30, tbsLen)
	head = append(head, e.fixed...)
	if e.entries > 0 {
		head = derHeader(head, 0x30, e.size)
	}
	// The TBSCertList starts at start, after room for the CertificateList
	// header, whose length depends on the signature's.
	tail := len(exts) + len(e.sig.algID) + derMaxHeader + 1 + sigMax
	var buf []byte
	var start int
	if first := e.chunks[0]; len(e.chunks) == 1 && cap(first)-len(first) >= tail {
		start = e.room - len(head)
		buf = first
	} else {
		start = derMaxHeader
		buf = make([]byte, start+len(head), start+len(head)+e.size+tail)
		for i, c := range e.chunks {
			if i == 0 {
				c = c[e.room:]
			}
			buf = append(buf, c...)
			e.chunks[i] = nil // let it go as soon as it is copied
		}
	}
	e.chunks = nil
	copy(buf[start:], head)
	buf = append(buf, exts...)
	tbs := buf[start:]
	sig, err := e.sig.sign(tbs)
	if err != nil {
		return nil, fmt.Errorf("sign CRL: %w", err)
	}
	total := len(tbs) + len(e.sig.algID) + derHeaderLen(len(sig)+1) + 1 + len(sig)
	start -= derHeaderLen(total)
	derHeader(buf[start:start], 0x30, total)
	buf = append(buf, e.sig.algID...)
	buf = derHeader(buf, 0x03, len(sig)+1)
	buf = append(buf, 0) // no unused bits
	buf = append(buf, sig...)
	der := buf[start:]
	if cap(der) > len(der)+len(der)/4+crlTail+(64<<10) {
		// The CRL shrank a lot: do not keep the previous size's buffer.
		der = append(make([]byte, 0, len(der)), der...)
	}
	return der, nil
}

// derHeader appends a DER identifier and definite length.
func derHeader(b []byte, tag byte, n int) []byte {
	switch {
	case n < 0x80:
		return append(b, tag, byte(n))
	case n <= 0xff:
		return append(b, tag, 0x81, byte(n))
	case n <= 0xffff:
		return append(b, tag, 0x82, byte(n>>8), byte(n))
	case n <= 0xffffff:
		return append(b, tag, 0x83, byte(n>>16), byte(n>>8), byte(n))
	default:
		return append(b, tag, 0x84, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
}

func derHeaderLen(n int) int { return len(derHeader(make([]byte, 0, derMaxHeader), 0, n)) }

// derTime appends t in UTC as encoding/asn1 marshals a time.Time:
// UTCTime from 1950 to 2049, GeneralizedTime otherwise, whole seconds.
func derTime(b []byte, t time.Time) ([]byte, error) {
	t = t.UTC()
	year, month, day := t.Date()
	hour, minute, sec := t.Clock()
	switch {
	case 1950 <= year && year < 2050:
		b = append(b, 0x17, 13)
		b = twoDigits(b, year%100)
	case 0 <= year && year <= 9999:
		b = append(b, 0x18, 15)
		b = twoDigits(b, year/100)
		b = twoDigits(b, year%100)
	default:
		return nil, fmt.Errorf("time %s cannot be encoded in a CRL", t)
	}
	b = twoDigits(b, int(month))
	b = twoDigits(b, day)
	b = twoDigits(b, hour)
	b = twoDigits(b, minute)
	b = twoDigits(b, sec)
	return append(b, 'Z'), nil
}

func twoDigits(b []byte, v int) []byte { return append(b, byte('0'+v/10), byte('0'+v%10)) }

// derSerial appends the INTEGER for a decimal serial number without a
// big.Int in the common case (unsigned, at most 4 × 64 bits).
func derSerial(b []byte, dec []byte) ([]byte, error) {
	var limbs [4]uint64 // little-endian
	n := 0
	ok := len(dec) > 0
	for i := 0; ok && i < len(dec); {
		// The first chunk takes the odd digits, the others 19 each.
		l := 19
		if i == 0 && len(dec)%19 != 0 {
			l = len(dec) % 19
		}
		var chunk, mul uint64 = 0, 1
		for _, d := range dec[i : i+l] {
			if d < '0' || d > '9' {
				ok = false
				break
			}
			chunk = chunk*10 + uint64(d-'0')
			mul *= 10
		}
		i += l
		carry := chunk
		for j := range n {
			hi, lo := bits.Mul64(limbs[j], mul)
			var c uint64
			limbs[j], c = bits.Add64(lo, carry, 0)
			carry = hi + c
		}
		if carry != 0 {
			if n == len(limbs) {
				ok = false
				break
			}
			limbs[n] = carry
			n++
		}
	}
	if !ok {
		// Signs, huge or malformed serials: as the old code did.
		sn, valid := new(big.Int).SetString(string(dec), 10)
		if !valid {
			return nil, fmt.Errorf("crlRow with bad serial %q", dec)
		}
		der, err := asn1.Marshal(sn)
		if err != nil {
			return nil, err
		}
		return append(b, der...), nil
	}
	var mag [33]byte // big-endian, with room for a leading 0x00
	end := len(mag)
	p := end
	for j := range n {
		for k := 0; k < 8; k++ {
			p--
			mag[p] = byte(limbs[j] >> (8 * k))
		}
	}
	for p < end-1 && mag[p] == 0 {
		p++
	}
	if p == end { // zero
		p--
		mag[p] = 0
	}
	if mag[p]&0x80 != 0 {
		p--
		mag[p] = 0
	}
	b = append(b, 0x02, byte(end-p))
	return append(b, mag[p:]...), nil
}

// reasonExtensions is the crlEntryExtensions holding only reasonCode.
func reasonExtensions(reason int) ([]byte, error) {
	v, err := asn1.Marshal(asn1.Enumerated(reason))
	if err != nil {
		return nil, err
	}
	ext, err := asn1.Marshal(pkix.Extension{Id: oidReasonCode, Value: v})
	if err != nil {
		return nil, err
	}
	return append(derHeader(nil, 0x30, len(ext)), ext...), nil
}

// encodeCRLInfo is json.Marshal of upstream's db.CertificateRevocationListInfo
// (the x509_crl row), base64-encoding the DER straight into a buffer of the
// final size instead of through encoding/json's growing one.
// A legacy base also carries the legacy store's version it was built
// from (omitted when 0, so the own series' row is upstream's exactly).
func encodeCRLInfo(number int64, expiresAt time.Time, validity time.Duration, der []byte, version int64) ([]byte, error) {
	head, err := json.Marshal(struct {
		Number    int64
		ExpiresAt time.Time
		Duration  time.Duration
		Version   int64 `json:",omitempty"`
	}{number, expiresAt, validity, version})
	if err != nil {
		return nil, err
	}
	head = head[:len(head)-1] // the closing brace
	const field = `,"DER":"`
	n := base64.StdEncoding.EncodedLen(len(der))
	out := make([]byte, len(head)+len(field)+n+2)
	i := copy(out, head)
	i += copy(out[i:], field)
	base64.StdEncoding.Encode(out[i:i+n], der)
	copy(out[i+n:], `"}`)
	return out, nil
}

// parseCRLHeader parses everything of a CRL but its entries: the same
// checks and fields as x509.ParseRevocationList (signature algorithm,
// issuer, times, number, extensions) at a cost that does not grow with the
// entries. It parses a copy of the CRL without revokedCertificates, then
// points Raw and RawTBSRevocationList back at der.
func parseCRLHeader(der []byte) (*x509.RevocationList, error) {
	in := cryptobyte.String(der)
	var outer, tbs, sigAlg cryptobyte.String
	if !in.ReadASN1(&outer, cbasn1.SEQUENCE) || !in.Empty() ||
		!outer.ReadASN1Element(&tbs, cbasn1.SEQUENCE) || !outer.ReadASN1Element(&sigAlg, cbasn1.SEQUENCE) {
		return nil, errors.New("malformed CRL")
	}
	rawTBS := []byte(tbs)
	rest := append([]byte(nil), sigAlg...)
	rest = append(rest, outer...) // the signature BIT STRING
	var body cryptobyte.String
	if !tbs.ReadASN1(&body, cbasn1.SEQUENCE) {
		return nil, errors.New("malformed CRL TBSCertList")
	}
	// revokedCertificates is the only SEQUENCE after the signature
	// AlgorithmIdentifier and the issuer Name.
	var stripped []byte
	seqs := 0
	for !body.Empty() {
		var el cryptobyte.String
		var tag cbasn1.Tag
		if !body.ReadAnyASN1Element(&el, &tag) {
			return nil, errors.New("malformed CRL TBSCertList")
		}
		if tag == cbasn1.SEQUENCE {
			if seqs++; seqs == 3 {
				continue
			}
		}
		stripped = append(stripped, el...)
	}
	tbsOnly := derHeader(nil, 0x30, len(stripped))
	tbsOnly = append(tbsOnly, stripped...)
	whole := derHeader(nil, 0x30, len(tbsOnly)+len(rest))
	whole = append(whole, tbsOnly...)
	whole = append(whole, rest...)
	crl, err := x509.ParseRevocationList(whole)
	if err != nil {
		return nil, err
	}
	crl.Raw = der
	crl.RawTBSRevocationList = rawTBS
	return crl, nil
}
