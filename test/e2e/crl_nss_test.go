package e2e

import (
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/testenv"
)

// nssDB is a fresh NSS database trusting the CA's root, with the
// intermediate known (not trusted) for chain building.
type nssDB struct {
	t                           *testing.T
	dir, certutil, crlutil, vfy string
}

func newNSSDB(t *testing.T, c *ca) *nssDB {
	t.Helper()
	n := &nssDB{t: t, dir: "sql:" + t.TempDir(), certutil: testenv.MustTool(t, "certutil"),
		crlutil: testenv.MustTool(t, "crlutil"), vfy: testenv.MustTool(t, "vfychain")}
	n.must(n.certutil, "-N", "-d", n.dir, "--empty-password")
	n.must(n.certutil, "-A", "-d", n.dir, "-n", "root", "-t", "C,C,C", "-a", "-i", c.Root)
	n.must(n.certutil, "-A", "-d", n.dir, "-n", "intermediate", "-t", ",,", "-a", "-i", filepath.Join(c.Dir, "certs", "intermediate_ca.crt"))
	return n
}

func (n *nssDB) run(tool string, args ...string) (string, error) {
	out, err := exec.Command(tool, args...).CombinedOutput()
	return string(out), err
}

func (n *nssDB) must(tool string, args ...string) string {
	n.t.Helper()
	out, err := n.run(tool, args...)
	if err != nil {
		n.t.Fatalf("%s %s: %v\n%s", filepath.Base(tool), strings.Join(args, " "), err, out)
	}
	return out
}

// importCRL runs crlutil -I on a DER CRL.
func (n *nssDB) importCRL(der []byte) (string, error) {
	f := filepath.Join(n.t.TempDir(), "crl.der")
	if err := os.WriteFile(f, der, 0o644); err != nil {
		n.t.Fatal(err)
	}
	return n.run(n.crlutil, "-I", "-d", n.dir, "-i", f, "-t", "1")
}

// verify runs vfychain with the PKIX library (-pp), revocation checking of
// the leaf by CRL only, requiring fresh information and failing without it,
// and not fetching the CRL from the distribution point (NSS would, and
// accept it): so a pass means the imported CRL was consulted.
func (n *nssDB) verify(certPEM string) (string, error) {
	return n.run(n.vfy, "-d", n.dir, "-u", "1", "-pp", "-g", "leaf", "-h", "requireFreshInfo", "-m", "crl", "-s", "forbidFetching", "-s", "failIfNoInfo", "-a", certPEM)
}

// revokedCRL starts a daemon with crl set as the revocation plugin's crl
// block, issues two leaves with the step CLI, revokes one and returns the
// CA, the good and revoked leaves and the first CRL listing the revoked
// one.
func revokedCRL(t *testing.T, crl map[string]any) (c *ca, proc *testenv.Process, good, bad string, der []byte) {
	t.Helper()
	c = initCA(t)
	editConfig(t, c.Config, func(m map[string]any) {
		rev := m["stepfort"].(map[string]any)["plugins"].(map[string]any)["revocation"].(map[string]any)
		rev["crl"] = crl
	})
	proc = serve(t, c.Config, c.Password, c.Port)
	step := newStepCLI(t)
	step.bootstrap(c, c.URL)
	dir := t.TempDir()
	good, bad = filepath.Join(dir, "good.crt"), filepath.Join(dir, "bad.crt")
	badKey := filepath.Join(dir, "bad.key")
	step.must("ca", "certificate", "good.example", good, filepath.Join(dir, "good.key"), "--provisioner", "admin", "--provisioner-password-file", c.Password)
	step.must("ca", "certificate", "bad.example", bad, badKey, "--provisioner", "admin", "--provisioner-password-file", c.Password)
	step.must("ca", "revoke", "--cert", bad, "--key", badKey, "--reasonCode", "1")
	serial := readCert(t, bad).SerialNumber
	eventually(t, 15*time.Second, func() error {
		crl, b, err := fetchCRL(c.HTTPPort)
		if err != nil {
			return err
		}
		if !crlLists(crl, serial) {
			return fmt.Errorf("CRL %d does not list the revoked serial yet", crl.Number)
		}
		der = b
		return nil
	})
	return c, proc, good, bad, der
}

// opensslVerifiesCRL: openssl verify -crl_check accepts the good leaf and
// says revoked (error 23) for the other.
func opensslVerifiesCRL(t *testing.T, c *ca, good, bad string, der []byte) {
	t.Helper()
	dir := t.TempDir()
	crlFile, chain := filepath.Join(dir, "ca.crl"), filepath.Join(dir, "chain.pem")
	_ = os.WriteFile(crlFile, der, 0o644)
	rootPEM, _ := os.ReadFile(c.Root)
	interPEM, _ := os.ReadFile(filepath.Join(c.Dir, "certs", "intermediate_ca.crt"))
	_ = os.WriteFile(chain, append(rootPEM, interPEM...), 0o644)
	if out, err := openssl(t, "verify", "-crl_check", "-CAfile", chain, "-CRLfile", crlFile, good); err != nil {
		t.Fatalf("openssl verify good: %v\n%s", err, out)
	}
	if out, err := openssl(t, "verify", "-crl_check", "-CAfile", chain, "-CRLfile", crlFile, bad); err == nil || !strings.Contains(out, "error 23") {
		t.Fatalf("openssl verify revoked: %v\n%s", err, out)
	}
}

var oidIDP = asn1.ObjectIdentifier{2, 5, 29, 28}

func hasExtension(crl *x509.RevocationList, id asn1.ObjectIdentifier) bool {
	for _, e := range crl.Extensions {
		if e.Id.Equal(id) {
			return true
		}
	}
	return false
}

// TestCRLAcceptedByNSS: the default CRL (no Issuing Distribution Point)
// imports into NSS, and vfychain, checking revocation through it, says
// revoked for the revoked leaf and OK for the other; OpenSSL agrees.
func TestCRLAcceptedByNSS(t *testing.T) {
	c, proc, good, bad, der := revokedCRL(t, map[string]any{"publishDelay": "1s"})
	// NSS fetches the CRL from the certificate's distribution point when it
	// can (forbidFetching notwithstanding): stop the daemon so only the
	// imported CRL can answer.
	if err := proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := proc.Wait(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if hasExtension(crl, oidIDP) {
		t.Fatal("the default CRL carries an Issuing Distribution Point")
	}
	n := newNSSDB(t, c)
	if out, err := n.verify(good); err == nil {
		t.Fatalf("vfychain passed without any CRL: the check does not consult CRLs\n%s", out)
	}
	if out, err := n.importCRL(der); err != nil {
		t.Fatalf("crlutil -I refused the CRL: %v\n%s", err, out)
	}
	if out := n.must(n.crlutil, "-L", "-d", n.dir); !strings.Contains(out, "intermediate") {
		t.Fatalf("crlutil -L does not list the imported CRL:\n%s", out)
	}
	if out, err := n.verify(good); err != nil || !strings.Contains(out, "Chain is good") {
		t.Fatalf("vfychain good leaf: %v\n%s", err, out)
	}
	out, err := n.verify(bad)
	if err == nil || !strings.Contains(out, "-8180") {
		t.Fatalf("vfychain revoked leaf: %v\n%s", err, out)
	}
	t.Logf("vfychain on the revoked leaf: %s", strings.TrimSpace(out))
	opensslVerifiesCRL(t, c, good, bad, der)
}

// TestCRLWithIDPRefusedByNSS shows why the IDP is off by default: with
// crl.idp true the CRL carries the critical IDP, which NSS refuses
// (SEC_ERROR_CRL_UNKNOWN_CRITICAL_EXTENSION), while OpenSSL accepts it.
func TestCRLWithIDPRefusedByNSS(t *testing.T) {
	c, _, good, bad, der := revokedCRL(t, map[string]any{"publishDelay": "1s", "idp": true})
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if !hasExtension(crl, oidIDP) {
		t.Fatal("crl.idp true: the CRL has no Issuing Distribution Point")
	}
	n := newNSSDB(t, c)
	out, err := n.importCRL(der)
	if err == nil || !strings.Contains(out, "SEC_ERROR_CRL_UNKNOWN_CRITICAL_EXTENSION") {
		t.Fatalf("crlutil -I of the IDP CRL: %v\n%s", err, out)
	}
	opensslVerifiesCRL(t, c, good, bad, der)
}
