package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.step.sm/crypto/pemutil"
	"golang.org/x/crypto/ocsp"

	"github.com/stepfort/stepfort/internal/testenv"
)

// ocspTarget is one certificate the load asks about, with the status it
// must get.
type ocspTarget struct {
	cert      *x509.Certificate // only SerialNumber for unknown serials
	want      int               // ocsp.Good, ocsp.Revoked, ocsp.Unknown
	revokedAt time.Time
	reason    int
}

// ocspReq is one pre-built HTTP request (POST body or GET path).
type ocspReq struct {
	target int
	get    bool
	der    []byte
	path   string // GET: url-escaped std base64
}

// buildOCSPRequests makes one POST and one GET request per target (SHA-1
// CertIDs, what RFC 5019 clients and openssl send by default), interleaved
// so that the mix is even across good, revoked, unknown, GET and POST.
func buildOCSPRequests(targets []ocspTarget, issuer *x509.Certificate) ([]ocspReq, error) {
	var out []ocspReq
	for i, t := range targets {
		der, err := ocsp.CreateRequest(t.cert, issuer, &ocsp.RequestOptions{Hash: crypto.SHA1})
		if err != nil {
			return nil, err
		}
		path := url.PathEscape(base64.StdEncoding.EncodeToString(der))
		// PathEscape leaves "+" and "=" alone; escape them as clients do.
		path = strings.NewReplacer("+", "%2B", "=", "%3D").Replace(path)
		out = append(out, ocspReq{target: i, der: der}, ocspReq{target: i, get: true, path: path})
	}
	return out, nil
}

// ocspClient is a keep-alive (or not) HTTP/1.1 client for workers workers.
func ocspClient(workers int, keepAlive bool) *http.Client {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        workers,
		MaxIdleConnsPerHost: workers,
		IdleConnTimeout:     time.Minute,
		DisableKeepAlives:   !keepAlive,
		DisableCompression:  true,
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// doOCSP sends one request; base is the responder URL without a trailing
// slash ("http://host:port/ocsp" or "http://host:port").
func doOCSP(ctx context.Context, client *http.Client, base string, r *ocspReq) ([]byte, error) {
	var req *http.Request
	var err error
	if r.get {
		req, err = http.NewRequestWithContext(ctx, http.MethodGet, base+"/"+r.path, nil)
	} else {
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, base, bytes.NewReader(r.der))
		if err == nil {
			req.Header.Set("Content-Type", "application/ocsp-request")
		}
	}
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: HTTP %s", map[bool]string{true: "GET", false: "POST"}[r.get], resp.Status)
	}
	// Unsigned error responses (malformedRequest, tryLater, ...) are 5 bytes.
	if len(b) <= 5 {
		return nil, fmt.Errorf("OCSP error response %x", b)
	}
	return b, nil
}

// checkOCSP sends every request once and verifies the signed status,
// revocation time and reason against the target.
func checkOCSP(ctx context.Context, client *http.Client, base string, reqs []ocspReq, targets []ocspTarget, issuer *x509.Certificate) error {
	for i := range reqs {
		r := &reqs[i]
		t := targets[r.target]
		b, err := doOCSP(ctx, client, base, r)
		if err != nil {
			return fmt.Errorf("serial %s: %w", t.cert.SerialNumber, err)
		}
		resp, err := ocsp.ParseResponse(b, issuer)
		if err != nil {
			return fmt.Errorf("serial %s: parse/verify response: %w", t.cert.SerialNumber, err)
		}
		if resp.SerialNumber.Cmp(t.cert.SerialNumber) != 0 {
			return fmt.Errorf("serial %s: response for serial %s", t.cert.SerialNumber, resp.SerialNumber)
		}
		if resp.Status != t.want {
			return fmt.Errorf("serial %s (GET %v): status %d, want %d", t.cert.SerialNumber, r.get, resp.Status, t.want)
		}
		if t.want == ocsp.Revoked && resp.RevocationReason != t.reason {
			return fmt.Errorf("serial %s: reason %d, want %d", t.cert.SerialNumber, resp.RevocationReason, t.reason)
		}
	}
	return nil
}

// ocspLoad sends the requests round-robin through net/http's client from
// workers goroutines for d.
func ocspLoad(ctx context.Context, client *http.Client, base string, reqs []ocspReq, workers int, d time.Duration) *loadResult {
	return timedLoad(ctx, workers, d, func() (func(i int64) error, func()) {
		return func(i int64) error {
			_, err := doOCSP(ctx, client, base, &reqs[int(i)%len(reqs)])
			return err
		}, func() {}
	})
}

// timedLoad runs workers goroutines for d; each gets its own step function
// from newWorker (with its connection state) and calls it with a shared
// request counter until the time is up. It returns the successful
// requests' latencies, sorted, and the failures.
func timedLoad(ctx context.Context, workers int, d time.Duration, newWorker func() (step func(i int64) error, done func())) *loadResult {
	res := &loadResult{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var next, failed atomic.Int64
	lats := make([][]time.Duration, workers)
	start := time.Now()
	deadline := start.Add(d)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			step, done := newWorker()
			defer done()
			l := make([]time.Duration, 0, 1<<16)
			for ctx.Err() == nil {
				t0 := time.Now()
				if t0.After(deadline) {
					break
				}
				if err := step(next.Add(1) - 1); err != nil {
					failed.Add(1)
					res.AddErr(&mu, err)
					continue
				}
				l = append(l, time.Since(t0))
			}
			lats[w] = l
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	for _, l := range lats {
		res.Latencies = append(res.Latencies, l...)
	}
	res.OK, res.Failed = len(res.Latencies), int(failed.Load())
	sort.Slice(res.Latencies, func(a, b int) bool { return res.Latencies[a] < res.Latencies[b] })
	return res
}

// opensslIndex writes an `openssl ca` index.txt for the targets (unknown
// serials are left out, so openssl answers unknown for them).
func opensslIndex(path string, targets []ocspTarget) error {
	var b strings.Builder
	ts := func(t time.Time) string { return t.UTC().Format("060102150405Z") }
	reasons := []string{"unspecified", "keyCompromise", "CACompromise", "affiliationChanged", "superseded", "cessationOfOperation", "certificateHold", "", "removeFromCRL"}
	for _, t := range targets {
		if t.want == ocsp.Unknown {
			continue
		}
		status, rev := "V", ""
		if t.want == ocsp.Revoked {
			status, rev = "R", ts(t.revokedAt)
			if t.reason > 0 && t.reason < len(reasons) && reasons[t.reason] != "" {
				rev += "," + reasons[t.reason]
			}
		}
		serial := strings.ToUpper(t.cert.SerialNumber.Text(16))
		if len(serial)%2 == 1 {
			serial = "0" + serial
		}
		fmt.Fprintf(&b, "%s\t%s\t%s\t%s\tunknown\t/CN=%s\n", status, ts(t.cert.NotAfter), rev, serial, t.cert.Subject.CommonName)
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

// plainKey decrypts the intermediate key with the CA password and writes it
// unencrypted for openssl.
func plainKey(encrypted, password, out string) error {
	key, err := pemutil.Read(encrypted, pemutil.WithPassword([]byte(password)))
	if err != nil {
		return fmt.Errorf("decrypt %s: %w", encrypted, err)
	}
	block, err := pemutil.Serialize(key)
	if err != nil {
		return err
	}
	return os.WriteFile(out, pem.EncodeToMemory(block), 0o600)
}

// startOpenSSLResponder runs `openssl ocsp -index` on a free loopback port,
// signing with the intermediate's key (multi > 1 adds -multi).
func startOpenSSLResponder(dir, index, interCrt, interKey string, multi int, probe *ocspReq) (*testenv.Process, string, error) {
	port, err := testenv.FreePort()
	if err != nil {
		return nil, "", err
	}
	args := []string{"ocsp", "-index", index, "-port", fmt.Sprint(port),
		"-rsigner", interCrt, "-rkey", interKey, "-CA", interCrt, "-nmin", "1440", "-ignore_err", "-resp_no_certs"}
	if multi > 1 {
		args = append(args, "-multi", fmt.Sprint(multi))
	}
	p, err := testenv.NewProcess(filepath.Join(dir, fmt.Sprintf("openssl-ocsp-%d.log", multi)), "openssl", args, nil)
	if err != nil {
		return nil, "", err
	}
	// Wait with real requests: a bare TCP connect-and-close (testenv.WaitTCP)
	// wedges OpenSSL 3.0's responder, which then never reads another request.
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	client := ocspClient(1, false)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := doOCSP(context.Background(), client, base, probe)
		if err == nil {
			return p, base, nil
		}
		if p.Exited() || time.Now().After(deadline) {
			_ = p.Kill9()
			return nil, "", fmt.Errorf("openssl ocsp not answering: %w\n%s", err, p.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// randomSerial returns a 128-bit serial that was never issued.
func randomSerial(i int) *big.Int {
	n := new(big.Int).Lsh(big.NewInt(1), 127)
	return n.Add(n, big.NewInt(int64(i)*7919+12345))
}

type x509Cert = x509.Certificate
