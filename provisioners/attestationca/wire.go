package attestationca

// Wire types of the Smallstep Attestation CA protocol, as sent by
// go.step.sm/crypto/tpm/attestation.Client and the step CLI
// (utils/cautils/tpm.go). []byte fields are standard base64 in JSON.

// TPMInfo is what the client reports about its TPM (unverified claims).
type TPMInfo struct {
	Version         uint8  `json:"version,omitempty"` // 2 = TPM 2.0
	Manufacturer    string `json:"manufacturer,omitempty"`
	Model           string `json:"model,omitempty"`
	FirmwareVersion string `json:"firmwareVersion,omitempty"`
}

// AttestationParameters are the AK creation parameters (TPM structures).
type AttestationParameters struct {
	Public                  []byte `json:"public,omitempty"`
	UseTCSDActivationFormat bool   `json:"useTCSDActivationFormat,omitempty"`
	CreateData              []byte `json:"createData,omitempty"`
	CreateAttestation       []byte `json:"createAttestation,omitempty"`
	CreateSignature         []byte `json:"createSignature,omitempty"`
}

// AttestRequest is the body of POST {base}/attest.
type AttestRequest struct {
	TPMInfo      TPMInfo               `json:"tpmInfo"`
	EKPub        []byte                `json:"ek,omitempty"`
	EKCerts      [][]byte              `json:"ekCerts,omitempty"`
	AKCert       []byte                `json:"akCert,omitempty"`
	AttestParams AttestationParameters `json:"params"`
}

// AttestResponse is the credential activation challenge.
type AttestResponse struct {
	Credential []byte `json:"credential"`
	Secret     []byte `json:"secret"`
}

// SecretRequest is the body of POST {base}/secret: the activated secret.
type SecretRequest struct {
	Secret []byte `json:"secret"`
}

// SecretResponse carries the AK certificate chain, leaf first (DER).
type SecretResponse struct {
	CertificateChain [][]byte `json:"chain"`
}
