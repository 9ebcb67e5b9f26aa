package legacy

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"go.step.sm/crypto/pemutil"

	"github.com/stepfort/stepfort/internal/setup"
)

// ConfigPath is where legacy issuers live in ca.json.
var ConfigPath = []string{"stepfort", "plugins", "revocation", "legacyIssuers"}

// AddOptions describe a legacy issuer to add to an installation.
type AddOptions struct {
	// ConfigFile is ca.json; the certificate goes to ../certs and the key
	// to ../secrets beside its directory, as `stepfort init` lays out.
	ConfigFile string
	Name       string
	Cert       *x509.Certificate
	Key        crypto.Signer
	// PasswordFile holds the password the key is encrypted with (the CA's
	// password file); it is written into the entry.
	PasswordFile        string
	CRLURL, DeltaCRLURL string
	IDP                 bool
}

// AddIssuer writes the issuer's certificate and encrypted key and appends
// its entry to stepfort.plugins.revocation.legacyIssuers in ca.json,
// keeping every other key, their order and the file's mode. It refuses a
// duplicate name, existing files, and a ca.json without the revocation
// plugin block. On an error nothing is left behind.
func AddIssuer(o AddOptions) (*IssuerConfig, error) {
	if err := ValidateName(o.Name); err != nil {
		return nil, fmt.Errorf("--name: %w", err)
	}
	if err := checkCRLURL(o.CRLURL); err != nil {
		return nil, fmt.Errorf("--crl-url: %w", err)
	}
	if o.DeltaCRLURL != "" {
		if err := checkCRLURL(o.DeltaCRLURL); err != nil {
			return nil, fmt.Errorf("--delta-crl-url: %w", err)
		}
	}
	if err := CheckCA(o.Cert); err != nil {
		return nil, fmt.Errorf("certificate %s: %w", o.Cert.Subject, err)
	}
	doc, mode, err := readConfig(o.ConfigFile)
	if err != nil {
		return nil, err
	}
	existing, err := issuersIn(o.ConfigFile, doc)
	if err != nil {
		return nil, err
	}
	for _, c := range existing {
		if c.Name == o.Name {
			return nil, fmt.Errorf("%s: a legacy issuer named %q exists already", o.ConfigFile, o.Name)
		}
	}
	pass, err := os.ReadFile(o.PasswordFile)
	if err != nil {
		return nil, fmt.Errorf("CA password file: %w", err)
	}
	pass = bytes.TrimRight(pass, " \t\r\n")
	dir := filepath.Dir(filepath.Dir(o.ConfigFile))
	c := IssuerConfig{
		Name:         o.Name,
		Certificate:  filepath.Join(dir, "certs", "legacy_"+o.Name+".crt"),
		Key:          filepath.Join(dir, "secrets", "legacy_"+o.Name+"_key"),
		PasswordFile: o.PasswordFile,
		CRLURL:       o.CRLURL,
		DeltaCRLURL:  o.DeltaCRLURL,
		IDP:          o.IDP,
	}
	if abs, err := filepath.Abs(c.PasswordFile); err == nil {
		c.PasswordFile = abs
	}
	for _, p := range []string{c.Certificate, c.Key} {
		if _, err := os.Lstat(p); err == nil {
			return nil, fmt.Errorf("%s exists already; remove it or choose another --name", p)
		}
	}
	if err := writeIssuerFiles(c, o, pass); err != nil {
		return nil, err
	}
	if err := c.Validate("legacy issuer"); err != nil {
		removeIssuerFiles(c)
		return nil, err
	}
	out, err := appendIssuer(o.ConfigFile, doc, c)
	if err == nil {
		err = writeAtomic(o.ConfigFile, out, mode)
	}
	if err != nil {
		removeIssuerFiles(c)
		return nil, err
	}
	return &c, nil
}

func writeIssuerFiles(c IssuerConfig, o AddOptions, pass []byte) error {
	block, err := pemutil.Serialize(o.Key, pemutil.WithPassword(pass))
	if err != nil {
		return fmt.Errorf("encrypt the key: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: o.Cert.Raw})
	if err := os.MkdirAll(filepath.Dir(c.Certificate), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(c.Certificate, certPEM, 0o644); err != nil {
		return err
	}
	if err := setup.WriteSecretFile(c.Key, pem.EncodeToMemory(block)); err != nil {
		_ = os.Remove(c.Certificate)
		return err
	}
	return nil
}

func removeIssuerFiles(c IssuerConfig) {
	_ = os.Remove(c.Certificate)
	_ = os.Remove(c.Key)
}

// ReadIssuers returns the legacy issuers configured in ca.json.
func ReadIssuers(configFile string) ([]IssuerConfig, error) {
	doc, _, err := readConfig(configFile)
	if err != nil {
		return nil, err
	}
	return issuersIn(configFile, doc)
}

// maxConfigSize bounds ca.json.
const maxConfigSize = 16 << 20

func readConfig(path string) ([]byte, os.FileMode, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, 0, err
	}
	if fi.Size() > maxConfigSize {
		return nil, 0, fmt.Errorf("%s: larger than %d MiB", path, maxConfigSize>>20)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	return b, fi.Mode().Perm(), nil
}

// issuersIn decodes the legacyIssuers array; it requires the revocation
// plugin block.
func issuersIn(path string, doc []byte) ([]IssuerConfig, error) {
	raw, err := lookup(doc, ConfigPath[:3])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if raw == nil {
		return nil, fmt.Errorf("%s: no %s block: legacy issuers are served by the revocation plugin; enable it first (stepfort init writes it)", path, strings.Join(ConfigPath[:3], "."))
	}
	var block struct {
		LegacyIssuers []IssuerConfig `json:"legacyIssuers"`
	}
	if err := json.Unmarshal(raw, &block); err != nil {
		return nil, fmt.Errorf("%s: %s: %w", path, strings.Join(ConfigPath, "."), err)
	}
	return block.LegacyIssuers, nil
}

// member is one key of a JSON object, its value kept as written.
type member struct {
	key   string
	value json.RawMessage
}

// decodeObject reads a JSON object keeping the order of its keys.
func decodeObject(b []byte) ([]member, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	var out []member
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		out = append(out, member{key: t.(string), value: v})
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	return out, nil
}

func encodeObject(ms []member) []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range ms {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(m.key)
		b.Write(k)
		b.WriteByte(':')
		b.Write(m.value)
	}
	b.WriteByte('}')
	return b.Bytes()
}

// lookup returns the value at path, nil when a key is missing.
func lookup(doc []byte, path []string) (json.RawMessage, error) {
	cur := json.RawMessage(doc)
	for i, k := range path {
		ms, err := decodeObject(cur)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", strings.Join(append([]string{"(top)"}, path[:i]...), "."), err)
		}
		cur = nil
		for _, m := range ms {
			if m.key == k {
				cur = m.value
			}
		}
		if cur == nil {
			return nil, nil
		}
	}
	return cur, nil
}

// set replaces (or appends) the value at path, creating the last key.
func set(doc []byte, path []string, value json.RawMessage) ([]byte, error) {
	ms, err := decodeObject(doc)
	if err != nil {
		return nil, err
	}
	for i := range ms {
		if ms[i].key != path[0] {
			continue
		}
		if len(path) == 1 {
			ms[i].value = value
		} else if ms[i].value, err = set(ms[i].value, path[1:], value); err != nil {
			return nil, err
		}
		return encodeObject(ms), nil
	}
	if len(path) > 1 {
		return nil, fmt.Errorf("no %q key", path[0])
	}
	return encodeObject(append(ms, member{key: path[0], value: value})), nil
}

func appendIssuer(path string, doc []byte, c IssuerConfig) ([]byte, error) {
	list, err := lookup(doc, ConfigPath)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var items []json.RawMessage
	if list != nil {
		if err := json.Unmarshal(list, &items); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, strings.Join(ConfigPath, "."), err)
		}
	}
	entry, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	items = append(items, entry)
	newList, err := json.Marshal(items)
	if err != nil {
		return nil, err
	}
	out, err := set(doc, ConfigPath, newList)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, out, "", "\t"); err != nil {
		return nil, err
	}
	pretty.WriteByte('\n')
	return pretty.Bytes(), nil
}

// writeAtomic replaces path with data (same directory, then rename), with
// mode.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
