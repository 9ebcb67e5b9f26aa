package audit

import (
	"crypto/ed25519"
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

	"golang.org/x/mod/sumdb/tlog"
)

// Checkpoint is a signed tree head: the first Size records of the trail
// have the RFC 6962 root Root. Signature is Ed25519 over SignedText.
type Checkpoint struct {
	Size      int64  `json:"size"`
	Root      string `json:"root"` // hex
	Time      string `json:"time"`
	KeyID     string `json:"keyId"`
	Signature string `json:"signature"` // base64
}

// SignedText is what the audit key signs.
func (c *Checkpoint) SignedText() []byte {
	return []byte("stepfort audit checkpoint v1\n" + strconv.FormatInt(c.Size, 10) + "\n" + c.Root + "\n" + c.Time + "\n")
}

// Verify checks the signature with pub.
func (c *Checkpoint) Verify(pub ed25519.PublicKey) error {
	if c.KeyID != KeyID(pub) {
		return fmt.Errorf("checkpoint %d is signed by key %s, not by %s", c.Size, c.KeyID, KeyID(pub))
	}
	sig, err := base64.StdEncoding.DecodeString(c.Signature)
	if err != nil || !ed25519.Verify(pub, c.SignedText(), sig) {
		return fmt.Errorf("checkpoint %d: bad signature", c.Size)
	}
	return nil
}

func (c *Checkpoint) root() (tlog.Hash, error) { return parseHexHash(c.Root) }

func sign(key ed25519.PrivateKey, size int64, root tlog.Hash, at string) *Checkpoint {
	c := &Checkpoint{Size: size, Root: hexHash(root), Time: at, KeyID: KeyID(key.Public().(ed25519.PublicKey))}
	c.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(key, c.SignedText()))
	return c
}

// KeyID names a public key: the first 8 bytes of the SHA-256 of its PKIX
// encoding, in hex.
func KeyID(pub ed25519.PublicKey) string {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:8])
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

// PublicPEM encodes pub as a PEM PUBLIC KEY.
func PublicPEM(pub ed25519.PublicKey) []byte {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// ParsePublicPEM reads an Ed25519 PEM PUBLIC KEY.
func ParsePublicPEM(b []byte) (ed25519.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("not a PEM PUBLIC KEY")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("want an Ed25519 public key, got %T", k)
	}
	return pub, nil
}
