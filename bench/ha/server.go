package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/stepfort/stepfort/bench/internal/benchproc"
	"github.com/stepfort/stepfort/internal/testenv"
)

// ca is one `stepfort init` installation on PostgreSQL (database
// pgTemplateDB, cloned for every run).
type ca struct {
	dir      string
	cfg      map[string]any
	password string
	pwFile   string
	roots    *x509.CertPool
	inter    *x509.Certificate
	interPEM []byte
	pg       *testenv.Postgres
}

const pgTemplateDB = "ha_template"

func initCA(ctx context.Context, stepfort, dir string, pg *testenv.Postgres) (*ca, error) {
	args := []string{"init", "--dir", dir, "--address", "127.0.0.1:9000", "--insecure-address", "127.0.0.1:9080"}
	if pg != nil {
		args = append(args, "--db", "postgresql", "--db-dsn", pg.DSN(), "--db-name", pgTemplateDB)
	}
	if b, err := exec.CommandContext(ctx, stepfort, args...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("stepfort init: %w\n%s", err, b)
	}
	c := &ca{dir: dir, pg: pg, pwFile: filepath.Join(dir, "secrets", "password")}
	b, err := os.ReadFile(filepath.Join(dir, "config", "ca.json"))
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &c.cfg); err != nil {
		return nil, fmt.Errorf("parse ca.json: %w", err)
	}
	pw, err := os.ReadFile(c.pwFile)
	if err != nil {
		return nil, err
	}
	c.password = strings.TrimSpace(string(pw))
	rootPEM, err := os.ReadFile(filepath.Join(dir, "certs", "root_ca.crt"))
	if err != nil {
		return nil, err
	}
	c.roots = x509.NewCertPool()
	if !c.roots.AppendCertsFromPEM(rootPEM) {
		return nil, errors.New("cannot parse root_ca.crt")
	}
	if c.interPEM, err = os.ReadFile(filepath.Join(dir, "certs", "intermediate_ca.crt")); err != nil {
		return nil, err
	}
	if c.inter, err = parsePEMCert(c.interPEM); err != nil {
		return nil, fmt.Errorf("intermediate_ca.crt: %w", err)
	}
	return c, nil
}

// runConfig writes a ca.json into dir for one server: the init
// configuration (plugins as stepfort init configured them) with the given
// ports and PostgreSQL database dbName.
func (c *ca) runConfig(dir, dbName string, port, httpPort int) (string, error) {
	var cfg map[string]any
	b, _ := json.Marshal(c.cfg)
	_ = json.Unmarshal(b, &cfg) // deep copy
	cfg["address"] = fmt.Sprintf("127.0.0.1:%d", port)
	cfg["insecureAddress"] = fmt.Sprintf("127.0.0.1:%d", httpPort)
	db, ok := cfg["db"].(map[string]any)
	if !ok {
		return "", fmt.Errorf("ca.json of %s has no db block", c.dir)
	}
	if c.pg != nil {
		db["database"] = dbName
	}
	out, err := json.MarshalIndent(cfg, "", "\t")
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, "ca.json")
	return path, os.WriteFile(path, out, 0o600)
}

// cloneDB creates PostgreSQL database name as a copy of the initialised one.
func (c *ca) cloneDB(ctx context.Context, name string) error {
	return benchproc.CloneDB(ctx, c.pg.DSN(), name, pgTemplateDB)
}

// pgSessions returns how many sessions were established to database name.
func (c *ca) pgSessions(ctx context.Context, name string) (int64, error) {
	return benchproc.PGSessions(ctx, c.pg.DSN(), name)
}

// server is a running CA process with its plain-HTTP listener.
type server struct {
	*benchproc.Server
	httpURL  string // http://127.0.0.1:INSECUREPORT
	httpPort int
}

// startServer starts a CA (stepfort serve or upstream step-ca) on a fresh
// ca.json for database dbName and waits for /health.
func (c *ca) startServer(ctx context.Context, name, bin string, stepfort bool, dir, dbName string) (*server, error) {
	port, httpPort, err := benchproc.TwoPorts()
	if err != nil {
		return nil, err
	}
	cfgFile, err := c.runConfig(dir, dbName, port, httpPort)
	if err != nil {
		return nil, err
	}
	args := []string{cfgFile, "--password-file", c.pwFile}
	if stepfort {
		args = append([]string{"serve"}, args...)
	}
	bs, err := benchproc.Start(ctx, name, bin, args, nil, dir, port, c.roots)
	if err != nil {
		return nil, err
	}
	return &server{Server: bs, httpURL: fmt.Sprintf("http://127.0.0.1:%d", httpPort), httpPort: httpPort}, nil
}
