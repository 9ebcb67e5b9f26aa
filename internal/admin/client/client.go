// Package client is the HTTP client the admin CLI commands use to call
// the admin API. It trusts only the CA's root, never the system pool.
package client

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// Client calls /api/v1 on one CA.
type Client struct {
	baseURL string
	token   string
	http    *http.Client
}

// New builds a client. rootFile is the CA root (PEM); token is the admin
// bearer token.
func New(caURL, rootFile, token string) (*Client, error) {
	if caURL == "" {
		return nil, errors.New("--ca-url: required (or set STEPFORT_CA_URL)")
	}
	if !strings.HasPrefix(caURL, "https://") {
		return nil, fmt.Errorf("--ca-url: must start with https://, got %q", caURL)
	}
	if rootFile == "" {
		return nil, errors.New("--root: required (or set STEPFORT_ROOT)")
	}
	if token == "" {
		return nil, errors.New("--token: required (or set STEPFORT_TOKEN, or --token-file)")
	}
	pemBytes, err := os.ReadFile(rootFile)
	if err != nil {
		return nil, fmt.Errorf("--root: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("--root: %s holds no PEM certificate", rootFile)
	}
	return &Client{
		baseURL: strings.TrimRight(caURL, "/") + "/api/v1",
		token:   token,
		http: &http.Client{
			Timeout:   60 * time.Second,
			Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
		},
	}, nil
}

// APIError is an error answer from the admin API (admin.Error on the
// wire), or any other answer of status 400 or more, whose body becomes the
// Message.
type APIError struct {
	Status  int    `json:"status"`
	Code    string `json:"error"`
	Message string `json:"message"`
}

// Error implements error: the message and the HTTP status.
func (e *APIError) Error() string {
	return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status)
}

// Do sends a JSON request and decodes a JSON answer into out (if non-nil).
func (c *Client) Do(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	return c.DoRaw(method, path, "application/json", body, out)
}

// DoRaw sends a body of any content type (CSV imports) and decodes JSON.
func (c *Client) DoRaw(method, path, contentType string, body io.Reader, out any) error {
	req, err := http.NewRequest(method, c.baseURL+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 400 {
		apiErr := &APIError{}
		if json.Unmarshal(data, apiErr) != nil || apiErr.Message == "" {
			apiErr.Message = strings.TrimSpace(string(data))
		}
		// The response's status is the truth; a body (from a proxy, say)
		// may claim another.
		apiErr.Status = resp.StatusCode
		return apiErr
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decode answer of %s %s: %w", method, path, err)
		}
	}
	return nil
}

// Stream GETs path and copies the answer to w as it arrives: for exports
// larger than Do would hold, with no overall timeout (only for the
// answer's headers).
func (c *Client) Stream(path string, w io.Writer) error {
	req, err := http.NewRequest(http.MethodGet, c.baseURL+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	hc := *c.http
	hc.Timeout = 0
	if t, ok := c.http.Transport.(*http.Transport); ok {
		t = t.Clone()
		t.ResponseHeaderTimeout = 60 * time.Second
		hc.Transport = t
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 400 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		apiErr := &APIError{}
		if json.Unmarshal(data, apiErr) != nil || apiErr.Message == "" {
			apiErr.Message = strings.TrimSpace(string(data))
		}
		apiErr.Status = resp.StatusCode
		return apiErr
	}
	_, err = io.Copy(w, resp.Body)
	return err
}
