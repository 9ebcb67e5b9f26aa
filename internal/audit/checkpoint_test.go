package audit

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stepfort/stepfort/plugins/plugintest"
	_ "go.step.sm/crypto/kms/softkms" // registers softkms: for LoadSigner
)

// TestEd25519CheckpointUnchanged: the file key's checkpoint JSON has no
// alg field and its signature is plain Ed25519 over SignedText, as before
// ECDSA keys existed.
func TestEd25519CheckpointUnchanged(t *testing.T) {
	seed := bytes.Repeat([]byte{7}, ed25519.SeedSize)
	key := ed25519.NewKeyFromSeed(seed)
	cp, err := sign(key, 3, [32]byte{1}, "2026-01-01T00:00:00Z")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(cp)
	if bytes.Contains(b, []byte(`"alg"`)) {
		t.Fatalf("Ed25519 checkpoint has an alg field: %s", b)
	}
	want := (&Checkpoint{Size: 3, Root: hexHash([32]byte{1}), Time: "2026-01-01T00:00:00Z"}).SignedText()
	sig := ed25519.Sign(key, want)
	var got Checkpoint
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if sig64 := base64.StdEncoding.EncodeToString(sig); got.Signature != sig64 {
		t.Fatal("signature encoding changed")
	}
	if err := got.Verify(key.Public()); err != nil {
		t.Fatal(err)
	}
}

// TestECDSATrailExportVerifies: a trail signed by an ECDSA P-256 signer
// (what a PKCS#11 token gives) exports a checkpoint with alg ES256 that
// verifies with the PKIX PEM public key; the Ed25519 file key, a P-256
// key with another id and a checkpoint whose alg was changed do not.
func TestECDSATrailExportVerifies(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	h := plugintest.NewHost(t)
	tr, err := NewTrail(h.DB(), TrailOptions{Key: ec, Replica: h.Replica(), Now: h.Now, CheckpointEvery: 5, FailClosed: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tr.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	for i := range 12 {
		if err := tr.Record(context.Background(), rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tr.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	lines := exportAll(t, tr)
	if !strings.Contains(lines[0], `"alg":"ES256"`) {
		t.Fatalf("header: %s", lines[0])
	}
	pub, err := ParsePublicPEM(PublicPEM(tr.PublicKey()))
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyLines(lines, pub); err != nil {
		t.Fatal(err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	for _, k := range []any{other.Public(), edKey.Public()} {
		if err := verifyLines(lines, k); err == nil {
			t.Fatalf("verified with %T", k)
		}
	}
	forged := append([]string(nil), lines...)
	forged[0] = strings.Replace(forged[0], `"alg":"ES256",`, "", 1)
	if err := verifyLines(forged, pub); err == nil || !strings.Contains(err.Error(), "algorithm") {
		t.Fatalf("alg removed: %v", err)
	}
	st := tr.VerifyChain(context.Background())
	if st.State != ChainOK || st.Checkpoint == nil || !st.Checkpoint.SignatureValid || st.Checkpoint.Alg != AlgES256 {
		t.Fatalf("chain verifier: %+v", st)
	}
}

// TestLoadSignerKMS: a softkms: URI (the same KMS path as pkcs11:) gives
// an ECDSA signer whose checkpoints verify; an RSA key is refused naming
// the type; a missing file key is created as today.
func TestLoadSignerKMS(t *testing.T) {
	dir := t.TempDir()
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p := filepath.Join(dir, "ec.pem")
	der, _ := x509.MarshalPKCS8PrivateKey(ec)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := LoadSigner("softkms:path=" + p)
	if err != nil {
		t.Fatal(err)
	}
	if !ec.PublicKey.Equal(s.Public()) {
		t.Fatal("softkms signer has another key")
	}
	var buf bytes.Buffer
	if err := WriteSyntheticExport(&buf, 20, s, time.Unix(0, 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(&buf, &ec.PublicKey); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSigner("softkms:path=" + filepath.Join(dir, "missing.pem")); err == nil || !strings.Contains(err.Error(), "audit key softkms:") {
		t.Fatalf("missing KMS key: %v", err)
	}
	fk := filepath.Join(dir, "secrets", "audit_key")
	k, err := LoadSigner(fk)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := k.(ed25519.PrivateKey); !ok {
		t.Fatalf("file key is %T", k)
	}
	if _, err := os.Stat(fk + ".pub"); err != nil {
		t.Fatal(err)
	}
}

// TestConfigKMSKey: a KMS URI is accepted as key; a relative path is not.
func TestConfigKMSKey(t *testing.T) {
	c := DefaultConfig()
	c.Path, c.Key = "/var/lib/stepfort/logs/certificates.jsonl", "pkcs11:module-path=/x.so;token=t;id=01?pin-source=/p"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.Key = "secrets/audit_key"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "key") {
		t.Fatalf("relative key: %v", err)
	}
}
