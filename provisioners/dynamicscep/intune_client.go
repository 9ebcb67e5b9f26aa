package dynamicscep

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // x5t is the SHA-1 thumbprint by definition (RFC 7515)
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"go.step.sm/crypto/jose"
	"go.step.sm/crypto/pemutil"
)

// The Intune SCEP validation protocol (Microsoft's
// Intune-Resource-Access/src/CsrValidation libraries), reimplemented.
const (
	intuneAppID       = "0000000a-0000-0000-c000-000000000000"
	intuneScope       = "https://api.manage.microsoft.com//.default"
	graphScope        = "https://graph.microsoft.com/.default"
	intuneServiceName = "ScepRequestValidationFEService"
	intuneAPIVersion  = "2018-02-20"
	intuneValidate    = "ScepActions/validateRequest"
	intuneSuccess     = "ScepActions/successNotification"
	intuneFailure     = "ScepActions/failureNotification"
	// IntuneSuccess is the code of an accepted request or notification.
	IntuneSuccess = "Success"

	clientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
)

// Limits of the Intune client.
const (
	// intuneMaxResponse bounds every body read from Entra ID, Graph and
	// Intune; their answers are a few hundred bytes.
	intuneMaxResponse = 64 << 10
	// tokenRefreshMargin: a cached token is replaced this long before it
	// expires (or at half its lifetime if that is shorter), so no call
	// carries a token that expires in flight.
	tokenRefreshMargin = 5 * time.Minute
	// serviceURLTTL: the discovered Intune service URL is asked for again
	// after this long, and at once after a transport or HTTP error.
	serviceURLTTL = time.Hour
)

// Calls of the Intune client, the "call" label of
// stepfort_scep_intune_request_seconds.
const (
	callToken     = "token"
	callDiscovery = "discovery"
	callValidate  = "validateRequest"
	callSuccess   = "successNotification"
	callFailure   = "failureNotification"
)

// IntuneAnswer is Intune's answer to a validateRequest or notification.
type IntuneAnswer struct {
	Code        string `json:"code"`
	Description string `json:"errorDescription"`
}

// intuneCodeError is a non-Success answer: a refusal, not an outage.
type intuneCodeError struct{ IntuneAnswer }

func (e *intuneCodeError) Error() string {
	if e.Description == "" {
		return "Intune answered " + clip(e.Code)
	}
	return fmt.Sprintf("Intune answered %s: %s", clip(e.Code), clip(e.Description))
}

// ParseIntuneResponse decodes the JSON answer of a ScepActions call. A
// non-2xx status, a body that is not a JSON object or one without a code
// is an error; so is any code but Success (an *intuneCodeError).
func ParseIntuneResponse(status int, body []byte) (IntuneAnswer, error) {
	var a IntuneAnswer
	if err := json.Unmarshal(body, &a); err != nil || a.Code == "" {
		if status < 200 || status > 299 {
			return a, fmt.Errorf("Intune answered HTTP %d", status)
		}
		return a, errors.New("Intune answered something that is not {\"code\": ...}")
	}
	if status < 200 || status > 299 {
		return a, fmt.Errorf("Intune answered HTTP %d (%s)", status, clip(a.Code))
	}
	if a.Code != IntuneSuccess {
		return a, &intuneCodeError{a}
	}
	return a, nil
}

// tokenAnswer is the token endpoint's JSON (success and error shapes).
type tokenAnswer struct {
	AccessToken string          `json:"access_token"`
	TokenType   string          `json:"token_type"`
	ExpiresIn   json.RawMessage `json:"expires_in"` // a number (v2.0) or a string (v1.0)
	Error       string          `json:"error"`
	Description string          `json:"error_description"`
}

// parseTokenResponse decodes the token endpoint's answer.
func parseTokenResponse(status int, body []byte) (string, time.Duration, error) {
	var a tokenAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		return "", 0, fmt.Errorf("token endpoint answered HTTP %d, not JSON", status)
	}
	if status != http.StatusOK || a.Error != "" {
		// error_description carries AADSTS codes, never the secret.
		return "", 0, fmt.Errorf("token endpoint answered HTTP %d: %s: %s", status, clip(a.Error), clip(firstLine(a.Description)))
	}
	secs, err := strconv.ParseInt(strings.Trim(string(a.ExpiresIn), `"`), 10, 64)
	if err != nil || secs <= 0 || secs > 7*24*3600 {
		return "", 0, errors.New("token endpoint answered no usable expires_in")
	}
	if a.AccessToken == "" || !strings.EqualFold(a.TokenType, "Bearer") {
		return "", 0, errors.New("token endpoint answered no bearer access_token")
	}
	return a.AccessToken, time.Duration(secs) * time.Second, nil
}

// parseEndpoints picks the Intune SCEP validation service URL out of
// Graph's servicePrincipals/.../endpoints answer (providerName in
// Microsoft Graph, serviceName in the older AAD Graph).
func parseEndpoints(status int, body []byte) (string, error) {
	if status != http.StatusOK {
		return "", fmt.Errorf("Graph answered HTTP %d", status)
	}
	var a struct {
		Value []struct {
			ProviderName string `json:"providerName"`
			ServiceName  string `json:"serviceName"`
			URI          string `json:"uri"`
		} `json:"value"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return "", errors.New("Graph answered something that is not {\"value\": [...]}")
	}
	for _, e := range a.Value {
		if !strings.EqualFold(e.ProviderName, intuneServiceName) && !strings.EqualFold(e.ServiceName, intuneServiceName) {
			continue
		}
		u, err := url.Parse(e.URI)
		if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			return "", fmt.Errorf("Graph lists %s at %q, not an https URL", intuneServiceName, clip(e.URI))
		}
		return strings.TrimRight(u.String(), "/"), nil
	}
	return "", fmt.Errorf("Graph lists no %s endpoint", intuneServiceName)
}

func firstLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}

// cachedToken is an access token and when to stop using it.
type cachedToken struct {
	token string
	until time.Time
}

// intuneClient talks to Entra ID, Graph and Intune. It caches one token
// per scope until shortly before it expires and the discovered service
// URL for serviceURLTTL; a single fetch runs at a time, so concurrent
// validations share one token request.
type intuneClient struct {
	cfg      *IntuneConfig
	hc       *http.Client
	now      func() time.Time
	secret   string          // client secret, or
	key      *rsa.PrivateKey // the certificate's key for a client assertion
	x5t      string
	latency  *prometheus.HistogramVec
	fetching chan struct{}

	mu         sync.Mutex
	tokens     map[string]cachedToken
	serviceURL string
	serviceAt  time.Time
}

// newIntuneClient reads the credentials and the extra roots.
func newIntuneClient(cfg *IntuneConfig, now func() time.Time, latency *prometheus.HistogramVec) (*intuneClient, error) {
	c := &intuneClient{cfg: cfg, now: now, latency: latency, fetching: make(chan struct{}, 1), tokens: map[string]cachedToken{}}
	if err := c.loadCredentials(); err != nil {
		return nil, err
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.RootsFile != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		b, err := os.ReadFile(cfg.RootsFile)
		if err != nil {
			return nil, fmt.Errorf("intune.rootsFile: %w", err)
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, errors.New("intune.rootsFile: no PEM certificate in the file")
		}
		tc.RootCAs = pool
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	c.hc = &http.Client{
		Transport: tr,
		// Every URL is https on a configured or discovered host; a
		// redirect elsewhere is refused rather than followed.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c, nil
}

func (c *intuneClient) loadCredentials() error {
	if c.cfg.ClientSecretFile != "" {
		b, err := os.ReadFile(c.cfg.ClientSecretFile)
		if err != nil {
			return fmt.Errorf("intune.clientSecretFile: %w", err)
		}
		c.secret = strings.TrimSpace(string(b))
		if c.secret == "" {
			return errors.New("intune.clientSecretFile: file is empty")
		}
		return nil
	}
	cert, err := pemutil.ReadCertificate(c.cfg.ClientCertificateFile)
	if err != nil {
		return fmt.Errorf("intune.clientCertificateFile: %w", err)
	}
	k, err := pemutil.Read(c.cfg.ClientKeyFile)
	if err != nil {
		return fmt.Errorf("intune.clientKeyFile: %w", err)
	}
	key, ok := k.(*rsa.PrivateKey)
	if !ok {
		return errors.New("intune.clientKeyFile: must be an RSA private key (Entra ID signs client assertions with RS256)")
	}
	if pub, ok := cert.PublicKey.(*rsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		return errors.New("intune.clientKeyFile: is not the key of clientCertificateFile")
	}
	sum := sha1.Sum(cert.Raw) //nolint:gosec // see import
	c.key, c.x5t = key, base64.RawURLEncoding.EncodeToString(sum[:])
	return nil
}

// observe records one call's latency.
func (c *intuneClient) observe(call string, start time.Time, err error) {
	result := "success"
	var ce *intuneCodeError
	switch {
	case errors.As(err, &ce):
		result = "refused"
	case err != nil:
		result = "error"
	}
	c.latency.WithLabelValues(call, result).Observe(time.Since(start).Seconds())
}

// lock takes the single fetch slot, or gives up with ctx.
func (c *intuneClient) lock(ctx context.Context) error {
	select {
	case c.fetching <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *intuneClient) unlock() { <-c.fetching }

func (c *intuneClient) cached(scope string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.tokens[scope]
	return t.token, ok && c.now().Before(t.until)
}

// forget drops a token Intune or Graph refused, and the service URL after
// an outage (it may have moved).
func (c *intuneClient) forget(scope string, service bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if scope != "" {
		delete(c.tokens, scope)
	}
	if service {
		c.serviceURL = ""
	}
}

// token returns a cached or fresh access token for scope.
func (c *intuneClient) token(ctx context.Context, scope string) (string, error) {
	if t, ok := c.cached(scope); ok {
		return t, nil
	}
	if err := c.lock(ctx); err != nil {
		return "", err
	}
	defer c.unlock()
	if t, ok := c.cached(scope); ok { // fetched while we waited
		return t, nil
	}
	issued, start := c.now(), time.Now()
	t, life, err := c.fetchToken(ctx, scope)
	c.observe(callToken, start, err)
	if err != nil {
		return "", err
	}
	margin := min(tokenRefreshMargin, life/2)
	c.mu.Lock()
	c.tokens[scope] = cachedToken{token: t, until: issued.Add(life - margin)}
	c.mu.Unlock()
	return t, nil
}

// tokenURL is the tenant's OAuth 2.0 v2.0 token endpoint.
func (c *intuneClient) tokenURL() string {
	return "https://" + c.cfg.loginHost() + "/" + url.PathEscape(c.cfg.Tenant) + "/oauth2/v2.0/token"
}

// fetchToken asks Entra ID for a client-credentials token.
func (c *intuneClient) fetchToken(ctx context.Context, scope string) (string, time.Duration, error) {
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {c.cfg.ClientID}, "scope": {scope}}
	if c.secret != "" {
		form.Set("client_secret", c.secret)
	} else {
		a, err := c.assertion()
		if err != nil {
			return "", 0, err
		}
		form.Set("client_assertion_type", clientAssertionType)
		form.Set("client_assertion", a)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.tokenURL(), strings.NewReader(form.Encode()))
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("client-request-id", uuid.NewString())
	status, body, err := c.do(req)
	if err != nil {
		return "", 0, fmt.Errorf("token endpoint: %w", err)
	}
	return parseTokenResponse(status, body)
}

// assertion is the RS256 client assertion Entra ID accepts instead of a
// secret: iss and sub the app, aud the token endpoint, x5t the
// certificate's SHA-1 thumbprint, valid for 10 minutes.
func (c *intuneClient) assertion() (string, error) {
	opts := new(jose.SignerOptions).WithType("JWT").WithHeader("x5t", c.x5t)
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: c.key}, opts)
	if err != nil {
		return "", fmt.Errorf("client assertion: %w", err)
	}
	now := c.now()
	claims := jose.Claims{
		Issuer: c.cfg.ClientID, Subject: c.cfg.ClientID, Audience: jose.Audience{c.tokenURL()}, ID: uuid.NewString(),
		NotBefore: jose.NewNumericDate(now), IssuedAt: jose.NewNumericDate(now), Expiry: jose.NewNumericDate(now.Add(10 * time.Minute)),
	}
	return jose.Signed(s).Claims(claims).CompactSerialize()
}

// do sends req and reads a bounded body.
func (c *intuneClient) do(req *http.Request) (int, []byte, error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, intuneMaxResponse+1))
	if err != nil {
		return 0, nil, err
	}
	if len(body) > intuneMaxResponse {
		return 0, nil, fmt.Errorf("answer larger than %d bytes", intuneMaxResponse)
	}
	return resp.StatusCode, body, nil
}

// service returns the cached or discovered Intune validation service URL.
func (c *intuneClient) service(ctx context.Context) (string, error) {
	c.mu.Lock()
	u, at := c.serviceURL, c.serviceAt
	c.mu.Unlock()
	if u != "" && c.now().Sub(at) < serviceURLTTL {
		return u, nil
	}
	tok, err := c.token(ctx, graphScope)
	if err != nil {
		return "", err
	}
	start := time.Now()
	u, err = c.discover(ctx, tok)
	c.observe(callDiscovery, start, err)
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	c.serviceURL, c.serviceAt = u, c.now()
	c.mu.Unlock()
	return u, nil
}

// discover asks Microsoft Graph where the tenant's Intune SCEP validation
// service is.
func (c *intuneClient) discover(ctx context.Context, tok string) (string, error) {
	u := "https://" + c.cfg.graphHost() + "/v1.0/servicePrincipals/appId=" + intuneAppID + "/endpoints"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("client-request-id", uuid.NewString())
	status, body, err := c.do(req)
	if err != nil {
		return "", fmt.Errorf("Graph service discovery: %w", err)
	}
	if status == http.StatusUnauthorized {
		c.forget(graphScope, false)
	}
	return parseEndpoints(status, body)
}

// post sends one ScepActions call and decodes Intune's answer; an error
// is an outage, an *intuneCodeError a refusal.
func (c *intuneClient) post(ctx context.Context, call, action string, body any) (err error) {
	start := time.Now()
	defer func() { c.observe(call, start, err) }()
	svc, err := c.service(ctx)
	if err != nil {
		return err
	}
	tok, err := c.token(ctx, intuneScope)
	if err != nil {
		return err
	}
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, svc+"/"+action, bytes.NewReader(b))
	if err != nil {
		return err
	}
	reqID := uuid.NewString()
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("client-request-id", reqID)
	req.Header.Set("api-version", intuneAPIVersion)
	req.Header.Set("UserAgent", c.cfg.callerInfo()) // the header Microsoft's libraries send
	req.Header.Set("User-Agent", c.cfg.callerInfo())
	status, rb, err := c.do(req)
	if err != nil {
		c.forget("", true)
		return fmt.Errorf("Intune %s (client-request-id %s): %w", call, reqID, err)
	}
	switch {
	case status == http.StatusUnauthorized:
		c.forget(intuneScope, false)
	case status >= 500 || status == http.StatusNotFound:
		c.forget("", true)
	}
	_, err = ParseIntuneResponse(status, rb)
	var ce *intuneCodeError
	if err != nil && !errors.As(err, &ce) {
		err = fmt.Errorf("Intune %s (client-request-id %s): %w", call, reqID, err)
	}
	return err
}

func sha1Sum(b []byte) [20]byte { return sha1.Sum(b) } //nolint:gosec // a thumbprint, not a signature
