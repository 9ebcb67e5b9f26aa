package cakeys

import (
	"encoding/asn1"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/stepfort/stepfort/internal/fips"
)

// PFXReexportHint says how to write a PFX that reads under
// GODEBUG=fips140=only (docs/fips.md).
const PFXReexportHint = "re-export it as AES-256/SHA-256 with a password of at least 14 characters " +
	"(Export-PfxCertificate -CryptoAlgorithmOption AES256_SHA256, or " +
	"openssl pkcs12 -export -keypbe AES-256-CBC -certpbe AES-256-CBC -macalg sha256)"

// legacyPFXAlgorithms names the PKCS#12 algorithms that are not FIPS
// 140-3 approved, by OID.
var legacyPFXAlgorithms = map[string]string{
	"1.2.840.113549.1.12.1.1": "RC4-128 (pbeWithSHAAnd128BitRC4)",
	"1.2.840.113549.1.12.1.2": "RC4-40 (pbeWithSHAAnd40BitRC4)",
	"1.2.840.113549.1.12.1.3": "3DES (pbeWithSHAAnd3-KeyTripleDES-CBC)",
	"1.2.840.113549.1.12.1.4": "2-key 3DES (pbeWithSHAAnd2-KeyTripleDES-CBC)",
	"1.2.840.113549.1.12.1.5": "RC2-128 (pbeWithSHAAnd128BitRC2-CBC)",
	"1.2.840.113549.1.12.1.6": "RC2-40 (pbeWithSHAAnd40BitRC2-CBC)",
}

// oidSHA1 is SHA-1 as a MAC digest algorithm.
const oidSHA1 = "1.3.14.3.2.26"

// refusePFX turns a refusal under fips140=only while reading a PFX into
// one line that names the PFX's non-approved algorithms and says how to
// re-export it. Other errors pass unchanged.
func refusePFX(err error, data []byte) error {
	if !fips.IsNotApproved(err) {
		return err
	}
	var na *fips.NotApprovedError
	if !errors.As(err, &na) { // Go returned its refusal rather than panicking
		err = fmt.Errorf("read the PFX: %w", &fips.NotApprovedError{Reason: err.Error()})
	}
	what := "the PFX"
	if algs := pfxLegacyAlgorithms(data); len(algs) > 0 {
		what += " uses " + strings.Join(algs, ", ")
	} else if strings.Contains(err.Error(), "shorter than 112 bits") {
		what += "'s password is shorter than 14 characters (112 bits), too short for HMAC in FIPS 140-only mode"
	}
	return fmt.Errorf("%w; %s: %s", err, what, PFXReexportHint)
}

// pfxLegacyAlgorithms lists, best effort and without the password, the
// non-approved algorithms a PFX names where they are readable: its MAC
// digest and the PBE algorithms of its bags outside encrypted content.
func pfxLegacyAlgorithms(data []byte) []string {
	var pfx struct {
		Version  int
		AuthSafe asn1.RawValue
		MacData  struct {
			Mac struct {
				Algorithm struct {
					Algorithm asn1.ObjectIdentifier
					Params    asn1.RawValue `asn1:"optional"`
				}
				Digest []byte
			}
			Salt       []byte
			Iterations int `asn1:"optional,default:1"`
		} `asn1:"optional"`
	}
	if _, err := asn1.Unmarshal(data, &pfx); err != nil {
		return nil
	}
	var found []string
	walkOIDs(pfx.AuthSafe.FullBytes, 0, func(oid string) {
		if name, ok := legacyPFXAlgorithms[oid]; ok && !slices.Contains(found, name) {
			found = append(found, name)
		}
	})
	if pfx.MacData.Mac.Algorithm.Algorithm.String() == oidSHA1 {
		found = append(found, "a SHA-1 MAC")
	}
	return found
}

// walkOIDs calls fn for every OBJECT IDENTIFIER in der, descending into
// constructed values and into OCTET STRINGs and explicit tags that hold
// DER (PKCS#12 nests its bags so). Depth is bounded; encrypted content
// does not parse and is skipped.
func walkOIDs(der []byte, depth int, fn func(string)) {
	if depth > 12 {
		return
	}
	for len(der) > 0 {
		var v asn1.RawValue
		rest, err := asn1.Unmarshal(der, &v)
		if err != nil {
			return
		}
		switch {
		case v.Class == asn1.ClassUniversal && v.Tag == asn1.TagOID:
			var oid asn1.ObjectIdentifier
			if _, err := asn1.Unmarshal(v.FullBytes, &oid); err == nil {
				fn(oid.String())
			}
		case v.IsCompound, v.Class == asn1.ClassUniversal && v.Tag == asn1.TagOctetString:
			walkOIDs(v.Bytes, depth+1, fn)
		}
		der = rest
	}
}
