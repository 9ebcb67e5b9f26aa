package e2e

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.step.sm/crypto/pemutil"
	"golang.org/x/crypto/ocsp"

	"github.com/stepfort/stepfort/internal/testenv"
)

// The HSM build (cgo, stepfort-hsm) is built once, on first use: the
// package's stepfortBin is the static build, which refuses pkcs11.
var (
	hsmBinOnce sync.Once
	hsmBinPath string
	hsmBinErr  error
)

func hsmBin(t *testing.T) string {
	t.Helper()
	hsmBinOnce.Do(func() {
		root, err := testenv.RepoRoot()
		if err != nil {
			hsmBinErr = err
			return
		}
		hsmBinPath = filepath.Join(filepath.Dir(stepfortBin), "stepfort-hsm")
		build := exec.Command("go", "build", "-o", hsmBinPath, "./cmd/stepfort")
		build.Dir = root
		build.Env = append(os.Environ(), "CGO_ENABLED=1")
		if out, err := build.CombinedOutput(); err != nil {
			hsmBinErr = fmt.Errorf("build stepfort-hsm: %v\n%s", err, out)
		}
	})
	if hsmBinErr != nil {
		t.Fatal(hsmBinErr)
	}
	return hsmBinPath
}

// hsmCA is an installation whose CA keys are in a SoftHSM2 token.
type hsmCA struct {
	*ca
	hsm *testenv.SoftHSM
	bin string
}

// initHSMCA makes a token and runs `stepfort-hsm init --kms` on it.
func initHSMCA(t *testing.T, extra ...string) *hsmCA {
	t.Helper()
	h := testenv.NewSoftHSM(t)
	t.Setenv("SOFTHSM2_CONF", h.Conf) // init, serve and pkcs11-tool all see this token
	bin := hsmBin(t)
	saved := stepfortBin
	stepfortBin = bin
	defer func() { stepfortBin = saved }()
	c := initCA(t, append([]string{"--kms", h.KMSURI()}, extra...)...)
	return &hsmCA{ca: c, hsm: h, bin: bin}
}

func (c *hsmCA) serve(t *testing.T, config string, port int) *testenv.Process {
	t.Helper()
	p := testenv.StartProcess(t, c.bin, []string{"serve", config, "--password-file", c.Password}, nil)
	waitHealthy(t, p, port)
	return p
}

// caSignedOCSP makes OCSP responses signed by the CA key itself (not a
// delegated responder key made in memory), so the test sees the token sign.
func caSignedOCSP(m map[string]any) {
	plugins := m["stepfort"].(map[string]any)["plugins"].(map[string]any)
	plugins["revocation"].(map[string]any)["ocsp"].(map[string]any)["signer"] = "ca"
}

func TestHSMInitIssueRevokeOCSPCRL(t *testing.T) {
	c := initHSMCA(t)
	editConfig(t, c.Config, caSignedOCSP)
	var cfg struct {
		KMS struct{ Type, URI string } `json:"kms"`
		Key string                     `json:"key"`
	}
	readJSON(t, c.Config, &cfg)
	if cfg.KMS.Type != "pkcs11" || cfg.KMS.URI != c.hsm.KMSURI() || cfg.Key != "pkcs11:id=5302;object=stepfort-intermediate" {
		t.Fatalf("ca.json kms %+v key %q", cfg.KMS, cfg.Key)
	}
	c.serve(t, c.Config, c.Port)
	_, renewed := stepCLIFlows(t, c.ca, c.URL, "admin", c.Password)

	inter := readCert(t, filepath.Join(c.Dir, "certs", "intermediate_ca.crt"))
	if !bytes.Equal(tokenPublicKey(t, c.hsm, "stepfort-intermediate"), inter.RawSubjectPublicKeyInfo) {
		t.Fatal("the intermediate certificate's key is not the token's stepfort-intermediate key")
	}
	objects := pkcs11Tool(t, c.hsm, "--list-objects")
	if n := strings.Count(objects, "never extractable"); n < 4 {
		t.Fatalf("want 4 non-extractable private keys in the token, got %d:\n%s", n, objects)
	}

	// The CRL is signed by the token's key and lists the revoked renewal.
	eventually(t, 20*time.Second, func() error {
		crl := hsmFetchCRL(t, c.HTTPPort)
		if err := crl.CheckSignatureFrom(inter); err != nil {
			return fmt.Errorf("CRL signature: %v", err)
		}
		if !crlHas(crl, renewed) {
			return fmt.Errorf("CRL %s lacks revoked serial %s", crl.Number, renewed)
		}
		return nil
	})

	// OCSP: a good certificate, answered with the token's key.
	step := newStepCLI(t)
	step.bootstrap(c.ca, c.URL)
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "o.crt"), filepath.Join(dir, "o.key")
	step.must("ca", "certificate", "ocsp.example", crt, key, "--provisioner", "admin", "--provisioner-password-file", c.Password)
	resp := ocspAsk(t, c.HTTPPort, readCert(t, crt), inter)
	if resp.Status != ocsp.Good || resp.Certificate != nil {
		t.Fatalf("OCSP status %d, embedded responder cert %v: want good, signed by the CA key", resp.Status, resp.Certificate != nil)
	}

	assertNoCAKeyOnDisk(t, c.ca)
}

// TestHSMOCSPResponderKey: with ocsp.responderKey naming a key in the
// token, the delegated responder certificate is issued for that key, and
// the response verifies with OpenSSL against the root.
func TestHSMOCSPResponderKey(t *testing.T) {
	c := initHSMCA(t)
	pkcs11Tool(t, c.hsm, "--keypairgen", "--key-type", "EC:prime256v1", "--id", "5305", "--label", "stepfort-ocsp")
	path, query, _ := strings.Cut(c.hsm.KMSURI(), "?")
	uri := path + ";id=5305;object=stepfort-ocsp?" + query
	editConfig(t, c.Config, func(m map[string]any) {
		ocspCfg := m["stepfort"].(map[string]any)["plugins"].(map[string]any)["revocation"].(map[string]any)["ocsp"].(map[string]any)
		ocspCfg["signer"] = "delegated"
		ocspCfg["responderKey"] = uri
	})
	p := c.serve(t, c.Config, c.Port)
	step := newStepCLI(t)
	step.bootstrap(c.ca, c.URL)
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "r.crt"), filepath.Join(dir, "r.key")
	step.must("ca", "certificate", "responder.example", crt, key, "--provisioner", "admin", "--provisioner-password-file", c.Password)

	inter := readCert(t, filepath.Join(c.Dir, "certs", "intermediate_ca.crt"))
	resp := ocspAsk(t, c.HTTPPort, readCert(t, crt), inter)
	if resp.Status != ocsp.Good || resp.Certificate == nil {
		t.Fatalf("OCSP status %d, responder certificate %v: want good, delegated", resp.Status, resp.Certificate != nil)
	}
	if !bytes.Equal(resp.Certificate.RawSubjectPublicKeyInfo, tokenPublicKey(t, c.hsm, "stepfort-ocsp")) {
		t.Fatal("the responder certificate's key is not the token's stepfort-ocsp key")
	}
	if err := resp.Certificate.CheckSignatureFrom(inter); err != nil {
		t.Fatalf("responder certificate: %v", err)
	}
	out := ocspStatus(t, c.ca, fmt.Sprintf("http://127.0.0.1:%d/ocsp", c.HTTPPort), "-cert", crt)
	if !strings.Contains(out, crt+": good") {
		t.Fatalf("openssl ocsp:\n%s", out)
	}
	if !strings.Contains(p.Log(), "kmsKey=true") && !strings.Contains(p.Log(), `"kmsKey":true`) {
		t.Fatalf("no responder certificate for the KMS key in the log:\n%s", p.Log())
	}
	assertNoCAKeyOnDisk(t, c.ca)
}

// TestHSMReplicasPostgres: two replicas on one PostgreSQL share the token
// (one SoftHSM2 token directory); a certificate issued on A renews and is
// revoked on B, and both publish a CRL signed by the token's key that
// lists it.
func TestHSMReplicasPostgres(t *testing.T) {
	pg := testenv.StartPostgres(t)
	c := initHSMCA(t, "--db", "postgresql", "--db-dsn", pg.DSN(), "--db-name", "hsmreplicas")
	configB, portB, httpB := replicaConfigPorts(t, c.ca, "replica-b")
	c.serve(t, c.Config, c.Port)
	c.serve(t, configB, portB)
	a, b := newStepCLI(t), newStepCLI(t)
	a.bootstrap(c.ca, c.URL)
	b.bootstrap(c.ca, fmt.Sprintf("https://localhost:%d", portB))
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "d.crt"), filepath.Join(dir, "d.key")
	a.must("ca", "certificate", "replicated.example", crt, key, "--provisioner", "admin", "--provisioner-password-file", c.Password)
	b.must("ca", "renew", "--force", crt, key)
	serial := certSerial(t, crt)
	b.must("ca", "revoke", "--cert", crt, "--key", key)
	inter := readCert(t, filepath.Join(c.Dir, "certs", "intermediate_ca.crt"))
	for _, port := range []int{c.HTTPPort, httpB} {
		eventually(t, 20*time.Second, func() error {
			crl := hsmFetchCRL(t, port)
			if err := crl.CheckSignatureFrom(inter); err != nil {
				return fmt.Errorf("replica on %d: CRL signature: %v", port, err)
			}
			if !crlHas(crl, serial) {
				return fmt.Errorf("replica on %d: CRL %s lacks %s", port, crl.Number, serial)
			}
			return nil
		})
	}
}

// TestHSMStartFaults: each token problem stops the daemon at start with a
// message that names it, and a non-zero exit.
func TestHSMStartFaults(t *testing.T) {
	c := initHSMCA(t)
	badPIN := filepath.Join(t.TempDir(), "bad-pin")
	if err := os.WriteFile(badPIN, []byte("9999\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m := testenv.SoftHSMModule
	cases := []struct {
		name, uri, key, want string
	}{
		{"wrong PIN", "pkcs11:module-path=" + m + ";token=stepfort?pin-source=" + badPIN, "", `wrong PIN for token token="stepfort" (CKR_PIN_INCORRECT)`},
		{"missing token", "pkcs11:module-path=" + m + ";token=absent?pin-source=" + c.hsm.PINFile, "", `no token token="absent" in module ` + m},
		{"missing object", "", "pkcs11:id=99;object=absent", `no key pkcs11:id=99;object=absent in token token="stepfort"`},
		{"module does not load", "pkcs11:module-path=" + badPIN + ";token=stepfort?pin-source=" + c.hsm.PINFile, "", "module " + badPIN + " does not load"},
		{"missing module", "pkcs11:module-path=/nonexistent/p11.so;token=stepfort?pin-source=" + c.hsm.PINFile, "", "module-path /nonexistent/p11.so: stat /nonexistent/p11.so: no such file or directory"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "ca.json")
			copyFile(t, c.Config, cfg)
			editConfig(t, cfg, func(m map[string]any) {
				if tc.uri != "" {
					m["kms"].(map[string]any)["uri"] = tc.uri
					// The Attestation CA key names the token too.
					att := m["stepfort"].(map[string]any)["plugins"].(map[string]any)["attestationCA"].(map[string]any)
					path, _, _ := strings.Cut(tc.uri, "?")
					_, query, _ := strings.Cut(att["key"].(string), "?")
					if tc.name == "wrong PIN" {
						query = "pin-source=" + badPIN
					}
					att["key"] = path + ";id=5304;object=stepfort-attestation?" + query
				}
				if tc.key != "" {
					m["key"] = tc.key
				}
			})
			cmd := exec.Command(c.bin, "serve", cfg, "--password-file", c.Password)
			timer := time.AfterFunc(30*time.Second, func() { _ = cmd.Process.Kill() })
			defer timer.Stop()
			out, err := cmd.CombinedOutput()
			if err == nil || cmd.ProcessState.ExitCode() == 0 {
				t.Fatalf("serve started (exit %v):\n%s", err, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Fatalf("exit %v, output lacks %q:\n%s", err, tc.want, out)
			}
		})
	}
}

// TestHSMTokenLostAtRunTime: with the token gone, signing answers 5xx
// within a bound instead of hanging; when it is back, the same daemon
// signs again.
func TestHSMTokenLostAtRunTime(t *testing.T) {
	c := initHSMCA(t)
	p := c.serve(t, c.Config, c.Port)
	hc := apiClient(t, c.ca)
	step := newStepCLI(t)
	step.bootstrap(c.ca, c.URL)
	if code, body := signCSR(t, hc, c, step); code != http.StatusCreated {
		t.Fatalf("sign with the token present: %d %s", code, body)
	}
	if err := c.hsm.Remove(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		start := time.Now()
		code, body := signCSR(t, hc, c, step)
		took := time.Since(start)
		if code < 500 || code > 599 {
			t.Fatalf("sign %d with the token away: %d %s, want 5xx", i, code, body)
		}
		if took > 10*time.Second {
			t.Fatalf("sign %d with the token away took %s", i, took)
		}
		t.Logf("token away: %d in %s", code, took.Round(time.Millisecond))
	}
	if err := c.hsm.Restore(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, func() error {
		if code, body := signCSR(t, hc, c, step); code != http.StatusCreated {
			return fmt.Errorf("token back: %d %s", code, body)
		}
		return nil
	})
	if p.Exited() {
		t.Fatal("daemon exited")
	}
	if !strings.Contains(p.Log(), "PKCS#11 token reopened") {
		t.Fatalf("no reopen in the log:\n%s", p.Log())
	}
}

// signCSR asks /1.0/sign for a certificate with a fresh one-time token.
func signCSR(t *testing.T, hc *http.Client, c *hsmCA, step *stepCLI) (int, string) {
	t.Helper()
	ott := strings.TrimSpace(step.stdout("ca", "token", "lost.example", "--provisioner", "admin", "--provisioner-password-file", c.Password))
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "lost.example"}, DNSNames: []string{"lost.example"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]string{"csr": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), "ott": ott})
	resp, err := hc.Post(c.URL+"/1.0/sign", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(b)
}

func pkcs11Tool(t *testing.T, h *testenv.SoftHSM, args ...string) string {
	t.Helper()
	all := append([]string{"--module", testenv.SoftHSMModule, "--token-label", h.Label, "--login", "--pin", h.PIN}, args...)
	cmd := exec.Command(testenv.MustTool(t, "pkcs11-tool"), all...)
	cmd.Env = h.Env(os.Environ())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// tokenPublicKey reads a public key object from the token (DER SPKI).
func tokenPublicKey(t *testing.T, h *testenv.SoftHSM, label string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), label+".der")
	pkcs11Tool(t, h, "--read-object", "--type", "pubkey", "--label", label, "--output-file", out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func hsmFetchCRL(t *testing.T, httpPort int) *x509.RevocationList {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/1.0/crl", httpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	der, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CRL: %d %s", resp.StatusCode, der)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatalf("parse CRL: %v", err)
	}
	return crl
}

func crlHas(crl *x509.RevocationList, serial string) bool {
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.String() == serial {
			return true
		}
	}
	return false
}

func ocspAsk(t *testing.T, httpPort int, cert, issuer *x509.Certificate) *ocsp.Response {
	t.Helper()
	req, err := ocsp.CreateRequest(cert, issuer, &ocsp.RequestOptions{Hash: crypto.SHA256})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/ocsp", httpPort), "application/ocsp-request", bytes.NewReader(req))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	der, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	r, err := ocsp.ParseResponseForCert(der, cert, issuer) // checks the signature with issuer's key
	if err != nil {
		t.Fatalf("OCSP response: %v", err)
	}
	return r
}

// assertNoCAKeyOnDisk walks the installation: no file holds the private
// key of a CA certificate, as PEM (encrypted with the CA password or not)
// or as DER.
func assertNoCAKeyOnDisk(t *testing.T, c *ca) {
	t.Helper()
	var caKeys []crypto.PublicKey
	for _, f := range []string{"root_ca.crt", "intermediate_ca.crt", "attestation_root_ca.crt", "attestation_intermediate_ca.crt"} {
		caKeys = append(caKeys, readCert(t, filepath.Join(c.Dir, "certs", f)).PublicKey)
	}
	password, err := os.ReadFile(c.Password)
	if err != nil {
		t.Fatal(err)
	}
	password = bytes.TrimSpace(password)
	var keys, files int
	err = filepath.WalkDir(c.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		files++
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var found []crypto.PublicKey
		for rest := b; ; {
			var blk *pem.Block
			if blk, rest = pem.Decode(rest); blk == nil {
				break
			}
			if !strings.Contains(blk.Type, "PRIVATE KEY") {
				continue
			}
			k, err := pemutil.ParseKey(pem.EncodeToMemory(blk), pemutil.WithPassword(password))
			if err != nil {
				t.Errorf("%s: private key block %q that does not parse: %v", path, blk.Type, err)
				continue
			}
			found = append(found, k.(crypto.Signer).Public())
		}
		for _, parse := range []func([]byte) (any, error){x509.ParsePKCS8PrivateKey, func(b []byte) (any, error) { return x509.ParseECPrivateKey(b) }} {
			if k, err := parse(b); err == nil {
				found = append(found, k.(crypto.Signer).Public())
			}
		}
		keys += len(found)
		for _, pub := range found {
			for _, ca := range caKeys {
				if pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(ca) {
					t.Errorf("%s holds the private key of a CA certificate", path)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("scanned %d files: %d private keys, none of a CA (the SCEP RA key stays on disk)", files, keys)
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

// TestHSMAuditCheckpointKey: with auditLog.key naming a P-256 key made in
// the token, checkpoints are signed there (alg ES256): `stepfort audit
// verify` passes with the token's public key, live and on an export, the
// CA serves that key, and no audit private key is on disk.
func TestHSMAuditCheckpointKey(t *testing.T) {
	c := initHSMCA(t)
	pkcs11Tool(t, c.hsm, "--keypairgen", "--key-type", "EC:prime256v1", "--id", "5306", "--label", "stepfort-audit")
	path, query, _ := strings.Cut(c.hsm.KMSURI(), "?")
	uri := path + ";id=5306;object=stepfort-audit?" + query
	editConfig(t, c.Config, func(m map[string]any) {
		al := m["stepfort"].(map[string]any)["plugins"].(map[string]any)["auditLog"].(map[string]any)
		al["key"] = uri
		al["checkpointEvery"] = 2
	})
	// init made a file key; with the key in the token it is unused.
	fileKey := filepath.Join(c.Dir, "secrets", "audit_key")
	for _, f := range []string{fileKey, fileKey + ".pub"} {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	c.serve(t, c.Config, c.Port)
	step := newStepCLI(t)
	step.bootstrap(c.ca, c.URL)
	dir := t.TempDir()
	step.must("ca", "certificate", "audit.example", filepath.Join(dir, "a.crt"), filepath.Join(dir, "a.key"),
		"--provisioner", "admin", "--provisioner-password-file", c.Password)

	pubFile := filepath.Join(dir, "token-audit.pub")
	tokenPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: tokenPublicKey(t, c.hsm, "stepfort-audit")})
	if err := os.WriteFile(pubFile, tokenPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := stepfortCmd(c.ca, "audit", "verify", "--key", pubFile)
	if err != nil || !strings.Contains(out, "OK") {
		t.Fatalf("live audit verify with the token's key: %v\n%s", err, out)
	}
	export, lines := auditExport(t, c.ca)
	if !strings.Contains(lines[0], `"alg":"ES256"`) || !strings.Contains(export, "certificate.issue") {
		t.Fatalf("export header %s; want an ES256 checkpoint and the issuance", lines[0])
	}
	f := filepath.Join(dir, "audit.jsonl")
	if err := os.WriteFile(f, []byte(export), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(stepfortBin, "audit", "verify", f, "--key", pubFile).CombinedOutput(); err != nil {
		t.Fatalf("offline audit verify: %v\n%s", err, out)
	}
	// The key the CA serves is the token's.
	served, err := stepfortCmd(c.ca, "audit", "verify")
	if err != nil || !strings.Contains(served, "OK") || !strings.Contains(out, served[strings.LastIndex(served, "(key "):]) {
		t.Fatalf("verify with the served key: %v\n%s\nwith the token's: %s", err, served, out)
	}
	// Another key does not verify.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&other.PublicKey)
	otherFile := filepath.Join(dir, "other.pub")
	if err := os.WriteFile(otherFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(stepfortBin, "audit", "verify", f, "--key", otherFile).CombinedOutput(); err == nil {
		t.Fatalf("verified with another key:\n%s", out)
	}
	if _, err := os.Stat(fileKey); !os.IsNotExist(err) {
		t.Fatalf("an audit key file was created: %v", err)
	}
	assertNoCAKeyOnDisk(t, c.ca)
}

// TestHSMDeviceAttest: with the Attestation CA key in the token (init
// --kms), a swtpm device enrols its AK with the Attestation CA and the
// step CLI gets a device-attest-01 certificate; the AK certificate
// verifies with the Attestation CA certificate whose key is the token's,
// and no Attestation CA key file exists in the data directory.
func TestHSMDeviceAttest(t *testing.T) {
	sw := startSWTPM(t)
	c := initHSMCA(t)
	var cfg struct {
		Stepfort struct {
			Plugins struct {
				AttestationCA struct{ Key string } `json:"attestationCA"`
			} `json:"plugins"`
		} `json:"stepfort"`
	}
	readJSON(t, c.Config, &cfg)
	if key := cfg.Stepfort.Plugins.AttestationCA.Key; !strings.HasPrefix(key, "pkcs11:") || !strings.Contains(key, "object=stepfort-attestation") {
		t.Fatalf("ca.json attestationCA.key %q, want the token's stepfort-attestation key", key)
	}
	c.serve(t, c.Config, c.Port)

	withKMSPlugin(t)
	tp := sw.open(t)
	ek := preferredEK(t, tp)
	urn := ekURN(t, ek)
	if out, err := stepfortCLI(t, c.ca, "devices", "add", "--ek-pub", writeEKPub(t, ek, true), "--name", "laptop-1"); err != nil {
		t.Fatalf("devices add: %v\n%s", err, out)
	}
	agent := newDeviceAgent(t, sw, c.ca, c.URL)
	devCrt := filepath.Join(agent.dir, "device.crt")
	if out, err := agent.deviceCert(urn, "devkey1", devCrt); err != nil {
		t.Fatalf("device-attest-01 certificate: %v\n%s", err, out)
	}
	if leaf := readCert(t, devCrt); len(leaf.URIs) != 1 || leaf.URIs[0].String() != urn {
		t.Fatalf("device certificate URI SANs %v, want %s", leaf.URIs, urn)
	}

	attCA := readCert(t, filepath.Join(c.Dir, "certs", "attestation_intermediate_ca.crt"))
	if !bytes.Equal(tokenPublicKey(t, c.hsm, "stepfort-attestation"), attCA.RawSubjectPublicKeyInfo) {
		t.Fatal("the Attestation CA certificate's key is not the token's stepfort-attestation key")
	}
	akCert := storedAKCert(t, agent.storage)
	if err := akCert.CheckSignatureFrom(attCA); err != nil {
		t.Fatalf("AK certificate %q does not verify with the Attestation CA certificate: %v", akCert.Subject, err)
	}

	for _, f := range []string{"attestation_root_ca_key", "attestation_intermediate_ca_key"} {
		if _, err := os.Stat(filepath.Join(c.Dir, "secrets", f)); !os.IsNotExist(err) {
			t.Errorf("secrets/%s: want no such file, stat says %v", f, err)
		}
	}
	assertNoCAKeyOnDisk(t, c.ca)
}

// storedAKCert finds the AK certificate the step CLI saved in its TPM key
// store (go.step.sm/crypto's dirstore: one JSON object per file).
func storedAKCert(t *testing.T, storage string) *x509.Certificate {
	t.Helper()
	var found *x509.Certificate
	err := filepath.WalkDir(storage, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		var obj struct {
			Type  string   `json:"type"`
			Chain [][]byte `json:"chain"`
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if json.Unmarshal(b, &obj) != nil || obj.Type != "AK" || len(obj.Chain) == 0 {
			return nil
		}
		found, err = x509.ParseCertificate(obj.Chain[0])
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if found == nil {
		t.Fatalf("no AK with a certificate in the TPM key store %s", storage)
	}
	return found
}
