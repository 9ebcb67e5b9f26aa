package attestationca

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"testing"
)

// FuzzAttestRequest feeds arbitrary /attest bodies through the parser and,
// when they parse, through AK parameter verification and credential
// generation: a malformed TPM structure must be an error, never a panic.
func FuzzAttestRequest(f *testing.F) {
	k, _ := rsa.GenerateKey(rand.Reader, 2048)
	ek, _ := x509.MarshalPKIXPublicKey(k.Public())
	seed, _ := json.Marshal(AttestRequest{
		TPMInfo: TPMInfo{Version: 2, Manufacturer: "1229081856", Model: "SW   TPM", FirmwareVersion: "8217.4131"},
		EKPub:   ek,
		AttestParams: AttestationParameters{
			Public:            []byte{0, 1, 0, 11, 0, 5, 4, 114, 0, 0, 0, 16, 0, 20, 0, 11, 8, 0, 0, 0, 0, 0, 1, 0},
			CreateData:        []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
			CreateAttestation: []byte{0xff, 'T', 'C', 'G', 0x80, 0x1a, 0, 0},
			CreateSignature:   []byte{0, 20, 0, 11, 1, 0, 1, 2, 3},
		},
	})
	f.Add(seed)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"tpmInfo":{"version":2},"ek":"AAAA","params":{}}`))
	f.Add([]byte(`garbage`))
	f.Fuzz(func(t *testing.T, body []byte) {
		pa, d := ParseAttestRequest(body)
		if d != nil {
			if d.status != 400 {
				t.Fatalf("parse error with status %d", d.status)
			}
			return
		}
		_, _, _ = pa.activationChallenge()
	})
}

// FuzzEKCertificate parses arbitrary EK certificates and matches them to an
// EK, as /attest does with ekCerts.
func FuzzEKCertificate(f *testing.F) {
	k, _ := rsa.GenerateKey(rand.Reader, 2048)
	ek, _ := x509.MarshalPKIXPublicKey(k.Public())
	f.Add([]byte{0x30, 0x82, 0x01, 0x00})
	f.Add(append([]byte{0x30, 0x03, 0x02, 0x01, 0x01}, make([]byte, 64)...))
	f.Fuzz(func(t *testing.T, der []byte) {
		c, err := ParseEKCertificate(der)
		if err == nil && c == nil {
			t.Fatal("nil certificate without error")
		}
		_, _ = matchingEKCertificate([][]byte{der}, ek)
	})
}
