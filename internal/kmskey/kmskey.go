// Package kmskey opens a signing key named by a KMS URI, the one way
// stepfort's own keys (the OCSP responder key, the Attestation CA key, a
// legacy issuer's key, the audit checkpoint key) reach a KMS or HSM: the
// URI selects the KMS (its type, module, token and PIN source) and the
// key, e.g.
// pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=stepfort;object=ocsp?pin-source=/etc/stepfort/pin
// (docs/hsm.md). Callers name the configuration field in their errors.
package kmskey

import (
	"context"
	"crypto"
	"fmt"

	"go.step.sm/crypto/kms"
	"go.step.sm/crypto/kms/apiv1"
)

// Open opens the KMS uri selects and a signer for the key it names. The
// KMS stays open until close is called; callers that keep the key for the
// life of the process never call it.
func Open(uri string) (signer crypto.Signer, close func() error, err error) {
	typ, err := apiv1.TypeOf(uri)
	if err != nil {
		return nil, nil, err
	}
	km, err := kms.New(context.Background(), apiv1.Options{Type: typ, URI: uri})
	if err != nil {
		return nil, nil, fmt.Errorf("open KMS: %w", err)
	}
	s, err := km.CreateSigner(&apiv1.CreateSignerRequest{SigningKey: uri})
	if err != nil {
		_ = km.Close()
		return nil, nil, err
	}
	return s, km.Close, nil
}
