// Package signload is the /1.0/sign load the benchmarks share: pre-built
// CSRs, JWK one-time tokens made as `step ca token` makes them, a keep-alive
// client, and a worker pool that checks every answer.
package signload

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smallstep/cli-utils/token"
	"github.com/smallstep/cli-utils/token/provision"
	"go.step.sm/crypto/jose"
	"go.step.sm/crypto/randutil"
	"go.step.sm/crypto/x509util"
)

// CSR is a pre-built certificate request for common name CN.
type CSR struct {
	CN  string
	PEM string
}

// MakeCSRs returns n P-256 certificate requests for distinct names.
func MakeCSRs(n int) ([]CSR, error) { return MakeNamedCSRs("bench", n) }

// MakeNamedCSRs is MakeCSRs with names <prefix>-NNNNNN.stepfort.test.
func MakeNamedCSRs(prefix string, n int) ([]CSR, error) {
	out := make([]CSR, n)
	for i := range out {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		cn := fmt.Sprintf("%s-%06d.stepfort.test", prefix, i)
		cr, err := x509util.CreateCertificateRequest(cn, []string{cn}, key)
		if err != nil {
			return nil, fmt.Errorf("create CSR: %w", err)
		}
		out[i] = CSR{CN: cn, PEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: cr.Raw}))}
	}
	return out, nil
}

// Signer makes JWK one-time tokens for a provisioner, as `step ca token`
// does.
type Signer struct {
	name string
	key  *jose.JSONWebKey
}

// NewSigner decrypts the encryptedKey of the JWK provisioner called name in
// ca.json with the CA password.
func NewSigner(cfg map[string]any, name, password string) (*Signer, error) {
	auth, _ := cfg["authority"].(map[string]any)
	provs, _ := auth["provisioners"].([]any)
	for _, p := range provs {
		m, _ := p.(map[string]any)
		if m["type"] != "JWK" || m["name"] != name {
			continue
		}
		enc, _ := m["encryptedKey"].(string)
		b, err := jose.Decrypt([]byte(enc), jose.WithPassword([]byte(password)))
		if err != nil {
			return nil, fmt.Errorf("decrypt key of provisioner %s: %w", name, err)
		}
		var key jose.JSONWebKey
		if err := json.Unmarshal(b, &key); err != nil {
			return nil, fmt.Errorf("parse key of provisioner %s: %w", name, err)
		}
		return &Signer{name: name, key: &key}, nil
	}
	return nil, fmt.Errorf("ca.json has no JWK provisioner named %q", name)
}

// Bodies returns one /1.0/sign request body per CSR, each with a fresh
// token for audience aud. Tokens are issued now: upstream refuses tokens
// issued before the authority started.
func (s *Signer) Bodies(aud string, csrs []CSR) ([][]byte, error) {
	out := make([][]byte, len(csrs))
	for i, c := range csrs {
		ott, err := s.Token(c.CN, aud, []string{c.CN})
		if err != nil {
			return nil, err
		}
		if out[i], err = json.Marshal(map[string]string{"csr": c.PEM, "ott": ott}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Token returns a one-time token for subject and audience aud, with sans
// (nil for none, as for revocation).
func (s *Signer) Token(subject, aud string, sans []string) (string, error) {
	now := time.Now()
	jti, err := randutil.Hex(64)
	if err != nil {
		return "", err
	}
	opts := []token.Options{token.WithJWTID(jti), token.WithKid(s.key.KeyID), token.WithIssuer(s.name),
		token.WithAudience(aud), token.WithValidity(now, now.Add(token.MaxValidity))}
	if sans != nil {
		opts = append(opts, token.WithSANS(sans))
	}
	tok, err := provision.New(subject, opts...)
	if err != nil {
		return "", err
	}
	ott, err := tok.SignedString(s.key.Algorithm, s.key.Key)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return ott, nil
}

// SignBody returns a /1.0/sign body for c with a token for server base url.
func (s *Signer) SignBody(url string, c CSR) ([]byte, error) {
	b, err := s.Bodies(url+"/1.0/sign", []CSR{c})
	if err != nil {
		return nil, err
	}
	return b[0], nil
}

// RevokeBody returns a passive /1.0/revoke body for serial (decimal).
func (s *Signer) RevokeBody(url, serial string, reasonCode int) ([]byte, error) {
	ott, err := s.Token(serial, url+"/1.0/revoke", nil)
	if err != nil {
		return nil, err
	}
	return json.Marshal(map[string]any{"serial": serial, "ott": ott, "reasonCode": reasonCode, "reason": "bench", "passive": true})
}

// NewClient returns an HTTP/1.1 client trusting roots that keeps one
// connection per worker alive.
func NewClient(roots *x509.CertPool, workers int) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		MaxIdleConns:        workers,
		MaxIdleConnsPerHost: workers,
		IdleConnTimeout:     time.Minute,
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{}, // no HTTP/2
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// Result is the outcome of sending a batch of sign requests.
type Result struct {
	OK        int
	Failed    int
	Errs      []string        // the first few distinct failures
	Latencies []time.Duration // of successful requests, sorted
	Elapsed   time.Duration
}

// PerSecond is successful requests per second.
func (r *Result) PerSecond() float64 { return float64(r.OK) / r.Elapsed.Seconds() }

// Percentile returns the p-th percentile (nearest rank) of the latencies.
func (r *Result) Percentile(p float64) time.Duration { return Percentile(r.Latencies, p) }

// Percentile returns the p-th percentile (nearest rank) of sorted d.
func Percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := int(p/100*float64(len(d))+0.5) - 1
	return d[min(max(i, 0), len(d)-1)]
}

// AddErr records err among the first few distinct failures.
func (r *Result) AddErr(mu *sync.Mutex, err error) {
	mu.Lock()
	defer mu.Unlock()
	if len(r.Errs) < 5 && !slices.Contains(r.Errs, err.Error()) {
		r.Errs = append(r.Errs, err.Error())
	}
}

// SendAll posts every body to url+"/1.0/sign" from workers goroutines and
// checks that each answer is a 201 with the certificate for csrs[i].
func SendAll(ctx context.Context, client *http.Client, url string, bodies [][]byte, csrs []CSR, workers int) *Result {
	urls := make([]string, len(bodies))
	for i := range urls {
		urls[i] = url
	}
	res, _ := Send(ctx, client, urls, bodies, csrs, workers)
	return res
}

// Send posts bodies[i] to urls[i]+"/1.0/sign" from workers goroutines,
// checks each answer is a 201 with the certificate for csrs[i], and returns
// the certificates in order (nil where the request failed).
func Send(ctx context.Context, client *http.Client, urls []string, bodies [][]byte, csrs []CSR, workers int) (*Result, []*x509.Certificate) {
	certs := make([]*x509.Certificate, len(bodies))
	res := Load(ctx, len(bodies), workers, func(i int) error {
		crt, err := SignOne(ctx, client, urls[i], bodies[i], csrs[i].CN)
		certs[i] = crt
		return err
	})
	return res, certs
}

// Load runs f(0..n-1) from workers goroutines, timing each call; a call
// that returns an error counts as failed. Latencies come back sorted.
func Load(ctx context.Context, n, workers int, f func(i int) error) *Result {
	res := &Result{}
	lat := make([]time.Duration, n)
	ok := make([]bool, n)
	var next atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				err := f(i)
				lat[i] = time.Since(t0)
				if err != nil {
					res.AddErr(&mu, err)
					continue
				}
				ok[i] = true
			}
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	for i := range n {
		if ok[i] {
			res.OK++
			res.Latencies = append(res.Latencies, lat[i])
		} else {
			res.Failed++
		}
	}
	sort.Slice(res.Latencies, func(a, b int) bool { return res.Latencies[a] < res.Latencies[b] })
	return res
}

// SignOne sends one sign request, verifies the answer and returns the
// certificate.
func SignOne(ctx context.Context, client *http.Client, url string, body []byte, cn string) (*x509.Certificate, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/1.0/sign", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusCreated {
		return nil, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
	}
	var out struct {
		Crt string `json:"crt"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("decode response: %w", err)
	}
	block, _ := pem.Decode([]byte(out.Crt))
	if block == nil {
		return nil, errors.New("response has no PEM certificate")
	}
	crt, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	if crt.Subject.CommonName != cn {
		return nil, fmt.Errorf("certificate for %q, want %q", crt.Subject.CommonName, cn)
	}
	return crt, nil
}
