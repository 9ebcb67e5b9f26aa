package dynamicscep

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // thumbprint
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/scep/x509util"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
	"github.com/stepfort/stepfort/provisioners/dynamicscep/intunemock"
)

const (
	testTenant   = "contoso.onmicrosoft.com"
	testClientID = "11111111-2222-3333-4444-555555555555"
)

// intuneSetup starts the mock and a plugin whose "scep" provisioner is
// in Intune mode, authenticating with a client secret.
func intuneSetup(t *testing.T, timeout time.Duration) (*Plugin, *plugintest.Host, *intunemock.Mock) {
	t.Helper()
	m := intunemock.New(testTenant, testClientID)
	t.Cleanup(m.Server.Close)
	m.Secret = "s3cret"
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := defaultConfig()
	cfg.Intune = &IntuneConfig{
		Provisioners: []string{"scep"}, Tenant: testTenant, ClientID: testClientID,
		ClientSecretFile: write("secret", []byte(m.Secret+"\n")),
		LoginHost:        m.Host(), GraphHost: m.Host(), RootsFile: write("roots.pem", m.RootsPEM()),
		Timeout: config.Duration{Duration: timeout},
	}
	p, h := newPluginOn(t, testenv.OpenStore(t, "bbolt"), "bbolt", cfg)
	return p, h, m
}

// intuneCSR is a CSR carrying challenge as its challengePassword.
func intuneCSR(t *testing.T, cn, challenge string) (*x509.CertificateRequest, *rsa.PrivateKey) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509util.CreateCertificateRequest(rand.Reader, &x509util.CertificateRequest{
		CertificateRequest: x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, ChallengePassword: challenge,
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr, key
}

func intuneReq(csr *x509.CertificateRequest, challenge, tx string) plugins.SCEPRequest {
	return plugins.SCEPRequest{Provisioner: "scep", Challenge: challenge, TransactionID: tx, CSR: csr}
}

// TestIntuneSuccessNotifies: Success allows the enrollment; the issued
// certificate is reported with its thumbprint, serial, expiry and issuer;
// every call carries the protocol's headers.
func TestIntuneSuccessNotifies(t *testing.T) {
	p, _, m := intuneSetup(t, 5*time.Second)
	m.Answers["intune-blob-ok"] = intunemock.Success
	csr, key := intuneCSR(t, "intune-dev", "intune-blob-ok")
	data, err := p.ValidateSCEPChallenge(context.Background(), intuneReq(csr, "intune-blob-ok", "tx-1"))
	if err != nil {
		t.Fatalf("Success answer refused: %v", err)
	}
	if data["source"] != SourceIntune {
		t.Fatalf("data = %v", data)
	}
	v := m.Calls("/validateRequest")
	if len(v) != 1 || v[0].Body["transactionId"] != "tx-1" || v[0].Body["callerInfo"] != "stepfort" {
		t.Fatalf("validateRequest calls: %+v", v)
	}
	for _, h := range []string{"client-request-id", "api-version", "Authorization", "UserAgent"} {
		if v[0].Header.Get(h) == "" {
			t.Fatalf("validateRequest lacks header %s", h)
		}
	}
	if v[0].Header.Get("api-version") != "2018-02-20" {
		t.Fatalf("api-version = %q", v[0].Header.Get("api-version"))
	}
	tok := m.Calls("/oauth2/v2.0/token")
	if len(tok) != 2 || tok[0].Form.Get("scope") != graphScope || tok[1].Form.Get("scope") != intuneScope {
		t.Fatalf("token calls: %+v", tok)
	}

	cert := intuneIssue(t, csr, key, 0x1234ABCD)
	p.NotifySCEP(context.Background(), plugins.SCEPIssued{Provisioner: "scep", TransactionID: "tx-1", CSR: csr, Certificate: cert})
	s := m.Calls("/successNotification")
	if len(s) != 1 {
		t.Fatalf("successNotification calls: %d", len(s))
	}
	sum := sha1.Sum(cert.Raw) //nolint:gosec // thumbprint
	want := map[string]any{
		"transactionId":                "tx-1",
		"certificateThumbprint":        fmt.Sprintf("%X", sum),
		"certificateSerialNumber":      "1234ABCD",
		"certificateExpirationDateUtc": cert.NotAfter.UTC().Format("2006-01-02T15:04:05.000Z"),
		"issuingCertificateAuthority":  cert.Issuer.String(),
		"certificateRequest":           v[0].Body["certificateRequest"],
	}
	for k, w := range want {
		if s[0].Body[k] != w {
			t.Fatalf("successNotification %s = %v, want %v", k, s[0].Body[k], w)
		}
	}
	// Reported once: a second notification of the transaction is not sent.
	p.NotifySCEP(context.Background(), plugins.SCEPIssued{Provisioner: "scep", TransactionID: "tx-1", CSR: csr, Certificate: cert})
	if n := len(m.Calls("/successNotification")); n != 1 {
		t.Fatalf("successNotification sent %d times", n)
	}
}

// TestIntuneRefusals: every code but Success refuses with failInfo
// badRequest, and nothing is reported.
func TestIntuneRefusals(t *testing.T) {
	p, _, m := intuneSetup(t, 5*time.Second)
	for i, code := range []string{"ChallengeExpired", "SubjectNameMismatch", "ChallengeDecryptionError", "SomethingNew"} {
		ch := "blob-" + code
		m.Answers[ch] = code
		csr, _ := intuneCSR(t, "d", ch)
		_, err := p.ValidateSCEPChallenge(context.Background(), intuneReq(csr, ch, fmt.Sprintf("tx-%d", i)))
		if got := result(t, err); got != ResultRefusedIntune {
			t.Fatalf("%s: result %q (%v)", code, got, err)
		}
		if !strings.Contains(err.Error(), code) || strings.Contains(err.Error(), ch) {
			t.Fatalf("%s: error %q must name the code and not hold the challenge", code, err)
		}
		if err.(interface{ Code() string }).Code() != "badRequest" {
			t.Fatal("not badRequest")
		}
	}
	if n := len(m.Calls("Notification")); n != 0 {
		t.Fatalf("%d notifications after refusals", n)
	}
	// One of our own challenges still works on an Intune provisioner,
	// without asking Intune.
	before := len(m.Calls("/validateRequest"))
	secret, _ := create(t, p, Bindings{}, "")
	csr, _ := newCSR(t, csrSpec{cn: "own"})
	if _, err := p.ValidateSCEPChallenge(context.Background(), enroll(secret, csr)); err != nil {
		t.Fatalf("own challenge on an Intune provisioner: %v", err)
	}
	if len(m.Calls("/validateRequest")) != before {
		t.Fatal("own challenge was sent to Intune")
	}
}

// TestIntuneDownRefusedInTime: the token endpoint or Intune down, or
// Intune slower than the timeout, refuses within the timeout.
func TestIntuneDownRefusedInTime(t *testing.T) {
	timeout := 500 * time.Millisecond
	t.Run("token endpoint down", func(t *testing.T) {
		p, _, m := intuneSetup(t, timeout)
		m.Answers["x"] = intunemock.Success
		m.SetDown(true)
		csr, _ := intuneCSR(t, "d", "x")
		_, err := p.ValidateSCEPChallenge(context.Background(), intuneReq(csr, "x", "tx"))
		if got := result(t, err); got != ResultError {
			t.Fatalf("result %q (%v)", got, err)
		}
	})
	t.Run("Intune slow", func(t *testing.T) {
		p, _, m := intuneSetup(t, timeout)
		m.Answers["x"] = intunemock.Success
		m.Delay = 3 * time.Second
		csr, _ := intuneCSR(t, "d", "x")
		start := time.Now()
		_, err := p.ValidateSCEPChallenge(context.Background(), intuneReq(csr, "x", "tx"))
		if got := result(t, err); got != ResultError || !strings.Contains(err.Error(), "timed out") {
			t.Fatalf("result %q (%v)", got, err)
		}
		if d := time.Since(start); d > timeout+time.Second {
			t.Fatalf("refused after %s, timeout %s", d, timeout)
		}
	})
	t.Run("server gone", func(t *testing.T) {
		p, _, m := intuneSetup(t, timeout)
		m.Server.Close()
		csr, _ := intuneCSR(t, "d", "x")
		_, err := p.ValidateSCEPChallenge(context.Background(), intuneReq(csr, "x", "tx"))
		if got := result(t, err); got != ResultError {
			t.Fatalf("result %q (%v)", got, err)
		}
	})
}

// TestIntuneTokenCached: one token per scope serves many validations,
// until shortly before it expires (host clock).
func TestIntuneTokenCached(t *testing.T) {
	p, h, m := intuneSetup(t, 5*time.Second)
	m.Answers["x"] = intunemock.Success
	for i := range 5 {
		csr, _ := intuneCSR(t, "d", "x")
		if _, err := p.ValidateSCEPChallenge(context.Background(), intuneReq(csr, "x", fmt.Sprintf("tx-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(m.Calls("/token")); n != 2 {
		t.Fatalf("%d token requests for 5 validations, want 2 (Graph and Intune)", n)
	}
	h.Advance(3599*time.Second - tokenRefreshMargin + time.Second)
	csr, _ := intuneCSR(t, "d", "x")
	if _, err := p.ValidateSCEPChallenge(context.Background(), intuneReq(csr, "x", "tx-late")); err != nil {
		t.Fatal(err)
	}
	if n := len(m.Calls("/token")); n != 3 {
		t.Fatalf("%d token requests after the refresh margin, want 3 (the Intune token renewed)", n)
	}
	for _, c := range m.Calls("/token") {
		if c.Form.Get("client_secret") != m.Secret {
			t.Fatal("token request without the secret")
		}
	}
}

// TestIntuneClientAssertion: certificate credentials sign a client
// assertion the token endpoint verifies.
func TestIntuneClientAssertion(t *testing.T) {
	m := intunemock.New(testTenant, testClientID)
	t.Cleanup(m.Server.Close)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "app"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	m.CertKey = &key.PublicKey
	m.Answers["x"] = intunemock.Success
	dir := t.TempDir()
	certFile, keyFile, roots := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem"), filepath.Join(dir, "r.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key))
	if err := os.WriteFile(roots, m.RootsPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := defaultConfig()
	cfg.Intune = &IntuneConfig{Provisioners: []string{"scep"}, Tenant: testTenant, ClientID: testClientID,
		ClientCertificateFile: certFile, ClientKeyFile: keyFile, LoginHost: m.Host(), GraphHost: m.Host(), RootsFile: roots}
	p, _ := newPluginOn(t, testenv.OpenStore(t, "bbolt"), "bbolt", cfg)
	csr, _ := intuneCSR(t, "d", "x")
	if _, err := p.ValidateSCEPChallenge(context.Background(), intuneReq(csr, "x", "tx")); err != nil {
		t.Fatalf("client assertion: %v", err)
	}
}

// TestIntuneConfigValidate: bad blocks name their field.
func TestIntuneConfigValidate(t *testing.T) {
	good := func() *Config {
		c := defaultConfig()
		c.Intune = &IntuneConfig{Provisioners: []string{"scep"}, Tenant: testTenant, ClientID: testClientID, ClientSecretFile: "/x"}
		return c
	}
	if err := good().Validate(); err != nil {
		t.Fatal(err)
	}
	for field, mut := range map[string]func(*IntuneConfig){
		"intune.provisioners[0]":       func(c *IntuneConfig) { c.Provisioners = []string{"other"} },
		"intune.tenant":                func(c *IntuneConfig) { c.Tenant = "a/b" },
		"intune.clientID":              func(c *IntuneConfig) { c.ClientID = "" },
		"intune.clientSecretFile":      func(c *IntuneConfig) { c.ClientSecretFile = "" },
		"intune.clientCertificateFile": func(c *IntuneConfig) { c.ClientSecretFile, c.ClientKeyFile = "", "/k" },
		"intune.loginHost":             func(c *IntuneConfig) { c.LoginHost = "https://x/y" },
		"intune.timeout":               func(c *IntuneConfig) { c.Timeout.Duration = time.Minute },
	} {
		c := good()
		mut(c.Intune)
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), field+":") {
			t.Fatalf("%s: got %v", field, err)
		}
	}
}

// intuneIssue makes the certificate "issued" for csr by a test CA.
func intuneIssue(t *testing.T, csr *x509.CertificateRequest, key *rsa.PrivateKey, serial int64) *x509.Certificate {
	t.Helper()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Test Intermediate", Organization: []string{"Stepfort"}}}
	tpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: csr.Subject, Issuer: ca.Subject,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour).Truncate(time.Second)}
	der, err := x509.CreateCertificate(rand.Reader, tpl, ca, csr.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pemBlock(typ, der), 0o600); err != nil {
		t.Fatal(err)
	}
}
