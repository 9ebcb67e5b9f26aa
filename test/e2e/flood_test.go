package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
)

// floodRSSBound is how much the daemon's peak resident memory may grow
// during TestHostileFlood (docs/security.md states it).
const floodRSSBound = 96 << 20

// TestHostileFlood sends, from loopback and bounded in count and time,
// 5,000 distinct hostile OCSP requests (oversized serials, foreign
// issuers) and 20 oversized POSTs to each public route family, while a
// legitimate client keeps asking. The daemon's peak RSS stays within
// floodRSSBound of what it was before, and every legitimate request is
// answered correctly throughout.
func TestHostileFlood(t *testing.T) {
	c := initCA(t)
	p := serve(t, c.Config, c.Password, c.Port)
	step := newStepCLI(t)
	step.bootstrap(c, c.URL)
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good.crt"), filepath.Join(dir, "bad.crt")
	for _, crt := range []string{good, bad} {
		step.must("ca", "certificate", filepath.Base(crt), crt, crt+".key", "--provisioner", "admin", "--provisioner-password-file", c.Password)
	}
	step.must("ca", "revoke", "--cert", bad, "--key", bad+".key")
	issuer := readCert(t, filepath.Join(c.Dir, "certs", "intermediate_ca.crt"))
	legit := &legitClient{t: t, hc: apiClient(t, c), c: c, issuer: issuer, good: readCert(t, good), bad: readCert(t, bad)}
	legit.check() // warm: every answer cached that legitimately can be

	// Reset the peak so start-up does not count (Linux: clear_refs 5).
	_ = os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", p.Pid()), []byte("5"), 0)
	before := procMemory(t, p.Pid())
	stop := make(chan struct{})
	var legitDone sync.WaitGroup
	legitDone.Add(1)
	go func() {
		defer legitDone.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			legit.check()
			time.Sleep(20 * time.Millisecond)
		}
	}()

	var wg sync.WaitGroup
	hostile := hostileOCSP(t, c, issuer, 5000)
	oversized := oversizedPOSTs(t, c, 20)
	wg.Add(2)
	go func() { defer wg.Done(); hostile() }()
	go func() { defer wg.Done(); oversized() }()
	wg.Wait()
	close(stop)
	legitDone.Wait()
	legit.check()

	after := procMemory(t, p.Pid())
	grew := after.hwm - before.rss
	t.Logf("RSS before %d MiB, after %d MiB, peak %d MiB (grew %d MiB, bound %d MiB); %d legitimate checks answered correctly",
		before.rss>>20, after.rss>>20, after.hwm>>20, grew>>20, floodRSSBound>>20, legit.ok.Load())
	if grew > floodRSSBound {
		t.Fatalf("peak RSS grew by %d MiB under the flood, bound %d MiB", grew>>20, floodRSSBound>>20)
	}
	if legit.ok.Load() < 10 {
		t.Fatalf("only %d legitimate checks completed during the flood", legit.ok.Load())
	}
}

// legitClient asks what a relying party and a client ask, and fails the
// test on any wrong answer.
type legitClient struct {
	t         *testing.T
	hc        *http.Client
	c         *ca
	issuer    *x509.Certificate
	good, bad *x509.Certificate
	ok        atomic.Int64
}

func (l *legitClient) check() {
	for _, tc := range []struct {
		cert *x509.Certificate
		want int
	}{{l.good, ocsp.Good}, {l.bad, ocsp.Revoked}} {
		req, err := ocsp.CreateRequest(tc.cert, l.issuer, nil)
		if err != nil {
			l.t.Error(err)
			return
		}
		resp, err := l.hc.Post(fmt.Sprintf("http://127.0.0.1:%d/ocsp", l.c.HTTPPort), "application/ocsp-request", bytes.NewReader(req))
		if err != nil {
			l.t.Errorf("legitimate OCSP request: %v", err)
			return
		}
		der, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		r, err := ocsp.ParseResponseForCert(der, tc.cert, l.issuer)
		if err != nil || r.Status != tc.want {
			l.t.Errorf("legitimate OCSP answer for %s: %v (status %v, want %d)", tc.cert.Subject.CommonName, err, r, tc.want)
			return
		}
	}
	resp, err := l.hc.Get(l.c.URL + "/health")
	if err != nil || resp.StatusCode != http.StatusOK {
		l.t.Errorf("health during the flood: %v %v", err, resp)
		return
	}
	resp.Body.Close()
	l.ok.Add(1)
}

// hostileOCSP returns a run of n distinct OCSP requests nobody should
// answer from a cache: kilobyte serials under our issuer, and made-up
// issuers.
func hostileOCSP(t *testing.T, c *ca, issuer *x509.Certificate, n int) func() {
	nameHash := sha1.Sum(issuer.RawSubject)
	var spki struct {
		Algorithm asn1.RawValue
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(issuer.RawSubjectPublicKeyInfo, &spki); err != nil {
		t.Fatal(err)
	}
	keyHash := sha1.Sum(spki.PublicKey.RightAlign())
	url := fmt.Sprintf("http://127.0.0.1:%d/ocsp", c.HTTPPort)
	return func() {
		var wg sync.WaitGroup
		var sent, failed atomic.Int64
		work := make(chan int)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				hc := &http.Client{Timeout: 10 * time.Second}
				for i := range work {
					serial := make([]byte, 8192)
					_, _ = rand.Read(serial)
					serial[0] |= 0x40 // positive, full length
					nh, kh := nameHash[:], keyHash[:]
					if i%2 == 1 { // a made-up issuer with a short serial
						nh, kh, serial = randomBytes(20), randomBytes(20), serial[:16]
					}
					resp, err := hc.Post(url, "application/ocsp-request", bytes.NewReader(ocspRequestDER(t, nh, kh, new(big.Int).SetBytes(serial))))
					if err != nil {
						failed.Add(1)
						continue
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					sent.Add(1)
				}
			}()
		}
		for i := range n {
			work <- i
		}
		close(work)
		wg.Wait()
		if sent.Load() != int64(n) {
			t.Errorf("hostile OCSP: %d of %d answered, %d failed to connect", sent.Load(), n, failed.Load())
		}
	}
}

// ocspRequestDER builds an RFC 6960 OCSPRequest with one SHA-1 CertID.
func ocspRequestDER(t *testing.T, nameHash, keyHash []byte, serial *big.Int) []byte {
	type algorithm struct {
		OID    asn1.ObjectIdentifier
		Params asn1.RawValue
	}
	type certID struct {
		Hash     algorithm
		NameHash []byte
		KeyHash  []byte
		Serial   *big.Int
	}
	type request struct{ Cert certID }
	type tbs struct{ List []request }
	type ocspReq struct{ TBS tbs }
	der, err := asn1.Marshal(ocspReq{TBS: tbs{List: []request{{Cert: certID{
		Hash:     algorithm{OID: asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}, Params: asn1.NullRawValue},
		NameHash: nameHash, KeyHash: keyHash, Serial: serial,
	}}}}})
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// oversizedPOSTs returns a run of n POSTs of 16 MiB to each public route
// family, half with a declared length and half chunked, each the start of a JSON
// string that never ends; each must be refused (413) or cut off, never
// read whole.
func oversizedPOSTs(t *testing.T, c *ca, n int) func() {
	token, _ := os.ReadFile(c.AdminToken)
	targets := []struct{ family, url, auth string }{
		{"ACME", c.URL + "/acme/acme/new-account", ""},
		{"SCEP", fmt.Sprintf("http://127.0.0.1:%d/scep/scep?operation=PKIOperation", c.HTTPPort), ""},
		{"sign", c.URL + "/1.0/sign", ""},
		{"attestation", c.URL + "/attestation/attest", ""},
		{"OCSP", fmt.Sprintf("http://127.0.0.1:%d/ocsp", c.HTTPPort), ""},
		{"admin (no token)", c.URL + "/api/v1/devices/import", ""},
		{"admin (token)", c.URL + "/api/v1/tokens", strings.TrimSpace(string(token))},
	}
	hc := apiClient(t, c)
	return func() {
		var wg sync.WaitGroup
		for _, tg := range targets {
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					// A JSON string that never ends: a decoder must read
					// until the limit to refuse it.
					var body io.Reader = io.MultiReader(strings.NewReader(`{"name":"`), io.LimitReader(letters{}, 16<<20))
					if i%2 == 0 {
						body = bytes.NewReader(append([]byte(`{"name":"`), bytes.Repeat([]byte("a"), 16<<20)...))
					}
					req, _ := http.NewRequest(http.MethodPost, tg.url, body)
					if tg.auth != "" {
						req.Header.Set("Authorization", "Bearer "+tg.auth)
					}
					resp, err := hc.Do(req)
					if err != nil {
						return // the server closed the connection: refused
					}
					defer resp.Body.Close()
					switch {
					case resp.StatusCode == http.StatusRequestEntityTooLarge, resp.StatusCode == http.StatusUnauthorized:
					case tg.family == "OCSP" && isMalformedOCSP(resp):
					default:
						b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
						t.Errorf("%s: oversized POST answered %d %s", tg.family, resp.StatusCode, b)
					}
				}()
			}
		}
		wg.Wait()
	}
}

// isMalformedOCSP reports whether resp is an OCSP responder's
// malformedRequest answer, which is how RFC 6960 refuses a request.
func isMalformedOCSP(resp *http.Response) bool {
	der, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil || resp.StatusCode != http.StatusOK {
		return false
	}
	_, err = ocsp.ParseResponse(der, nil)
	re, ok := err.(ocsp.ResponseError)
	return ok && re.Status == ocsp.Malformed
}

// letters is an endless stream of 'a'.
type letters struct{}

func (letters) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'a'
	}
	return len(p), nil
}

type memory struct{ rss, hwm int64 }

// procMemory reads VmRSS and VmHWM (peak) of a process.
func procMemory(t *testing.T, pid int) memory {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	var m memory
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			m.rss = kb << 10
		case "VmHWM:":
			m.hwm = kb << 10
		}
	}
	return m
}
