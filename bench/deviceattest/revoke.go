package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.step.sm/crypto/tpm"
	"go.step.sm/crypto/tpm/storage"
	"golang.org/x/crypto/ocsp"
)

// revokeBench gives the registered device `total` certificates (its
// device-attest-01 certificates plus account certificates bought with the
// warm-up device certificate through the X5C provisioner "accounts"), then
// removes the device through the admin API and times until OCSP reports
// every one of them revoked.
func revokeBench(ctx context.Context, s *server, deviceID, sock, devCrt string, total int) error {
	// The device certificates already issued on the gate-on server.
	var serials []*x509.Certificate
	files, _ := filepath.Glob(filepath.Join(filepath.Dir(devCrt), "on-*.crt"))
	var leaf *x509.Certificate
	var chain [][]byte
	for _, f := range files {
		cs, err := readCerts(f)
		if err != nil {
			return err
		}
		serials = append(serials, cs[0])
		if f == devCrt {
			leaf = cs[0]
			for _, c := range cs {
				chain = append(chain, c.Raw)
			}
		}
	}
	if leaf == nil {
		return fmt.Errorf("no device certificate %s", devCrt)
	}
	accounts := total - len(serials)
	tp, err := tpm.New(tpm.WithDeviceName(sock), tpm.WithStore(storage.NewDirstore(s.storage)), tpm.WithDisableDownload())
	if err != nil {
		return err
	}
	key, err := tp.GetKey(ctx, "warm")
	if err != nil {
		names := []string{}
		if ks, e := tp.ListKeys(ctx); e == nil {
			for _, k := range ks {
				names = append(names, k.Name())
			}
		}
		return fmt.Errorf("device key: %w (keys: %v)", err, names)
	}
	signer, err := key.Signer(ctx)
	if err != nil {
		return err
	}
	aud := s.url + "/1.0/sign#x5c/accounts" // the fragment selects the X5C provisioner (upstream LoadByToken)

	type job struct {
		ott string
		csr []byte
	}
	jobs := make(chan job, 64)
	var tpmErr error
	var tpmTime time.Duration
	go func() {
		defer close(jobs)
		for i := range accounts {
			name := fmt.Sprintf("acct-%04d.example", i)
			t0 := time.Now()
			ott, err := x5cToken(signer, leaf, chain, "accounts", name, aud)
			tpmTime += time.Since(t0)
			if err != nil {
				tpmErr = err
				return
			}
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}, DNSNames: []string{name}}, k)
			jobs <- job{ott: ott, csr: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})}
		}
	}()
	var mu sync.Mutex
	var signErr error
	var wg sync.WaitGroup
	t0 := time.Now()
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				st, body := s.do("POST", s.url+"/1.0/sign", mustJSON(map[string]string{"csr": string(j.csr), "ott": j.ott}), "application/json", false)
				var resp struct {
					Crt string `json:"crt"`
				}
				var c *x509.Certificate
				if st == 201 || st == 200 {
					if json.Unmarshal(body, &resp) == nil {
						if b, _ := pem.Decode([]byte(resp.Crt)); b != nil {
							c, _ = x509.ParseCertificate(b.Bytes)
						}
					}
				}
				mu.Lock()
				if c == nil {
					if signErr == nil {
						signErr = fmt.Errorf("account certificate: %d %s", st, body)
					}
				} else {
					serials = append(serials, c)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if tpmErr != nil {
		return fmt.Errorf("x5c token: %w", tpmErr)
	}
	if signErr != nil {
		return fmt.Errorf("%w\nserver log:\n%s", signErr, tail(s.proc.Log(), 3000))
	}
	fmt.Printf("revocation: device has %d certificates (%d device-attest-01 + %d account via X5C, issued in %s, TPM x5c signing %s)\n",
		len(serials), total-accounts, accounts, time.Since(t0).Round(time.Millisecond), tpmTime.Round(time.Millisecond))

	// Wait until the issued events are processed (the audit log names every
	// serial; the deviceAttest observer runs on the same events).
	audit := filepath.Join(s.dir, "logs", "certificates.jsonl")
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, _ := os.ReadFile(audit)
		missing := 0
		for _, c := range serials {
			if !bytes.Contains(b, []byte(`"`+c.SerialNumber.String()+`"`)) {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d issued events not in the audit log after 60s", missing)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)

	// Check nothing is revoked yet, then remove the device.
	issuer := s.inter
	reqs := make([][]byte, len(serials))
	for i, c := range serials {
		if reqs[i], err = ocsp.CreateRequest(c, issuer, &ocsp.RequestOptions{Hash: crypto.SHA1}); err != nil {
			return err
		}
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
	pending := make([]int, len(serials))
	for i := range pending {
		pending[i] = i
	}
	if left, err := notRevoked(hc, s.httpURL+"/ocsp", reqs, pending); err != nil {
		return err
	} else if len(left) != len(serials) {
		return fmt.Errorf("%d certificates revoked before the device was removed", len(serials)-len(left))
	}
	t1 := time.Now()
	st, body := s.do("DELETE", s.url+"/api/v1/devices/"+deviceID, nil, "", true)
	delTook := time.Since(t1)
	if st != 200 && st != 204 {
		return fmt.Errorf("DELETE device: %d %s", st, body)
	}
	checks := 0
	for len(pending) > 0 {
		checks++
		if pending, err = notRevoked(hc, s.httpURL+"/ocsp", reqs, pending); err != nil {
			return err
		}
		if len(pending) > 0 {
			if time.Since(t1) > 60*time.Second {
				return fmt.Errorf("%d of %d certificates not revoked 60s after the device was removed", len(pending), len(serials))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	all := time.Since(t1)
	fmt.Printf("revocation: DELETE /api/v1/devices/{id} returned in %.3fs; all %d certificates revoked per OCSP %.3fs after the request (%d OCSP sweeps) (target ≤ 2s)\n",
		delTook.Seconds(), len(serials), all.Seconds(), checks)
	return nil
}

// notRevoked returns the indexes of pending whose OCSP status is not revoked.
func notRevoked(hc *http.Client, url string, reqs [][]byte, pending []int) ([]int, error) {
	var mu sync.Mutex
	var left []int
	var firstErr error
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1) - 1)
				if k >= len(pending) {
					return
				}
				i := pending[k]
				resp, err := hc.Post(url, "application/ocsp-request", bytes.NewReader(reqs[i]))
				var r *ocsp.Response
				if err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					r, err = ocsp.ParseResponse(b, nil)
				}
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = fmt.Errorf("OCSP: %w", err)
					}
				} else if r.Status != ocsp.Revoked {
					left = append(left, i)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return left, firstErr
}

// x5cToken is the one-time token of an X5C provisioner, signed by the
// device certificate's (TPM) key.
func x5cToken(signer crypto.Signer, leaf *x509.Certificate, chain [][]byte, iss, sub, aud string) (string, error) {
	alg := "ES256"
	if _, ok := leaf.PublicKey.(*rsa.PublicKey); ok {
		alg = "RS256"
	}
	x5c := make([]string, len(chain))
	for i, c := range chain {
		x5c[i] = base64.StdEncoding.EncodeToString(c)
	}
	now := time.Now()
	jti := make([]byte, 16)
	_, _ = rand.Read(jti)
	hdr := mustJSON(map[string]any{"alg": alg, "typ": "JWT", "x5c": x5c})
	claims := mustJSON(map[string]any{"iss": iss, "sub": sub, "aud": aud, "iat": now.Unix(), "nbf": now.Add(-time.Minute).Unix(),
		"exp": now.Add(5 * time.Minute).Unix(), "jti": hex.EncodeToString(jti), "sans": []string{sub}})
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString(hdr) + "." + enc.EncodeToString(claims)
	sum := sha256.Sum256([]byte(signing))
	sig, err := signer.Sign(rand.Reader, sum[:], crypto.SHA256)
	if err != nil {
		return "", err
	}
	if alg == "ES256" {
		var rs struct{ R, S *big.Int }
		if _, err := asn1.Unmarshal(sig, &rs); err != nil {
			return "", err
		}
		raw := make([]byte, 64)
		rs.R.FillBytes(raw[:32])
		rs.S.FillBytes(raw[32:])
		sig = raw
	}
	return signing + "." + enc.EncodeToString(sig), nil
}

func readCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no certificate", path)
	}
	return out, nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return strings.TrimSpace(s)
}
