package attestationca

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"testing"

	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
)

// softTPM plays a TPM in software for unit tests: an RSA EK and an AK
// whose creation parameters pass go-attestation's checks (a software key
// can claim TPM_GENERATED; proving the AK lives with the EK is what
// credential activation is for), and ActivateCredential with the EK's
// private key.
type softTPM struct {
	ek   *rsa.PrivateKey
	ak   *rsa.PrivateKey
	body []byte // an /attest request for this EK and AK
}

func newSoftTPM(t testing.TB) *softTPM {
	t.Helper()
	ek, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ak, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	s := &softTPM{ek: ek, ak: ak}
	s.body = s.attestBody(t)
	return s
}

// ekPEM is the EK as the inventory takes it.
func (s *softTPM) ekPEM(t testing.TB) string {
	der, err := x509.MarshalPKIXPublicKey(&s.ek.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func (s *softTPM) attestBody(t testing.TB) []byte {
	t.Helper()
	pub := tpm2.Public{
		Type:    tpm2.AlgRSA,
		NameAlg: tpm2.AlgSHA256,
		Attributes: tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin |
			tpm2.FlagUserWithAuth | tpm2.FlagRestricted | tpm2.FlagSign,
		RSAParameters: &tpm2.RSAParams{
			Sign:       &tpm2.SigScheme{Alg: tpm2.AlgRSASSA, Hash: tpm2.AlgSHA256},
			KeyBits:    2048,
			ModulusRaw: s.ak.N.Bytes(),
		},
	}
	pubBytes, err := pub.Encode()
	if err != nil {
		t.Fatal(err)
	}
	name, err := pub.Name()
	if err != nil {
		t.Fatal(err)
	}
	// TPMS_CREATION_DATA: no PCRs, empty digests and names.
	createData := []byte{0, 0, 0, 0, 0, 0, 0, 0, 0x0b, 0, 0, 0, 0, 0, 0}
	if _, err := tpm2.DecodeCreationData(createData); err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(createData)
	att := tpm2.AttestationData{
		Magic:                0xff544347, // TPM_GENERATED_VALUE
		Type:                 tpm2.TagAttestCreation,
		QualifiedSigner:      tpm2.Name{Digest: &tpm2.HashValue{Alg: tpm2.AlgSHA256, Value: make([]byte, 32)}},
		AttestedCreationInfo: &tpm2.CreationInfo{Name: name, OpaqueDigest: digest[:]},
	}
	attBytes, err := att.Encode()
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(attBytes)
	sig, err := rsa.SignPKCS1v15(rand.Reader, s.ak, crypto.SHA256, h[:])
	if err != nil {
		t.Fatal(err)
	}
	sigBytes, err := tpm2.Signature{Alg: tpm2.AlgRSASSA, RSA: &tpm2.SignatureRSA{HashAlg: tpm2.AlgSHA256, Signature: sig}}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	ekDER, _ := x509.MarshalPKIXPublicKey(&s.ek.PublicKey)
	body, err := json.Marshal(AttestRequest{
		TPMInfo: TPMInfo{Version: 2, Manufacturer: "1229081856", Model: "SW   TPM", FirmwareVersion: "8217.4131"},
		EKPub:   ekDER,
		AttestParams: AttestationParameters{
			Public: pubBytes, CreateData: createData, CreateAttestation: attBytes, CreateSignature: sigBytes,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// activate is TPM2_ActivateCredential: it recovers the secret of an
// /attest answer with the EK's private key (TPM 2.0 part 1, 24.4-24.5).
func (s *softTPM) activate(t testing.TB, resp AttestResponse) []byte {
	t.Helper()
	var encSeed tpmutil.U16Bytes
	if _, err := tpmutil.Unpack(resp.Secret, &encSeed); err != nil {
		t.Fatalf("encrypted secret: %v", err)
	}
	seed, err := rsa.DecryptOAEP(sha256.New(), nil, s.ek, encSeed, []byte("IDENTITY\x00"))
	if err != nil {
		t.Fatalf("decrypt seed: %v", err)
	}
	var idObject tpmutil.U16Bytes
	if _, err := tpmutil.Unpack(resp.Credential, &idObject); err != nil {
		t.Fatalf("credential: %v", err)
	}
	var mac, encIdentity tpmutil.U16Bytes
	r := bytes.NewReader(idObject)
	if err := tpmutil.UnpackBuf(r, &mac); err != nil {
		t.Fatalf("credential HMAC: %v", err)
	}
	encIdentity = make([]byte, r.Len())
	_, _ = r.Read(encIdentity)
	var req AttestRequest
	_ = json.Unmarshal(s.body, &req)
	att, err := tpm2.DecodeAttestationData(req.AttestParams.CreateAttestation)
	if err != nil {
		t.Fatal(err)
	}
	akName, err := att.AttestedCreationInfo.Name.Digest.Encode()
	if err != nil {
		t.Fatal(err)
	}
	key, err := tpm2.KDFa(tpm2.AlgSHA256, seed, "STORAGE", akName, nil, 128)
	if err != nil {
		t.Fatal(err)
	}
	c, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	cv := make([]byte, len(encIdentity))
	cipher.NewCFBDecrypter(c, make([]byte, aes.BlockSize)).XORKeyStream(cv, encIdentity)
	var secret tpmutil.U16Bytes
	if _, err := tpmutil.Unpack(cv, &secret); err != nil {
		t.Fatalf("credential value: %v", err)
	}
	return secret
}
