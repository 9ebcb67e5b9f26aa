package setup

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/db"
	"go.step.sm/crypto/kms/apiv1"
)

// caFile is ca.json: upstream's configuration with stepfort's block next to
// it. Upstream ignores the "stepfort" key; config.Load reads it strictly.
type caFile struct {
	*config.Config
	Stepfort stepfortBlock `json:"stepfort"`
}

// stepfortBlock is the part of ca.json's "stepfort" block that init writes;
// everything it leaves out takes config.Defaults.
type stepfortBlock struct {
	Admin   struct{}     `json:"admin"`
	Plugins pluginBlocks `json:"plugins"`
}

// pluginBlocks enables every plugin. The field types mirror each plugin's
// Config; config.Load checks them when the daemon starts (and the setup
// tests check them now).
type pluginBlocks struct {
	AuditLog      auditLogBlock      `json:"auditLog"`
	Inventory     struct{}           `json:"inventory"`
	Billing       struct{}           `json:"billing"`
	CertIndex     struct{}           `json:"certIndex"`
	Revocation    revocationBlock    `json:"revocation"`
	AttestationCA attestationCABlock `json:"attestationCA"`
	DeviceAttest  deviceAttestBlock  `json:"deviceAttest"`
	DynamicSCEP   dynamicSCEPBlock   `json:"dynamicScep"`
}

type auditLogBlock struct {
	Path string `json:"path"`
}

type revocationBlock struct {
	OCSP struct {
		URL string `json:"url"`
	} `json:"ocsp"`
	CRL *crlBlock `json:"crl,omitempty"`
}

// crlBlock is the revocation plugin's "crl" block (ha.CRLConfig); init
// writes it only to turn delta CRLs on.
type crlBlock struct {
	Delta deltaBlock `json:"delta"`
}

// deltaBlock mirrors ha.DeltaConfig. The periods are AD CS's defaults
// (base CRL weekly, delta daily), written out so operators see the knobs.
type deltaBlock struct {
	Enabled     bool   `json:"enabled"`
	BasePeriod  string `json:"basePeriod"`
	DeltaPeriod string `json:"deltaPeriod"`
}

type attestationCABlock struct {
	Certificate  string `json:"certificate"`
	Key          string `json:"key"`
	PasswordFile string `json:"passwordFile"`
	Root         string `json:"root"`
}

type deviceAttestBlock struct {
	Provisioners        []string `json:"provisioners"`
	AccountProvisioners []string `json:"accountProvisioners"`
}

// dynamicSCEPBlock attaches the dynamicScep plugin to SCEP provisioners.
// The TTLs are its defaults, written out so operators see the knobs.
type dynamicSCEPBlock struct {
	Provisioners    []string `json:"provisioners"`
	ChallengeTTL    string   `json:"challengeTTL"`
	MaxChallengeTTL string   `json:"maxChallengeTTL"`
}

// Provisioner names init gives the ACME device-attest-01 provisioner and the
// X5C account provisioner, which the deviceAttest plugin refers to.
const (
	agentsProvisioner   = "agents"
	accountsProvisioner = "accounts"
)

// newCAFile assembles ca.json from what Init wrote: the issuing CA, the
// Attestation CA, the database and the device template.
func newCAFile(o Options, r *Result, issuing, attestation *caPair, dbCfg *db.Config, provs provisioner.List) *caFile {
	httpBase := "http://" + hostPort(o.DNSNames[0], portOf(o.InsecureAddress))
	f := &caFile{Config: &config.Config{
		Root:             []string{issuing.rootFile},
		IntermediateCert: issuing.certFile,
		IntermediateKey:  issuing.keyFile,
		Address:          o.Address,
		InsecureAddress:  o.InsecureAddress,
		DNSNames:         o.DNSNames,
		Logger:           json.RawMessage(`{"format":"json"}`),
		DB:               dbCfg,
		CRL:              &config.CRLConfig{Enabled: true, GenerateOnRevoke: true, IDPurl: httpBase + "/1.0/crl"},
		AuthorityConfig:  &config.AuthConfig{Provisioners: provs},
	}}
	if o.KMS != "" {
		typ, _ := apiv1.TypeOf(o.KMS) // checked when the keys were made
		f.KMS = &apiv1.Options{Type: typ, URI: o.KMS}
	}
	p := &f.Stepfort.Plugins
	p.AuditLog.Path = filepath.Join(o.Dir, "logs", "certificates.jsonl")
	p.Revocation.OCSP.URL = httpBase + "/ocsp"
	if o.DeltaCRL {
		p.Revocation.CRL = &crlBlock{Delta: deltaBlock{Enabled: true, BasePeriod: "168h", DeltaPeriod: "24h"}}
	}
	p.AttestationCA = attestationCABlock{
		Certificate:  attestation.certFile,
		Key:          attestation.keyFile,
		PasswordFile: r.PasswordFile,
		Root:         attestation.rootFile,
	}
	p.DeviceAttest = deviceAttestBlock{
		Provisioners:        []string{agentsProvisioner},
		AccountProvisioners: []string{accountsProvisioner},
	}
	p.DynamicSCEP = dynamicSCEPBlock{
		Provisioners:    []string{scepProvisioner},
		ChallengeTTL:    "60m",
		MaxChallengeTTL: "24h",
	}
	return f
}

// newProvisioners returns the provisioners init configures:
//   - a JWK provisioner for operators (its key encrypted with password),
//   - "acme" for ordinary ACME clients,
//   - "agents", ACME device-attest-01 with TPMs whose EK chains to the
//     Attestation CA, issuing from templateFile,
//   - "accounts", the account CA role: a device certificate (x5c) buys
//     short-lived client certificates, which the deviceAttest plugin links
//     to the device.
//
// writeCAFiles appends "scep" (newSCEPProvisioner).
func newProvisioners(jwkName, password string, issuing, attestation *caPair, templateFile string) (provisioner.List, error) {
	jwk, encryptedKey, err := newProvisionerKey([]byte(password))
	if err != nil {
		return nil, fmt.Errorf("generate provisioner key: %w", err)
	}
	day := &provisioner.Duration{Duration: 24 * time.Hour}
	return provisioner.List{
		&provisioner.JWK{Type: "JWK", Name: jwkName, Key: jwk, EncryptedKey: encryptedKey},
		&provisioner.ACME{Type: "ACME", Name: "acme"},
		&provisioner.ACME{
			Type:               "ACME",
			Name:               agentsProvisioner,
			Challenges:         []provisioner.ACMEChallenge{provisioner.DEVICE_ATTEST_01},
			AttestationFormats: []provisioner.ACMEAttestationFormat{provisioner.TPM},
			AttestationRoots:   attestation.rootPEM(),
			Options:            &provisioner.Options{X509: &provisioner.X509Options{TemplateFile: templateFile}},
		},
		&provisioner.X5C{
			Type:   "X5C",
			Name:   accountsProvisioner,
			Roots:  issuing.rootPEM(),
			Claims: &provisioner.Claims{DefaultTLSDur: day, MaxTLSDur: day},
		},
	}, nil
}

func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}

// hostPort leaves out the default HTTP port, so URLs in certificates stay
// short.
func hostPort(host, port string) string {
	if port == "" || port == "80" {
		return host
	}
	return net.JoinHostPort(host, port)
}

func caURL(dns, address string) string {
	port := portOf(address)
	if port == "443" {
		return "https://" + dns
	}
	return "https://" + net.JoinHostPort(dns, port)
}
