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
	"strings"

	"go.step.sm/crypto/kms/apiv1"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/internal/kmskey"
)

type pkixExtension = pkix.Extension

func newResponderKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// responderKeyPath is ocsp.responderKey's full path in ca.json, for errors
// raised after Validate (opening the key).
const responderKeyPath = "stepfort.plugins." + Name + ".ocsp.responderKey"

// validResponderKey checks ocsp.responderKey: a KMS key URI of a type
// the KMS registry knows ("pkcs11:...", "softkms:..."), not a file, and only
// for a delegated responder (with signer "ca" the CA key signs).
func validResponderKey(c OCSPConfig) error {
	if c.ResponderKey == "" {
		return nil
	}
	scheme, _, ok := strings.Cut(c.ResponderKey, ":")
	if !ok || scheme == "" || strings.ContainsAny(scheme, `/\`) {
		return config.Errorf("ocsp.responderKey", "must be a KMS key URI such as pkcs11:module-path=...;token=...;id=...;object=...?pin-source=..., got %q", c.ResponderKey)
	}
	if _, err := apiv1.TypeOf(c.ResponderKey); err != nil {
		return config.Errorf("ocsp.responderKey", "unknown KMS type %q: %v", scheme, err)
	}
	if c.Signer != "delegated" {
		return config.Errorf("ocsp.responderKey", `only with ocsp.signer "delegated", got %q`, c.Signer)
	}
	return nil
}

// openResponderKey opens the KMS key named by uri once, as legacy issuers
// and the Attestation CA do: the URI selects the KMS (module, token, PIN)
// and the key. The KMS stays open until close is called (Plugin.Stop).
// internal/hsm bounds every PKCS#11 signature and reopens a lost token, so
// the signer is kept across rotations.
func openResponderKey(uri string) (signer crypto.Signer, close func() error, err error) {
	if signer, close, err = kmskey.Open(uri); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", responderKeyPath, err)
	}
	return signer, close, nil
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
