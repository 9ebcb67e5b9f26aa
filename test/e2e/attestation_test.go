package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.step.sm/crypto/tpm"
	"go.step.sm/crypto/tpm/attestation"
	"go.step.sm/crypto/tpm/storage"
	"go.step.sm/crypto/x509util"

	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/provisioners/attestationca"
)

// swtpm is a software TPM 2.0 with an EK certificate from its own local CA,
// served on a UNIX socket (the transport go.step.sm/crypto/tpm and the step
// CLI's device= accept).
type swtpm struct {
	Sock       string
	EKRootPEMs []string // swtpm-localca root and issuer, for ekRoots
}

func startSWTPM(t *testing.T) *swtpm {
	t.Helper()
	bin := testenv.MustTool(t, "swtpm")
	setup := testenv.MustTool(t, "swtpm_setup")
	testenv.MustTool(t, "swtpm_localca")
	// UNIX socket paths are limited to 108 bytes: keep it short.
	dir, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	state, ca := filepath.Join(dir, "state"), filepath.Join(dir, "localca")
	for _, d := range []string{state, ca} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caConf := write("localca.conf", fmt.Sprintf("statedir = %s\nsigningkey = %s/signkey.pem\nissuercert = %s/issuercert.pem\ncertserial = %s/certserial\n", ca, ca, ca, ca))
	caOpts := write("localca.options", "--platform-manufacturer Test\n--platform-version 2.1\n--platform-model SWTPM\n")
	setupConf := write("setup.conf", fmt.Sprintf("create_certs_tool= %s\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n",
		testenv.MustTool(t, "swtpm_localca"), caConf, caOpts))
	out, err := exec.Command(setup, "--tpm2", "--tpmstate", state, "--create-ek-cert", "--config", setupConf, "--overwrite").CombinedOutput()
	if err != nil {
		t.Fatalf("swtpm_setup: %v\n%s", err, out)
	}
	s := &swtpm{Sock: filepath.Join(dir, "tpm.sock")}
	testenv.StartProcess(t, bin, []string{"socket", "--tpm2", "--tpmstate", "dir=" + state,
		"--server", "type=unixio,path=" + s.Sock, "--ctrl", "type=unixio,path=" + s.Sock + ".ctrl",
		"--flags", "not-need-init,startup-clear"}, nil)
	eventually(t, 10*time.Second, func() error { _, err := os.Stat(s.Sock); return err })
	s.EKRootPEMs = []string{filepath.Join(ca, "swtpm-localca-rootca-cert.pem"), filepath.Join(ca, "issuercert.pem")}
	return s
}

// open returns a go.step.sm/crypto TPM on the swtpm with its own key store.
func (s *swtpm) open(t *testing.T) *tpm.TPM {
	t.Helper()
	tp, err := tpm.New(tpm.WithDeviceName(s.Sock), tpm.WithStore(storage.NewDirstore(t.TempDir())), tpm.WithDisableDownload())
	if err != nil {
		t.Fatal(err)
	}
	return tp
}

// preferredEK is the EK the step CLI uses: the first RSA EK.
func preferredEK(t *testing.T, tp *tpm.TPM) *tpm.EK {
	t.Helper()
	eks, err := tp.GetEKs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, ek := range eks {
		if ek.Type()[:3] == "RSA" {
			return ek
		}
	}
	return eks[0]
}

func ekURN(t *testing.T, ek *tpm.EK) string {
	t.Helper()
	u, err := ek.FingerprintURI()
	if err != nil {
		t.Fatal(err)
	}
	return u.String()
}

func writeEKPub(t *testing.T, ek *tpm.EK, der bool) string {
	t.Helper()
	p, err := x509.MarshalPKIXPublicKey(ek.Public())
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "ek.pub")
	data := p
	if !der {
		data = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: p})
	}
	if err := os.WriteFile(f, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// stepfortCLI runs an admin command of the stepfort binary against c.
func stepfortCLI(t *testing.T, c *ca, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(stepfortBin, args...)
	cmd.Env = append(os.Environ(), "STEPFORT_CA_URL="+c.URL, "STEPFORT_ROOT="+c.Root, "STEPFORT_TOKEN_FILE="+c.AdminToken)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// rawAttestation drives the protocol by hand so tests can replay, delay or
// corrupt steps.
type rawAttestation struct {
	t    *testing.T
	hc   *http.Client
	base string
	tp   *tpm.TPM
	ek   *tpm.EK
	ak   *tpm.AK
}

func newRawAttestation(t *testing.T, c *ca, baseURL string, tp *tpm.TPM, ek *tpm.EK) *rawAttestation {
	t.Helper()
	name := fmt.Sprintf("ak-%d", time.Now().UnixNano())
	ak, err := tp.CreateAK(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return &rawAttestation{t: t, hc: apiClient(t, c), base: baseURL, tp: tp, ek: ek, ak: ak}
}

func (a *rawAttestation) request() attestationca.AttestRequest {
	a.t.Helper()
	ctx := context.Background()
	info, err := a.tp.Info(ctx)
	if err != nil {
		a.t.Fatal(err)
	}
	params, err := a.ak.AttestationParameters(ctx)
	if err != nil {
		a.t.Fatal(err)
	}
	ekDER, _ := x509.MarshalPKIXPublicKey(a.ek.Public())
	req := attestationca.AttestRequest{
		TPMInfo: attestationca.TPMInfo{Version: 2, Manufacturer: strconv.FormatUint(uint64(info.Manufacturer.ID), 10),
			Model: info.VendorInfo, FirmwareVersion: info.FirmwareVersion.String()},
		EKPub: ekDER,
		AttestParams: attestationca.AttestationParameters{Public: params.Public, CreateData: params.CreateData,
			CreateAttestation: params.CreateAttestation, CreateSignature: params.CreateSignature},
	}
	if c := a.ek.Certificate(); c != nil {
		req.EKCerts = [][]byte{c.Raw}
	}
	return req
}

// post sends body to base+path and returns status and JSON body.
func (a *rawAttestation) post(base, path string, body []byte) (int, map[string]any) {
	a.t.Helper()
	resp, err := a.hc.Post(base+path, "", bytes.NewReader(body))
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(data, &m)
	return resp.StatusCode, m
}

// attest runs /attest and activates the credential; it returns the secret.
func (a *rawAttestation) attest() []byte {
	a.t.Helper()
	body, _ := json.Marshal(a.request())
	status, m := a.post(a.base, "/attest", body)
	if status != http.StatusOK {
		a.t.Fatalf("/attest: %d %v", status, m)
	}
	b, _ := json.Marshal(m)
	var ar attestationca.AttestResponse
	if err := json.Unmarshal(b, &ar); err != nil {
		a.t.Fatal(err)
	}
	secret, err := a.ak.ActivateCredential(context.Background(), tpm.EncryptedCredential{Credential: ar.Credential, Secret: ar.Secret})
	if err != nil {
		a.t.Fatalf("activate credential: %v", err)
	}
	return secret
}

func (a *rawAttestation) secret(base string, secret []byte) (int, map[string]any) {
	a.t.Helper()
	body, _ := json.Marshal(attestationca.SecretRequest{Secret: secret})
	return a.post(base, "/secret", body)
}

// checkAKChain checks an AK certificate chain against the Attestation CA
// root written by init and the content step-ca and the step CLI require.
func checkAKChain(t *testing.T, c *ca, chain []*x509.Certificate, urn string) {
	t.Helper()
	leaf := chain[0]
	rootPEM, err := os.ReadFile(filepath.Join(c.Dir, "certs", "attestation_root_ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)
	for _, ic := range chain[1:] {
		inter.AddCert(ic)
	}
	lc := *leaf
	lc.UnhandledCriticalExtensions = nil
	if _, err := lc.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("AK chain does not verify to the Attestation CA root: %v", err)
	}
	if leaf.Version != 3 || leaf.Subject.String() != "" || leaf.IsCA {
		t.Fatalf("AK cert: version %d subject %q isCA %v", leaf.Version, leaf.Subject, leaf.IsCA)
	}
	if len(leaf.UnknownExtKeyUsage) == 0 || !leaf.UnknownExtKeyUsage[0].Equal(asn1.ObjectIdentifier{2, 23, 133, 8, 3}) {
		t.Fatalf("AK cert EKU: %v", leaf.UnknownExtKeyUsage)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != urn {
		t.Fatalf("AK cert URI SAN %v, want %s", leaf.URIs, urn)
	}
	sans, err := x509util.ParseSubjectAlternativeNames(leaf)
	if err != nil {
		t.Fatal(err)
	}
	if len(sans.PermanentIdentifiers) != 1 || sans.PermanentIdentifiers[0].Identifier != urn {
		t.Fatalf("PermanentIdentifier %+v", sans.PermanentIdentifiers)
	}
	if sans.TPMHardwareDetails.Manufacturer == "" || sans.TPMHardwareDetails.Model == "" || sans.TPMHardwareDetails.Version == "" {
		t.Fatalf("TPM details %+v", sans.TPMHardwareDetails)
	}
	critical := false
	for _, e := range leaf.Extensions {
		if e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 17}) {
			critical = e.Critical
		}
	}
	if !critical {
		t.Fatal("SAN not critical")
	}
}

// TestAttestationEndToEnd: a device registered with `stepfort devices add
// --ek-pub` gets an AK certificate and then a device-attest-01 certificate
// with the real step CLI, and an AK certificate with the Go client.
func TestAttestationEndToEnd(t *testing.T) {
	sw := startSWTPM(t)
	c := initCA(t)
	serve(t, c.Config, c.Password, c.Port)
	tp := sw.open(t)
	ek := preferredEK(t, tp)
	urn := ekURN(t, ek)
	attURL := c.URL + "/attestation"

	// Not registered yet: the Go client is refused (it prints the status).
	client, err := attestation.NewClient(attURL, attestation.WithRootsFile(c.Root))
	if err != nil {
		t.Fatal(err)
	}
	ak0, err := tp.CreateAK(context.Background(), "ak-unregistered")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Attest(context.Background(), tp, ek, ak0); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("unregistered EK: %v", err)
	}

	if out, err := stepfortCLI(t, c, "devices", "add", "--ek-pub", writeEKPub(t, ek, true), "--name", "swtpm-1", "--json"); err != nil {
		t.Fatalf("devices add: %v\n%s", err, out)
	} else if !strings.Contains(out, urn) {
		t.Fatalf("devices add did not compute %s:\n%s", urn, out)
	}

	// Go client (go.step.sm/crypto/tpm/attestation).
	chain, err := client.Attest(context.Background(), tp, ek, ak0)
	if err != nil {
		t.Fatalf("attestation client: %v", err)
	}
	checkAKChain(t, c, chain, urn)
	if err := ak0.SetCertificateChain(context.Background(), chain); err != nil {
		t.Fatalf("SetCertificateChain: %v", err)
	}

	// Real step CLI: AK enrollment then ACME device-attest-01.
	step := newStepCLI(t)
	step.bootstrap(c, c.URL)
	dir := t.TempDir()
	crt := filepath.Join(dir, "dev.crt")
	out := step.must("ca", "certificate", urn, crt,
		"--provisioner", "agents",
		"--attestation-uri", "tpmkms:name=devkey1;device="+sw.Sock,
		"--attestation-ca-url", attURL,
		"--attestation-ca-root", c.Root,
		"--tpm-storage-directory", filepath.Join(dir, "tpmstore"))
	leaf := readCert(t, crt)
	sans, err := x509util.ParseSubjectAlternativeNames(leaf)
	if err != nil || len(sans.PermanentIdentifiers) != 1 || sans.PermanentIdentifiers[0].Identifier != urn {
		t.Fatalf("device certificate permanent identifier %+v (%v)\n%s", sans.PermanentIdentifiers, err, out)
	}

	// The attestation is recorded on the device.
	code, dev := call(t, apiClient(t, c), "GET", c.URL+"/api/v1/devices?identifier="+urlQuery(urn), readToken(t, c), nil)
	devs, _ := dev["devices"].([]any)
	if code != 200 || len(devs) != 1 || devs[0].(map[string]any)["lastAttestation"] == nil {
		t.Fatalf("device after attestation: %d %v", code, dev)
	}
}

func urlQuery(s string) string {
	r := strings.NewReplacer("+", "%2B", "/", "%2F", "=", "%3D", ":", "%3A")
	return r.Replace(s)
}

// TestAttestationDenials covers every refusal the issue lists; each answers
// a JSON error whose code names the reason.
func TestAttestationDenials(t *testing.T) {
	sw := startSWTPM(t)
	c := initCA(t)
	editConfig(t, c.Config, func(m map[string]any) {
		m["stepfort"].(map[string]any)["plugins"].(map[string]any)["attestationCA"].(map[string]any)["sessionTTL"] = "3s"
	})
	proc := serve(t, c.Config, c.Password, c.Port)
	tp := sw.open(t)
	ek := preferredEK(t, tp)
	urn := ekURN(t, ek)
	base := c.URL + "/attestation"
	raw := newRawAttestation(t, c, base, tp, ek)
	req, _ := json.Marshal(raw.request())

	expect := func(name string, status int, m map[string]any, want int, code string) {
		t.Helper()
		if status != want || m["error"] != code {
			t.Errorf("%s: got %d %v, want %d %s", name, status, m, want, code)
		}
	}
	st, m := raw.post(base, "/attest", req)
	expect("not in inventory", st, m, 403, "ek_not_registered")

	// DER --ek-pub works too.
	if out, err := stepfortCLI(t, c, "devices", "add", "--ek-pub", writeEKPub(t, ek, false), "--name", "d"); err != nil {
		t.Fatalf("devices add: %v\n%s", err, out)
	}
	if out, err := stepfortCLI(t, c, "devices", "update", urn, "--status", "disabled"); err != nil {
		t.Fatalf("devices update: %v\n%s", err, out)
	}
	st, m = raw.post(base, "/attest", req)
	expect("disabled", st, m, 403, "device_disabled")
	if out, err := stepfortCLI(t, c, "devices", "update", urn, "--status", "active"); err != nil {
		t.Fatalf("devices update: %v\n%s", err, out)
	}

	// Replay, and a secret no session was created for.
	secret := raw.attest()
	if st, m := raw.secret(base, secret); st != 200 {
		t.Fatalf("first /secret: %d %v", st, m)
	}
	st, m = raw.secret(base, secret)
	expect("replayed", st, m, 403, "secret_replayed")
	foreign := make([]byte, 32)
	_, _ = rand.Read(foreign)
	st, m = raw.secret(base, foreign)
	expect("foreign secret", st, m, 403, "unknown_secret")

	// Expired session (sessionTTL is 3s here).
	secret = raw.attest()
	time.Sleep(3500 * time.Millisecond)
	st, m = raw.secret(base, secret)
	expect("expired", st, m, 403, "session_expired")

	// Garbage and truncated structures: 400, and the daemon stays up.
	var good attestationca.AttestRequest
	_ = json.Unmarshal(req, &good)
	mutate := func(f func(r *attestationca.AttestRequest)) []byte {
		r := good
		r.AttestParams = good.AttestParams
		f(&r)
		b, _ := json.Marshal(r)
		return b
	}
	for _, tt := range []struct {
		name string
		body []byte
	}{
		{"garbage", []byte("\x00\xffnot json")},
		{"truncated JSON", req[:len(req)/2]},
		{"truncated public", mutate(func(r *attestationca.AttestRequest) { r.AttestParams.Public = r.AttestParams.Public[:20] })},
		{"truncated attestation", mutate(func(r *attestationca.AttestRequest) {
			r.AttestParams.CreateAttestation = r.AttestParams.CreateAttestation[:10]
		})},
		{"garbage signature", mutate(func(r *attestationca.AttestRequest) { r.AttestParams.CreateSignature = bytes.Repeat([]byte{0xff}, 40) })},
		{"truncated EK", mutate(func(r *attestationca.AttestRequest) { r.EKPub = r.EKPub[:30] })},
		{"garbage EK cert", mutate(func(r *attestationca.AttestRequest) { r.EKCerts = [][]byte{{0x30, 0x82, 0xff}} })},
		{"wrong version", mutate(func(r *attestationca.AttestRequest) { r.TPMInfo.Version = 1 })},
	} {
		st, m := raw.post(base, "/attest", tt.body)
		expect(tt.name, st, m, 400, "bad_request")
	}
	st, m = raw.post(base, "/secret", []byte(`{"secret":"!!"}`))
	expect("garbage secret", st, m, 400, "bad_request")

	// Audit events name the EK and the reason, never the secret.
	log := proc.Log()
	for _, reason := range []string{"ek_not_registered", "device_disabled", "secret_replayed", "unknown_secret", "session_expired", "bad_request"} {
		if !strings.Contains(log, `"reason":"`+reason+`"`) {
			t.Errorf("no audit event with reason %s", reason)
		}
	}
	if !strings.Contains(log, `"event":"attestation.denied"`) || !strings.Contains(log, urn) {
		t.Error("audit events lack event name or EK URN")
	}

	// EK certificate policy: swtpm's EK certificate does not chain to the
	// stepfort root, so requireEKCertificate with that root denies ...
	_ = proc.Signal(syscall.SIGTERM)
	_ = proc.Wait(30 * time.Second)
	setEKPolicy := func(roots []string) {
		editConfig(t, c.Config, func(m map[string]any) {
			ac := m["stepfort"].(map[string]any)["plugins"].(map[string]any)["attestationCA"].(map[string]any)
			ac["ekRoots"] = roots
			ac["requireEKCertificate"] = true
		})
	}
	setEKPolicy([]string{c.Root})
	proc = serve(t, c.Config, c.Password, c.Port)
	st, m = raw.post(base, "/attest", req)
	expect("EK cert not chaining", st, m, 403, "ek_certificate_untrusted")
	noCert := mutate(func(r *attestationca.AttestRequest) { r.EKCerts = nil })
	st, m = raw.post(base, "/attest", noCert)
	expect("EK cert missing", st, m, 403, "ek_certificate_missing")
	// ... and the swtpm local CA as ekRoots accepts it.
	_ = proc.Signal(syscall.SIGTERM)
	_ = proc.Wait(30 * time.Second)
	setEKPolicy(sw.EKRootPEMs)
	serve(t, c.Config, c.Password, c.Port)
	secret = raw.attest()
	if st, m := raw.secret(base, secret); st != 200 {
		t.Fatalf("/secret with a trusted EK certificate: %d %v", st, m)
	}
}

// TestAttestationPostgresReplicas: /attest on replica A, /secret on B.
func TestAttestationPostgresReplicas(t *testing.T) {
	sw := startSWTPM(t)
	pg := testenv.StartPostgres(t)
	c := initCA(t, "--db", "postgresql", "--db-dsn", pg.DSN(), "--db-name", "attestation")
	configB, portB := replicaConfig(t, c, "replica-b")
	serve(t, c.Config, c.Password, c.Port)
	serve(t, configB, c.Password, portB)
	tp := sw.open(t)
	ek := preferredEK(t, tp)
	urn := ekURN(t, ek)
	if out, err := stepfortCLI(t, c, "devices", "add", "--ek-pub", writeEKPub(t, ek, true)); err != nil {
		t.Fatalf("devices add: %v\n%s", err, out)
	}
	baseA, baseB := c.URL+"/attestation", fmt.Sprintf("https://localhost:%d/attestation", portB)
	raw := newRawAttestation(t, c, baseA, tp, ek)
	secret := raw.attest()
	st, m := raw.secret(baseB, secret)
	if st != 200 {
		t.Fatalf("/secret on replica B: %d %v", st, m)
	}
	b, _ := json.Marshal(m)
	var sr attestationca.SecretResponse
	_ = json.Unmarshal(b, &sr)
	var chain []*x509.Certificate
	for _, der := range sr.CertificateChain {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, cert)
	}
	checkAKChain(t, c, chain, urn)
	// Single use across replicas: replay on A is refused.
	if st, m := raw.secret(baseA, secret); st != 403 || m["error"] != "secret_replayed" {
		t.Fatalf("replay on replica A: %d %v", st, m)
	}
}
