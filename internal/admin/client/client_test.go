package client

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// writePEM writes certificates as a PEM root file.
func writePEM(t *testing.T, certs ...*x509.Certificate) string {
	t.Helper()
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	path := filepath.Join(t.TempDir(), "root.crt")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// request is what the test server saw.
type request struct {
	Method, Path, Query, Auth, Accept, ContentType, Body string
}

// newServer answers every request with status and body, recording it.
func newServer(t *testing.T, status int, body string) (*httptest.Server, *request) {
	t.Helper()
	seen := &request{}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		*seen = request{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Authorization"), r.Header.Get("Accept"), r.Header.Get("Content-Type"), string(b)}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv, seen
}

func newClient(t *testing.T, srv *httptest.Server) *Client {
	t.Helper()
	c, err := New(srv.URL+"/", writePEM(t, srv.Certificate()), "sft_secret")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDoSendsJSONWithBearerAndDecodes(t *testing.T) {
	srv, seen := newServer(t, http.StatusCreated, `{"id":"d1","identifiers":["urn:ek:1"]}`)
	c := newClient(t, srv)
	var out struct {
		ID          string   `json:"id"`
		Identifiers []string `json:"identifiers"`
	}
	if err := c.Do(http.MethodPost, "/devices?x=1", map[string]string{"name": "laptop"}, &out); err != nil {
		t.Fatal(err)
	}
	if out.ID != "d1" || len(out.Identifiers) != 1 || out.Identifiers[0] != "urn:ek:1" {
		t.Errorf("decoded %+v", out)
	}
	want := request{http.MethodPost, "/api/v1/devices", "x=1", "Bearer sft_secret", "application/json", "application/json", `{"name":"laptop"}`}
	if *seen != want {
		t.Errorf("server saw %+v, want %+v", *seen, want)
	}
}

func TestDoWithoutBodySendsNoContentType(t *testing.T) {
	srv, seen := newServer(t, http.StatusOK, ``)
	c := newClient(t, srv)
	if err := c.Do(http.MethodDelete, "/tokens/abc", nil, nil); err != nil {
		t.Fatal(err)
	}
	if seen.Method != http.MethodDelete || seen.Path != "/api/v1/tokens/abc" || seen.ContentType != "" || seen.Body != "" {
		t.Errorf("server saw %+v", *seen)
	}
}

func TestDoRawSendsContentType(t *testing.T) {
	srv, seen := newServer(t, http.StatusOK, `{"total":1}`)
	c := newClient(t, srv)
	var rep struct {
		Total int `json:"total"`
	}
	if err := c.DoRaw(http.MethodPost, "/devices/import", "text/csv", strings.NewReader("serial\nA1\n"), &rep); err != nil {
		t.Fatal(err)
	}
	if seen.ContentType != "text/csv" || seen.Body != "serial\nA1\n" || rep.Total != 1 {
		t.Errorf("server saw %+v, decoded %+v", *seen, rep)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		want   APIError
	}{
		{"api error", 403, `{"status":403,"error":"forbidden","message":"token \"ci\" lacks scope \"devices:write\""}`,
			APIError{Status: 403, Code: "forbidden", Message: `token "ci" lacks scope "devices:write"`}},
		{"plain text", 502, "bad gateway\n", APIError{Status: 502, Message: "bad gateway"}},
		// The status of the response wins over a body that says otherwise.
		{"status from response", 404, `{"status":200,"error":"not_found","message":"no such device"}`,
			APIError{Status: 404, Code: "not_found", Message: "no such device"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := newServer(t, tt.status, tt.body)
			err := newClient(t, srv).Do(http.MethodGet, "/x", nil, nil)
			var apiErr *APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("err = %v (%T), want *APIError", err, err)
			}
			if *apiErr != tt.want {
				t.Errorf("APIError %+v, want %+v", *apiErr, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want.Message) || !strings.Contains(err.Error(), "HTTP "+strconv.Itoa(tt.want.Status)) {
				t.Errorf("Error() = %q", err.Error())
			}
		})
	}
}

func TestBadAnswerIsAnError(t *testing.T) {
	srv, _ := newServer(t, http.StatusOK, `{"id":`)
	var out map[string]any
	err := newClient(t, srv).Do(http.MethodGet, "/devices/x", nil, &out)
	if err == nil || !strings.Contains(err.Error(), "decode answer of GET /devices/x") {
		t.Fatalf("err = %v", err)
	}
}

// The client trusts the CA's root only: a server whose certificate does not
// chain to --root is refused even though it answers.
func TestRefusesServerNotSignedByRoot(t *testing.T) {
	srv, seen := newServer(t, http.StatusOK, `{}`)
	c, err := New(srv.URL, writePEM(t, otherRoot(t)), "sft_secret")
	if err != nil {
		t.Fatal(err)
	}
	err = c.Do(http.MethodGet, "/whoami", nil, nil)
	var uerr x509.UnknownAuthorityError
	if !errors.As(err, &uerr) {
		t.Fatalf("err = %v, want an unknown authority error", err)
	}
	if seen.Auth != "" {
		t.Error("the token was sent to an untrusted server")
	}
}

func TestNewRejects(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "root.der")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	good := writePEM(t, otherRoot(t))
	tests := []struct {
		name, url, root, token, want string
	}{
		{"no url", "", good, "t", "--ca-url: required"},
		{"plain http", "http://ca:9000", good, "t", "--ca-url: must start with https://"},
		{"no root", "https://ca:9000", "", "t", "--root: required"},
		{"no token", "https://ca:9000", good, "", "--token: required"},
		{"missing root file", "https://ca:9000", filepath.Join(dir, "missing.crt"), "t", "--root: open"},
		{"root without PEM", "https://ca:9000", notPEM, "t", "holds no PEM certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.url, tt.root, tt.token)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// otherRoot is a self-signed CA that signed nothing the tests serve.
func otherRoot(t *testing.T) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Other Root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
