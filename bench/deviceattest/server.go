package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/stepfort/stepfort/internal/testenv"
)

// server is one `stepfort init` installation served on loopback (bbolt).
type server struct {
	name     string
	dir      string
	url      string
	httpURL  string
	token    string
	root     string
	inter    *x509.Certificate
	hc       *http.Client
	proc     *testenv.Process
	stepPath string // STEPPATH of the step CLI bootstrapped against it
	storage  string // the device's TPM key store for this CA
}

func startServer(work, bin, name string, gate bool) (*server, error) {
	port, _ := testenv.FreePort()
	hport, _ := testenv.FreePort()
	dir := filepath.Join(work, name)
	if out, err := exec.Command(bin, "init", "--dir", dir, "--address", fmt.Sprintf("127.0.0.1:%d", port),
		"--insecure-address", fmt.Sprintf("127.0.0.1:%d", hport)).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("init: %v\n%s", err, out)
	}
	cfgPath := filepath.Join(dir, "config", "ca.json")
	if !gate {
		// "provisioners": [] turns the gate off (plugin.go Config).
		b, err := os.ReadFile(cfgPath)
		if err != nil {
			return nil, err
		}
		var cfg map[string]any
		if err := json.Unmarshal(b, &cfg); err != nil {
			return nil, err
		}
		da, ok := dig(cfg, "stepfort", "plugins", "deviceAttest").(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%s: no stepfort.plugins.deviceAttest", cfgPath)
		}
		da["provisioners"] = []string{}
		b, _ = json.MarshalIndent(cfg, "", "  ")
		if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
			return nil, err
		}
	}
	proc, err := testenv.NewProcess(filepath.Join(work, name+".log"), bin, []string{"serve", cfgPath, "--password-file", filepath.Join(dir, "secrets", "password")}, nil)
	if err != nil {
		return nil, err
	}
	s := &server{name: name, dir: dir, proc: proc, url: fmt.Sprintf("https://localhost:%d", port), httpURL: fmt.Sprintf("http://127.0.0.1:%d", hport),
		root: filepath.Join(dir, "certs", "root_ca.crt"), stepPath: filepath.Join(work, name+"-steppath"), storage: filepath.Join(work, name+"-tpmstore")}
	if err := testenv.WaitHTTPS(fmt.Sprintf("https://127.0.0.1:%d/health", port), time.Minute); err != nil {
		proc.Kill9()
		return nil, fmt.Errorf("%s: %v\n%s", name, err, proc.Log())
	}
	rootPEM, _ := os.ReadFile(s.root)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rootPEM)
	s.hc = &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 64, TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}}
	tok, err := os.ReadFile(filepath.Join(dir, "secrets", "admin-token"))
	if err != nil {
		proc.Kill9()
		return nil, err
	}
	s.token = strings.TrimSpace(string(tok))
	interPEM, _ := os.ReadFile(filepath.Join(dir, "certs", "intermediate_ca.crt"))
	blk, _ := pem.Decode(interPEM)
	if blk == nil {
		proc.Kill9()
		return nil, fmt.Errorf("no intermediate certificate")
	}
	if s.inter, err = x509.ParseCertificate(blk.Bytes); err != nil {
		proc.Kill9()
		return nil, err
	}
	return s, nil
}

func dig(m map[string]any, keys ...string) any {
	var v any = m
	for _, k := range keys {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[k]
	}
	return v
}

func (s *server) do(method, url string, body []byte, ct string, auth bool) (int, []byte) {
	req, _ := http.NewRequest(method, url, bytes.NewReader(body))
	if auth {
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// step runs the step CLI against this server.
func (s *server) step(stepBin string, args ...string) (string, error) {
	cmd := exec.Command(stepBin, args...)
	cmd.Env = append(os.Environ(), "STEPPATH="+s.stepPath, "STEP_CONSOLE=true", "NO_COLOR=1")
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// startSWTPM provisions (with an EK certificate, as the e2e tests do) and
// starts a software TPM on a UNIX socket.
func startSWTPM() (sock string, stop func(), err error) {
	bin, err := testenv.Tool("swtpm")
	if err != nil {
		return "", nil, err
	}
	setup, err := testenv.Tool("swtpm_setup")
	if err != nil {
		return "", nil, err
	}
	localca, err := testenv.Tool("swtpm_localca")
	if err != nil {
		return "", nil, err
	}
	dir, err := os.MkdirTemp("", "swtpm") // short: socket paths are limited to 108 bytes
	if err != nil {
		return "", nil, err
	}
	state, ca := filepath.Join(dir, "state"), filepath.Join(dir, "localca")
	for _, d := range []string{state, ca} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", nil, err
		}
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		_ = os.WriteFile(p, []byte(content), 0o600)
		return p
	}
	caConf := write("localca.conf", fmt.Sprintf("statedir = %s\nsigningkey = %s/signkey.pem\nissuercert = %s/issuercert.pem\ncertserial = %s/certserial\n", ca, ca, ca, ca))
	caOpts := write("localca.options", "--platform-manufacturer Test\n--platform-version 2.1\n--platform-model SWTPM\n")
	setupConf := write("setup.conf", fmt.Sprintf("create_certs_tool= %s\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n", localca, caConf, caOpts))
	if out, err := exec.Command(setup, "--tpm2", "--tpmstate", state, "--create-ek-cert", "--config", setupConf, "--overwrite").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("swtpm_setup: %v\n%s", err, out)
	}
	sock = filepath.Join(dir, "tpm.sock")
	p, err := testenv.NewProcess(filepath.Join(dir, "swtpm.log"), bin, []string{"socket", "--tpm2", "--tpmstate", "dir=" + state,
		"--server", "type=unixio,path=" + sock, "--ctrl", "type=unixio,path=" + sock + ".ctrl", "--flags", "not-need-init,startup-clear"}, nil)
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	stop = func() { _ = p.Kill9(); os.RemoveAll(dir) }
	for range 200 {
		if _, err := os.Stat(sock); err == nil {
			return sock, stop, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	return "", nil, fmt.Errorf("swtpm socket %s did not appear", sock)
}
