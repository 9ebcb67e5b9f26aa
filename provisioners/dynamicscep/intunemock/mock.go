// Package intunemock is a stand-in for Entra ID, Microsoft Graph and
// Intune's SCEP validation service on one loopback TLS server, for the
// dynamicScep tests, the end-to-end tests and bench/scep. It writes the
// wire protocol's values out itself instead of borrowing the client's, so a
// client that drifts from the protocol fails against it.
package intunemock

import (
	"crypto/rsa"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/smallstep/scep/x509util"
	"go.step.sm/crypto/jose"
)

// The protocol's values (Microsoft's Intune-Resource-Access CsrValidation
// libraries).
const (
	intuneAppID         = "0000000a-0000-0000-c000-000000000000"
	intuneScope         = "https://api.manage.microsoft.com//.default"
	graphScope          = "https://graph.microsoft.com/.default"
	intuneServiceName   = "ScepRequestValidationFEService"
	intuneAPIVersion    = "2018-02-20"
	clientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	// Success is the code of an accepted request or notification.
	Success = "Success"
)

// Mock is a stand-in for Entra ID, Microsoft Graph and Intune's SCEP
// validation service on one loopback TLS server, speaking their wire
// format: the tests and bench/scep point loginHost and graphHost at it. It
// answers validateRequest with Answers[challengePassword of the CSR]
// (ChallengeDecryptionError for an unknown one) and records every call.
type Mock struct {
	Server   *httptest.Server
	Tenant   string
	ClientID string
	Secret   string         // accepted client secret, or
	CertKey  *rsa.PublicKey // the key of accepted client assertions
	Answers  map[string]string
	Delay    time.Duration // before every Intune answer
	TokenTTL int           // expires_in of issued tokens (default 3599)

	mu    sync.Mutex
	calls []Call
	down  bool
}

// Call is one request the mock received.
type Call struct {
	Path    string
	Header  http.Header
	Form    url.Values     // token requests
	Body    map[string]any // ScepActions requests: the "request" or "notification" object
	Outcome string         // the code or error answered
}

const (
	mockGraphToken  = "mock-graph-token"
	mockIntuneToken = "mock-intune-token"
)

// New starts a mock for tenant and client id.
func New(tenant, clientID string) *Mock {
	m := &Mock{Tenant: tenant, ClientID: clientID, Answers: map[string]string{}}
	m.Server = httptest.NewTLSServer(http.HandlerFunc(m.serve))
	return m
}

// Host is the host:port to configure as loginHost and graphHost.
func (m *Mock) Host() string { return strings.TrimPrefix(m.Server.URL, "https://") }

// RootsPEM is the mock's certificate, to trust through rootsFile.
func (m *Mock) RootsPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.Server.Certificate().Raw})
}

// SetDown makes every endpoint answer 503 (down=true) or serve again.
func (m *Mock) SetDown(down bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.down = down
}

// Calls returns the requests received so far whose path ends with suffix.
func (m *Mock) Calls(suffix string) []Call {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Call
	for _, c := range m.calls {
		if strings.HasSuffix(c.Path, suffix) {
			out = append(out, c)
		}
	}
	return out
}

func (m *Mock) record(c Call) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, c)
}

func (m *Mock) serve(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	down := m.down
	m.mu.Unlock()
	if down {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/"+m.Tenant+"/oauth2/v2.0/token":
		m.token(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/v1.0/servicePrincipals/appId="+intuneAppID+"/endpoints":
		m.endpoints(w, r)
	case r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/"+intuneServiceName+"/ScepActions/"):
		m.action(w, r)
	default:
		http.NotFound(w, r)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// token is Entra ID's v2.0 token endpoint for client credentials.
func (m *Mock) token(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	call := Call{Path: r.URL.Path, Header: r.Header.Clone(), Form: r.PostForm}
	fail := func(code, desc string) {
		call.Outcome = code
		m.record(call)
		writeJSON(w, http.StatusUnauthorized, map[string]any{"error": code, "error_description": desc, "error_codes": []int{7000215}})
	}
	f := r.PostForm
	switch {
	case !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded"):
		fail("invalid_request", "AADSTS900144: form body required")
		return
	case f.Get("grant_type") != "client_credentials" || f.Get("client_id") != m.ClientID:
		fail("invalid_request", "AADSTS900144: bad grant_type or client_id")
		return
	case !m.clientAuthenticated(r, f):
		fail("invalid_client", "AADSTS7000215: Invalid client secret provided.")
		return
	}
	tok := map[string]string{graphScope: mockGraphToken, intuneScope: mockIntuneToken}[f.Get("scope")]
	if tok == "" {
		fail("invalid_scope", "AADSTS1002012: unknown scope")
		return
	}
	ttl := m.TokenTTL
	if ttl == 0 {
		ttl = 3599
	}
	call.Outcome = "issued"
	m.record(call)
	writeJSON(w, http.StatusOK, map[string]any{"token_type": "Bearer", "expires_in": ttl, "ext_expires_in": ttl, "access_token": tok})
}

// clientAuthenticated checks the client secret or the RS256 client
// assertion (audience the token endpoint, issuer and subject the client).
func (m *Mock) clientAuthenticated(r *http.Request, f url.Values) bool {
	if m.Secret != "" && subtle.ConstantTimeCompare([]byte(f.Get("client_secret")), []byte(m.Secret)) == 1 {
		return true
	}
	if m.CertKey == nil || f.Get("client_assertion_type") != clientAssertionType {
		return false
	}
	tok, err := jose.ParseSigned(f.Get("client_assertion"))
	if err != nil || len(tok.Headers) != 1 || tok.Headers[0].Algorithm != jose.RS256 || tok.Headers[0].ExtraHeaders["x5t"] == nil {
		return false
	}
	var c jose.Claims
	if err := tok.Claims(m.CertKey, &c); err != nil {
		return false
	}
	aud := "https://" + r.Host + r.URL.Path
	return c.Issuer == m.ClientID && c.Subject == m.ClientID && c.ID != "" &&
		c.ValidateWithLeeway(jose.Expected{Audience: jose.Audience{aud}, Time: time.Now()}, time.Minute) == nil
}

// endpoints is Graph's servicePrincipals/appId=.../endpoints.
func (m *Mock) endpoints(w http.ResponseWriter, r *http.Request) {
	call := Call{Path: r.URL.Path, Header: r.Header.Clone()}
	if r.Header.Get("Authorization") != "Bearer "+mockGraphToken || r.Header.Get("client-request-id") == "" {
		call.Outcome = "401"
		m.record(call)
		writeJSON(w, http.StatusUnauthorized, map[string]any{"error": map[string]any{"code": "InvalidAuthenticationToken", "message": "Access token is empty."}})
		return
	}
	call.Outcome = "listed"
	m.record(call)
	writeJSON(w, http.StatusOK, map[string]any{
		"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#servicePrincipals('appId%3D" + intuneAppID + "')/endpoints",
		"value": []map[string]any{
			{"id": "1", "capability": "PkiConnectorFEService", "providerId": nil, "providerName": "PkiConnectorFEService", "providerResourceId": nil, "uri": m.Server.URL + "/PkiConnectorFEService"},
			{"id": "2", "capability": intuneServiceName, "providerId": nil, "providerName": intuneServiceName, "providerResourceId": nil, "uri": m.Server.URL + "/" + intuneServiceName},
		},
	})
}

// action is ScepActions/validateRequest, successNotification and
// failureNotification.
func (m *Mock) action(w http.ResponseWriter, r *http.Request) {
	call := Call{Path: r.URL.Path, Header: r.Header.Clone()}
	var body map[string]map[string]any
	b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	err := json.Unmarshal(b, &body)
	answer := func(status int, code string) {
		call.Outcome = code
		m.record(call)
		if m.Delay > 0 {
			time.Sleep(m.Delay)
		}
		writeJSON(w, status, map[string]any{"code": code, "errorDescription": "mock: " + code})
	}
	h := r.Header
	switch {
	case h.Get("Authorization") != "Bearer "+mockIntuneToken:
		answer(http.StatusUnauthorized, "Unauthorized")
		return
	case h.Get("api-version") != intuneAPIVersion || h.Get("client-request-id") == "" || !strings.HasPrefix(h.Get("Content-Type"), "application/json"):
		answer(http.StatusBadRequest, "BadRequest")
		return
	case err != nil:
		answer(http.StatusBadRequest, "BadRequest")
		return
	}
	action := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
	obj := body["notification"]
	if action == "validateRequest" {
		obj = body["request"]
	}
	call.Body = obj
	if obj == nil {
		answer(http.StatusBadRequest, "BadRequest")
		return
	}
	if action != "validateRequest" {
		answer(http.StatusOK, Success)
		return
	}
	answer(http.StatusOK, m.validateAnswer(obj))
}

// validateAnswer decides a validateRequest by the CSR's challengePassword.
func (m *Mock) validateAnswer(req map[string]any) string {
	s, _ := req["certificateRequest"].(string)
	der, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return "CertificateRequestDecodingFailed"
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return "CertificateRequestDecodingFailed"
	}
	pw, err := x509util.ParseChallengePassword(csr.Raw)
	if err != nil || pw == "" {
		return "ChallengePasswordMissing"
	}
	if code, ok := m.Answers[pw]; ok {
		return code
	}
	return "ChallengeDecryptionError"
}
