package dynamicscep

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/go-chi/chi/v5"
	"github.com/smallstep/certificates/authority"
	"golang.org/x/crypto/bcrypt"

	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

// passwordFile writes content to a fresh file and returns its path.
func passwordFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// testAuthority is an embedded upstream authority with a self-signed
// issuing certificate, the one whose thumbprint the page shows.
func testAuthority(t *testing.T) (*authority.Authority, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "Test Issuing CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	a, err := authority.NewEmbedded(authority.WithX509RootCerts(cert), authority.WithX509Signer(cert, key))
	if err != nil {
		t.Fatal(err)
	}
	return a, cert
}

const (
	alicePassword = "alice-password-1234"
	bobPassword   = "bob-password-5678"
	carolPassword = "carol-password-9012"
)

// newNDESPlugin builds the plugin with the ndes block: alice (plain
// password), bob (bcrypt) and carol (no enroll right), on the routes of
// the HTTP listener.
func newNDESPlugin(t *testing.T, backend string, mod func(n *NDESConfig)) (*Plugin, *plugintest.Host, http.Handler, *x509.Certificate) {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte(bobPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	no := false
	cfg := defaultConfig()
	cfg.NDES = &NDESConfig{Users: []NDESUser{
		{Username: `CORP\alice`, PasswordFile: passwordFile(t, alicePassword+"\n")},
		{Username: "bob@corp.example", PasswordFile: passwordFile(t, string(hash)+"\n")},
		{Username: "carol", PasswordFile: passwordFile(t, carolPassword), Enroll: &no},
	}}
	if mod != nil {
		mod(cfg.NDES)
	}
	p, h := newPlugin2(t, backend, cfg)
	a, ca := testAuthority(t)
	h.Auth = a
	r := chi.NewRouter()
	p.InsecureRoutes(r)
	return p, h, r, ca
}

func newPlugin2(t *testing.T, backend string, cfg *Config) (*Plugin, *plugintest.Host) {
	t.Helper()
	return newPluginOn(t, testenv.OpenStore(t, backend), backend, cfg)
}

// fetchPage GETs path with Basic credentials (none when user is "").
func fetchPage(t *testing.T, h http.Handler, path, user, pass string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

// The scrapers of research §2.2, re-implemented.

// fleetDecode is Fleet's decoder: UTF-16 big endian unless a BOM says
// otherwise (unicode.BOMOverride), BOM removed.
func fleetDecode(b []byte) string {
	order := binary.ByteOrder(binary.BigEndian)
	switch {
	case bytes.HasPrefix(b, []byte{0xFF, 0xFE}):
		order, b = binary.LittleEndian, b[2:]
	case bytes.HasPrefix(b, []byte{0xFE, 0xFF}):
		b = b[2:]
	}
	return decodeUTF16(b, order)
}

func decodeUTF16(b []byte, order binary.ByteOrder) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		u = append(u, order.Uint16(b[i:]))
	}
	return string(utf16.Decode(u))
}

var fleetRegex = regexp.MustCompile(`(?i)The enrollment challenge password is: <B> (?P<password>\S*)`)

// fleetChallenge is Fleet's GetNDESSCEPChallenge after the status check.
func fleetChallenge(body []byte) (string, string) {
	html := fleetDecode(body)
	if m := fleetRegex.FindStringSubmatch(html); m != nil && m[fleetRegex.SubexpIndex("password")] != "" {
		return m[fleetRegex.SubexpIndex("password")], ""
	}
	switch {
	case strings.Contains(html, "The password cache is full."):
		return "", "cache full"
	case strings.Contains(html, "You do not have sufficient permission to enroll with SCEP."):
		return "", "insufficient permissions"
	}
	return "", "invalid"
}

// zentralChallenge is zentral's MicrosoftCA: Python's "utf-16" (BOM,
// else little endian) and its strict regex.
var zentralRegex = regexp.MustCompile(`challenge password is: <B> ([A-Z0-9]{16,32}) </B>`)

func zentralChallenge(body []byte) string {
	order := binary.ByteOrder(binary.LittleEndian)
	switch {
	case bytes.HasPrefix(body, []byte{0xFF, 0xFE}):
		body = body[2:]
	case bytes.HasPrefix(body, []byte{0xFE, 0xFF}):
		order, body = binary.BigEndian, body[2:]
	}
	m := zentralRegex.FindStringSubmatch(decodeUTF16(body, order))
	if m == nil {
		return ""
	}
	return m[1]
}

// psndesChallenge is PSNDESEnrollment's Get-NDESOTP: UTF-16LE
// ([Text.Encoding]::Unicode keeps the BOM as U+FEFF), split on white
// space, the first token matching -match '^[A-F0-9]{16}' (PowerShell's
// -match ignores case), $Matches[0].
var psndesRegex = regexp.MustCompile(`(?i)^[A-F0-9]{16}`)

func psndesChallenge(body []byte) string {
	for _, tok := range strings.Fields(decodeUTF16(body, binary.LittleEndian)) {
		if m := psndesRegex.FindString(tok); m != "" {
			return m
		}
	}
	return ""
}

// TestNDESPageScrapers: the page is the template byte for byte, in
// UTF-16LE with a BOM, and Fleet, zentral and PSNDESEnrollment all find
// the same 16-digit challenge, which then validates once.
func TestNDESPageScrapers(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			p, _, h, ca := newNDESPlugin(t, backend, nil)
			for _, path := range []string{"/certsrv/mscep_admin/", "/CertSrv/mscep_admin/", "/CERTSRV/MSCEP_ADMIN", "/certsrv/mscep_admin"} {
				w := fetchPage(t, h, path, `CORP\alice`, alicePassword)
				if w.Code != http.StatusOK {
					t.Fatalf("%s: %d %s", path, w.Code, w.Body)
				}
				body := w.Body.Bytes()
				if !bytes.HasPrefix(body, []byte{0xFF, 0xFE}) || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/html") {
					t.Fatalf("%s: not UTF-16LE with BOM (%q, % x)", path, w.Header().Get("Content-Type"), body[:4])
				}
				ch, why := fleetChallenge(body)
				if ch == "" {
					t.Fatalf("%s: Fleet found no challenge (%s) in %q", path, why, fleetDecode(body))
				}
				if !regexp.MustCompile(`^[0-9A-F]{16}$`).MatchString(ch) {
					t.Fatalf("challenge %q is not 16 upper-case hex digits", ch)
				}
				if z, ps := zentralChallenge(body), psndesChallenge(body); z != ch || ps != ch {
					t.Fatalf("zentral %q, PSNDESEnrollment %q, Fleet %q", z, ps, ch)
				}
				want := NDESPage(NDESThumbprint(ca.Raw), ch, 60)
				if !bytes.Equal(body, EncodeUTF16LE(want)) {
					t.Fatalf("page differs from the template:\n%s\nwant\n%s", fleetDecode(body), want)
				}
				csr, _ := newCSR(t, csrSpec{cn: "router-1"})
				if _, err := p.ValidateSCEPChallenge(t.Context(), enroll(ch, csr)); err != nil {
					t.Fatalf("NDES challenge refused: %v", err)
				}
				if r := result(t, func() error { _, err := p.ValidateSCEPChallenge(t.Context(), enroll(ch, csr)); return err }()); r != ResultRefusedConsumed {
					t.Fatalf("second use: %s", r)
				}
			}
		})
	}
}

// TestNDESTemplate: the template is the research's reconstruction,
// checked against an independent copy, and the thumbprint has NDES's
// format.
func TestNDESTemplate(t *testing.T) {
	const research = `<HTML><Head><Meta HTTP-Equiv="Content-Type" Content="text/html; charset=UTF-8"><Title>Network Device Enrollment Service</Title></Head><Body BgColor=#FFFFFF><Font ID=locPageFont Face="Arial"><Table Border=0 CellSpacing=0 CellPadding=4 Width=100% BgColor=#008080><TR><TD><Font ID=locPageTitleFont Face="Arial" Size=-1 Color=#FFFFFF><LocID ID=locMSCertSrv>Network Device Enrollment Service</LocID></Font></TD></TR></Table><P ID=locPageTitle> Network Device Enrollment Service allows you to obtain certificates for routers or other network devices using the Simple Certificate Enrollment Protocol (SCEP). </P><P> To complete certificate enrollment for your network device you will need the following information: <P> The thumbprint (hash value) for the CA certificate is: <B> {0} </B> <P> The enrollment challenge password is: <B> {1} </B> <P> This password can be used only once and will expire within {2} minutes. <P> Each enrollment requires a new challenge password. You can refresh this web page to obtain a new challenge password. </P> <P ID=locPageDesc> For more information see  <A HREF=http://go.microsoft.com/fwlink/?LinkId=67852>Using Network Device Enrollment Service </A>. </P> <P></Font></Body></HTML>`
	if NDESPageTemplate != research {
		t.Fatalf("template differs:\n%s", NDESPageTemplate)
	}
	if tp := NDESThumbprint([]byte("x")); !regexp.MustCompile(`^[0-9A-F]{8}( [0-9A-F]{8}){3}$`).MatchString(tp) {
		t.Fatalf("thumbprint %q", tp)
	}
	if got := EncodeUTF16LE("A€"); !bytes.Equal(got, []byte{0xFF, 0xFE, 'A', 0, 0xAC, 0x20}) {
		t.Fatalf("UTF-16LE % x", got)
	}
}

// TestNDESCacheFull: a user holding passwordCacheSize outstanding
// challenges gets "The password cache is full." and no new challenge; a
// consumed or expired challenge frees its slot; users have their own
// caches.
func TestNDESCacheFull(t *testing.T) {
	p, host, h, _ := newNDESPlugin(t, "bbolt", nil)
	var first string
	for i := range 5 {
		w := fetchPage(t, h, "/certsrv/mscep_admin/", "bob@corp.example", bobPassword)
		ch, why := fleetChallenge(w.Body.Bytes())
		if ch == "" {
			t.Fatalf("page %d: %s", i+1, why)
		}
		if i == 0 {
			first = ch
		}
	}
	w := fetchPage(t, h, "/certsrv/mscep_admin/", "bob@corp.example", bobPassword)
	if ch, why := fleetChallenge(w.Body.Bytes()); ch != "" || why != "cache full" || w.Code != http.StatusOK {
		t.Fatalf("sixth page: %d %q %q", w.Code, ch, why)
	}
	if n := countSource(t, p, SourceNDES); n != 5 {
		t.Fatalf("%d NDES challenges stored, want 5", n)
	}
	// Another user has a cache of their own.
	if ch, why := fleetChallenge(fetchPage(t, h, "/certsrv/mscep_admin/", `CORP\alice`, alicePassword).Body.Bytes()); ch == "" {
		t.Fatalf("alice: %s", why)
	}
	// Using one frees a slot.
	csr, _ := newCSR(t, csrSpec{cn: "r"})
	if _, err := p.ValidateSCEPChallenge(t.Context(), enroll(first, csr)); err != nil {
		t.Fatal(err)
	}
	if ch, why := fleetChallenge(fetchPage(t, h, "/certsrv/mscep_admin/", "bob@corp.example", bobPassword).Body.Bytes()); ch == "" {
		t.Fatalf("after a use: %s", why)
	}
	// Expiry frees them all; the page says 60 minutes, the default.
	host.Advance(61 * time.Minute)
	body := fetchPage(t, h, "/certsrv/mscep_admin/", "bob@corp.example", bobPassword).Body.Bytes()
	if ch, why := fleetChallenge(body); ch == "" || !strings.Contains(fleetDecode(body), "will expire within 60 minutes") {
		t.Fatalf("after expiry: %s %q", why, fleetDecode(body))
	}
}

func countSource(t *testing.T, p *Plugin, source string) int {
	t.Helper()
	n := 0
	if err := p.challenges.ForEach(func(c *Challenge) error {
		if c.Source == source {
			n++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestNDESAuth: no or wrong credentials get 401 with a Basic challenge,
// a user without the enroll right gets NDES's permission text, and
// neither creates a challenge.
func TestNDESAuth(t *testing.T) {
	p, _, h, _ := newNDESPlugin(t, "bbolt", nil)
	for _, c := range []struct{ user, pass string }{{"", ""}, {`CORP\alice`, "wrong"}, {"bob@corp.example", alicePassword}, {"mallory", alicePassword}, {`corp\ALICE`, alicePassword}} {
		w := fetchPage(t, h, "/certsrv/mscep_admin/", c.user, c.pass)
		if w.Code != http.StatusUnauthorized || !strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "Basic realm=") {
			t.Fatalf("%q/%q: %d %q", c.user, c.pass, w.Code, w.Header().Get("WWW-Authenticate"))
		}
	}
	w := fetchPage(t, h, "/certsrv/mscep_admin/", "carol", carolPassword)
	if ch, why := fleetChallenge(w.Body.Bytes()); w.Code != http.StatusOK || ch != "" || why != "insufficient permissions" {
		t.Fatalf("carol: %d %q %q", w.Code, ch, why)
	}
	if n := countSource(t, p, SourceNDES); n != 0 {
		t.Fatalf("%d challenges created without rights", n)
	}
}

// TestNDESInfoPage: a bare GET of mscep.dll (any case, with or without
// /pkiclient.exe) is the information page, or 403 in Intune mode.
func TestNDESInfoPage(t *testing.T) {
	_, _, h, _ := newNDESPlugin(t, "bbolt", nil)
	for _, path := range []string{"/certsrv/mscep/mscep.dll", "/CertSrv/mscep/mscep.dll/pkiclient.exe", "/CERTSRV/MSCEP/MSCEP.DLL/PKICLIENT.EXE"} {
		w := fetchPage(t, h, path, "", "")
		if w.Code != http.StatusOK || !strings.Contains(fleetDecode(w.Body.Bytes()), "This URL is used by network devices to submit certificate requests.") {
			t.Fatalf("%s: %d %q", path, w.Code, fleetDecode(w.Body.Bytes()))
		}
	}
	_, _, hi, _ := newNDESPlugin(t, "bbolt", func(n *NDESConfig) { n.IntuneMode = true })
	if w := fetchPage(t, hi, "/certsrv/mscep/mscep.dll", "", ""); w.Code != http.StatusForbidden {
		t.Fatalf("Intune mode: %d", w.Code)
	}
	if w := fetchPage(t, hi, "/certsrv/mscep/other.dll", "", ""); w.Code != http.StatusNotFound {
		t.Fatalf("other path: %d", w.Code)
	}
}

// TestNDESConfig: defaults, and every bad value refused with its path.
func TestNDESConfig(t *testing.T) {
	good := passwordFile(t, "a-long-enough-password")
	tests := []struct {
		name string
		mod  func(c *Config)
		path string
	}{
		{"defaults", func(c *Config) { c.NDES = &NDESConfig{} }, ""},
		{"other provisioner", func(c *Config) { c.NDES = &NDESConfig{Provisioner: "wifi"} }, "ndes.provisioner"},
		{"cache size", func(c *Config) { c.NDES = &NDESConfig{PasswordCacheSize: -1} }, "ndes.passwordCacheSize"},
		{"ttl", func(c *Config) { c.NDES = &NDESConfig{ChallengeTTL: durationOf("48h")} }, "ndes.challengeTTL"},
		{"no username", func(c *Config) { c.NDES = &NDESConfig{Users: []NDESUser{{PasswordFile: good}}} }, "ndes.users[0].username"},
		{"colon", func(c *Config) { c.NDES = &NDESConfig{Users: []NDESUser{{Username: "a:b", PasswordFile: good}}} }, "ndes.users[0].username"},
		{"relative file", func(c *Config) { c.NDES = &NDESConfig{Users: []NDESUser{{Username: "a", PasswordFile: "pw"}}} }, "ndes.users[0].passwordFile"},
		{"missing file", func(c *Config) {
			c.NDES = &NDESConfig{Users: []NDESUser{{Username: "a", PasswordFile: filepath.Join(t.TempDir(), "none")}}}
		}, "ndes.users[0].passwordFile"},
		{"short password", func(c *Config) {
			c.NDES = &NDESConfig{Users: []NDESUser{{Username: "a", PasswordFile: passwordFile(t, "short\n")}}}
		}, "ndes.users[0].passwordFile"},
		{"bad bcrypt", func(c *Config) {
			c.NDES = &NDESConfig{Users: []NDESUser{{Username: "a", PasswordFile: passwordFile(t, "$2b$10$nonsense")}}}
		}, "ndes.users[0].passwordFile"},
		{"duplicate user", func(c *Config) {
			c.NDES = &NDESConfig{Users: []NDESUser{{Username: "a", PasswordFile: good}, {Username: "a", PasswordFile: good}}}
		}, "ndes.users[1].username"},
	}
	for _, tt := range tests {
		c := defaultConfig()
		tt.mod(c)
		err := c.Validate()
		switch {
		case tt.path == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.path != "" && (err == nil || !strings.Contains(err.Error(), tt.path)):
			t.Errorf("%s: %v, want an error naming %s", tt.name, err, tt.path)
		}
	}
	c := defaultConfig()
	c.NDES = &NDESConfig{}
	if err := c.Validate(); err != nil || c.NDES.PasswordCacheSize != 5 || c.NDES.ChallengeTTL.Duration != time.Hour || c.NDES.Provisioner != "scep" {
		t.Fatalf("defaults: %v %+v", err, c.NDES)
	}
}
