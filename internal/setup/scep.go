package setup

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"path/filepath"
	"time"

	"github.com/smallstep/certificates/authority/provisioner"
	"go.step.sm/crypto/kms/uri"
	"go.step.sm/crypto/pemutil"
)

// scepProvisioner is the name of the SCEP provisioner init writes; its
// endpoint is /scep/scep on both listeners.
const scepProvisioner = "scep"

// SCEP settings of that provisioner.
const (
	// scepRAKeyBits: SCEP encrypts requests to an RSA key only, and
	// upstream decrypts only with RSA; 3072 bits is good beyond 2030.
	scepRAKeyBits = 3072
	// scepEncryptionAES256CBC is upstream's encryptionAlgorithmIdentifier
	// for AES-256-CBC responses. Upstream's default, 0, is single DES;
	// micromdm scepclient, certmonger (OpenSSL) and Apple and Windows
	// clients all decrypt AES-CBC, while OpenSSL's PKCS#7 has no AES-GCM.
	scepEncryptionAES256CBC = 2
	// scepMinKeyBits is the smallest RSA key a CSR may carry.
	scepMinKeyBits = 2048
)

// scepRA is the SCEP RA certificate, the provisioner's decrypter and
// signer, as written to disk.
type scepRA struct {
	certPEM  []byte
	certFile string // certs/scep_ra.crt
	keyFile  string // secrets/scep_ra_key
}

// writeSCEPRA issues the SCEP RA certificate from the issuing intermediate
// and writes it with its key. The intermediate is ECDSA, and SCEP clients
// encrypt to the RSA key of a certificate with keyEncipherment in
// GetCACert, so the RA is a dedicated RSA certificate with
// digitalSignature and keyEncipherment, as NDES has.
//
// The key is written unencrypted (mode 0600 in secrets/): upstream reads a
// decrypter key's password only from ca.json (decrypterKeyPassword), and
// the CA password must not be there.
func writeSCEPRA(dir, name string, issuing *caPair) (*scepRA, error) {
	key, err := rsa.GenerateKey(rand.Reader, scepRAKeyBits)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name + " SCEP RA"},
		NotBefore:    time.Now().Add(-time.Minute),
		// An RA that expires breaks every SCEP client at once; it lives
		// as long as the intermediate that issued it.
		NotAfter:              issuing.inter.NotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuing.inter, &key.PublicKey, issuing.interKey)
	if err != nil {
		return nil, fmt.Errorf("create SCEP RA certificate: %w", err)
	}
	ra := &scepRA{
		certPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		certFile: filepath.Join(dir, "certs", "scep_ra.crt"),
		keyFile:  filepath.Join(dir, "secrets", "scep_ra_key"),
	}
	if err := writeFile(ra.certFile, ra.certPEM, 0o644); err != nil {
		return nil, err
	}
	block, err := pemutil.Serialize(key)
	if err != nil {
		return nil, err
	}
	if err := WriteSecretFile(ra.keyFile, pem.EncodeToMemory(block)); err != nil {
		return nil, err
	}
	return ra, nil
}

// newSCEPProvisioner is the upstream SCEP provisioner "scep". The
// dynamicScep plugin, which init attaches to it, validates every challenge
// through its in-process SCEPCHALLENGE webhook, and upstream then ignores
// the static challenge. That one is a random value handed to nobody: a
// SCEP provisioner with neither a challenge nor a webhook accepts an empty
// challenge, so if the plugin block is removed the provisioner stays
// closed instead of issuing to anyone. GetCACert answers RA, intermediate
// and root (includeRoot).
func newSCEPProvisioner(ra *scepRA) *provisioner.SCEP {
	return &provisioner.SCEP{
		Type:                          "SCEP",
		Name:                          scepProvisioner,
		ChallengePassword:             randomSecret(32),
		IncludeRoot:                   true,
		MinimumPublicKeyLength:        scepMinKeyBits,
		EncryptionAlgorithmIdentifier: scepEncryptionAES256CBC,
		DecrypterCertificate:          ra.certPEM,
		DecrypterKeyURI:               uri.New("softkms", url.Values{"path": {ra.keyFile}}).String(),
	}
}
