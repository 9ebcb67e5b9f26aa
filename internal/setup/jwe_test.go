package setup

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"testing"

	"go.step.sm/crypto/jose"
)

// TestAESKeyWrapVector is RFC 3394 §4.6 (256-bit KEK, 256-bit key).
func TestAESKeyWrapVector(t *testing.T) {
	kek, _ := hex.DecodeString("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
	key, _ := hex.DecodeString("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F")
	want, _ := hex.DecodeString("28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21")
	got, err := aesKeyWrap(kek, key)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("aesKeyWrap = %X, %v; want %X", got, err, want)
	}
}

// TestProvisionerKeyDecrypts: the step CLI's library opens the JWE init
// writes, and it holds the private half of the public JWK.
func TestProvisionerKeyDecrypts(t *testing.T) {
	password := []byte("correct horse battery staple")
	pub, encrypted, err := newProvisionerKey(password)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := jose.Decrypt([]byte(encrypted), jose.WithPassword(password))
	if err != nil {
		t.Fatalf("jose.Decrypt: %v", err)
	}
	var priv jose.JSONWebKey
	if err := json.Unmarshal(plain, &priv); err != nil {
		t.Fatalf("decrypted JWK: %v", err)
	}
	if priv.IsPublic() || priv.KeyID != pub.KeyID || priv.Algorithm != "ES256" {
		t.Fatalf("decrypted key: public=%v kid=%q alg=%q, want the private key of kid %q", priv.IsPublic(), priv.KeyID, priv.Algorithm, pub.KeyID)
	}
	pubJSON, _ := json.Marshal(pub)
	privPub, _ := json.Marshal(priv.Public())
	if !bytes.Equal(pubJSON, privPub) {
		t.Fatalf("decrypted key's public half %s != provisioner key %s", privPub, pubJSON)
	}
	if _, err := jose.Decrypt([]byte(encrypted), jose.WithPassword([]byte("wrong"))); err == nil {
		t.Fatal("a wrong password decrypted the key")
	}
}
