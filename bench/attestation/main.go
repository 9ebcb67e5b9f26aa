// Command attestation benchmarks stepfort's TPM Attestation CA and device
// inventory import:
//
//   - attestations/s the server completes (POST /attestation/attest, TPM2
//     ActivateCredential on swtpm, POST /attestation/secret) with 8
//     concurrent clients, each replaying pre-generated AK parameters, with
//     p50/p99 latency of the two server round trips (TPM time excluded);
//   - the time to import 100,000 devices from CSV through the admin API.
//
// It builds stepfort, runs `stepfort init` and serves it on loopback with
// bbolt, and starts swtpm (swtpm, swtpm_setup from Debian). Run it from the
// repository root: go run ./bench/attestation [-d 30s] [-c 8] [-n 100000].
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.step.sm/crypto/tpm"
	"go.step.sm/crypto/tpm/storage"

	"github.com/stepfort/stepfort/bench/internal/benchproc"
	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/provisioners/attestationca"
)

func main() {
	dur := flag.Duration("d", 30*time.Second, "attestation load duration")
	conc := flag.Int("c", 8, "concurrent attestation clients")
	n := flag.Int("n", 100000, "devices to import")
	flag.Parse()
	if err := run(*dur, *conc, *n); err != nil {
		fmt.Fprintln(os.Stderr, "bench/attestation:", err)
		os.Exit(1)
	}
}

func run(dur time.Duration, conc, n int) error {
	root, err := testenv.RepoRoot()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "attbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	bin := filepath.Join(work, "stepfort")
	if err := benchproc.BuildStepfort(context.Background(), root, bin); err != nil {
		return err
	}
	port, _ := testenv.FreePort()
	hport, _ := testenv.FreePort()
	dir := filepath.Join(work, "ca")
	if out, err := exec.Command(bin, "init", "--dir", dir, "--address", fmt.Sprintf("127.0.0.1:%d", port), "--insecure-address", fmt.Sprintf("127.0.0.1:%d", hport)).CombinedOutput(); err != nil {
		return fmt.Errorf("init: %v\n%s", err, out)
	}
	srv, err := testenv.NewProcess(filepath.Join(work, "serve.log"), bin, []string{"serve", filepath.Join(dir, "config", "ca.json"), "--password-file", filepath.Join(dir, "secrets", "password")}, nil)
	if err != nil {
		return err
	}
	defer srv.Kill9()
	url := fmt.Sprintf("https://127.0.0.1:%d", port)
	if err := testenv.WaitHTTPS(url+"/health", time.Minute); err != nil {
		return err
	}
	rootPEM, _ := os.ReadFile(filepath.Join(dir, "certs", "root_ca.crt"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rootPEM)
	hc := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 64, TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}}
	tokenB, _ := os.ReadFile(filepath.Join(dir, "secrets", "admin-token"))
	token := strings.TrimSpace(string(tokenB))

	sock, stop, err := startSWTPM(work)
	if err != nil {
		return err
	}
	defer stop()
	tp, err := tpm.New(tpm.WithDeviceName(sock), tpm.WithStore(storage.NewDirstore(filepath.Join(work, "tpmstore"))), tpm.WithDisableDownload())
	if err != nil {
		return err
	}
	ctx := context.Background()
	eks, err := tp.GetEKs(ctx)
	if err != nil {
		return fmt.Errorf("EKs: %w", err)
	}
	ek := eks[0]
	ekDER, _ := x509.MarshalPKIXPublicKey(ek.Public())
	if st, body := post(hc, url+"/api/v1/devices", token, "application/json", mustJSON(map[string]any{"ekPublic": string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: ekDER}))})); st != 201 {
		return fmt.Errorf("register EK: %d %s", st, body)
	}
	info, err := tp.Info(ctx)
	if err != nil {
		return err
	}
	// Pre-generate one AK (and its /attest body) per client.
	type client struct {
		ak   *tpm.AK
		body []byte
	}
	clients := make([]client, conc)
	for i := range clients {
		ak, err := tp.CreateAK(ctx, fmt.Sprintf("bench-ak-%d", i))
		if err != nil {
			return fmt.Errorf("create AK: %w", err)
		}
		params, err := ak.AttestationParameters(ctx)
		if err != nil {
			return err
		}
		clients[i] = client{ak: ak, body: mustJSON(attestationca.AttestRequest{
			TPMInfo: attestationca.TPMInfo{Version: 2, Manufacturer: strconv.FormatUint(uint64(info.Manufacturer.ID), 10), Model: info.VendorInfo, FirmwareVersion: info.FirmwareVersion.String()},
			EKPub:   ekDER,
			AttestParams: attestationca.AttestationParameters{Public: params.Public, CreateData: params.CreateData,
				CreateAttestation: params.CreateAttestation, CreateSignature: params.CreateSignature},
		})}
	}

	var mu, tpmMu sync.Mutex
	var lat []time.Duration
	var tpmTime time.Duration
	failures := 0
	deadline := time.Now().Add(dur)
	start := time.Now()
	var wg sync.WaitGroup
	for _, cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				t0 := time.Now()
				st, body := post(hc, url+"/attestation/attest", "", "", cl.body)
				t1 := time.Now()
				var ar attestationca.AttestResponse
				if st != 200 || json.Unmarshal(body, &ar) != nil {
					mu.Lock()
					failures++
					mu.Unlock()
					continue
				}
				tpmMu.Lock() // swtpm serves one command at a time
				t2 := time.Now()
				secret, err := cl.ak.ActivateCredential(ctx, tpm.EncryptedCredential{Credential: ar.Credential, Secret: ar.Secret})
				t3 := time.Now()
				tpmMu.Unlock()
				if err != nil {
					mu.Lock()
					failures++
					mu.Unlock()
					continue
				}
				st, _ = post(hc, url+"/attestation/secret", "", "", mustJSON(attestationca.SecretRequest{Secret: secret}))
				t4 := time.Now()
				mu.Lock()
				if st != 200 {
					failures++
				} else {
					lat = append(lat, t1.Sub(t0)+t4.Sub(t3))
					tpmTime += t3.Sub(t2)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if len(lat) == 0 {
		return fmt.Errorf("no attestation succeeded (%d failures); server log:\n%s", failures, srv.Log())
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))] }
	rate := float64(len(lat)) / elapsed.Seconds()
	serverRate := float64(conc) / (sumDur(lat).Seconds() / float64(len(lat)))
	fmt.Printf("attestation: %d completed in %s with %d clients, %d failures\n", len(lat), elapsed.Round(time.Millisecond), conc, failures)
	fmt.Printf("attestation: %.1f attestations/s end to end (bounded by swtpm ActivateCredential, mean %s, serialized)\n", rate, (tpmTime / time.Duration(len(lat))).Round(time.Microsecond))
	fmt.Printf("attestation: server round trips (attest+secret) p50 %s p99 %s; server capacity at %d clients ≈ %.0f attestations/s (target ≥ 200/s)\n",
		pct(0.5).Round(time.Microsecond), pct(0.99).Round(time.Microsecond), conc, serverRate)

	// Inventory import.
	var csv bytes.Buffer
	csv.WriteString("Serial Number,Computer Name,Username\n")
	for i := range n {
		fmt.Fprintf(&csv, "BENCH-%07d,host-%07d,user%d\n", i, i, i%500)
	}
	t0 := time.Now()
	st, body := post(hc, url+"/api/v1/devices/import?map="+strings.ReplaceAll("serial:Serial Number,name:Computer Name,owner:Username", " ", "%20"), token, "text/csv", csv.Bytes())
	took := time.Since(t0)
	var rep struct{ Accepted, Rejected int }
	_ = json.Unmarshal(body, &rep)
	if st != 200 || rep.Accepted != n {
		return fmt.Errorf("import: %d accepted=%d rejected=%d", st, rep.Accepted, rep.Rejected)
	}
	fmt.Printf("inventory: imported %d devices in %.2fs (target ≤ 10s)\n", n, took.Seconds())
	t0 = time.Now()
	st, _ = post(hc, url+"/api/v1/devices/import?map="+strings.ReplaceAll("serial:Serial Number,name:Computer Name,owner:Username", " ", "%20"), token, "text/csv", csv.Bytes())
	fmt.Printf("inventory: re-import (all unchanged) in %.2fs (status %d)\n", time.Since(t0).Seconds(), st)
	return nil
}

func sumDur(ds []time.Duration) time.Duration {
	var s time.Duration
	for _, d := range ds {
		s += d
	}
	return s
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func post(hc *http.Client, url, token, ct string, body []byte) (int, []byte) {
	req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// startSWTPM provisions and starts a software TPM on a UNIX socket.
func startSWTPM(work string) (string, func(), error) {
	bin, err := testenv.Tool("swtpm")
	if err != nil {
		return "", nil, err
	}
	setup, err := testenv.Tool("swtpm_setup")
	if err != nil {
		return "", nil, err
	}
	state := filepath.Join(work, "swtpm")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return "", nil, err
	}
	// No EK certificate needed here: the bench does not set ekRoots.
	if out, err := exec.Command(setup, "--tpm2", "--tpmstate", state, "--overwrite").CombinedOutput(); err != nil {
		return "", nil, fmt.Errorf("swtpm_setup: %v\n%s", err, out)
	}
	sock := filepath.Join(work, "tpm.sock")
	p, err := testenv.NewProcess(filepath.Join(work, "swtpm.log"), bin, []string{"socket", "--tpm2", "--tpmstate", "dir=" + state,
		"--server", "type=unixio,path=" + sock, "--ctrl", "type=unixio,path=" + sock + ".ctrl", "--flags", "not-need-init,startup-clear"}, nil)
	if err != nil {
		return "", nil, err
	}
	for range 200 {
		if _, err := os.Stat(sock); err == nil {
			return sock, func() { _ = p.Kill9() }, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = p.Kill9()
	return "", nil, fmt.Errorf("swtpm socket %s did not appear", sock)
}
