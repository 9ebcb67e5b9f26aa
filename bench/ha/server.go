package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stepfort/stepfort/internal/testenv"
)

// This file is a bench-local copy of the plumbing in bench/sign (build,
// init, ca.json per run, start/stop, RSS): bench/sign is a main package and
// cannot be imported, and the copy keeps the two benchmarks independent.

const upstreamVersion = "0.30.2"

// buildStepfort builds ./cmd/stepfort with CGO_ENABLED=0 and the flags
// scripts/install-tools.sh uses for step-ca.
func buildStepfort(ctx context.Context, root, dir string) (string, error) {
	out := filepath.Join(dir, "stepfort")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, "./cmd/stepfort")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build stepfort: %w\n%s", err, b)
	}
	return out, nil
}

// findStepCA returns the upstream step-ca binary and checks its version.
func findStepCA(path string) (string, error) {
	if path == "" {
		p, err := testenv.Tool("step-ca")
		if err != nil {
			return "", err
		}
		path = p
	}
	b, err := exec.Command(path, "version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s version: %w: %s", path, err, b)
	}
	if !strings.Contains(string(b), "/"+upstreamVersion+" ") {
		return "", fmt.Errorf("%s is not step-ca %s (it says %q); run scripts/install-tools.sh", path, upstreamVersion, strings.TrimSpace(string(b)))
	}
	return path, nil
}

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
	conn, err := pgx.Connect(ctx, c.pg.DSN())
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close(context.Background())
	q := fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s", pgx.Identifier{name}.Sanitize(), pgx.Identifier{pgTemplateDB}.Sanitize())
	if _, err := conn.Exec(ctx, q); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// pgSessions returns pg_stat_database.sessions of database name: how many
// connections were established to it (counted when they end).
func (c *ca) pgSessions(ctx context.Context, name string) (int64, error) {
	conn, err := pgx.Connect(ctx, c.pg.DSN())
	if err != nil {
		return 0, fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close(context.Background())
	var n int64
	err = conn.QueryRow(ctx, "SELECT sessions FROM pg_stat_database WHERE datname = $1", name).Scan(&n)
	return n, err
}

// server is a running CA process.
type server struct {
	name     string
	proc     *testenv.Process
	url      string // https://127.0.0.1:PORT
	httpURL  string // http://127.0.0.1:INSECUREPORT
	httpPort int
}

// startServer starts a CA (stepfort serve or upstream step-ca) on a fresh
// ca.json for database dbName and waits for /health.
func (c *ca) startServer(ctx context.Context, name, bin string, stepfort bool, dir, dbName string) (*server, error) {
	port, httpPort, err := twoPorts()
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
	env := []string{"STEPPATH=" + filepath.Join(dir, "steppath")}
	p, err := testenv.NewProcess(filepath.Join(dir, "server.log"), bin, args, env)
	if err != nil {
		return nil, err
	}
	s := &server{name: name, proc: p, url: fmt.Sprintf("https://127.0.0.1:%d", port),
		httpURL: fmt.Sprintf("http://127.0.0.1:%d", httpPort), httpPort: httpPort}
	if err := s.waitReady(ctx, c.roots, 60*time.Second); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

func (s *server) waitReady(ctx context.Context, roots *x509.CertPool, timeout time.Duration) error {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get(s.url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = errors.New(resp.Status)
		}
		switch {
		case s.proc.Exited():
			return fmt.Errorf("%s exited during start-up; log %s:\n%s", s.name, s.proc.LogPath(), tail(s.proc.Log(), 2000))
		case time.Now().After(deadline):
			return fmt.Errorf("%s not ready after %v: %v; log %s", s.name, timeout, err, s.proc.LogPath())
		case ctx.Err() != nil:
			return ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *server) check() error {
	if s.proc.Exited() {
		return fmt.Errorf("%s exited; log %s:\n%s", s.name, s.proc.LogPath(), tail(s.proc.Log(), 2000))
	}
	return nil
}

// stop sends SIGTERM and kills the process group after 15 s. Idempotent.
func (s *server) stop() {
	if s == nil || s.proc.Exited() {
		return
	}
	_ = s.proc.Signal(syscall.SIGTERM)
	if err := s.proc.Wait(15 * time.Second); errors.Is(err, testenv.ErrTimeout) {
		_ = s.proc.Kill9()
	}
}

// procMemory returns VmRSS and VmHWM of pid ("self" allowed) in MiB.
func procMemory(pid string) (rss, peak float64, err error) {
	f, err := os.Open("/proc/" + pid + "/status")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		if err != nil {
			return 0, 0, err
		}
		if k == "VmRSS" {
			rss = kb / 1024
		} else {
			peak = kb / 1024
		}
	}
	if rss == 0 {
		return 0, 0, fmt.Errorf("no VmRSS in /proc/%s/status", pid)
	}
	return rss, peak, sc.Err()
}

// cpuTime returns user+system CPU of pid so far (USER_HZ = 100).
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	var ticks int64
	for _, v := range f[11:13] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

func twoPorts() (int, int, error) {
	a, err := testenv.FreePort()
	if err != nil {
		return 0, 0, err
	}
	for range 10 {
		b, err := testenv.FreePort()
		if err != nil {
			return 0, 0, err
		}
		if b != a {
			return a, b, nil
		}
	}
	return 0, 0, errors.New("no second free port")
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
