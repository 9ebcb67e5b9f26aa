package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/stepfort/stepfort/bench/internal/benchproc"
	"github.com/stepfort/stepfort/provisioners/dynamicscep"
)

// ca is the installation `stepfort init` wrote; every run starts from its
// ca.json and a copy of its freshly initialised bbolt database.
type ca struct {
	dir        string
	cfg        map[string]any
	adminToken string
	roots      *x509.CertPool
	static     string // the SCEP provisioner's static challenge (upstream's)
}

// initCA runs `stepfort init` in dir.
func initCA(ctx context.Context, stepfort, dir string) (*ca, error) {
	args := []string{"init", "--dir", dir, "--address", "127.0.0.1:9000", "--insecure-address", "127.0.0.1:9080"}
	if b, err := exec.CommandContext(ctx, stepfort, args...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("stepfort init: %w\n%s", err, b)
	}
	c := &ca{dir: dir}
	b, err := os.ReadFile(filepath.Join(dir, "config", "ca.json"))
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &c.cfg); err != nil {
		return nil, fmt.Errorf("parse ca.json: %w", err)
	}
	tok, err := os.ReadFile(filepath.Join(dir, "secrets", "admin-token"))
	if err != nil {
		return nil, err
	}
	c.adminToken = strings.TrimSpace(string(tok))
	rootPEM, err := os.ReadFile(filepath.Join(dir, "certs", "root_ca.crt"))
	if err != nil {
		return nil, err
	}
	c.roots = x509.NewCertPool()
	if !c.roots.AppendCertsFromPEM(rootPEM) {
		return nil, fmt.Errorf("no certificate in %s/certs/root_ca.crt", dir)
	}
	if c.static, err = c.staticChallenge(); err != nil {
		return nil, err
	}
	return c, nil
}

// staticChallenge is the "challenge" of the SCEP provisioner: what
// upstream, without the stepfort block, checks every CSR against.
func (c *ca) staticChallenge() (string, error) {
	auth, _ := c.cfg["authority"].(map[string]any)
	provs, _ := auth["provisioners"].([]any)
	for _, p := range provs {
		m, _ := p.(map[string]any)
		if m["type"] == "SCEP" && m["name"] == scepProvisioner {
			if ch, _ := m["challenge"].(string); ch != "" {
				return ch, nil
			}
			return "", fmt.Errorf("ca.json: SCEP provisioner %q has no challenge", scepProvisioner)
		}
	}
	return "", fmt.Errorf("ca.json has no SCEP provisioner %q (stepfort init writes one)", scepProvisioner)
}

// scepProvisioner is the SCEP provisioner stepfort init writes, with the
// dynamicScep plugin attached.
const scepProvisioner = "scep"

// variant is one server configuration under test.
type variant struct {
	name     string
	upstream bool // upstream step-ca, no "stepfort" block
	scepOnly bool // stepfort with only the dynamicScep plugin block
}

var (
	upstreamVariant     = variant{name: "upstream", upstream: true}
	stepfortAllVariant  = variant{name: "stepfort-all"}
	stepfortScepVariant = variant{name: "stepfort-scep", scepOnly: true}
)

// variants are the servers of each round for -plugins (all, scep, both).
func variants(plugins string) []variant {
	switch plugins {
	case "all":
		return []variant{upstreamVariant, stepfortAllVariant}
	case "scep":
		return []variant{upstreamVariant, stepfortScepVariant}
	}
	return []variant{upstreamVariant, stepfortAllVariant, stepfortScepVariant}
}

// runConfig writes the ca.json of one run into dir: init's configuration
// with the run's ports and a fresh copy of the database. Upstream gets it
// without the "stepfort" block, so its SCEP provisioner checks the static
// challenge; stepfort keeps every plugin as init configured it, or only
// dynamicScep (v.scepOnly).
func (c *ca) runConfig(dir string, v variant, port, httpPort int) (string, error) {
	var cfg map[string]any
	b, _ := json.Marshal(c.cfg)
	_ = json.Unmarshal(b, &cfg) // deep copy
	cfg["address"] = fmt.Sprintf("127.0.0.1:%d", port)
	cfg["insecureAddress"] = fmt.Sprintf("127.0.0.1:%d", httpPort)
	if crl, ok := cfg["crl"].(map[string]any); ok {
		crl["idpURL"] = fmt.Sprintf("http://localhost:%d/1.0/crl", httpPort)
	}
	if v.upstream {
		delete(cfg, "stepfort")
	} else if err := runPlugins(cfg, dir, v.scepOnly, httpPort); err != nil {
		return "", err
	}
	db, ok := cfg["db"].(map[string]any)
	if !ok || db["type"] != "bbolt" {
		return "", fmt.Errorf("ca.json of %s has no bbolt db block", c.dir)
	}
	dst := filepath.Join(dir, "stepfort.db")
	src, err := os.ReadFile(filepath.Join(c.dir, "db", "stepfort.db"))
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(dst, src, 0o600); err != nil {
		return "", err
	}
	db["dataSource"] = dst
	out, err := json.MarshalIndent(cfg, "", "\t")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "ca.json")
	return path, os.WriteFile(path, out, 0o600)
}

// runPlugins adapts the "stepfort.plugins" of cfg to one run: only
// dynamicScep when scepOnly, else every plugin, with those that name the
// init listeners (OCSP URL) or files (audit log) following the run.
func runPlugins(cfg map[string]any, dir string, scepOnly bool, httpPort int) error {
	sf, _ := cfg["stepfort"].(map[string]any)
	plugins, ok := sf["plugins"].(map[string]any)
	if !ok {
		return fmt.Errorf("ca.json has no stepfort.plugins block")
	}
	if scepOnly {
		ds, ok := plugins[dynamicscep.Name]
		if !ok {
			return fmt.Errorf("ca.json has no stepfort.plugins.%s (stepfort init writes it)", dynamicscep.Name)
		}
		sf["plugins"] = map[string]any{dynamicscep.Name: ds}
		return nil
	}
	if a, ok := plugins["auditLog"].(map[string]any); ok {
		a["path"] = filepath.Join(dir, "certificates.jsonl")
	}
	if r, ok := plugins["revocation"].(map[string]any); ok {
		if o, ok := r["ocsp"].(map[string]any); ok {
			o["url"] = fmt.Sprintf("http://localhost:%d/ocsp", httpPort)
		}
	}
	return nil
}

// start runs one server on cfgFile and waits for /health.
func (c *ca) start(ctx context.Context, name, bin string, stepfort bool, cfgFile, dir string, port int) (*benchproc.Server, error) {
	args := []string{cfgFile, "--password-file", filepath.Join(c.dir, "secrets", "password")}
	if stepfort {
		args = append([]string{"serve"}, args...)
	}
	return benchproc.Start(ctx, name, bin, args, nil, dir, port, c.roots)
}

// createChallenge makes one challenge through the admin API and returns it.
func createChallenge(ctx context.Context, hc *http.Client, url, token string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/api/v1/scep/challenges", strings.NewReader(`{}`))
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("create challenge: %s: %s", resp.Status, brief(string(b)))
	}
	var out struct {
		Challenge string `json:"challenge"`
		ExpiresAt string `json:"expiresAt"`
	}
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(&out); err != nil || out.Challenge == "" || out.ExpiresAt == "" {
		return "", fmt.Errorf("create challenge: answer lacks challenge or expiresAt: %s", brief(string(b)))
	}
	return out.Challenge, nil
}

// brief shortens a response body for a message: one line, at most 200
// bytes.
func brief(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}
