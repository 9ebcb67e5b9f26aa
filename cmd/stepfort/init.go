package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli"

	"github.com/stepfort/stepfort/internal/setup"
)

func initFlags() []cli.Flag {
	return []cli.Flag{
		cli.StringFlag{Name: "dir", Usage: "directory to write the installation into", EnvVar: "STEPFORT_DIR"},
		cli.StringFlag{Name: "name", Usage: "PKI name used in certificate subjects", Value: "Stepfort"},
		cli.StringSliceFlag{Name: "dns", Usage: "DNS name or IP clients use to reach the CA (repeatable; default localhost and 127.0.0.1)"},
		cli.StringFlag{Name: "address", Usage: "HTTPS listen address", Value: ":9000"},
		cli.StringFlag{Name: "insecure-address", Usage: "plain HTTP listen address (CRL, OCSP, SCEP)", Value: ":9080"},
		cli.StringFlag{Name: "provisioner", Usage: "name of the JWK provisioner", Value: "admin"},
		cli.StringFlag{Name: "db", Usage: "database: bbolt (embedded, one node) or postgresql (several replicas)", Value: "bbolt"},
		cli.StringFlag{Name: "db-dsn", Usage: "PostgreSQL data source, e.g. postgresql://user:pw@host:5432/"},
		cli.StringFlag{Name: "db-name", Usage: "PostgreSQL database name", Value: "stepfort"},
		cli.BoolFlag{Name: "force", Usage: "write into a non-empty directory, replacing an existing installation"},
	}
}

func initOptions(c *cli.Context) setup.Options {
	return setup.Options{
		Dir:             c.String("dir"),
		Name:            c.String("name"),
		DNSNames:        splitList(c.StringSlice("dns")),
		Address:         c.String("address"),
		InsecureAddress: c.String("insecure-address"),
		Provisioner:     c.String("provisioner"),
		DB:              c.String("db"),
		DBDSN:           c.String("db-dsn"),
		DBName:          c.String("db-name"),
		Force:           c.Bool("force"),
	}
}

func initCommand() cli.Command {
	return cli.Command{
		Name:      "init",
		Usage:     "write a complete, working CA configuration",
		UsageText: "stepfort init --dir <dir> [--name <name>] [--dns <name>...] [--address <addr>] [--insecure-address <addr>] [--db bbolt|postgresql --db-dsn <dsn>] [--force]",
		Flags:     initFlags(),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("unexpected argument %q (did you mean --dir %s?)", c.Args().First(), c.Args().First())
			}
			r, err := setup.Init(initOptions(c))
			if err != nil {
				return err
			}
			printNextSteps(r)
			return nil
		},
	}
}

func quickstartCommand() cli.Command {
	flags := initFlags()
	for i, f := range flags {
		switch ff := f.(type) {
		case cli.StringFlag:
			switch ff.Name {
			case "address":
				ff.Value = "127.0.0.1:9000"
			case "insecure-address":
				ff.Value = "127.0.0.1:9080"
			case "dir":
				ff.Value = defaultQuickstartDir()
			}
			flags[i] = ff
		}
	}
	return cli.Command{
		Name:      "quickstart",
		Usage:     "initialise a CA in --dir if there is none, then serve it on loopback",
		UsageText: "stepfort quickstart [--dir <dir>] [init flags]",
		Flags:     flags,
		Action: func(c *cli.Context) error {
			o := initOptions(c)
			cfgFile := filepath.Join(o.Dir, "config", "ca.json")
			if _, err := os.Stat(cfgFile); errors.Is(err, os.ErrNotExist) {
				r, err := setup.Init(o)
				if err != nil {
					return err
				}
				printNextSteps(r)
			} else {
				fmt.Fprintf(os.Stderr, "Using the existing CA in %s\n", o.Dir)
			}
			return runServe(cfgFile, filepath.Join(o.Dir, "secrets", "password"))
		},
	}
}

func defaultQuickstartDir() string {
	if d := os.Getenv("STEPFORT_DIR"); d != "" {
		return d
	}
	return ".stepfort"
}

func printNextSteps(r *setup.Result) {
	fmt.Printf(`stepfort CA written to %s

  Root fingerprint: %s
  Configuration:    %s
  Password file:    %s
  Admin token:      %s (0600; shown nowhere else)

Next:
  stepfort serve %s --password-file %s
  step ca bootstrap --ca-url %s --fingerprint %s
  step ca certificate myhost myhost.crt myhost.key --provisioner %s --provisioner-password-file %s
  stepfort tokens list --ca-url %s --root %s --token-file %s

SCEP (%s) takes one-time challenges:
  stepfort scep challenge create --cn device-1 --ca-url %s --root %s --token-file %s
`, r.Dir, r.RootFingerprint, r.ConfigFile, r.PasswordFile, r.AdminTokenFile,
		r.ConfigFile, r.PasswordFile, r.CAURL, r.RootFingerprint, r.Provisioner, r.PasswordFile,
		r.CAURL, r.RootFile, r.AdminTokenFile,
		r.SCEPURL, r.CAURL, r.RootFile, r.AdminTokenFile)
}

func splitList(in []string) []string {
	var out []string
	for _, s := range in {
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}
