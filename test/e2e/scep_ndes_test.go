package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/stepfort/stepfort/internal/testenv"
)

// The Jamf webhook and NDES tests drive the dynamicScep plugin's MDM
// challenge sources with real SCEP clients (docs/scep.md, "Jamf" and
// "NDES").

// ndesURL is the NDES enrollment URL on a CA's HTTP port.
func ndesURL(httpPort int) string {
	return fmt.Sprintf("http://127.0.0.1:%d/certsrv/mscep/mscep.dll", httpPort)
}

// scepEnrollAt runs micromdm scepclient against serverURL in a fresh dir.
func scepEnrollAt(t *testing.T, serverURL, dir, challenge, cn string) (string, error) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testenv.MustTool(t, "scepclient"), "-server-url", serverURL, "-challenge", challenge, "-cn", cn,
		"-private-key", filepath.Join(dir, "key.pem"), "-certificate", filepath.Join(dir, "cert.pem"), "-key-encipherment-selector", "-debug")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// writeSecret writes a password file for ca.json.
func writeSecret(t *testing.T, dir, name, pw string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// setPluginBlock sets key in the dynamicScep block of ca.json.
func setPluginBlock(t *testing.T, c *ca, key string, v any) {
	t.Helper()
	editConfig(t, c.Config, func(m map[string]any) {
		m["stepfort"].(map[string]any)["plugins"].(map[string]any)["dynamicScep"].(map[string]any)[key] = v
	})
}

// outstanding lists the outstanding challenges of source via the admin API.
func outstanding(t *testing.T, c *ca, source string) int {
	t.Helper()
	code, m := call(t, apiClient(t, c), "GET", c.URL+"/api/v1/scep/challenges", readToken(t, c), nil)
	if code != http.StatusOK {
		t.Fatalf("list challenges: %d %v", code, m)
	}
	n := 0
	list, _ := m["challenges"].([]any)
	for _, e := range list {
		if e.(map[string]any)["source"] == source {
			n++
		}
	}
	return n
}

const e2eJamfBody = `{"webhook":{"webhookEvent":"SCEPChallenge","id":1,"eventTimestamp":1757435578,"name":""},"event":{"scepServerUrl":"https://ca.example/scep/scep","payloadIdentifier":"CDB0BC64-0000","payloadTypes":["com.apple.security.scep"]}}`

// TestSCEPJamfWebhook: Jamf's SCEPChallenge JSON with the right Basic
// credentials gets 200 and the raw challenge, with which scepclient
// enrolls; wrong credentials get 401 and create nothing.
func TestSCEPJamfWebhook(t *testing.T) {
	c := initCA(t)
	pw := "jamf-e2e-password-1"
	setPluginBlock(t, c, "jamf", map[string]any{"username": "jamf", "passwordFile": writeSecret(t, t.TempDir(), "jamf-pw", pw)})
	serve(t, c.Config, c.Password, c.Port)
	hc := apiClient(t, c)

	post := func(user, pass string) (int, string, http.Header) {
		req, _ := http.NewRequest("POST", c.URL+"/scep/jamf/challenge", strings.NewReader(e2eJamfBody))
		req.Header.Set("Content-Type", "application/json")
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	for _, cred := range [][2]string{{"jamf", "wrong"}, {"", ""}, {"other", pw}} {
		code, _, hdr := post(cred[0], cred[1])
		if code != http.StatusUnauthorized || !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Basic") {
			t.Fatalf("credentials %q: %d %v", cred, code, hdr)
		}
	}
	if n := outstanding(t, c, "jamf"); n != 0 {
		t.Fatalf("%d challenges created by refused requests", n)
	}
	code, challenge, hdr := post("jamf", pw)
	if code != http.StatusOK || !strings.HasPrefix(hdr.Get("Content-Type"), "text/plain") || strings.TrimSpace(challenge) != challenge || challenge == "" {
		t.Fatalf("webhook: %d %q %q", code, hdr.Get("Content-Type"), challenge)
	}
	if n := outstanding(t, c, "jamf"); n != 1 {
		t.Fatalf("%d outstanding Jamf challenges, want 1", n)
	}
	dir := filepath.Join(t.TempDir(), "mac")
	if out, err := scepEnrollAt(t, scepURL(c.HTTPPort), dir, challenge, "jamf-mac-1"); err != nil {
		t.Fatalf("scepclient with the Jamf challenge: %v\n%s", err, out)
	}
	checkIssued(t, c, filepath.Join(dir, "cert.pem"), "jamf-mac-1")
	out, err := scepEnrollAt(t, scepURL(c.HTTPPort), filepath.Join(t.TempDir(), "again"), challenge, "jamf-mac-2")
	mustRefuse(t, "the Jamf challenge a second time", out, err)
}

// fetchNDESPage GETs the mscep_admin page with Basic credentials.
func fetchNDESPage(t *testing.T, url, user, pass string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.SetBasicAuth(user, pass)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// utf16Decode decodes with a BOM, big endian without (Fleet's
// unicode.BOMOverride over UTF-16BE).
func utf16Decode(b []byte) string {
	order := binary.ByteOrder(binary.BigEndian)
	switch {
	case bytes.HasPrefix(b, []byte{0xFF, 0xFE}):
		order, b = binary.LittleEndian, b[2:]
	case bytes.HasPrefix(b, []byte{0xFE, 0xFF}):
		b = b[2:]
	}
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		u = append(u, order.Uint16(b[i:]))
	}
	return string(utf16.Decode(u))
}

var (
	fleetNDESRegex   = regexp.MustCompile(`(?i)The enrollment challenge password is: <B> (?P<password>\S*)`)
	zentralNDESRegex = regexp.MustCompile(`challenge password is: <B> ([A-Z0-9]{16,32}) </B>`)
	psndesToken      = regexp.MustCompile(`(?i)^[A-F0-9]{16}`)
)

// scrapeNDES extracts the challenge as Fleet, zentral and
// PSNDESEnrollment do and requires them to agree.
func scrapeNDES(t *testing.T, body []byte) string {
	t.Helper()
	html := utf16Decode(body)
	fleet := ""
	if m := fleetNDESRegex.FindStringSubmatch(html); m != nil {
		fleet = m[1]
	}
	zentral := ""
	if m := zentralNDESRegex.FindStringSubmatch(html); m != nil {
		zentral = m[1]
	}
	ps := ""
	for _, tok := range strings.Fields(html) {
		if m := psndesToken.FindString(tok); m != "" {
			ps = m
			break
		}
	}
	if fleet == "" || fleet != zentral || fleet != ps {
		t.Fatalf("scrapers disagree: Fleet %q, zentral %q, PSNDESEnrollment %q in %q", fleet, zentral, ps, html)
	}
	return fleet
}

// TestSCEPNDES: the mscep_admin page (Basic auth, any case) gives a
// challenge the scrapers find, scepclient enrolls with it through
// /certsrv/mscep/mscep.dll, GetCACert there is NDES's RA+CA content type,
// and the sixth outstanding password of a user gives the cache-full text.
// certmonger enrolls through mscep.dll/pkiclient.exe with a page
// challenge.
func TestSCEPNDES(t *testing.T) {
	c := initCA(t)
	dir := t.TempDir()
	pw := "ndes-e2e-password-1"
	no := false
	setPluginBlock(t, c, "ndes", map[string]any{"users": []any{
		map[string]any{"username": `CORP\ndesadmin`, "passwordFile": writeSecret(t, dir, "ndes-pw", pw)},
		map[string]any{"username": "viewer", "passwordFile": writeSecret(t, dir, "viewer-pw", pw), "enroll": no},
	}})
	serve(t, c.Config, c.Password, c.Port)
	page := fmt.Sprintf("http://127.0.0.1:%d/CertSrv/mscep_admin/", c.HTTPPort)

	if code, _ := fetchNDESPage(t, page, `CORP\ndesadmin`, "wrong"); code != http.StatusUnauthorized {
		t.Fatalf("wrong password: %d", code)
	}
	if code, body := fetchNDESPage(t, page, "viewer", pw); code != http.StatusOK || !strings.Contains(utf16Decode(body), "You do not have sufficient permission to enroll with SCEP.") {
		t.Fatalf("viewer: %d %q", code, utf16Decode(body))
	}
	code, body := fetchNDESPage(t, page, `CORP\ndesadmin`, pw)
	if code != http.StatusOK || !bytes.HasPrefix(body, []byte{0xFF, 0xFE}) {
		t.Fatalf("page: %d % x", code, body[:min(len(body), 8)])
	}
	challenge := scrapeNDES(t, body)
	if !strings.Contains(utf16Decode(body), "will expire within 60 minutes") {
		t.Fatalf("page validity: %q", utf16Decode(body))
	}

	resp, err := http.Get(ndesURL(c.HTTPPort) + "/pkiclient.exe?operation=GetCACert&message=default")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-x509-ca-ra-cert" {
		t.Fatalf("GetCACert: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	enrollDir := filepath.Join(t.TempDir(), "router")
	if out, err := scepEnrollAt(t, ndesURL(c.HTTPPort), enrollDir, challenge, "ndes-router-1"); err != nil {
		t.Fatalf("scepclient through mscep.dll: %v\n%s", err, out)
	}
	checkIssued(t, c, filepath.Join(enrollDir, "cert.pem"), "ndes-router-1")

	// The cache: 5 outstanding passwords, then the cache-full text.
	var last string
	for i := range 5 {
		code, body := fetchNDESPage(t, page, `CORP\ndesadmin`, pw)
		if code != http.StatusOK {
			t.Fatalf("page %d: %d", i, code)
		}
		last = scrapeNDES(t, body)
	}
	code, body = fetchNDESPage(t, page, `CORP\ndesadmin`, pw)
	if html := utf16Decode(body); code != http.StatusOK || !strings.Contains(html, "The password cache is full.") || fleetNDESRegex.MatchString(html) {
		t.Fatalf("sixth page: %d %q", code, html)
	}
	if n := outstanding(t, c, "ndes"); n != 5 {
		t.Fatalf("%d outstanding NDES challenges, want 5", n)
	}
	testNDESCertmonger(t, c, last)
}

// testNDESCertmonger enrolls with certmonger (GET PKIOperation) through
// mscep.dll/pkiclient.exe with a challenge from the NDES page.
func testNDESCertmonger(t *testing.T, c *ca, challenge string) {
	certFile := certmongerEnroll(t, c, ndesURL(c.HTTPPort)+"/pkiclient.exe", challenge, "ndes-cm")
	checkIssued(t, c, certFile, "ndes-cm")
}
