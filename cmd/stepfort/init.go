package main

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli"

	"github.com/stepfort/stepfort/internal/cakeys"
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
		cli.BoolFlag{Name: "delta-crl", Usage: "publish delta CRLs (base CRL weekly, delta daily, as AD CS does)"},
		cli.StringFlag{Name: "root-cert", Usage: "existing root CA certificate (PEM or DER) to issue stepfort's intermediate under, with --root-key; with --issuer-* it only supplies the root of the issuer's chain"},
		cli.StringFlag{Name: "root-key", Usage: "private key of --root-cert (PEM or DER); used once and not copied into the installation"},
		cli.StringFlag{Name: "root-key-password-file", Usage: "file holding the password of an encrypted --root-key"},
		cli.StringFlag{Name: "root-pfx", Usage: "existing root CA as a PFX/PKCS#12 file (e.g. exported from AD CS) to issue stepfort's intermediate under"},
		cli.StringFlag{Name: "issuer-cert", Usage: "existing issuing CA certificate (PEM or DER, may include its chain) stepfort signs with directly, with --issuer-key"},
		cli.StringFlag{Name: "issuer-key", Usage: "private key of --issuer-cert (PEM or DER); stored encrypted with the CA password"},
		cli.StringFlag{Name: "issuer-key-password-file", Usage: "file holding the password of an encrypted --issuer-key"},
		cli.StringFlag{Name: "issuer-pfx", Usage: "existing issuing CA as a PFX/PKCS#12 file (e.g. certutil -backupKey) stepfort signs with directly"},
		cli.StringFlag{Name: "pfx-password-file", Usage: "file holding the password of --root-pfx or --issuer-pfx"},
		cli.StringFlag{Name: "kms", Usage: "make the CA keys in this KMS instead of on disk, e.g. 'pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=stepfort?pin-source=/etc/stepfort/pin' (needs the HSM build, stepfort-hsm)"},
		cli.StringFlag{Name: "kms-root-key", Usage: "key URI of the root key in --kms (created if missing, used if present)", Value: setup.DefaultKMSKeys.Root},
		cli.StringFlag{Name: "kms-intermediate-key", Usage: "key URI of the intermediate (issuing) key in --kms", Value: setup.DefaultKMSKeys.Intermediate},
		cli.StringFlag{Name: "kms-attestation-root-key", Usage: "key URI of the TPM Attestation root key in --kms", Value: setup.DefaultKMSKeys.AttestationRoot},
		cli.StringFlag{Name: "kms-attestation-key", Usage: "key URI of the TPM Attestation CA key in --kms", Value: setup.DefaultKMSKeys.Attestation},
	}
}

func initOptions(c *cli.Context) (setup.Options, error) {
	o := setup.Options{
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
		DeltaCRL:        c.Bool("delta-crl"),
		KMS:             c.String("kms"),
		KMSKeys: setup.KMSKeys{
			Root:            c.String("kms-root-key"),
			Intermediate:    c.String("kms-intermediate-key"),
			AttestationRoot: c.String("kms-attestation-root-key"),
			Attestation:     c.String("kms-attestation-key"),
		},
	}
	var err error
	o.Root, o.Issuer, err = broughtCA(c)
	return o, err
}

func initCommand() cli.Command {
	return cli.Command{
		Name:  "init",
		Usage: "write a complete, working CA configuration",
		UsageText: "stepfort init --dir <dir> [--name <name>] [--dns <name>...] [--address <addr>] [--insecure-address <addr>] [--db bbolt|postgresql --db-dsn <dsn>] [--force] [--delta-crl] [--kms <uri> [--kms-*-key <uri>]]\n" +
			"   [--root-cert <file> --root-key <file> [--root-key-password-file <file>] | --root-pfx <file> --pfx-password-file <file>]\n" +
			"   [--issuer-cert <file> --issuer-key <file> [--issuer-key-password-file <file>] [--root-cert <file>] | --issuer-pfx <file> --pfx-password-file <file> [--root-cert <file>]]",
		Flags: initFlags(),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("unexpected argument %q (did you mean --dir %s?)", c.Args().First(), c.Args().First())
			}
			o, err := initOptions(c)
			if err != nil {
				return err
			}
			r, err := setup.Init(o)
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
			dir := c.String("dir")
			cfgFile := filepath.Join(dir, "config", "ca.json")
			if _, err := os.Stat(cfgFile); errors.Is(err, os.ErrNotExist) {
				o, err := initOptions(c)
				if err != nil {
					return err
				}
				r, err := setup.Init(o)
				if err != nil {
					return err
				}
				printNextSteps(r)
			} else {
				fmt.Fprintf(os.Stderr, "Using the existing CA in %s (init flags are ignored)\n", dir)
			}
			return runServe(cfgFile, filepath.Join(dir, "secrets", "password"))
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
	defer func() {
		for _, n := range r.Notes {
			fmt.Printf("\nNote: %s\n", n)
		}
	}()
	fmt.Printf(`stepfort CA written to %s

  Root fingerprint: %s
  Configuration:    %s
  Password file:    %s
  Admin token:      %s (0600; shown nowhere else)
  Audit key:        %s (key id %s; public key %s.pub)

Next:
  stepfort serve %s --password-file %s
  step ca bootstrap --ca-url %s --fingerprint %s
  step ca certificate myhost myhost.crt myhost.key --provisioner %s --provisioner-password-file %s
  stepfort tokens list --ca-url %s --root %s --token-file %s

SCEP (%s) takes one-time challenges:
  stepfort scep challenge create --cn device-1 --ca-url %s --root %s --token-file %s
`, r.Dir, r.RootFingerprint, r.ConfigFile, r.PasswordFile, r.AdminTokenFile, r.AuditKeyFile, r.AuditKeyID, r.AuditKeyFile,
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

// broughtCA reads the CA an operator brings with the --root-* or
// --issuer-* flags: nil, nil when there is none. Every error names the
// flag and file it is about.
func broughtCA(c *cli.Context) (root, issuer *cakeys.Bundle, err error) {
	if err := checkCAFlags(c); err != nil {
		return nil, nil, err
	}
	switch {
	case c.String("root-pfx") != "":
		root, err = readPFXFlag(c, "root-pfx")
	case c.String("root-key") != "":
		root, err = readPEMFlags(c, "root-cert", "root-key", "root-key-password-file")
	case c.String("issuer-pfx") != "":
		issuer, err = readPFXFlag(c, "issuer-pfx")
	case c.String("issuer-key") != "":
		issuer, err = readPEMFlags(c, "issuer-cert", "issuer-key", "issuer-key-password-file")
	}
	if err != nil || issuer == nil || c.String("root-cert") == "" {
		return root, issuer, err
	}
	// --root-cert with --issuer-*: the top of the issuer's chain.
	certs, err := readCertsFlag(c, "root-cert")
	if err != nil {
		return nil, nil, err
	}
	issuer.AddChain(certs...)
	return nil, issuer, nil
}

// checkCAFlags refuses incomplete or conflicting --root-*/--issuer-* flags.
func checkCAFlags(c *cli.Context) error {
	set := func(names ...string) []string {
		var out []string
		for _, n := range names {
			if c.String(n) != "" {
				out = append(out, "--"+n)
			}
		}
		return out
	}
	rootKey := set("root-key", "root-key-password-file", "root-pfx")
	issuerAny := set("issuer-cert", "issuer-key", "issuer-key-password-file", "issuer-pfx")
	pfx := set("root-pfx", "issuer-pfx")
	conflicts := []struct {
		a, b []string
		why  string
	}{
		{rootKey, issuerAny, "a root that signs a new intermediate and an issuing CA exclude each other (with --issuer-*, --root-cert alone gives the issuer's root certificate)"},
		{set("root-pfx"), set("root-cert"), "give the root as a PFX or as PEM files, not both"},
		{set("issuer-pfx"), set("issuer-cert", "issuer-key", "issuer-key-password-file"), "give the issuer as a PFX or as PEM files, not both"},
	}
	for _, k := range conflicts {
		if len(k.a) > 0 && len(k.b) > 0 {
			return fmt.Errorf("%s and %s: %s", strings.Join(k.a, ", "), strings.Join(k.b, ", "), k.why)
		}
	}
	needs := []struct{ flag, needs string }{
		{"root-key", "root-cert"},
		{"root-key-password-file", "root-key"},
		{"issuer-cert", "issuer-key"},
		{"issuer-key", "issuer-cert"},
		{"issuer-key-password-file", "issuer-key"},
	}
	for _, n := range needs {
		if c.String(n.flag) != "" && c.String(n.needs) == "" {
			return fmt.Errorf("--%s needs --%s", n.flag, n.needs)
		}
	}
	if c.String("root-cert") != "" && c.String("root-key") == "" && len(issuerAny) == 0 {
		return errors.New("--root-cert needs --root-key (to issue stepfort's intermediate under that root) or --issuer-* (to give the issuer's root)")
	}
	switch {
	case len(pfx) > 0 && c.String("pfx-password-file") == "":
		return fmt.Errorf("%s needs --pfx-password-file (a file holding the PFX password; an empty file for none)", pfx[0])
	case len(pfx) == 0 && c.String("pfx-password-file") != "":
		return errors.New("--pfx-password-file: no --root-pfx or --issuer-pfx to use it with")
	}
	return nil
}

func readPFXFlag(c *cli.Context, flag string) (*cakeys.Bundle, error) {
	file := c.String(flag)
	data, err := readCAFile(file)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", flag, err)
	}
	password, err := readPassword(c.String("pfx-password-file"))
	if err != nil {
		return nil, fmt.Errorf("--pfx-password-file: %w", err)
	}
	b, err := cakeys.ReadPFX(data, string(password))
	if errors.Is(err, cakeys.ErrWrongPassword) {
		return nil, fmt.Errorf("--%s %s: %w (the password in --pfx-password-file %s does not open it)", flag, file, err, c.String("pfx-password-file"))
	}
	if err != nil {
		return nil, fmt.Errorf("--%s %s: %w", flag, file, err)
	}
	if err := b.CheckCA(); err != nil {
		return nil, fmt.Errorf("--%s %s: %w", flag, file, err)
	}
	return b, nil
}

func readPEMFlags(c *cli.Context, certFlag, keyFlag, passwordFlag string) (*cakeys.Bundle, error) {
	certFile, keyFile := c.String(certFlag), c.String(keyFlag)
	certData, err := readCAFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", certFlag, err)
	}
	keyData, err := readCAFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", keyFlag, err)
	}
	var password []byte
	if f := c.String(passwordFlag); f != "" {
		if password, err = readPassword(f); err != nil {
			return nil, fmt.Errorf("--%s: %w", passwordFlag, err)
		}
	}
	b, err := cakeys.ReadPEM(certData, keyData, password)
	switch {
	case err == nil:
		if err := b.CheckCA(); err != nil {
			return nil, fmt.Errorf("--%s %s: %w", certFlag, certFile, err)
		}
		return b, nil
	case errors.Is(err, cakeys.ErrKeyMismatch):
		return nil, fmt.Errorf("--%s %s does not belong to --%s %s: %w", keyFlag, keyFile, certFlag, certFile, err)
	case errors.Is(err, cakeys.ErrKeyPasswordNeeded):
		return nil, fmt.Errorf("--%s %s: %w: add --%s", keyFlag, keyFile, err, passwordFlag)
	case errors.Is(err, cakeys.ErrWrongKeyPassword), errors.Is(err, cakeys.ErrNoKey):
		return nil, fmt.Errorf("--%s %s: %w", keyFlag, keyFile, err)
	case errors.Is(err, cakeys.ErrCorrupt), errors.Is(err, cakeys.ErrNoCertificate):
		return nil, fmt.Errorf("--%s %s or --%s %s: %w", certFlag, certFile, keyFlag, keyFile, err)
	default:
		return nil, fmt.Errorf("--%s %s, --%s %s: %w", certFlag, certFile, keyFlag, keyFile, err)
	}
}

func readCertsFlag(c *cli.Context, flag string) ([]*x509.Certificate, error) {
	file := c.String(flag)
	data, err := readCAFile(file)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", flag, err)
	}
	certs, err := cakeys.ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("--%s %s: %w", flag, file, err)
	}
	return certs, nil
}

// readCAFile reads a CA input file, refusing one too large to be one.
func readCAFile(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, cakeys.MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if len(data) > cakeys.MaxFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes, not a CA certificate, key or PFX", file, cakeys.MaxFileSize)
	}
	return data, nil
}

// readPassword reads a password file; one trailing newline (as an editor
// or echo writes it) is not part of the password.
func readPassword(file string) ([]byte, error) {
	data, err := readCAFile(file)
	if err != nil {
		return nil, err
	}
	data = bytes.TrimSuffix(data, []byte("\n"))
	return bytes.TrimSuffix(data, []byte("\r")), nil
}
