package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	upconfig "github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/db"
	"github.com/urfave/cli"

	"github.com/stepfort/stepfort/ha"
	"github.com/stepfort/stepfort/internal/adcs"
	"github.com/stepfort/stepfort/internal/cakeys"
	"github.com/stepfort/stepfort/internal/legacy"
	"github.com/stepfort/stepfort/plugins"
)

// migrateCommand is `stepfort migrate adcs ...`: bring an ADCS CA's
// revocation over (docs/migrate-adcs.md).
func migrateCommand() cli.Command {
	return cli.Command{
		Name:  "migrate",
		Usage: "migrate from another CA",
		Subcommands: []cli.Command{{
			Name:  "adcs",
			Usage: "keep an AD CS issuing CA's revocation alive: legacy issuers, database import, check, revoke",
			Subcommands: []cli.Command{
				{
					Name:  "issuer",
					Usage: "add or list legacy issuers",
					Subcommands: []cli.Command{
						migrateIssuerAddCommand(),
						migrateIssuerListCommand(),
					},
				},
				migrateImportCommand(),
				migrateCheckCommand(),
				migrateRevokeCommand(),
			},
		}},
	}
}

var configFlag = cli.StringFlag{Name: "config", Usage: "path of ca.json"}

func migrateIssuerAddCommand() cli.Command {
	return cli.Command{
		Name:  "add",
		Usage: "add a legacy issuer from its PFX (or PEM certificate and key)",
		UsageText: "stepfort migrate adcs issuer add --config ca.json --name NAME (--pfx FILE --password-file FILE | --cert FILE --key FILE [--key-password-file FILE])\n" +
			"   --crl-url URL [--delta-crl-url URL] [--idp] [--ca-password-file FILE]",
		Flags: []cli.Flag{
			configFlag,
			cli.StringFlag{Name: "name", Usage: "issuer name: letters, digits, '.', '_', '-' (at most 64)"},
			cli.StringFlag{Name: "pfx", Usage: "PFX (PKCS#12) exported from the CA (certutil -backupKey, MMC)"},
			cli.StringFlag{Name: "password-file", Usage: "file holding the PFX password"},
			cli.StringFlag{Name: "cert", Usage: "PEM or DER certificate of the CA (instead of --pfx)"},
			cli.StringFlag{Name: "key", Usage: "PEM private key of the CA (instead of --pfx)"},
			cli.StringFlag{Name: "key-password-file", Usage: "file holding the password of an encrypted --key"},
			cli.StringFlag{Name: "ca-password-file", Usage: "password the key is stored encrypted with (default: secrets/password of the installation)"},
			cli.StringFlag{Name: "crl-url", Usage: "the CDP URL the old CA's certificates carry, byte for byte (e.g. http://pki.corp.example/CertEnroll/Corp%20Issuing%20CA%201.crl)"},
			cli.StringFlag{Name: "delta-crl-url", Usage: "the Freshest CRL (delta) URL its base CRLs carried; empty: no delta CRLs"},
			cli.BoolFlag{Name: "idp", Usage: "put an Issuing Distribution Point into its CRLs (only if the old CA did)"},
		},
		Action: addLegacyIssuer,
	}
}

func addLegacyIssuer(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", c.Args().First())
	}
	cfg, err := requireFlag(c, "config")
	if err != nil {
		return err
	}
	for _, f := range []string{"name", "crl-url"} {
		if _, err := requireFlag(c, f); err != nil {
			return err
		}
	}
	bundle, err := readBundle(c)
	if err != nil {
		return err
	}
	pass := c.String("ca-password-file")
	if pass == "" {
		pass = filepath.Join(filepath.Dir(filepath.Dir(cfg)), "secrets", "password")
	}
	ic, err := legacy.AddIssuer(legacy.AddOptions{
		ConfigFile: cfg, Name: c.String("name"), Cert: bundle.Cert, Key: bundle.Key, PasswordFile: pass,
		CRLURL: c.String("crl-url"), DeltaCRLURL: c.String("delta-crl-url"), IDP: c.Bool("idp"),
	})
	if err != nil {
		return err
	}
	fmt.Printf("Added legacy issuer %s (%s).\n  certificate: %s\n  key:         %s\n  CRL:         %s\n",
		ic.Name, bundle.Cert.Subject, ic.Certificate, ic.Key, ic.CRLURL)
	if ic.DeltaCRLURL != "" {
		fmt.Printf("  delta CRL:   %s\n", ic.DeltaCRLURL)
	}
	fmt.Printf("Next: stepfort migrate adcs import --config %s --issuer %s EXPORT CRL..., then restart (or SIGHUP) stepfort.\n", cfg, ic.Name)
	return nil
}

// readBundle reads --pfx or --cert/--key with internal/cakeys.
func readBundle(c *cli.Context) (*cakeys.Bundle, error) {
	pfx, cert, key := c.String("pfx"), c.String("cert"), c.String("key")
	switch {
	case pfx != "" && (cert != "" || key != ""):
		return nil, errors.New("give either --pfx or --cert and --key, not both")
	case pfx != "":
		if c.String("password-file") == "" {
			return nil, errors.New("--password-file: required with --pfx")
		}
		pw, err := readPasswordFile("password-file", c.String("password-file"))
		if err != nil {
			return nil, err
		}
		data, err := readBounded(pfx, cakeys.MaxFileSize)
		if err != nil {
			return nil, fmt.Errorf("--pfx: %w", err)
		}
		b, err := cakeys.ReadPFX(data, string(pw))
		if err != nil {
			return nil, fmt.Errorf("--pfx %s: %w", pfx, err)
		}
		return b, nil
	case cert != "" && key != "":
		certPEM, err := readBounded(cert, cakeys.MaxFileSize)
		if err != nil {
			return nil, fmt.Errorf("--cert: %w", err)
		}
		keyPEM, err := readBounded(key, cakeys.MaxFileSize)
		if err != nil {
			return nil, fmt.Errorf("--key: %w", err)
		}
		var pw []byte
		if f := c.String("key-password-file"); f != "" {
			if pw, err = readPasswordFile("key-password-file", f); err != nil {
				return nil, err
			}
		}
		b, err := cakeys.ReadPEM(certPEM, keyPEM, pw)
		if err != nil {
			return nil, fmt.Errorf("--cert %s / --key %s: %w", cert, key, err)
		}
		return b, nil
	}
	return nil, errors.New("give --pfx and --password-file, or --cert and --key")
}

func readPasswordFile(flag, path string) ([]byte, error) {
	b, err := readBounded(path, 64<<10)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", flag, err)
	}
	return []byte(strings.TrimRight(string(b), "\r\n")), nil
}

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return b, nil
}

func requireFlag(c *cli.Context, name string) (string, error) {
	v := c.String(name)
	if v == "" {
		return "", fmt.Errorf("--%s: required", name)
	}
	return v, nil
}

func migrateIssuerListCommand() cli.Command {
	return cli.Command{
		Name:      "list",
		Usage:     "list the legacy issuers of ca.json (with --db: what was imported)",
		UsageText: "stepfort migrate adcs issuer list --config ca.json [--db]",
		Flags: []cli.Flag{configFlag,
			cli.BoolFlag{Name: "db", Usage: "open the database and show the import state (bbolt: stop the daemon first)"}},
		Action: func(c *cli.Context) error {
			cfg, err := requireFlag(c, "config")
			if err != nil {
				return err
			}
			issuers, err := legacy.ReadIssuers(cfg)
			if err != nil {
				return err
			}
			var store *legacy.Store
			if c.Bool("db") {
				s, closeDB, err := openLegacyStore(cfg)
				if err != nil {
					return err
				}
				defer closeDB()
				store = s
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tSUBJECT\tCRL URL\tDELTA CRL URL\tIMPORT")
			for _, ic := range issuers {
				subject := "(unreadable: " + ic.Certificate + ")"
				if cert, err := legacy.ReadCertificate(ic.Certificate); err == nil {
					subject = cert.Subject.String()
				}
				state := "-"
				if store != nil {
					st, err := store.State(ic.Name)
					if err != nil {
						return err
					}
					state = fmt.Sprintf("%d certificates, %d revoked, version %d, CRL number floor %d", st.Certificates, st.Revoked, st.Version, st.CRLNumberFloor)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", ic.Name, subject, ic.CRLURL, orDash(ic.DeltaCRLURL), state)
			}
			return w.Flush()
		},
	}
}

// issuerOf finds --issuer in ca.json and validates its entry.
func issuerOf(cfg, name string) (*legacy.IssuerConfig, error) {
	issuers, err := legacy.ReadIssuers(cfg)
	if err != nil {
		return nil, err
	}
	for i, ic := range issuers {
		if ic.Name == name {
			if err := ic.Validate(fmt.Sprintf("%s: %s[%d]", cfg, strings.Join(legacy.ConfigPath, "."), i)); err != nil {
				return nil, err
			}
			return &ic, nil
		}
	}
	return nil, fmt.Errorf("--issuer: %s has no legacy issuer named %q (add it with `stepfort migrate adcs issuer add`)", cfg, name)
}

// openLegacyStore opens the database of ca.json directly, as upstream's
// tooling does: on bbolt the daemon must be stopped (bbolt's file lock);
// on PostgreSQL replicas may run (they see the change through
// State.Version).
func openLegacyStore(cfg string) (*legacy.Store, func(), error) {
	up, err := upconfig.LoadConfiguration(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", cfg, err)
	}
	if up.DB == nil {
		return nil, nil, fmt.Errorf("%s: no \"db\" configured", cfg)
	}
	nosqlDB, closeDB, err := openCADatabase(up.DB, "it is locked by a running stepfort; stop the daemon first: bbolt allows one process")
	if err != nil {
		return nil, nil, err
	}
	store, err := legacy.OpenStore(nosqlDB)
	if err != nil {
		closeDB()
		return nil, nil, err
	}
	return store, closeDB, nil
}

// openCADatabase opens the database of a ca.json directly, as upstream's
// tooling does. On bbolt a running daemon holds the file's lock, and
// opening times out: the error is then "open database <file>: " and
// locked, which says what to do instead. close shuts the database.
func openCADatabase(cfg *db.Config, locked string) (d *db.DB, close func(), err error) {
	opened, err := db.New(cfg)
	if err != nil {
		if strings.Contains(err.Error(), "timeout") {
			return nil, nil, fmt.Errorf("open database %s: %s", cfg.DataSource, locked)
		}
		return nil, nil, fmt.Errorf("open database: %w", err)
	}
	nosqlDB, ok := opened.(*db.DB)
	if !ok {
		_ = opened.Shutdown()
		return nil, nil, fmt.Errorf("database type %q is not supported", cfg.Type)
	}
	return nosqlDB, func() { _ = opened.Shutdown() }, nil
}

func migrateImportCommand() cli.Command {
	return cli.Command{
		Name:  "import",
		Usage: "import certutil -view exports and the last CRLs of a legacy issuer",
		UsageText: "stepfort migrate adcs import --config ca.json --issuer NAME [--columns LIST] [--date-format F] [--timezone TZ]\n" +
			"   [--dry-run] [--allow-partial] [--verbose] FILE...\n\n" +
			"FILEs are certutil -view exports (text or CSV, UTF-16 or UTF-8) and CRLs (.crl, DER or PEM).",
		Flags: []cli.Flag{
			configFlag,
			cli.StringFlag{Name: "issuer", Usage: "legacy issuer name"},
			cli.StringFlag{Name: "columns", Usage: "the -out column list of the export, in order (default: " + strings.Join(adcs.DefaultColumns, ",") + ")"},
			cli.StringFlag{Name: "date-format", Usage: `dates of the export: "US" (M/D/YYYY), "UK" (D/M/YYYY), "ISO" or a Go layout (default: US, then ISO)`},
			cli.StringFlag{Name: "timezone", Usage: "the CA's time zone, e.g. Europe/Berlin (default: UTC, as exported with -gmt)"},
			cli.BoolFlag{Name: "dry-run", Usage: "print what would change; write nothing"},
			cli.BoolFlag{Name: "allow-partial", Usage: "import the valid rows although some are refused"},
			cli.BoolFlag{Name: "verbose", Usage: "report every row, not only refused and skipped ones"},
			cli.IntFlag{Name: "batch-size", Value: legacy.DefaultBatchSize, Usage: "rows per write transaction"},
		},
		Action: importADCS,
	}
}

func readerOptions(c *cli.Context) (adcs.Options, error) {
	o := adcs.Options{DateFormat: c.String("date-format")}
	if s := c.String("columns"); s != "" {
		for _, col := range strings.Split(s, ",") {
			if col = strings.TrimSpace(col); col != "" {
				o.Columns = append(o.Columns, col)
			}
		}
	}
	if tz := c.String("timezone"); tz != "" {
		loc, err := time.LoadLocation(tz)
		if err != nil {
			return o, fmt.Errorf("--timezone: %w", err)
		}
		o.Location = loc
	}
	return o, nil
}

// legacyTarget is what `migrate adcs import` and `check` work on: the
// legacy issuer --issuer of the ca.json --config, its certificate, and the
// database opened directly (openLegacyStore).
type legacyTarget struct {
	config, name string
	cert         *x509.Certificate
	store        *legacy.Store
	close        func()
}

// openLegacyTarget reads --config and --issuer, requires at least one
// argument (files names them in the error), then finds the issuer in
// ca.json, reads its certificate and opens the database. The caller
// closes it.
func openLegacyTarget(c *cli.Context, files string) (*legacyTarget, error) {
	cfg, err := requireFlag(c, "config")
	if err != nil {
		return nil, err
	}
	name, err := requireFlag(c, "issuer")
	if err != nil {
		return nil, err
	}
	if c.NArg() == 0 {
		return nil, errors.New("expected one or more " + files)
	}
	ic, err := issuerOf(cfg, name)
	if err != nil {
		return nil, err
	}
	cert, err := legacy.ReadCertificate(ic.Certificate)
	if err != nil {
		return nil, err
	}
	store, closeDB, err := openLegacyStore(cfg)
	if err != nil {
		return nil, err
	}
	return &legacyTarget{config: cfg, name: name, cert: cert, store: store, close: closeDB}, nil
}

func importADCS(c *cli.Context) error {
	// The reader's flags first: a usage error before anything is opened.
	ro, err := readerOptions(c)
	if err != nil {
		return err
	}
	lt, err := openLegacyTarget(c, "FILEs (certutil exports and CRLs)")
	if err != nil {
		return err
	}
	defer lt.close()
	var auditor plugins.Auditor
	if !c.Bool("dry-run") {
		a, closeTrail, err := importAudit(lt.config, lt.store.DB())
		if err != nil {
			return err
		}
		defer closeTrail()
		auditor = a
	}
	rep, err := lt.store.Import(c.Args(), legacy.ImportOptions{
		Issuer: lt.name, IssuerCert: lt.cert, Reader: ro, DryRun: c.Bool("dry-run"),
		AllowPartial: c.Bool("allow-partial"), Verbose: c.Bool("verbose"), BatchSize: c.Int("batch-size"), Log: os.Stdout,
		Audit: auditor, Actor: commandActor(),
	})
	if rep != nil && (err == nil || errors.Is(err, legacy.ErrRefused)) {
		printImportSummary(os.Stdout, rep, c.Bool("dry-run"))
	}
	return err
}

func printImportSummary(w io.Writer, r *legacy.Report, dry bool) {
	head := "Import"
	if dry {
		head = "Dry run (nothing written)"
	}
	fmt.Fprintf(w, "%s: %d export file(s), %d CRL(s), %d rows: %d imported, %d skipped, %d refused.\n",
		head, r.Files, r.CRLs, r.Rows, r.Imported, r.Skipped, r.Refused)
	for d, n := range r.SkippedBy {
		fmt.Fprintf(w, "  skipped disposition %d: %d\n", d, n)
	}
	fmt.Fprintf(w, "  certificates: %d new, %d changed, %d unchanged (%d known only from a CRL)\n", r.New, r.Changed, r.Unchanged, r.CRLOnly)
	fmt.Fprintf(w, "  revocations: %d added, %d changed; %d stored revocations kept\n", r.RevocationsAdded, r.RevocationsChanged, r.KeptRevoked)
	fmt.Fprintf(w, "  CRL number floor: %d -> %d (the next CRL is numbered above it)\n", r.OldCRLNumberFloor, r.CRLNumberFloor)
	if !dry {
		fmt.Fprintf(w, "  state version: %d\n", r.Version)
	}
}

func migrateCheckCommand() cli.Command {
	return cli.Command{
		Name:      "check",
		Usage:     "compare the import with the ADCS CRL(s) it came from; non-zero exit on any difference",
		UsageText: "stepfort migrate adcs check --config ca.json --issuer NAME CRLFILE...",
		Flags:     []cli.Flag{configFlag, cli.StringFlag{Name: "issuer", Usage: "legacy issuer name"}},
		Action: func(c *cli.Context) error {
			lt, err := openLegacyTarget(c, "CRL files")
			if err != nil {
				return err
			}
			defer lt.close()
			rep, err := lt.store.Check(lt.name, lt.cert, c.Args())
			if err != nil {
				return err
			}
			for _, d := range rep.Differences {
				fmt.Println(d)
			}
			if more := rep.Total - len(rep.Differences); more > 0 {
				fmt.Printf("... and %d more differences\n", more)
			}
			fmt.Printf("Checked %d CRL entries and %d stored revocations (before %s): %d differences.\n",
				rep.CRLEntries, rep.StoredRevoked, rep.ThisUpdate.Format(time.RFC3339), rep.Total)
			if rep.Total > 0 {
				return &exitError{code: 1, err: fmt.Errorf("%d differences between the import and the CRL", rep.Total)}
			}
			return nil
		},
	}
}

func migrateRevokeCommand() cli.Command {
	return cli.Command{
		Name:  "revoke",
		Usage: "revoke (or release from hold) a certificate of a legacy issuer through the running CA",
		UsageText: "stepfort migrate adcs revoke --ca-url URL --root FILE --token-file FILE --issuer NAME --serial HEX --reason REASON [--allow-unknown]\n\n" +
			"REASON: a number or keyCompromise, cACompromise, affiliationChanged, superseded, cessationOfOperation,\n" +
			"certificateHold, privilegeWithdrawn, aACompromise; removeFromCRL releases a hold. Needs scope " + ha.ScopeRevocationWrite + ".",
		Flags: adminFlags(
			cli.StringFlag{Name: "issuer", Usage: "legacy issuer name"},
			cli.StringFlag{Name: "serial", Usage: "certificate serial in hexadecimal, as ADCS shows it"},
			cli.StringFlag{Name: "reason", Usage: "CRL reason (name or number)"},
			cli.BoolFlag{Name: "allow-unknown", Usage: "revoke a serial the import does not know"},
		),
		Action: func(c *cli.Context) error {
			name, err := requireFlag(c, "issuer")
			if err != nil {
				return err
			}
			if err := legacy.ValidateName(name); err != nil {
				return fmt.Errorf("--issuer: %w", err)
			}
			serial, err := requireFlag(c, "serial")
			if err != nil {
				return err
			}
			if _, err := ha.ParseHexSerial(serial); err != nil {
				return fmt.Errorf("--serial: %w", err)
			}
			reason, err := requireFlag(c, "reason")
			if err != nil {
				return err
			}
			if _, err := legacy.ParseReason(reason); err != nil {
				return fmt.Errorf("--reason: %w", err)
			}
			cl, err := adminClient(c)
			if err != nil {
				return err
			}
			req := ha.LegacyRevokeRequest{Serial: serial, Reason: reason, AllowUnknown: c.Bool("allow-unknown")}
			var resp ha.LegacyRevokeResponse
			path := strings.Replace(ha.LegacyRevokePattern, "{name}", url.PathEscape(name), 1)
			if err := cl.Do("POST", path, req, &resp); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(resp)
			}
			if resp.Status == "good" {
				fmt.Printf("Released %s serial %s from hold; the next delta CRL lists it as removeFromCRL.\n", resp.Issuer, resp.Serial)
				return nil
			}
			fmt.Printf("Revoked %s serial %s (%s) at %s; OCSP answers revoked now, the next delta CRL lists it.\n",
				resp.Issuer, resp.Serial, resp.Reason, resp.RevokedAt.Format(time.RFC3339))
			return nil
		},
	}
}
