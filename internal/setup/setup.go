// Package setup writes a complete, working stepfort installation: PKI,
// password, provisioners, database settings, the "stepfort" block and a first
// admin token. It is what `stepfort init` and `stepfort quickstart` run.
package setup

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/smallstep/certificates/db"

	"github.com/stepfort/stepfort/internal/admin"
	"github.com/stepfort/stepfort/internal/cakeys"
	"github.com/stepfort/stepfort/internal/fips"
)

// Options are the inputs of Init.
type Options struct {
	Dir             string
	Name            string   // PKI name, used in certificate subjects
	DNSNames        []string // names (and IPs) clients use to reach the CA
	Address         string   // HTTPS listen address
	InsecureAddress string   // HTTP listen address for CRL (and later OCSP, SCEP)
	DB              string   // "bbolt" or "postgresql"
	DBDSN           string   // PostgreSQL data source, with DB == "postgresql"
	DBName          string   // PostgreSQL database name (default "stepfort")
	Force           bool     // overwrite a non-empty Dir
	Provisioner     string   // name of the JWK provisioner (default "admin")

	// Root is an existing CA that signs stepfort's new intermediate
	// (--root-cert/--root-key or --root-pfx); its key is not written.
	Root *cakeys.Bundle
	// Issuer is an existing issuing CA stepfort signs with directly
	// (--issuer-cert/--issuer-key or --issuer-pfx). Root and Issuer
	// exclude each other; both nil: init makes its own root.
	Issuer *cakeys.Bundle
	// DeltaCRL turns delta CRLs on in the generated ca.json.
	DeltaCRL bool
	// KMS, when set, is the kms URI (e.g. "pkcs11:module-path=...;
	// token=...?pin-source=...") of the device that holds the CA keys:
	// init makes (or reuses) the keys named by KMSKeys there and writes
	// ca.json's "kms" block; no CA key is written to disk.
	KMS string
	// KMSKeys names the keys in the KMS; empty fields take DefaultKMSKeys.
	KMSKeys KMSKeys
	// Now is the clock a brought CA's validity is checked against; nil
	// means time.Now.
	Now func() time.Time
}

// Result says where things were written.
type Result struct {
	Dir             string
	ConfigFile      string
	PasswordFile    string
	RootFile        string
	AdminTokenFile  string
	RootFingerprint string
	CAURL           string
	Provisioner     string
	SCEPURL         string // the "scep" provisioner on the HTTP listener
	// AuditKeyFile is the Ed25519 key that signs the audit trail's
	// checkpoints (its public key is AuditKeyFile+".pub"), and AuditKeyID
	// its key id, as checkpoints and `stepfort audit verify` name it.
	AuditKeyFile string
	AuditKeyID   string
	// Notes are things the operator must know about this installation,
	// one sentence each (e.g. that a brought root key was not copied).
	Notes []string
}

// ErrNotEmpty is returned when Dir has content and Force is not set.
var ErrNotEmpty = errors.New("directory is not empty (use --force to overwrite)")

// Init writes the installation. ca.json is written last, so a directory
// with a ca.json holds a complete installation; on error no ca.json is
// written, and what this Init created (files, directories, the directory
// itself) is removed, so the next init needs no --force. Files an earlier
// installation had and this one replaced (--force) are not restored.
func Init(o Options) (r *Result, err error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	before, err := snapshot(o.Dir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if cerr := before.undo(); cerr != nil {
				err = fmt.Errorf("%w (and removing what this init wrote: %v)", err, cerr)
			}
		}
	}()
	// Under GODEBUG=fips140=only the Go module panics on some non-approved
	// algorithms; the cleanup above runs for that too.
	defer fips.Refuse(&err, "write the installation")
	if err := makeDirs(o.Dir, o.Force); err != nil {
		return nil, err
	}
	r = newResult(o)
	password := randomSecret(32)
	if err := WriteSecretFile(r.PasswordFile, []byte(password+"\n")); err != nil {
		return nil, err
	}
	ca, err := writeCAFiles(o, r, password)
	if err != nil {
		return nil, err
	}
	if err := writeStepDefaults(r); err != nil {
		return nil, err
	}
	if err := writeAuditKey(r, o.KMS != ""); err != nil {
		return nil, err
	}
	secret, err := createAdminToken(ca.DB)
	if err != nil {
		return nil, err
	}
	if err := WriteSecretFile(r.AdminTokenFile, []byte(secret+"\n")); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(ca, "", "\t")
	if err != nil {
		return nil, err
	}
	// 0600: ca.json names key files and holds the SCEP provisioner's
	// never-issued static challenge (its fallback if dynamicScep is removed).
	if err := writeFile(r.ConfigFile, append(b, '\n'), 0o600); err != nil {
		return nil, err
	}
	return r, nil
}

// makeDirs creates the installation's directories, refusing a non-empty
// dir unless force is set.
func makeDirs(dir string, force bool) error {
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 && !force {
		return fmt.Errorf("%s: %w", dir, ErrNotEmpty)
	}
	for _, sub := range []string{"certs", "secrets", "config", "db", "logs", "templates"} {
		perm := os.FileMode(0o755)
		if sub == "secrets" {
			perm = 0o700
		}
		if err := os.MkdirAll(filepath.Join(dir, sub), perm); err != nil {
			return err
		}
		// MkdirAll keeps an existing directory's mode; secrets must be
		// private on a --force re-init too.
		if sub == "secrets" {
			if err := os.Chmod(filepath.Join(dir, sub), perm); err != nil {
				return err
			}
		}
	}
	return nil
}

// newResult names the files Init writes; RootFingerprint is filled in once
// the root exists.
func newResult(o Options) *Result {
	return &Result{
		Dir:            o.Dir,
		ConfigFile:     filepath.Join(o.Dir, "config", "ca.json"),
		PasswordFile:   filepath.Join(o.Dir, "secrets", "password"),
		RootFile:       filepath.Join(o.Dir, "certs", "root_ca.crt"),
		AdminTokenFile: filepath.Join(o.Dir, "secrets", "admin-token"),
		AuditKeyFile:   filepath.Join(o.Dir, "secrets", "audit_key"),
		CAURL:          caURL(o.DNSNames[0], o.Address),
		SCEPURL:        "http://" + hostPort(o.DNSNames[0], portOf(o.InsecureAddress)) + "/scep/" + scepProvisioner,
		Provisioner:    o.Provisioner,
	}
}

// writeCAFiles writes everything ca.json refers to (both CAs, the SCEP RA,
// the device template, a fresh database) and returns ca.json's content.
func writeCAFiles(o Options, r *Result, password string) (*caFile, error) {
	ks, err := o.keyStore()
	if err != nil {
		return nil, err
	}
	defer ks.close()
	issuing, err := issuingCA(o, password, ks)
	if err != nil {
		return nil, err
	}
	r.RootFile, r.RootFingerprint = issuing.rootFile, fingerprint(issuing.root)
	r.Notes = broughtCANotes(o, issuing)
	// The TPM Attestation CA has its own root, trusted only where an ACME
	// provisioner's attestationRoots names it.
	attestation, err := writeCAPair(o.Dir, o.Name+" TPM Attestation", "attestation_", password, ks)
	if err != nil {
		return nil, err
	}
	r.Notes = append(r.Notes, kmsNotes(ks)...)
	ra, err := writeSCEPRA(o.Dir, o.Name, issuing)
	if err != nil {
		return nil, err
	}
	templateFile := filepath.Join(o.Dir, "templates", "device.tpl")
	if err := writeFile(templateFile, []byte(DeviceTemplate), 0o644); err != nil {
		return nil, err
	}
	dbCfg, err := newDatabase(o)
	if err != nil {
		return nil, err
	}
	provs, err := newProvisioners(o.Provisioner, password, issuing, attestation, templateFile)
	if err != nil {
		return nil, err
	}
	provs = append(provs, newSCEPProvisioner(ra))
	return newCAFile(o, r, issuing, attestation, dbCfg, provs), nil
}

// newDatabase returns the database settings. A forced re-init makes a new
// PKI, so it removes an old bbolt file: it would hold certificates of a CA
// that no longer exists. A PostgreSQL database is the operator's to manage.
func newDatabase(o Options) (*db.Config, error) {
	if o.DB == "postgresql" {
		return &db.Config{Type: "postgresql", DataSource: o.DBDSN, Database: o.DBName}, nil
	}
	cfg := &db.Config{Type: "bbolt", DataSource: filepath.Join(o.Dir, "db", "stepfort.db")}
	if err := os.Remove(cfg.DataSource); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return cfg, nil
}

// writeStepDefaults writes config/defaults.json, which the step CLI reads
// when STEPPATH points at the installation.
func writeStepDefaults(r *Result) error {
	b, err := json.MarshalIndent(map[string]string{
		"ca-url": r.CAURL, "ca-config": r.ConfigFile, "fingerprint": r.RootFingerprint, "root": r.RootFile,
	}, "", "\t")
	if err != nil {
		return err
	}
	return writeFile(filepath.Join(r.Dir, "config", "defaults.json"), append(b, '\n'), 0o644)
}

func (o *Options) defaults() error {
	if o.Dir == "" {
		return errors.New("--dir: required")
	}
	abs, err := filepath.Abs(o.Dir)
	if err != nil {
		return err
	}
	o.Dir = abs
	if o.Name == "" {
		o.Name = "Stepfort"
	}
	if len(o.DNSNames) == 0 {
		o.DNSNames = []string{"localhost", "127.0.0.1"}
	}
	for _, n := range o.DNSNames {
		if n == "" || strings.ContainsAny(n, " /") {
			return fmt.Errorf("--dns: invalid name %q", n)
		}
	}
	if o.Address == "" {
		o.Address = ":9000"
	}
	if _, _, err := net.SplitHostPort(o.Address); err != nil {
		return fmt.Errorf("--address: %q is not host:port", o.Address)
	}
	if o.InsecureAddress == "" {
		o.InsecureAddress = ":9080"
	}
	if _, _, err := net.SplitHostPort(o.InsecureAddress); err != nil {
		return fmt.Errorf("--insecure-address: %q is not host:port", o.InsecureAddress)
	}
	switch o.DB {
	case "", "bbolt":
		o.DB = "bbolt"
	case "postgresql":
		if o.DBDSN == "" {
			return errors.New("--db-dsn: required with --db postgresql (e.g. postgresql://user:pw@host:5432/)")
		}
		if o.DBName == "" {
			o.DBName = "stepfort"
		}
	default:
		return fmt.Errorf("--db: must be bbolt or postgresql, got %q", o.DB)
	}
	if o.Provisioner == "" {
		o.Provisioner = "admin"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o.checkBroughtCA(o.Now())
}

// broughtCANotes tells the operator what init did with a brought CA.
func broughtCANotes(o Options, issuing *caPair) []string {
	switch {
	case o.Root != nil:
		issued := fmt.Sprintf("Intermediate %q was issued by your CA %q.", cakeys.Name(issuing.inter), cakeys.Name(o.Root.Cert))
		if o.Root.Cert != issuing.root {
			issued = strings.TrimSuffix(issued, ".") + fmt.Sprintf(" under the root %q.", cakeys.Name(issuing.root))
		}
		return []string{
			issued,
			"The key of your CA was used once and NOT copied into " + o.Dir + ": keep it offline; stepfort never needs it to run.",
		}
	case o.Issuer != nil:
		return []string{
			fmt.Sprintf("stepfort signs directly with your issuing CA %q (root %q); its key is stored encrypted with the CA password in %s.", cakeys.Name(o.Issuer.Cert), cakeys.Name(issuing.root), issuing.keyFile),
		}
	}
	return nil
}

// createAdminToken stores the first admin token, with every scope, and
// returns its secret.
func createAdminToken(cfg *db.Config) (string, error) {
	d, err := db.New(cfg)
	if err != nil {
		return "", fmt.Errorf("open database to store the admin token: %w", err)
	}
	defer d.Shutdown()
	store, err := admin.NewTokenStore(d.(*db.DB), nil)
	if err != nil {
		return "", err
	}
	_, secret, err := store.Create("init", []string{admin.ScopeAll}, 0)
	return secret, err
}

// writeFile replaces path atomically, so a reader never sees half a file.
// The temporary file is created exclusively under a random name with mode
// 0600, so nothing planted in the directory can catch the content, and it
// has its final mode before it takes path's place.
func writeFile(path string, data []byte, perm os.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// WriteSecretFile writes a secret (a password, a key, an admin token) to
// path with mode 0600, whatever was there before: a file of another mode is
// replaced, not rewritten in place. A symlink or a non-regular file at path
// is refused rather than followed or replaced.
func WriteSecretFile(path string, data []byte) error {
	if err := CheckSecretPath(path); err != nil {
		return err
	}
	return writeFile(path, data, 0o600)
}

// CheckSecretPath reports whether WriteSecretFile would refuse path, so a
// caller can check before it makes a secret it could not store.
func CheckSecretPath(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return err
	case fi.Mode()&os.ModeSymlink != 0:
		return fmt.Errorf("%s: is a symlink; refusing to write a secret through it (give the final path)", path)
	case fi.IsDir():
		return fmt.Errorf("%s: is a directory, not a file", path)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%s: is not a regular file", path)
	}
	return nil
}

func randomSecret(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
