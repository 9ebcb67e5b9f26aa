package ha

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/fips140"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // OCSP CertIDs use SHA-1 by default (RFC 5019)
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"hash"
)

type pkixExtension = pkix.Extension

func newResponderKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// hashIssuer precomputes the issuer name and key hashes a request may use.
func (k *responderKey) hashIssuer() error {
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(k.issuer.RawSubjectPublicKeyInfo, &spki); err != nil {
		return fmt.Errorf("parse issuer public key: %w", err)
	}
	k.nameHash = map[crypto.Hash][]byte{}
	k.keyHash = map[crypto.Hash][]byte{}
	for h, newHash := range issuerHashFuncs(fips140.Enforced()) {
		nh := newHash()
		nh.Write(k.issuer.RawSubject)
		kh := newHash()
		kh.Write(spki.PublicKey.RightAlign())
		k.nameHash[h], k.keyHash[h] = nh.Sum(nil), kh.Sum(nil)
	}
	return nil
}

// issuerHashFuncs are the CertID hash algorithms the responder recognises.
// Under GODEBUG=fips140=only Go refuses SHA-1 by panicking, even as the
// identifier hash SP 800-131A allows, so SHA-1 is left out: a SHA-1 CertID
// then names no known issuer and gets "unauthorized" (docs/fips.md). In
// mode on and off SHA-1 stays, as most clients send it (RFC 5019).
func issuerHashFuncs(enforced bool) map[crypto.Hash]func() hash.Hash {
	m := map[crypto.Hash]func() hash.Hash{crypto.SHA256: sha256.New, crypto.SHA384: sha512.New384, crypto.SHA512: sha512.New}
	if !enforced {
		m[crypto.SHA1] = sha1.New
	}
	return m
}
