package attestationca

import (
	"crypto"
	"fmt"
	"strings"

	"github.com/stepfort/stepfort/internal/kmskey"
	"go.step.sm/crypto/kms/apiv1"
	"go.step.sm/crypto/pemutil"
)

// kmsKey reports whether key names a key in a KMS ("pkcs11:...",
// "tpmkms:...") rather than a file.
func kmsKey(key string) bool {
	scheme, _, ok := strings.Cut(key, ":")
	if !ok || strings.Contains(scheme, "/") {
		return false
	}
	_, err := apiv1.TypeOf(key)
	return err == nil
}

// loadKey opens the Attestation CA key: an encrypted PEM file, or a key in
// a KMS named by one URI that also selects the device, e.g.
// pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=stepfort;id=5304;object=stepfort-attestation?pin-source=/etc/stepfort/pin
// (docs/hsm.md). The KMS stays open for the life of the process.
func loadKey(cfg *Config) (crypto.Signer, error) {
	if kmsKey(cfg.Key) {
		s, _, err := kmskey.Open(cfg.Key)
		if err != nil {
			return nil, fmt.Errorf("key: %w", err)
		}
		return s, nil
	}
	key, err := pemutil.Read(cfg.Key, pemutil.WithPasswordFile(cfg.PasswordFile))
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key: %s is not a signing key", cfg.Key)
	}
	return signer, nil
}
