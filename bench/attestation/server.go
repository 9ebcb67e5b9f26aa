package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/provisioners/attestationca"
)

// benchRateLimit replaces the Attestation CA's default rate limits (perEK
// burst 5 then one per minute, global 200/s with bursts of 400 per replica)
// in the bench's ca.json. The bench measures how many attestations the
// server can complete, not the default policy: each client re-attests its
// own EK in a loop (~100/s), far above what a real device does (once per
// AK), and the total is meant to exceed 200/s. These are the largest
// values the plugin accepts, so no request is ever refused with 429.
var benchRateLimit = attestationca.RateLimitConfig{
	PerEK:  attestationca.EKRateLimit{Burst: 100, Interval: config.Duration{Duration: time.Millisecond}},
	Global: attestationca.GlobalRateLimit{PerSecond: 100_000, Burst: 1_000_000},
}

// server is the stepfort under test.
type server struct {
	url   string
	hc    *http.Client
	token string // admin API bearer token
	proc  *testenv.Process
}

// startServer runs `stepfort init` into work/ca, raises the Attestation CA
// rate limits (benchRateLimit) and serves it on loopback with bbolt.
func startServer(work, bin string) (*server, error) {
	port, _ := testenv.FreePort()
	hport, _ := testenv.FreePort()
	dir := filepath.Join(work, "ca")
	if out, err := exec.Command(bin, "init", "--dir", dir, "--address", fmt.Sprintf("127.0.0.1:%d", port), "--insecure-address", fmt.Sprintf("127.0.0.1:%d", hport)).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("init: %v\n%s", err, out)
	}
	cfgPath := filepath.Join(dir, "config", "ca.json")
	if err := raiseRateLimits(cfgPath); err != nil {
		return nil, err
	}
	proc, err := testenv.NewProcess(filepath.Join(work, "serve.log"), bin, []string{"serve", cfgPath, "--password-file", filepath.Join(dir, "secrets", "password")}, nil)
	if err != nil {
		return nil, err
	}
	s := &server{url: fmt.Sprintf("https://127.0.0.1:%d", port), proc: proc}
	if err := testenv.WaitHTTPS(s.url+"/health", time.Minute); err != nil {
		proc.Kill9()
		return nil, fmt.Errorf("%v\n%s", err, proc.Log())
	}
	rootPEM, err := os.ReadFile(filepath.Join(dir, "certs", "root_ca.crt"))
	if err != nil {
		proc.Kill9()
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rootPEM)
	s.hc = &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 64, TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}}
	tok, err := os.ReadFile(filepath.Join(dir, "secrets", "admin-token"))
	if err != nil {
		proc.Kill9()
		return nil, err
	}
	s.token = strings.TrimSpace(string(tok))
	return s, nil
}

// raiseRateLimits sets stepfort.plugins.attestationCA.rateLimit in the
// ca.json at path to benchRateLimit.
func raiseRateLimits(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	ac, ok := dig(cfg, "stepfort", "plugins", "attestationCA").(map[string]any)
	if !ok {
		return fmt.Errorf("%s: no stepfort.plugins.attestationCA", path)
	}
	var rl map[string]any
	if err := json.Unmarshal(mustJSON(benchRateLimit), &rl); err != nil {
		return err
	}
	ac["rateLimit"] = rl
	b, err = json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// dig walks nested JSON objects; nil if a key is missing.
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
