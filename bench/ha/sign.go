package main

import (
	"bytes"
	"context"
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

	"github.com/stepfort/stepfort/bench/internal/signload"
)

const provisionerName = "admin"

// loadResult is the outcome of a batch of requests.
type loadResult struct {
	ok, failed int
	errs       []string
	latencies  []time.Duration // successful requests, sorted
	elapsed    time.Duration
}

func (r *loadResult) perSecond() float64 { return float64(r.ok) / r.elapsed.Seconds() }

func (r *loadResult) percentile(p float64) time.Duration { return percentile(r.latencies, p) }

// percentile returns the p-th percentile (nearest rank) of sorted d.
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := int(p/100*float64(len(d))+0.5) - 1
	return d[min(max(i, 0), len(d)-1)]
}

func (r *loadResult) addErr(mu *sync.Mutex, err error) {
	mu.Lock()
	defer mu.Unlock()
	if len(r.errs) < 5 && !slices.Contains(r.errs, err.Error()) {
		r.errs = append(r.errs, err.Error())
	}
}

// sendSigns posts bodies[i] to urls[i]+"/1.0/sign" from workers goroutines
// and checks each answer is the certificate for csrs[i]. Certificates are
// returned in order (nil where the request failed).
func sendSigns(ctx context.Context, client *http.Client, urls []string, bodies [][]byte, csrs []signload.CSR, workers int) (*loadResult, []*x509.Certificate) {
	res := &loadResult{}
	lat := make([]time.Duration, len(bodies))
	certs := make([]*x509.Certificate, len(bodies))
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
				if i >= len(bodies) || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				crt, err := signOne(ctx, client, urls[i], bodies[i], csrs[i].CN)
				lat[i] = time.Since(t0)
				if err != nil {
					res.addErr(&mu, err)
					continue
				}
				certs[i] = crt
			}
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	for i, c := range certs {
		if c != nil {
			res.ok++
			res.latencies = append(res.latencies, lat[i])
		} else {
			res.failed++
		}
	}
	sort.Slice(res.latencies, func(a, b int) bool { return res.latencies[a] < res.latencies[b] })
	return res, certs
}

func signOne(ctx context.Context, client *http.Client, url string, body []byte, cn string) (*x509.Certificate, error) {
	b, status, err := postJSON(ctx, client, url+"/1.0/sign", body)
	if err != nil {
		return nil, err
	}
	if status != http.StatusCreated {
		return nil, fmt.Errorf("sign: %d: %s", status, bytes.TrimSpace(b))
	}
	var out struct {
		Crt string `json:"crt"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("decode sign response: %w", err)
	}
	crt, err := parsePEMCert([]byte(out.Crt))
	if err != nil {
		return nil, err
	}
	if crt.Subject.CommonName != cn {
		return nil, fmt.Errorf("certificate for %q, want %q", crt.Subject.CommonName, cn)
	}
	return crt, nil
}

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
