package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/stepfort/stepfort/bench/internal/benchproc"
	"github.com/stepfort/stepfort/internal/testenv"
)

// ca is one installation written by `stepfort init`: every run of a database
// type starts from its ca.json and a copy of its freshly initialised
// database.
type ca struct {
	dir      string         // the init directory
	cfg      map[string]any // ca.json as written
	password string         // contents of secrets/password
	rootPEM  []byte
	dbType   string
	pg       *testenv.Postgres // postgresql only
}

// initCA runs `stepfort init` for dbType in dir. For PostgreSQL the database
// it initialises serves as the template of each run's database.
func initCA(ctx context.Context, stepfort, dir, dbType string, pg *testenv.Postgres) (*ca, error) {
	args := []string{"init", "--dir", dir, "--address", "127.0.0.1:9000", "--insecure-address", "127.0.0.1:9080"}
	if dbType == "postgresql" {
		args = append(args, "--db", "postgresql", "--db-dsn", pg.DSN(), "--db-name", pgTemplateDB)
	}
	if b, err := exec.CommandContext(ctx, stepfort, args...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("stepfort init (%s): %w\n%s", dbType, err, b)
	}
	c := &ca{dir: dir, dbType: dbType, pg: pg}
	b, err := os.ReadFile(filepath.Join(dir, "config", "ca.json"))
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &c.cfg); err != nil {
		return nil, fmt.Errorf("parse ca.json: %w", err)
	}
	pw, err := os.ReadFile(filepath.Join(dir, "secrets", "password"))
	if err != nil {
		return nil, err
	}
	c.password = strings.TrimSpace(string(pw))
	if c.rootPEM, err = os.ReadFile(filepath.Join(dir, "certs", "root_ca.crt")); err != nil {
		return nil, err
	}
	return c, nil
}

// pgTemplateDB is the database `stepfort init` writes for PostgreSQL runs.
const pgTemplateDB = "bench_template"

// runConfig writes the ca.json of one run into dir: the init configuration
// with the given listen ports and a fresh copy of the initialised database.
// With idlePlugins every plugin block under "stepfort" gets "enabled":
// false. It returns the path of the ca.json.
func (c *ca) runConfig(ctx context.Context, dir, name string, port, insecurePort int, idlePlugins bool) (string, error) {
	var cfg map[string]any
	b, _ := json.Marshal(c.cfg)
	_ = json.Unmarshal(b, &cfg) // deep copy
	cfg["address"] = fmt.Sprintf("127.0.0.1:%d", port)
	cfg["insecureAddress"] = fmt.Sprintf("127.0.0.1:%d", insecurePort)
	if crl, ok := cfg["crl"].(map[string]any); ok {
		crl["idpURL"] = fmt.Sprintf("http://localhost:%d/1.0/crl", insecurePort)
	}
	db, ok := cfg["db"].(map[string]any)
	if !ok {
		return "", fmt.Errorf("ca.json of %s has no db block", c.dir)
	}
	switch c.dbType {
	case "bbolt":
		dst := filepath.Join(dir, "stepfort.db")
		if err := copyFile(filepath.Join(c.dir, "db", "stepfort.db"), dst); err != nil {
			return "", err
		}
		db["dataSource"] = dst
	case "postgresql":
		dbName := pgDBName(name)
		if err := c.cloneDB(ctx, dbName); err != nil {
			return "", err
		}
		db["database"] = dbName
	}
	if idlePlugins {
		sf, _ := cfg["stepfort"].(map[string]any)
		plugins, _ := sf["plugins"].(map[string]any)
		for _, block := range plugins {
			if m, ok := block.(map[string]any); ok {
				m["enabled"] = false
			}
		}
	}
	out, err := json.MarshalIndent(cfg, "", "\t")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "ca.json")
	return path, os.WriteFile(path, out, 0o600)
}

// cloneDB creates PostgreSQL database name as a copy of the initialised
// template database.
func (c *ca) cloneDB(ctx context.Context, name string) error {
	return benchproc.CloneDB(ctx, c.pg.DSN(), name, pgTemplateDB)
}

// pgDBName is the PostgreSQL database of the run called name.
func pgDBName(name string) string { return "bench_" + strings.ReplaceAll(name, "-", "_") }

// pgSessions returns how many PostgreSQL sessions (connections) were
// established to the database of the run called name.
func (c *ca) pgSessions(ctx context.Context, name string) (int64, error) {
	return benchproc.PGSessions(ctx, c.pg.DSN(), pgDBName(name))
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o600)
}
