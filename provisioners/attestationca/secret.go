package attestationca

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/smallstep/go-attestation/attest"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/plugins"

	"github.com/stepfort/stepfort/provisioners/inventory"
)

// maxSecretBytes bounds the activation secret (go-attestation uses 32).
const maxSecretBytes = 64

func (p *Plugin) secret(r *http.Request, w http.ResponseWriter, rq *request) (*SecretResponse, *denial) {
	body, d := p.readBody(w, r)
	if d != nil {
		return nil, d
	}
	var req SecretRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, deny(http.StatusBadRequest, codeBadRequest, "invalid secret request: %v", err)
	}
	if len(req.Secret) == 0 || len(req.Secret) > maxSecretBytes {
		return nil, deny(http.StatusBadRequest, codeBadRequest, "secret: must be 1-%d bytes", maxSecretBytes)
	}
	sess, err := p.sessions.Consume(req.Secret, p.now())
	if sess != nil {
		rq.ekURN, rq.deviceID = sess.EKURN, sess.DeviceID
	}
	switch {
	case errors.Is(err, ErrUnknownSecret):
		return nil, deny(http.StatusForbidden, codeUnknownSecret, "%v", err)
	case errors.Is(err, ErrReplaced):
		return nil, deny(http.StatusForbidden, codeReplaced, "%v: use the secret of the latest /attest", err)
	case errors.Is(err, ErrBusy):
		return nil, &denial{status: http.StatusServiceUnavailable, code: codeUnavailable, message: err.Error(), retryAfter: 1}
	case errors.Is(err, ErrReplayed):
		return nil, deny(http.StatusForbidden, codeReplayed, "%v", err)
	case errors.Is(err, ErrExpired):
		return nil, deny(http.StatusForbidden, codeExpired, "%v: attest again", err)
	case err != nil:
		p.log.Error("consume attestation session", "error", err)
		return nil, deny(http.StatusServiceUnavailable, codeUnavailable, "session store unavailable")
	}

	// The device may have been disabled or removed since /attest.
	dev, err := p.inventory.ByIdentifier(sess.EKURN)
	switch {
	case errors.Is(err, inventory.ErrNotFound):
		return nil, deny(http.StatusForbidden, codeNotRegistered, "EK %s is no longer registered in the device inventory", sess.EKURN)
	case err != nil:
		return nil, deny(http.StatusServiceUnavailable, codeUnavailable, "device inventory unavailable")
	case !dev.Active():
		return nil, deny(http.StatusForbidden, codeDisabled, "device %s is %s", dev.ID, dev.Status)
	}

	akPub, err := attest.ParseAKPublic(attest.TPMVersion20, sess.AKPublic)
	if err != nil {
		return nil, deny(http.StatusInternalServerError, codeInternal, "stored AK public key unreadable")
	}
	now := p.now()
	cert, err := p.issuer.issueAKCertificate(akPub.Public, sess, now, p.cfg.CertificateLifetime.Duration)
	if err != nil {
		p.log.Error("issue AK certificate", "ek", sess.EKURN, "error", err)
		return nil, deny(http.StatusInternalServerError, codeInternal, "could not issue the AK certificate")
	}
	if err := p.recordIssued(cert, sess.EKURN); err != nil {
		// The certificate never leaves: without its event it would be
		// missing from the index and the audit trail.
		p.log.Error("record AK certificate event", "ek", sess.EKURN, "serial", cert.SerialNumber.String(), "error", err)
		return nil, &denial{status: http.StatusServiceUnavailable, code: codeUnavailable, message: "could not record the AK certificate: attest again", retryAfter: 1}
	}
	akDER, _ := x509.MarshalPKIXPublicKey(akPub.Public)
	fp := sha256.Sum256(akDER)
	att := inventory.Attestation{At: now.UTC(), EKURN: sess.EKURN, AKFingerprint: hex.EncodeToString(fp[:]), AKCertSerial: cert.SerialNumber.String()}
	if err := p.inventory.RecordAttestation(dev.ID, att); err != nil {
		// The certificate is issued; a missing last-seen is not worth a retry loop.
		p.log.Warn("record attestation on device", "device", dev.ID, "error", err)
	}
	p.log.Info("AK certificate issued", "event", "attestation.issued", "ek", sess.EKURN, "device", dev.ID,
		"ak_fingerprint", att.AKFingerprint, "serial", att.AKCertSerial, "not_after", cert.NotAfter,
		"remote", r.RemoteAddr, "request_id", r.Header.Get("X-Request-Id"))
	chain := [][]byte{cert.Raw}
	for _, c := range p.issuer.chain {
		chain = append(chain, c.Raw)
	}
	return &SecretResponse{CertificateChain: chain}, nil
}

// recordIssued commits the issued event of an AK certificate (provisioner
// type plugins.ProvisionerTypeAttestationCA, device = the EK URN, as
// device-attest-01 names it) in a transaction of its own: the Attestation
// CA stores nothing else about the certificate. It must commit before the
// certificate is answered.
func (p *Plugin) recordIssued(cert *x509.Certificate, ekURN string) error {
	ev := &plugins.CertificateEvent{
		Kind: plugins.EventIssued, Serial: cert.SerialNumber.String(), CertificateDER: cert.Raw,
		Provisioner:         &plugins.ProvisionerRef{Name: Name, Type: plugins.ProvisionerTypeAttestationCA},
		PermanentIdentifier: ekURN,
	}
	tx := new(database.Tx)
	if err := p.certs.AddCertificateEvent(tx, ev); err != nil {
		return err
	}
	if len(tx.Operations) > 0 { // nothing when no plugin observes certificates
		if err := p.db.Update(tx); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
	}
	p.events.Announce(ev.ID)
	return nil
}
