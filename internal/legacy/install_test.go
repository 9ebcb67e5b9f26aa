package legacy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stepfort/stepfort/config"
)

const caJSON = `{
	"root": "/x/certs/root_ca.crt",
	"db": {"type": "bbadgerv2", "dataSource": "/x/db"},
	"stepfort": {
		"plugins": {
			"revocation": {"crl": {"idp": false}}
		}
	},
	"zzz": 1
}
`

// issuer add writes the files and the entry, keeps the other keys in
// order and the mode, refuses a duplicate, and Load reads what it wrote.
func TestAddIssuerAndLoad(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"config", "certs", "secrets"} {
		must(t, os.MkdirAll(filepath.Join(dir, d), 0o700))
	}
	cfg := filepath.Join(dir, "config", "ca.json")
	must(t, os.WriteFile(cfg, []byte(caJSON), 0o600))
	pw := filepath.Join(dir, "secrets", "password")
	must(t, os.WriteFile(pw, []byte("s3cret\n"), 0o600))
	ca := newCA(t, "Corp Issuing CA 1")
	o := AddOptions{ConfigFile: cfg, Name: "corp-1", Cert: ca.cert, Key: ca.key, PasswordFile: pw,
		CRLURL: "http://pki.corp.example/CertEnroll/Corp%20Issuing%20CA%201.crl", DeltaCRLURL: "http://pki.corp.example/CertEnroll/Corp%20Issuing%20CA%201+.crl"}
	ic, err := AddIssuer(o)
	must(t, err)
	b, _ := os.ReadFile(cfg)
	s := string(b)
	if strings.Index(s, `"root"`) > strings.Index(s, `"db"`) || strings.Index(s, `"stepfort"`) > strings.Index(s, `"zzz"`) ||
		!strings.Contains(s, `"idp": false`) || !strings.Contains(s, `Corp%20Issuing%20CA%201+.crl`) {
		t.Errorf("ca.json lost its order or keys:\n%s", s)
	}
	if fi, _ := os.Stat(cfg); fi.Mode().Perm() != 0o600 {
		t.Errorf("ca.json mode %v", fi.Mode())
	}
	if fi, _ := os.Stat(ic.Key); fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v", fi.Mode())
	}
	key, _ := os.ReadFile(ic.Key)
	if !strings.Contains(string(key), "ENCRYPTED") {
		t.Errorf("key not encrypted:\n%s", key)
	}
	list, err := ReadIssuers(cfg)
	must(t, err)
	if len(list) != 1 || list[0].Name != "corp-1" {
		t.Fatalf("issuers %+v", list)
	}
	iss, err := Load(list[0])
	must(t, err)
	if iss.Series() != "legacy/corp-1" || !iss.Cert.Equal(ca.cert) {
		t.Errorf("loaded %+v", iss)
	}
	if _, err := AddIssuer(o); err == nil || !strings.Contains(err.Error(), "exists already") {
		t.Errorf("duplicate: %v", err)
	}
	// A wrong password names the key file.
	bad := list[0]
	bad.PasswordFile = filepath.Join(dir, "wrong")
	must(t, os.WriteFile(bad.PasswordFile, []byte("nope"), 0o600))
	if _, err := Load(bad); err == nil || !strings.Contains(err.Error(), ic.Key) {
		t.Errorf("wrong password: %v", err)
	}
	// A key of another CA.
	other := newCA(t, "Other CA")
	o2 := o
	o2.Name, o2.Key = "corp-2", other.key
	ic2, err := AddIssuer(o2)
	must(t, err)
	if _, err := Load(*ic2); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("mismatched key: %v", err)
	}
}

func TestAddIssuerNeedsRevocationPlugin(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "ca.json")
	must(t, os.WriteFile(cfg, []byte(`{"root": "x"}`), 0o600))
	ca := newCA(t, "Corp Issuing CA 1")
	_, err := AddIssuer(AddOptions{ConfigFile: cfg, Name: "corp", Cert: ca.cert, Key: ca.key, PasswordFile: cfg, CRLURL: "http://a/b.crl"})
	if err == nil || !strings.Contains(err.Error(), "stepfort.plugins.revocation") {
		t.Fatalf("err = %v", err)
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	must(t, os.WriteFile(f, []byte("x"), 0o600))
	ok := IssuerConfig{Name: "corp", Certificate: f, Key: f, CRLURL: "http://pki/CertEnroll/A%20B.crl"}
	must(t, ok.Validate("x"))
	kms := ok
	kms.Key = "softkms:path=" + f
	must(t, kms.Validate("x"))
	for _, tc := range []struct {
		field string
		edit  func(*IssuerConfig)
	}{
		{"x.name", func(c *IssuerConfig) { c.Name = "a/b" }},
		{"x.name", func(c *IssuerConfig) { c.Name = strings.Repeat("a", 65) }},
		{"x.certificate", func(c *IssuerConfig) { c.Certificate = filepath.Join(dir, "missing") }},
		{"x.key", func(c *IssuerConfig) { c.Key = "" }},
		{"x.crlURL", func(c *IssuerConfig) { c.CRLURL = "/CertEnroll/a.crl" }},
		{"x.crlURL", func(c *IssuerConfig) { c.CRLURL = "ldap:///CN=a" }},
		{"x.deltaCRLURL", func(c *IssuerConfig) { c.DeltaCRLURL = c.CRLURL }},
		{"x.basePeriod", func(c *IssuerConfig) { c.BasePeriod = config.Duration{Duration: time.Second} }},
		{"x.deltaPeriod", func(c *IssuerConfig) {
			c.DeltaCRLURL = "http://pki/d+.crl"
			c.DeltaPeriod = config.Duration{Duration: 200 * time.Hour}
		}},
	} {
		c := ok
		tc.edit(&c)
		if err := c.Validate("x"); err == nil || !strings.HasPrefix(err.Error(), tc.field+":") {
			t.Errorf("%s: err = %v", tc.field, err)
		}
	}
	for _, s := range []string{"keyCompromise", "key compromise", "1", "hold", "removeFromCRL"} {
		if _, err := ParseReason(s); err != nil {
			t.Errorf("ParseReason(%q): %v", s, err)
		}
	}
	for _, s := range []string{"7", "-1", "bogus", "11"} {
		if _, err := ParseReason(s); err == nil {
			t.Errorf("ParseReason(%q) accepted", s)
		}
	}
}
