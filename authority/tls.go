package authority

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"

	upstream "github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/ca"
)

// tlsConfigs builds the server and webhook-client TLS configurations with a
// self-renewing certificate. Mirrors ca/ca.go (*CA).getTLSConfig of v0.30.2:
// clients may present a certificate (VerifyClientCertIfGiven) so that mTLS
// /renew and /rekey work, and the intermediates are added to the client CA
// pool for clients that do not send them.
func tlsConfigs(auth *upstream.Authority, cfg *config.Config) (server, client *tls.Config, renewer *ca.TLSRenewer, err error) {
	crt, err := auth.GetTLSCertificate()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("issue the CA's TLS certificate: %w", err)
	}
	renewer, err = ca.NewTLSRenewer(crt, auth.GetTLSCertificate)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("start TLS renewer: %w", err)
	}
	if cfg.TLS != nil {
		server = cfg.TLS.TLSConfig()
	} else {
		server = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	// Without SNI (clients connecting by IP) Go would fall back to
	// Certificates[0]; leaving it empty forces GetCertificate.
	server.Certificates = nil
	client = server.Clone()
	server.GetCertificate = renewer.GetCertificateForCA
	client.GetClientCertificate = renewer.GetClientCertificate

	clientCAs := x509.NewCertPool()
	webhookRoots, err := x509.SystemCertPool()
	if err != nil {
		webhookRoots = x509.NewCertPool()
	}
	for _, c := range auth.GetRootCertificates() {
		clientCAs.AddCert(c)
		webhookRoots.AddCert(c)
	}
	for _, der := range crt.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("parse intermediate: %w", err)
		}
		clientCAs.AddCert(c)
		webhookRoots.AddCert(c)
	}
	server.ClientAuth = tls.VerifyClientCertIfGiven
	server.ClientCAs = clientCAs
	client.RootCAs = webhookRoots
	return server, client, renewer, nil
}
