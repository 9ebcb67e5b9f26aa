package setup

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"

	"go.step.sm/crypto/kms"
	"go.step.sm/crypto/kms/apiv1"
	"go.step.sm/crypto/kms/uri"
)

// keyStore is where init makes the CA keys. Roles are "root",
// "intermediate", "attestation_root" and "attestation_intermediate".
type keyStore interface {
	// generate returns the key for role: a new one, or, in a KMS, the
	// existing key of that name.
	generate(role string) (crypto.Signer, error)
	// save stores key (file is where a disk store writes it) and
	// returns what ca.json names it by.
	save(role, file string, key crypto.Signer, password string) (string, error)
	// close releases the store.
	close() error
}

// diskKeys makes ECDSA P-256 keys and writes them encrypted under
// secrets/ (the default).
type diskKeys struct{}

func (diskKeys) generate(string) (crypto.Signer, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func (diskKeys) save(_, file string, key crypto.Signer, password string) (string, error) {
	return file, writeKey(file, key, password)
}

func (diskKeys) close() error { return nil }

// KMSKeys are the key URIs init uses in the KMS (--kms-*-key); each is
// created when the token has no key of that name, and used as it is when
// it has one.
type KMSKeys struct {
	Root, Intermediate, AttestationRoot, Attestation string
}

// DefaultKMSKeys are the key names init uses when no --kms-*-key flag is
// given: CKA_ID and CKA_LABEL both set, as upstream requires to create a key.
var DefaultKMSKeys = KMSKeys{
	Root:            "pkcs11:id=5301;object=stepfort-root",
	Intermediate:    "pkcs11:id=5302;object=stepfort-intermediate",
	AttestationRoot: "pkcs11:id=5303;object=stepfort-attestation-root",
	Attestation:     "pkcs11:id=5304;object=stepfort-attestation",
}

func (k KMSKeys) byRole(role string) string {
	switch role {
	case "root":
		return k.Root
	case "intermediate":
		return k.Intermediate
	case "attestation_root":
		return k.AttestationRoot
	case "attestation_intermediate":
		return k.Attestation
	}
	return ""
}

// kmsKeys makes (or finds) the keys in a KMS; nothing is written to disk.
type kmsKeys struct {
	uri  string
	km   apiv1.KeyManager
	keys KMSKeys
	// created and reused list the key URIs, for the operator's notes.
	created, reused []string
}

// openKMSKeys opens the KMS of uri (its "kms" block type comes from the
// URI's scheme).
func openKMSKeys(kmsURI string, keys KMSKeys) (*kmsKeys, error) {
	typ, err := apiv1.TypeOf(kmsURI)
	if err != nil {
		return nil, fmt.Errorf("--kms: %w", err)
	}
	km, err := kms.New(context.Background(), apiv1.Options{Type: typ, URI: kmsURI})
	if err != nil {
		return nil, fmt.Errorf("--kms: %w", err)
	}
	return &kmsKeys{uri: kmsURI, km: km, keys: keys}, nil
}

func (k *kmsKeys) generate(role string) (crypto.Signer, error) {
	name := k.keys.byRole(role)
	if name == "" {
		return nil, fmt.Errorf("no KMS key name for the %s key", role)
	}
	if _, err := k.km.GetPublicKey(&apiv1.GetPublicKeyRequest{Name: name}); err == nil {
		k.reused = append(k.reused, name)
	} else {
		if _, cerr := k.km.CreateKey(&apiv1.CreateKeyRequest{Name: name, SignatureAlgorithm: apiv1.ECDSAWithSHA256}); cerr != nil {
			var exists apiv1.AlreadyExistsError
			if errors.As(cerr, &exists) {
				return nil, fmt.Errorf("--kms-%s-key %s: %w", flagRole(role), name, err)
			}
			return nil, fmt.Errorf("--kms-%s-key %s: create: %w", flagRole(role), name, cerr)
		}
		k.created = append(k.created, name)
	}
	s, err := k.km.CreateSigner(&apiv1.CreateSignerRequest{SigningKey: name})
	if err != nil {
		return nil, fmt.Errorf("--kms-%s-key %s: %w", flagRole(role), name, err)
	}
	return s, nil
}

// save names the key: the intermediate by its key URI (ca.json's "kms"
// block selects the token), the Attestation CA key by a URI that also
// selects the token (the plugin opens it by itself). Roots are not named.
func (k *kmsKeys) save(role, _ string, _ crypto.Signer, _ string) (string, error) {
	name := k.keys.byRole(role)
	if role == "attestation_intermediate" {
		return joinKeyURI(k.uri, name)
	}
	return name, nil
}

func (k *kmsKeys) close() error { return k.km.Close() }

func flagRole(role string) string {
	switch role {
	case "attestation_root":
		return "attestation-root"
	case "attestation_intermediate":
		return "attestation"
	}
	return role
}

// joinKeyURI puts the key attributes of keyURI (id, object) into kmsURI,
// which selects the module and token and gives the PIN.
func joinKeyURI(kmsURI, keyURI string) (string, error) {
	k, err := uri.Parse(keyURI)
	if err != nil {
		return "", fmt.Errorf("key %s: %w", keyURI, err)
	}
	path, query, _ := strings.Cut(kmsURI, "?")
	key, _, _ := strings.Cut(strings.TrimPrefix(keyURI, k.Scheme+":"), "?")
	out := path + ";" + key
	if query != "" {
		out += "?" + query
	}
	return out, nil
}

// keyStore returns where this init makes its CA keys.
func (o *Options) keyStore() (keyStore, error) {
	if o.KMS == "" {
		return diskKeys{}, nil
	}
	keys := o.KMSKeys
	d := DefaultKMSKeys
	for _, f := range []struct {
		v   *string
		def string
	}{{&keys.Root, d.Root}, {&keys.Intermediate, d.Intermediate}, {&keys.AttestationRoot, d.AttestationRoot}, {&keys.Attestation, d.Attestation}} {
		if *f.v == "" {
			*f.v = f.def
		}
	}
	return openKMSKeys(o.KMS, keys)
}

// kmsNotes tells the operator which keys init made or found in the KMS.
func kmsNotes(ks keyStore) []string {
	k, ok := ks.(*kmsKeys)
	if !ok {
		return nil
	}
	var notes []string
	if len(k.created) > 0 {
		notes = append(notes, "CA keys created in the KMS (never on disk): "+strings.Join(k.created, ", ")+".")
	}
	if len(k.reused) > 0 {
		notes = append(notes, "Existing KMS keys used: "+strings.Join(k.reused, ", ")+".")
	}
	notes = append(notes, "The root keys ("+k.keys.Root+", "+k.keys.AttestationRoot+") stay in the token; ca.json does not use them: delete them or move them to an offline token as your policy requires.")
	return notes
}
