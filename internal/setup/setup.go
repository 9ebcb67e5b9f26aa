// Package setup writes a complete, working stepfort installation: PKI,
// password, provisioners, database settings, the "stepfort" block and a first
// admin token. It is what `stepfort init` and `stepfort quickstart` run.
package setup

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/smallstep/certificates/db"
	"go.step.sm/crypto/jose"
	"go.step.sm/crypto/pemutil"

	"github.com/stepfort/stepfort/internal/admin"
)

// Options are the inputs of Init.
type Options struct {
	Dir             string
	Name            string   // PKI name, used in certificate subjects
	DNSNames        []string // names (and IPs) clients use to reach the CA
	Address         string   // HTTPS listen address
	InsecureAddress string   // HTTP listen address for CRL (and later OCSP, SCEP)
	DB              string   // "bbolt" or "postgresql"
	DBDSN           string   // PostgreSQL data source, with DB == "postgresql"
	DBName          string   // PostgreSQL database name (default "stepfort")
	Force           bool     // overwrite a non-empty Dir
	Provisioner     string   // name of the JWK provisioner (default "admin")
}

// Result says where things were written.
type Result struct {
	Dir             string
	ConfigFile      string
	PasswordFile    string
	RootFile        string
	AdminTokenFile  string
	RootFingerprint string
	CAURL           string
	Provisioner     string
}

// ErrNotEmpty is returned when Dir has content and Force is not set.
var ErrNotEmpty = errors.New("directory is not empty (use --force to overwrite)")

// Init writes the installation. On error it leaves no half-written config.
func Init(o Options) (*Result, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if entries, err := os.ReadDir(o.Dir); err == nil && len(entries) > 0 && !o.Force {
		return nil, fmt.Errorf("%s: %w", o.Dir, ErrNotEmpty)
	}
	for _, sub := range []string{"certs", "secrets", "config", "db", "logs", "templates"} {
		perm := os.FileMode(0o755)
		if sub == "secrets" {
			perm = 0o700
		}
		if err := os.MkdirAll(filepath.Join(o.Dir, sub), perm); err != nil {
			return nil, err
		}
	}
	r := &Result{
		Dir:            o.Dir,
		ConfigFile:     filepath.Join(o.Dir, "config", "ca.json"),
		PasswordFile:   filepath.Join(o.Dir, "secrets", "password"),
		RootFile:       filepath.Join(o.Dir, "certs", "root_ca.crt"),
		AdminTokenFile: filepath.Join(o.Dir, "secrets", "admin-token"),
		CAURL:          caURL(o.DNSNames[0], o.Address),
		Provisioner:    o.Provisioner,
	}
	password := randomSecret(32)
	if err := writeFile(r.PasswordFile, []byte(password+"\n"), 0o600); err != nil {
		return nil, err
	}

	root, rootKey, err := newCA(o.Name+" Root CA", nil, nil, 1, 10*365*24*time.Hour)
	if err != nil {
		return nil, err
	}
	inter, interKey, err := newCA(o.Name+" Intermediate CA", root, rootKey, 0, 10*365*24*time.Hour)
	if err != nil {
		return nil, err
	}
	r.RootFingerprint = fingerprint(root)
	interCert := filepath.Join(o.Dir, "certs", "intermediate_ca.crt")
	interKeyFile := filepath.Join(o.Dir, "secrets", "intermediate_ca_key")
	if err := writeCert(r.RootFile, root); err != nil {
		return nil, err
	}
	if err := writeKey(filepath.Join(o.Dir, "secrets", "root_ca_key"), rootKey, password); err != nil {
		return nil, err
	}
	if err := writeCert(interCert, inter); err != nil {
		return nil, err
	}
	if err := writeKey(interKeyFile, interKey, password); err != nil {
		return nil, err
	}

	// The TPM Attestation CA has its own root, trusted only where an ACME
	// provisioner's attestationRoots names it.
	att, err := writeAttestationCA(o, password)
	if err != nil {
		return nil, err
	}

	jwk, jwe, err := jose.GenerateDefaultKeyPair([]byte(password))
	if err != nil {
		return nil, fmt.Errorf("generate provisioner key: %w", err)
	}
	encryptedKey, err := jwe.CompactSerialize()
	if err != nil {
		return nil, err
	}

	dbCfg := &db.Config{Type: "bbolt", DataSource: filepath.Join(o.Dir, "db", "stepfort.db")}
	if o.DB == "bbolt" {
		// A forced re-init makes a new PKI: the old database would hold
		// certificates of a CA that no longer exists.
		if err := os.Remove(dbCfg.DataSource); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	if o.DB == "postgresql" {
		dbCfg = &db.Config{Type: "postgresql", DataSource: o.DBDSN, Database: o.DBName}
	}
	deviceTemplate := filepath.Join(o.Dir, "templates", "device.tpl")
	if err := writeFile(deviceTemplate, []byte(DeviceTemplate), 0o644); err != nil {
		return nil, err
	}
	httpPort := portOf(o.InsecureAddress)
	caJSON := map[string]any{
		"root":            r.RootFile,
		"federatedRoots":  nil,
		"crt":             interCert,
		"key":             interKeyFile,
		"address":         o.Address,
		"insecureAddress": o.InsecureAddress,
		"dnsNames":        o.DNSNames,
		"logger":          map[string]any{"format": "json"},
		"db":              dbCfg,
		"crl":             map[string]any{"enabled": true, "generateOnRevoke": true, "idpURL": "http://" + hostPort(o.DNSNames[0], httpPort) + "/1.0/crl"},
		"authority": map[string]any{
			"provisioners": []any{
				map[string]any{"type": "JWK", "name": o.Provisioner, "key": jwk, "encryptedKey": encryptedKey},
				map[string]any{"type": "ACME", "name": "acme"},
				map[string]any{"type": "ACME", "name": "agents", "challenges": []string{"device-attest-01"},
					"attestationFormats": []string{"tpm"}, "attestationRoots": att.rootPEM,
					"options": map[string]any{"x509": map[string]any{"templateFile": deviceTemplate}}},
				// Account CA role: a device certificate (x5c) buys short-lived
				// client certificates; the deviceAttest plugin links them to the device.
				map[string]any{"type": "X5C", "name": "accounts",
					"roots":  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}),
					"claims": map[string]any{"defaultTLSCertDuration": "24h", "maxTLSCertDuration": "24h"}},
			},
		},
		"stepfort": map[string]any{
			"admin": map[string]any{},
			"plugins": map[string]any{
				"auditLog":      map[string]any{"path": filepath.Join(o.Dir, "logs", "certificates.jsonl")},
				"inventory":     map[string]any{},
				"billing":       map[string]any{},
				"revocation":    map[string]any{"ocsp": map[string]any{"url": "http://" + hostPort(o.DNSNames[0], httpPort) + "/ocsp"}},
				"attestationCA": map[string]any{"certificate": att.cert, "key": att.key, "passwordFile": r.PasswordFile, "root": att.root},
				"deviceAttest":  map[string]any{"provisioners": []string{"agents"}, "accountProvisioners": []string{"accounts"}},
			},
		},
	}
	b, err := json.MarshalIndent(caJSON, "", "\t")
	if err != nil {
		return nil, err
	}
	// The step CLI reads defaults.json when STEPPATH points at Dir.
	defaults, _ := json.MarshalIndent(map[string]string{
		"ca-url": r.CAURL, "ca-config": r.ConfigFile, "fingerprint": r.RootFingerprint, "root": r.RootFile,
	}, "", "\t")
	if err := writeFile(filepath.Join(o.Dir, "config", "defaults.json"), append(defaults, '\n'), 0o644); err != nil {
		return nil, err
	}

	secret, err := createAdminToken(dbCfg)
	if err != nil {
		return nil, err
	}
	if err := writeFile(r.AdminTokenFile, []byte(secret+"\n"), 0o600); err != nil {
		return nil, err
	}
	// ca.json last: its presence means the installation is complete.
	if err := writeFile(r.ConfigFile, append(b, '\n'), 0o644); err != nil {
		return nil, err
	}
	return r, nil
}

func (o *Options) defaults() error {
	if o.Dir == "" {
		return errors.New("--dir: required")
	}
	abs, err := filepath.Abs(o.Dir)
	if err != nil {
		return err
	}
	o.Dir = abs
	if o.Name == "" {
		o.Name = "Stepfort"
	}
	if len(o.DNSNames) == 0 {
		o.DNSNames = []string{"localhost", "127.0.0.1"}
	}
	for _, n := range o.DNSNames {
		if n == "" || strings.ContainsAny(n, " /") {
			return fmt.Errorf("--dns: invalid name %q", n)
		}
	}
	if o.Address == "" {
		o.Address = ":9000"
	}
	if _, _, err := net.SplitHostPort(o.Address); err != nil {
		return fmt.Errorf("--address: %q is not host:port", o.Address)
	}
	if o.InsecureAddress == "" {
		o.InsecureAddress = ":9080"
	}
	if _, _, err := net.SplitHostPort(o.InsecureAddress); err != nil {
		return fmt.Errorf("--insecure-address: %q is not host:port", o.InsecureAddress)
	}
	switch o.DB {
	case "", "bbolt":
		o.DB = "bbolt"
	case "postgresql":
		if o.DBDSN == "" {
			return errors.New("--db-dsn: required with --db postgresql (e.g. postgresql://user:pw@host:5432/)")
		}
		if o.DBName == "" {
			o.DBName = "stepfort"
		}
	default:
		return fmt.Errorf("--db: must be bbolt or postgresql, got %q", o.DB)
	}
	if o.Provisioner == "" {
		o.Provisioner = "admin"
	}
	return nil
}

func createAdminToken(cfg *db.Config) (string, error) {
	d, err := db.New(cfg)
	if err != nil {
		return "", fmt.Errorf("open database to store the admin token: %w", err)
	}
	defer d.Shutdown()
	store, err := admin.NewTokenStore(d.(*db.DB), nil)
	if err != nil {
		return "", err
	}
	_, secret, err := store.Create("init", []string{admin.ScopeAll}, 0)
	return secret, err
}

// newCA makes a CA certificate; with a nil parent it is self-signed.
func newCA(cn string, parent *x509.Certificate, parentKey crypto.Signer, maxPathLen int, validity time.Duration) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now().Add(-time.Minute)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now,
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            maxPathLen,
		MaxPathLenZero:        maxPathLen == 0,
	}
	signer := crypto.Signer(key)
	if parent == nil {
		parent = tmpl
	} else {
		signer = parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return nil, nil, fmt.Errorf("create %s: %w", cn, err)
	}
	c, err := x509.ParseCertificate(der)
	return c, key, err
}

func writeCert(path string, c *x509.Certificate) error {
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}), 0o644)
}

func writeKey(path string, key crypto.PrivateKey, password string) error {
	block, err := pemutil.Serialize(key, pemutil.WithPassword([]byte(password)))
	if err != nil {
		return fmt.Errorf("encrypt %s: %w", path, err)
	}
	return writeFile(path, pem.EncodeToMemory(block), 0o600)
}

func writeFile(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	if err := os.Chmod(tmp, perm); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func randomSecret(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}

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

// attestationCA says where writeAttestationCA put the Attestation CA.
type attestationCA struct {
	root, cert, key string
	rootPEM         []byte // base64 in ca.json (upstream's attestationRoots is []byte)
}

// writeAttestationCA creates the TPM Attestation CA root and intermediate,
// separate from the issuing CA; keys are encrypted with the CA password.
func writeAttestationCA(o Options, password string) (*attestationCA, error) {
	root, rootKey, err := newCA(o.Name+" TPM Attestation Root CA", nil, nil, 1, 10*365*24*time.Hour)
	if err != nil {
		return nil, err
	}
	inter, interKey, err := newCA(o.Name+" TPM Attestation Intermediate CA", root, rootKey, 0, 10*365*24*time.Hour)
	if err != nil {
		return nil, err
	}
	a := &attestationCA{
		root:    filepath.Join(o.Dir, "certs", "attestation_root_ca.crt"),
		cert:    filepath.Join(o.Dir, "certs", "attestation_intermediate_ca.crt"),
		key:     filepath.Join(o.Dir, "secrets", "attestation_intermediate_ca_key"),
		rootPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}),
	}
	if err := writeCert(a.root, root); err != nil {
		return nil, err
	}
	if err := writeKey(filepath.Join(o.Dir, "secrets", "attestation_root_ca_key"), rootKey, password); err != nil {
		return nil, err
	}
	if err := writeCert(a.cert, inter); err != nil {
		return nil, err
	}
	if err := writeKey(a.key, interKey, password); err != nil {
		return nil, err
	}
	return a, nil
}

// DeviceTemplate is the certificate template init gives the "agents"
// device-attest-01 provisioner: upstream's attested leaf template plus the
// permanent identifier (for TPMs the EK URN) as a URI SAN, where TLS and
// RADIUS servers look for it, and the device's inventory collection as the
// subject's organizational unit (data from the deviceAttest plugin's
// in-process ENRICHING webhook). See docs/deviceattest.md.
const DeviceTemplate = `{
{{- $device := dict }}{{ with .Webhooks }}{{ with .deviceAttest }}{{ $device = . }}{{ end }}{{ end }}
{{- if $device.collection }}
	"subject": {"commonName": {{ toJson .Subject.CommonName }}, "organizationalUnit": {{ toJson $device.collection }}},
{{- else }}
	"subject": {{ toJson .Subject }},
{{- end }}
	"sans": [
{{- range $i, $s := .SANs }}{{ if $i }},{{ end }}
		{{ toJson $s }}
{{- if eq $s.Type "permanentIdentifier" }},
		{"type": "uri", "value": {{ toJson $s.Value }}}
{{- end }}
{{- end }}
	],
{{- if typeIs "*rsa.PublicKey" .Insecure.CR.PublicKey }}
	"keyUsage": ["keyEncipherment", "digitalSignature"],
{{- else }}
	"keyUsage": ["digitalSignature"],
{{- end }}
	"extKeyUsage": ["clientAuth"]
}
`
