package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"runtime"
	"sync"
	"time"

	"github.com/smallstep/pkcs7"
	"github.com/smallstep/scep"
	scepx509 "github.com/smallstep/scep/x509util"
)

// The SCEP client: a PKCSReq built as micromdm scepclient builds it (a
// CSR with challengePassword, encrypted to the RA and signed with a
// self-signed certificate of the CSR's key), sent by POST PKIOperation.

// oidPKIStatus is the SCEP pkiStatus signed attribute.
var oidPKIStatus = asn1.ObjectIdentifier{2, 16, 840, 1, 113733, 1, 9, 3}

// clientKeyBits is the RSA size of the enrolling keys: the smallest the
// provisioner accepts (minimumPublicKeyLength 2048), as MDM profiles use.
// The CertRep is encrypted to this key, so it must be RSA.
const clientKeyBits = 2048

// enrollee is one enrolling client: its key and the CN it asks for.
type enrollee struct {
	cn  string
	key *rsa.PrivateKey
}

// makeEnrollees generates n RSA keys on every CPU. The same keys serve
// every run (each run has a fresh database), so the costly key generation
// happens once.
func makeEnrollees(n int) ([]enrollee, error) {
	out := make([]enrollee, n)
	err := parallel(n, func(i int) error {
		key, err := rsa.GenerateKey(rand.Reader, clientKeyBits)
		out[i] = enrollee{cn: fmt.Sprintf("scep-bench-%06d", i), key: key}
		return err
	})
	return out, err
}

// request is a ready PKIOperation body and what checks its answer.
type request struct {
	body []byte
	cn   string
	key  *rsa.PrivateKey
	cert *x509.Certificate // self-signed signer, the CertRep's recipient
}

// buildRequests makes the PKCSReq of each enrollee with challenges[i]
// (or the one static challenge when len(challenges) == 1), encrypted to ra.
func buildRequests(es []enrollee, challenges []string, ra *x509.Certificate) ([]request, error) {
	out := make([]request, len(es))
	err := parallel(len(es), func(i int) error {
		ch := challenges[0]
		if len(challenges) > 1 {
			ch = challenges[i]
		}
		r, err := pkcsReq(es[i], ch, ra)
		out[i] = r
		return err
	})
	return out, err
}

// pkcsReq builds one PKCSReq message.
func pkcsReq(e enrollee, challenge string, ra *x509.Certificate) (request, error) {
	subject := pkix.Name{CommonName: e.cn}
	der, err := scepx509.CreateCertificateRequest(rand.Reader, &scepx509.CertificateRequest{
		CertificateRequest: x509.CertificateRequest{Subject: subject, SignatureAlgorithm: x509.SHA256WithRSA},
		ChallengePassword:  challenge,
	}, e.key)
	if err != nil {
		return request{}, fmt.Errorf("CSR: %w", err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return request{}, fmt.Errorf("parse CSR: %w", err)
	}
	signer, err := selfSigned(e.key, subject)
	if err != nil {
		return request{}, err
	}
	msg, err := scep.NewCSRRequest(csr, &scep.PKIMessage{
		MessageType: scep.PKCSReq, Recipients: []*x509.Certificate{ra}, SignerKey: e.key, SignerCert: signer,
	})
	if err != nil {
		return request{}, fmt.Errorf("PKCSReq: %w", err)
	}
	return request{body: msg.Raw, cn: e.cn, key: e.key, cert: signer}, nil
}

// selfSigned is the short-lived certificate that signs a PKCSReq, as
// scepclient makes it.
func selfSigned(key *rsa.PrivateKey, subject pkix.Name) (*x509.Certificate, error) {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      subject,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("self-signed certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// getRA asks GetCACert once and returns the certificate SCEP clients
// encrypt to: the one with keyEncipherment (scepclient's
// -key-encipherment-selector).
func getRA(ctx context.Context, hc *http.Client, url string) (*x509.Certificate, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"?operation=GetCACert", nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GetCACert: %w", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GetCACert: %s %v %s", resp.Status, err, brief(string(b)))
	}
	certs, err := scep.CACerts(b)
	if err != nil {
		if c, err2 := x509.ParseCertificate(b); err2 == nil {
			certs = []*x509.Certificate{c}
		} else {
			return nil, fmt.Errorf("GetCACert: %w", err)
		}
	}
	ra := scep.EnciphermentCertsSelector().SelectCerts(certs)
	if len(ra) == 0 {
		return nil, fmt.Errorf("GetCACert: none of %d certificates has keyEncipherment", len(certs))
	}
	return ra[0], nil
}

// enroll posts one PKCSReq and checks the CertRep: signed, pkiStatus
// SUCCESS, and the certificate it carries (encrypted to the request's
// signer) is for the CN asked for.
func enroll(ctx context.Context, hc *http.Client, url string, r *request) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"?operation=PKIOperation", bytes.NewReader(r.body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-pki-message")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %s: %s", resp.Status, brief(string(b)))
	}
	return checkCertRep(b, r)
}

func checkCertRep(b []byte, r *request) error {
	p7, err := pkcs7.Parse(b)
	if err != nil {
		return fmt.Errorf("CertRep: %w", err)
	}
	if err := p7.Verify(); err != nil {
		return fmt.Errorf("CertRep signature: %w", err)
	}
	var status scep.PKIStatus
	if err := p7.UnmarshalSignedAttribute(oidPKIStatus, &status); err != nil {
		return fmt.Errorf("CertRep pkiStatus: %w", err)
	}
	if status != scep.SUCCESS {
		return fmt.Errorf("pkiStatus %q, want SUCCESS (0)", status)
	}
	env, err := pkcs7.Parse(p7.Content)
	if err != nil {
		return fmt.Errorf("CertRep envelope: %w", err)
	}
	degenerate, err := env.Decrypt(r.cert, r.key)
	if err != nil {
		return fmt.Errorf("decrypt CertRep: %w", err)
	}
	certs, err := scep.CACerts(degenerate)
	if err != nil || len(certs) == 0 {
		return errors.New("CertRep carries no certificate")
	}
	if cn := certs[0].Subject.CommonName; cn != r.cn {
		return fmt.Errorf("certificate for %q, want %q", cn, r.cn)
	}
	return nil
}

// parallel runs f(0..n-1) on every CPU and returns the first error.
func parallel(n int, f func(i int) error) error {
	var mu sync.Mutex
	var first error
	var wg sync.WaitGroup
	next := make(chan int)
	for range runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return first
}
