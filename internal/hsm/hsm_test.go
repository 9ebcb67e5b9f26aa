//go:build cgo && !nopkcs11

package hsm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.step.sm/crypto/kms/apiv1"

	"github.com/stepfort/stepfort/internal/testenv"
)

// newToken gives the test its own SoftHSM2 token. SOFTHSM2_CONF is
// process-wide, so these tests do not run in parallel.
func newToken(t *testing.T) *testenv.SoftHSM {
	t.Helper()
	h := testenv.NewSoftHSM(t)
	t.Setenv("SOFTHSM2_CONF", h.Conf)
	return h
}

func open(t *testing.T, uri string) *KMS {
	t.Helper()
	k, err := Open(context.Background(), apiv1.Options{Type: apiv1.PKCS11, URI: uri})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k.Close() })
	return k
}

const keyURI = "pkcs11:id=7331;object=test-key"

func sign(t *testing.T, s crypto.Signer) error {
	t.Helper()
	d := sha256.Sum256([]byte("hello"))
	sig, err := s.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		return err
	}
	if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("signature does not verify")
	}
	return nil
}

func TestCreateSignAndErrors(t *testing.T) {
	h := newToken(t)
	k := open(t, h.KMSURI())
	if _, err := k.CreateKey(&apiv1.CreateKeyRequest{Name: keyURI, SignatureAlgorithm: apiv1.ECDSAWithSHA256}); err != nil {
		t.Fatal(err)
	}
	s, err := k.CreateSigner(&apiv1.CreateSignerRequest{SigningKey: keyURI})
	if err != nil {
		t.Fatal(err)
	}
	if err := sign(t, s); err != nil {
		t.Fatal(err)
	}

	_, err = k.CreateSigner(&apiv1.CreateSignerRequest{SigningKey: "pkcs11:object=absent"})
	wantErr(t, err, `pkcs11: no key pkcs11:object=absent in token token="stepfort"`)

	bad := filepath.Join(t.TempDir(), "bad-pin")
	if err := os.WriteFile(bad, []byte("9999\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := "pkcs11:module-path=" + testenv.SoftHSMModule
	for _, c := range []struct{ uri, want string }{
		{base + ";token=other?pin-source=" + h.PINFile, `pkcs11: no token token="other" in module ` + testenv.SoftHSMModule},
		{"pkcs11:module-path=/nonexistent/lib.so;token=stepfort?pin-value=1", "pkcs11: module-path /nonexistent/lib.so: stat /nonexistent/lib.so: no such file or directory"},
		{"pkcs11:module-path=" + bad + ";token=stepfort?pin-value=1", "pkcs11: module " + bad + " does not load"},
		{base + ";token=stepfort?pin-source=/nonexistent/pin", "pkcs11: pin-source: open /nonexistent/pin: no such file or directory"},
		{base + ";module-path=x", "pkcs11: kms uri needs token=, serial= or slot-id="},
	} {
		_, err := Open(context.Background(), apiv1.Options{Type: apiv1.PKCS11, URI: c.uri})
		wantErr(t, err, c.want)
	}
}

// A wrong PIN is checked on a token no other context in the process has
// logged in to (a shared context would not log in again).
func TestWrongPIN(t *testing.T) {
	h := newToken(t)
	_, err := Open(context.Background(), apiv1.Options{Type: apiv1.PKCS11, URI: "pkcs11:module-path=" + testenv.SoftHSMModule + ";token=stepfort?pin-value=9999"})
	wantErr(t, err, `pkcs11: wrong PIN for token token="stepfort" (CKR_PIN_INCORRECT)`)
	_ = h
}

func TestTokenLostAndBack(t *testing.T) {
	h := newToken(t)
	k := open(t, h.KMSURI())
	if _, err := k.CreateKey(&apiv1.CreateKeyRequest{Name: keyURI}); err != nil {
		t.Fatal(err)
	}
	s, err := k.CreateSigner(&apiv1.CreateSignerRequest{SigningKey: keyURI})
	if err != nil {
		t.Fatal(err)
	}
	if err := sign(t, s); err != nil {
		t.Fatal(err)
	}
	if err := h.Remove(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		start := time.Now()
		err := sign(t, s)
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("sign %d with the token away: %v, want ErrUnavailable", i, err)
		}
		if d := time.Since(start); d > SignTimeout+time.Second {
			t.Fatalf("sign %d took %s", i, d)
		}
		t.Logf("token away: %v", err)
	}
	if err := h.Restore(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := sign(t, s)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("token back, still failing: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func wantErr(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("error %v, want it to contain %q", err, want)
	}
}
