package setup

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"

	upstream "github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	"go.step.sm/crypto/pemutil"
)

// TestInitSCEPProvisioner: init writes an upstream SCEP provisioner "scep"
// whose RA is an RSA certificate issued by the intermediate with
// digitalSignature and keyEncipherment (NDES-style clients select the
// recipient by key usage), which upstream's own Init accepts as decrypter,
// with includeRoot, AES-256-CBC responses and a 2048-bit minimum; ca.json
// carries neither the RA key nor any password, and the static challenge
// (used only if the plugin block is removed) is random.
func TestInitSCEPProvisioner(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	res := initInto(t, dir, false)
	ca, err := upstream.LoadConfiguration(res.ConfigFile)
	if err != nil {
		t.Fatal(err)
	}
	var scep *provisioner.SCEP
	for _, p := range ca.AuthorityConfig.Provisioners {
		if p, ok := p.(*provisioner.SCEP); ok {
			if scep != nil {
				t.Fatal("more than one SCEP provisioner")
			}
			scep = p
		}
	}
	if scep == nil || scep.Name != "scep" {
		t.Fatalf("no SCEP provisioner named scep: %+v", scep)
	}
	if !scep.IncludeRoot || scep.EncryptionAlgorithmIdentifier != 2 || scep.MinimumPublicKeyLength != 2048 ||
		scep.DecrypterKeyPassword != "" || len(scep.DecrypterKeyPEM) != 0 {
		t.Errorf("SCEP provisioner settings: %+v", scep)
	}
	// Without the plugin upstream would accept an empty challenge; the
	// random static one keeps the provisioner closed.
	if len(scep.ChallengePassword) < 40 {
		t.Errorf("static challenge %q: want a long random value", scep.ChallengePassword)
	}

	raFile := filepath.Join(dir, "certs", "scep_ra.crt")
	if !bytes.Equal(scep.DecrypterCertificate, mustRead(t, raFile)) {
		t.Error("decrypterCertificate is not certs/scep_ra.crt")
	}
	ra := readCert(t, raFile)
	checkRA(t, ra, readCert(t, filepath.Join(dir, "certs", "intermediate_ca.crt")), readCert(t, res.RootFile))

	key, err := pemutil.Read(filepath.Join(dir, "secrets", "scep_ra_key"))
	if err != nil {
		t.Fatalf("RA key: %v", err)
	}
	if rk, ok := key.(*rsa.PrivateKey); !ok || !rk.PublicKey.Equal(ra.PublicKey) {
		t.Fatal("secrets/scep_ra_key is not the RA certificate's RSA key")
	}
	if !strings.Contains(scep.DecrypterKeyURI, "scep_ra_key") {
		t.Errorf("decrypterKey %q does not name secrets/scep_ra_key", scep.DecrypterKeyURI)
	}

	// Upstream's provisioner Init loads the decrypter the way the daemon
	// does: a wrong path, a password it cannot supply or a key that is not
	// the certificate's would fail here.
	if err := scep.Init(provisioner.Config{Claims: upstream.GlobalProvisionerClaims}); err != nil {
		t.Fatalf("upstream SCEP Init: %v", err)
	}
	cert, dec := scep.GetDecrypter()
	if dec == nil || !cert.Equal(ra) {
		t.Fatal("upstream did not load the RA as decrypter")
	}

	raw := string(mustRead(t, res.ConfigFile))
	password := strings.TrimSpace(string(mustRead(t, res.PasswordFile)))
	if strings.Contains(raw, "PRIVATE KEY") || strings.Contains(raw, password) {
		t.Error("ca.json carries a private key or the CA password")
	}
}

// checkRA checks the RA certificate: RSA of at least 3072 bits, issued by
// the intermediate and chaining to the root, an end-entity certificate
// with exactly digitalSignature and keyEncipherment, expiring with the
// intermediate.
func checkRA(t *testing.T, ra, inter, root *x509.Certificate) {
	t.Helper()
	pub, ok := ra.PublicKey.(*rsa.PublicKey)
	if !ok || pub.N.BitLen() < 3072 {
		t.Errorf("RA key is %T of %d bits, want RSA >= 3072", ra.PublicKey, bitLen(pub))
	}
	if err := ra.CheckSignatureFrom(inter); err != nil {
		t.Errorf("RA not issued by the intermediate: %v", err)
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	inters.AddCert(inter)
	if _, err := ra.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("RA does not chain to the root: %v", err)
	}
	if want := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment; ra.KeyUsage != want {
		t.Errorf("RA key usage %b, want %b", ra.KeyUsage, want)
	}
	if ra.IsCA {
		t.Error("RA is a CA")
	}
	if ra.NotAfter.After(inter.NotAfter) {
		t.Errorf("RA outlives the intermediate: %v > %v", ra.NotAfter, inter.NotAfter)
	}
}

func bitLen(pub *rsa.PublicKey) int {
	if pub == nil {
		return 0
	}
	return pub.N.BitLen()
}
