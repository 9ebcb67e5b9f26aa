package audit

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/stepfort/stepfort/internal/kmskey"
	"golang.org/x/mod/sumdb/tlog"
)

// Checkpoint is a signed tree head: the first Size records of the trail
// have the RFC 6962 root Root. Signature is over SignedText: Ed25519 (Alg
// empty, the file key) or ECDSA with SHA-256/384, ASN.1 DER (Alg "ES256"
// or "ES384", a KMS key such as pkcs11:).
type Checkpoint struct {
	Size      int64  `json:"size"`
	Root      string `json:"root"` // hex
	Time      string `json:"time"`
	KeyID     string `json:"keyId"`
	Alg       string `json:"alg,omitempty"` // "" = Ed25519
	Signature string `json:"signature"`     // base64
}

// Signature algorithms of a checkpoint.
const (
	AlgEd25519 = "" // omitted: checkpoints written before alg existed
	AlgES256   = "ES256"
	AlgES384   = "ES384"
)

// SignedText is what the audit key signs.
func (c *Checkpoint) SignedText() []byte {
	return []byte("stepfort audit checkpoint v1\n" + strconv.FormatInt(c.Size, 10) + "\n" + c.Root + "\n" + c.Time + "\n")
}

// Verify checks the signature with pub (Ed25519 or ECDSA P-256/P-384).
func (c *Checkpoint) Verify(pub crypto.PublicKey) error {
	if c.KeyID != KeyID(pub) {
		return fmt.Errorf("checkpoint %d is signed by key %s, not by %s", c.Size, c.KeyID, KeyID(pub))
	}
	alg, err := keyAlg(pub)
	if err != nil {
		return err
	}
	if c.Alg != alg {
		return fmt.Errorf("checkpoint %d: algorithm %q does not match the key's %q", c.Size, c.Alg, alg)
	}
	sig, err := base64.StdEncoding.DecodeString(c.Signature)
	if err != nil || !verifySig(pub, c.SignedText(), sig) {
		return fmt.Errorf("checkpoint %d: bad signature", c.Size)
	}
	return nil
}

func verifySig(pub crypto.PublicKey, msg, sig []byte) bool {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return ed25519.Verify(k, msg, sig)
	case *ecdsa.PublicKey:
		h, _ := ecdsaHash(k)
		return ecdsa.VerifyASN1(k, digest(h, msg), sig)
	}
	return false
}

// keyAlg names the checkpoint algorithm of pub; other keys are refused.
func keyAlg(pub crypto.PublicKey) (string, error) {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return AlgEd25519, nil
	case *ecdsa.PublicKey:
		if _, err := ecdsaHash(k); err != nil {
			return "", err
		}
		if k.Curve == elliptic.P384() {
			return AlgES384, nil
		}
		return AlgES256, nil
	}
	return "", fmt.Errorf("audit key: want an Ed25519 or ECDSA P-256/P-384 key, got %T", pub)
}

func ecdsaHash(k *ecdsa.PublicKey) (crypto.Hash, error) {
	switch k.Curve {
	case elliptic.P256():
		return crypto.SHA256, nil
	case elliptic.P384():
		return crypto.SHA384, nil
	}
	return 0, fmt.Errorf("audit key: ECDSA curve %s is not supported (want P-256 or P-384)", k.Curve.Params().Name)
}

func digest(h crypto.Hash, msg []byte) []byte {
	w := h.New()
	w.Write(msg)
	return w.Sum(nil)
}

func (c *Checkpoint) root() (tlog.Hash, error) { return parseHexHash(c.Root) }

// sign makes a checkpoint with key: Ed25519 signs the text itself, ECDSA
// its digest (a KMS signer may fail: an HSM that is down).
func sign(key crypto.Signer, size int64, root tlog.Hash, at string) (*Checkpoint, error) {
	pub := key.Public()
	alg, err := keyAlg(pub)
	if err != nil {
		return nil, err
	}
	c := &Checkpoint{Size: size, Root: hexHash(root), Time: at, KeyID: KeyID(pub), Alg: alg}
	var sig []byte
	if alg == AlgEd25519 {
		sig, err = key.Sign(rand.Reader, c.SignedText(), crypto.Hash(0))
	} else {
		h, _ := ecdsaHash(pub.(*ecdsa.PublicKey))
		sig, err = key.Sign(rand.Reader, digest(h, c.SignedText()), h)
	}
	if err != nil {
		return nil, fmt.Errorf("sign checkpoint %d: %w", size, err)
	}
	c.Signature = base64.StdEncoding.EncodeToString(sig)
	return c, nil
}

// KeyID names a public key: the first 8 bytes of the SHA-256 of its PKIX
// encoding, in hex.
func KeyID(pub crypto.PublicKey) string {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:8])
}

// LoadSigner opens the checkpoint key that auditLog.key names: a KMS key
// URI ("pkcs11:...", ECDSA P-256 or P-384) or the Ed25519 file key, read
// or created by LoadOrCreateKey.
func LoadSigner(key string) (crypto.Signer, error) {
	if !IsKMSURI(key) {
		k, err := LoadOrCreateKey(key)
		if err != nil {
			return nil, err
		}
		return k, nil
	}
	s, _, err := kmskey.Open(key) // kept for the life of the process
	if err != nil {
		return nil, fmt.Errorf("audit key %s: %w", redactURI(key), err)
	}
	if _, err := keyAlg(s.Public()); err != nil {
		return nil, fmt.Errorf("audit key %s: %w", redactURI(key), err)
	}
	return s, nil
}

// IsKMSURI tells a KMS key URI ("pkcs11:...", "softkms:...") from a file
// path.
func IsKMSURI(key string) bool {
	i := strings.Index(key, ":")
	return i > 1 && !strings.ContainsAny(key[:i], `/\`)
}

// redactURI drops the query (pin-value may be there) for messages.
func redactURI(uri string) string {
	u, _, _ := strings.Cut(uri, "?")
	return u
}

// LoadOrCreateKey reads the Ed25519 audit key (PKCS #8 PEM) at path, or
// creates it (0600, directory 0700) with its public key at path+".pub".
func LoadOrCreateKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return createKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("audit key %s: %w", path, err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("audit key %s: not a PEM PRIVATE KEY", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("audit key %s: %w", path, err)
	}
	ed, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("audit key %s: want an Ed25519 key, got %T", path, k)
	}
	return ed, nil
}

func createKey(path string) (ed25519.PrivateKey, error) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		return nil, fmt.Errorf("audit key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("audit key %s: %w", path, err)
	}
	if err := os.WriteFile(path+".pub", PublicPEM(pub), 0o644); err != nil {
		return nil, fmt.Errorf("audit public key: %w", err)
	}
	return key, nil
}

// PublicPEM encodes pub as a PEM PUBLIC KEY (PKIX).
func PublicPEM(pub crypto.PublicKey) []byte {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// ParsePublicPEM reads a PEM PUBLIC KEY (PKIX) that can verify
// checkpoints: Ed25519 or ECDSA P-256/P-384.
func ParsePublicPEM(b []byte) (crypto.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("not a PEM PUBLIC KEY")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	if _, err := keyAlg(k); err != nil {
		return nil, err
	}
	return k, nil
}
