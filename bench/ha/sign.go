package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/stepfort/stepfort/bench/internal/signload"
)

const provisionerName = "admin"

// loadResult is the outcome of a batch of requests (sign or OCSP).
type loadResult = signload.Result

// revoke revokes serial through the server at url (passive, OTT).
func revoke(ctx context.Context, client *http.Client, sig *signload.Signer, url, serial string, reasonCode int) error {
	body, err := sig.RevokeBody(url, serial, reasonCode)
	if err != nil {
		return err
	}
	b, status, err := postJSON(ctx, client, url+"/1.0/revoke", body)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("revoke %s: %d: %s", serial, status, bytes.TrimSpace(b))
	}
	return nil
}

func postJSON(ctx context.Context, client *http.Client, url string, body []byte) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return b, resp.StatusCode, err
}

func parsePEMCert(b []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}
