package attestationca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/smallstep/go-attestation/attest"

	"github.com/stepfort/stepfort/internal/admin"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// Bounds on TPM structures (real ones are a few hundred bytes).
const maxTPMStructBytes = 4096

// parsedAttest is an /attest request that passed syntactic checks.
type parsedAttest struct {
	req          AttestRequest
	ek           crypto.PublicKey
	ekDER        []byte // canonical PKIX DER
	ekURN        string
	manufacturer string
	model        string
	version      string
}

// ParseAttestRequest decodes and checks an /attest body without touching
// any state: JSON shape, TPM version, EK, AK structures, tpmInfo. Every
// failure is a 400.
func ParseAttestRequest(body []byte) (*parsedAttest, *denial) {
	var pa parsedAttest
	if err := json.Unmarshal(body, &pa.req); err != nil {
		return nil, deny(http.StatusBadRequest, codeBadRequest, "invalid attestation request: %v", err)
	}
	req := &pa.req
	if req.TPMInfo.Version != uint8(attest.TPMVersion20) {
		return nil, deny(http.StatusBadRequest, codeBadRequest, "tpmInfo.version: only TPM 2.0 (2) is supported, got %d", req.TPMInfo.Version)
	}
	if req.AttestParams.UseTCSDActivationFormat {
		return nil, deny(http.StatusBadRequest, codeBadRequest, "params.useTCSDActivationFormat: TPM 1.2 activation is not supported")
	}
	if len(req.EKPub) == 0 {
		return nil, deny(http.StatusBadRequest, codeBadRequest, "ek: the endorsement public key is required")
	}
	if len(req.EKPub) > maxTPMStructBytes {
		return nil, deny(http.StatusBadRequest, codeBadRequest, "ek: too large")
	}
	ek, err := x509.ParsePKIXPublicKey(req.EKPub)
	if err != nil {
		return nil, deny(http.StatusBadRequest, codeBadRequest, "ek: %v", err)
	}
	switch k := ek.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, deny(http.StatusBadRequest, codeBadRequest, "ek: RSA key too small")
		}
	case *ecdsa.PublicKey:
	default:
		return nil, deny(http.StatusBadRequest, codeBadRequest, "ek: unsupported key type %T", ek)
	}
	pa.ek = ek
	if pa.ekDER, err = x509.MarshalPKIXPublicKey(ek); err != nil {
		return nil, deny(http.StatusBadRequest, codeBadRequest, "ek: %v", err)
	}
	if pa.ekURN, err = inventory.EKURN(ek); err != nil {
		return nil, deny(http.StatusBadRequest, codeBadRequest, "ek: %v", err)
	}
	ap := req.AttestParams
	for name, v := range map[string][]byte{"public": ap.Public, "createData": ap.CreateData, "createAttestation": ap.CreateAttestation, "createSignature": ap.CreateSignature} {
		if len(v) == 0 || len(v) > maxTPMStructBytes {
			return nil, deny(http.StatusBadRequest, codeBadRequest, "params.%s: missing or larger than %d bytes", name, maxTPMStructBytes)
		}
	}
	if _, err := attest.ParseAKPublic(attest.TPMVersion20, ap.Public); err != nil {
		return nil, deny(http.StatusBadRequest, codeBadRequest, "params.public: %v", err)
	}
	if pa.manufacturer, pa.model, pa.version, err = tpmDetails(req.TPMInfo); err != nil {
		return nil, deny(http.StatusBadRequest, codeBadRequest, "%v", err)
	}
	return &pa, nil
}

// activationChallenge verifies the AK creation parameters (TPM-generated,
// restricted, fixedTPM, signature by the AK over its creation data) and
// encrypts a fresh secret to the EK, bound to the AK name.
func (pa *parsedAttest) activationChallenge() ([]byte, *attest.EncryptedCredential, *denial) {
	ap := pa.req.AttestParams
	params := attest.ActivationParameters{
		TPMVersion: attest.TPMVersion20,
		EK:         pa.ek,
		AK: attest.AttestationParameters{
			Public: ap.Public, CreateData: ap.CreateData, CreateAttestation: ap.CreateAttestation, CreateSignature: ap.CreateSignature,
		},
	}
	secret, ec, err := params.Generate()
	if err != nil {
		return nil, nil, deny(http.StatusBadRequest, codeBadRequest, "AK parameters rejected: %v", err)
	}
	return secret, ec, nil
}

// openDenial maps an error of SessionStore.Open to the answer.
func (p *Plugin) openDenial(ekURN string, err error) *denial {
	var d *denial
	var rl *RateLimitedError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &d):
		return d
	case errors.As(err, &rl):
		return rateLimited(rl.RetryAfter, "too many attestations for EK %s", ekURN)
	case errors.Is(err, ErrBusy):
		return &denial{status: http.StatusServiceUnavailable, code: codeUnavailable, message: err.Error(), retryAfter: 1}
	}
	p.log.Error("store attestation session", "ek", ekURN, "error", err)
	return deny(http.StatusServiceUnavailable, codeUnavailable, "session store unavailable")
}

// rateLimited is a 429 with Retry-After.
func rateLimited(wait time.Duration, format string, args ...any) *denial {
	d := deny(http.StatusTooManyRequests, codeRateLimited, format, args...)
	d.retryAfter = retryAfterSeconds(wait)
	d.message += fmt.Sprintf("; retry after %ds", d.retryAfter)
	return d
}

// serveStep is the HTTP side shared by /attest and /secret: panic guard,
// denial answer and audit event, or the JSON answer.
func serveStep[Resp any](p *Plugin, step string, fn func(r *http.Request, w http.ResponseWriter, rq *request) (Resp, *denial)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rq := &request{step: step}
		defer p.guard(w, r, rq)
		resp, d := fn(r, w, rq)
		if d != nil {
			p.fail(w, r, rq, d)
			return
		}
		admin.WriteJSON(w, http.StatusOK, resp)
	}
}

func (p *Plugin) attest(r *http.Request, w http.ResponseWriter, rq *request) (*AttestResponse, *denial) {
	body, d := p.readBody(w, r)
	if d != nil {
		return nil, d
	}
	pa, d := ParseAttestRequest(body)
	if d != nil {
		return nil, d
	}
	rq.ekURN = pa.ekURN

	// Identity comes from the EK alone; it must be registered and active.
	dev, err := p.inventory.ByIdentifier(pa.ekURN)
	if errors.Is(err, inventory.ErrNotFound) {
		return nil, deny(http.StatusForbidden, codeNotRegistered, "EK %s is not registered in the device inventory", pa.ekURN)
	}
	if err != nil {
		p.log.Error("inventory lookup", "ek", pa.ekURN, "error", err)
		return nil, deny(http.StatusServiceUnavailable, codeUnavailable, "device inventory unavailable")
	}
	rq.deviceID = dev.ID
	if !dev.Active() {
		return nil, deny(http.StatusForbidden, codeDisabled, "device %s is %s", dev.ID, dev.Status)
	}

	// An EK certificate is trusted only if its key is the EK.
	ekCert, err := matchingEKCertificate(pa.req.EKCerts, pa.ekDER)
	if err != nil {
		return nil, deny(http.StatusBadRequest, codeBadRequest, "%v", err)
	}
	switch {
	case ekCert == nil && p.cfg.RequireEKCertificate:
		return nil, deny(http.StatusForbidden, codeEKCertMissing, "no EK certificate for EK %s was sent, and one is required", pa.ekURN)
	case ekCert != nil && p.ekRoots != nil:
		if err := verifyEKCertificate(ekCert, p.ekRoots, p.now()); err != nil {
			return nil, deny(http.StatusForbidden, codeEKCertUntrusted, "%v", err)
		}
	}

	ec, d := p.openSession(pa, dev.ID)
	if d != nil {
		return nil, d
	}
	p.log.Info("attestation challenge", "event", "attestation.challenge", "ek", pa.ekURN, "device", dev.ID,
		"ek_certificate", ekCert != nil, "remote", r.RemoteAddr, "request_id", r.Header.Get("X-Request-Id"))
	return &AttestResponse{Credential: ec.Credential, Secret: ec.Secret}, nil
}

// openSession makes the EK's one open session and its challenge, within
// the global and per-EK rate limits.
func (p *Plugin) openSession(pa *parsedAttest, deviceID string) (*attest.EncryptedCredential, *denial) {
	if wait := p.global.allow(p.now()); wait > 0 {
		return nil, rateLimited(wait, "too many attestations on this replica")
	}
	var ec *attest.EncryptedCredential
	err := p.sessions.Open(ekKey(pa.ekDER), p.now(), func() ([]byte, *AttestationSession, error) {
		secret, cred, d := pa.activationChallenge()
		if d != nil {
			return nil, nil, d
		}
		ec = cred
		now := p.now()
		return secret, &AttestationSession{
			EKURN: pa.ekURN, DeviceID: deviceID, AKPublic: pa.req.AttestParams.Public,
			Manufacturer: pa.manufacturer, Model: pa.model, Version: pa.version,
			CreatedAt: now, ExpiresAt: now.Add(p.cfg.SessionTTL.Duration),
		}, nil
	})
	if d := p.openDenial(pa.ekURN, err); d != nil {
		return nil, d
	}
	return ec, nil
}
