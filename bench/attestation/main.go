// Command attestation benchmarks stepfort's TPM Attestation CA and device
// inventory import:
//
//   - attestations/s the server completes (POST /attestation/attest, TPM2
//     ActivateCredential on swtpm, POST /attestation/secret) with 8
//     concurrent clients, each on its own swtpm (its own EK, registered in
//     the inventory) replaying pre-generated AK parameters, with p50/p99
//     latency of the two server round trips (TPM time excluded);
//   - the time to import 100,000 devices from CSV through the admin API.
//
// One EK per client is required: the Attestation CA keeps one open session
// per EK, so clients sharing an EK would replace each other's sessions. The
// bench also raises the Attestation CA's rate limits in its ca.json
// (benchRateLimit) because it measures the server's capacity, not the
// default policy, which would refuse a client re-attesting in a loop after
// 5 attempts. Any failed request makes the exit status non-zero.
//
// It builds stepfort, runs `stepfort init` and serves it on loopback with
// bbolt, and starts swtpm (swtpm, swtpm_setup from Debian). Run it from the
// repository root: go run ./bench/attestation [-d 30s] [-c 8] [-n 100000].
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"go.step.sm/crypto/tpm"

	"github.com/stepfort/stepfort/bench/internal/benchproc"
	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/provisioners/attestationca"
)

func main() {
	dur := flag.Duration("d", 30*time.Second, "attestation load duration")
	conc := flag.Int("c", 8, "concurrent attestation clients, each on its own swtpm")
	n := flag.Int("n", 100000, "devices to import")
	flag.Parse()
	if *conc < 1 || *n < 1 || *dur <= 0 {
		fmt.Fprintln(os.Stderr, "bench/attestation: -c, -n and -d must be positive")
		os.Exit(2)
	}
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
	work, err := os.MkdirTemp("", "attbench") // short: swtpm socket paths are limited
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	bin := filepath.Join(work, "stepfort")
	if err := benchproc.BuildStepfort(context.Background(), root, bin); err != nil {
		return err
	}
	s, err := startServer(work, bin)
	if err != nil {
		return err
	}
	defer s.proc.Kill9()
	clients, err := newClients(context.Background(), work, conc, s)
	if err != nil {
		return err
	}
	defer stopClients(clients)

	cpu0, _ := benchproc.CPUTime(s.proc.Pid())
	res := attest(s, clients, dur)
	cpu1, err := benchproc.CPUTime(s.proc.Pid())
	if err == nil {
		res.serverCPU = cpu1 - cpu0
	}
	if len(res.lat) == 0 {
		return fmt.Errorf("no attestation succeeded (%s); server log:\n%s", res.failureSummary(), s.proc.Log())
	}
	res.print(conc)
	if err := importDevices(s, n); err != nil {
		return err
	}
	if res.failures > 0 {
		return fmt.Errorf("%d attestations failed (%s)", res.failures, res.failureSummary())
	}
	return nil
}

// result is what the attestation load measured.
type result struct {
	mu        sync.Mutex
	elapsed   time.Duration
	lat       []time.Duration // server round trips (attest + secret) of each success
	tpmTime   time.Duration   // ActivateCredential, summed over successes
	serverCPU time.Duration   // stepfort's user+system CPU time during the load
	failures  int
	reasons   map[string]int // failure count by step and status/error code
}

// attest runs every client in a loop until dur has passed: /attest,
// ActivateCredential on the client's own swtpm, /secret.
func attest(s *server, clients []*client, dur time.Duration) *result {
	res := &result{reasons: map[string]int{}}
	deadline := time.Now().Add(dur)
	start := time.Now()
	var wg sync.WaitGroup
	for _, cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				res.once(s, cl)
			}
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	return res
}

// once performs one attestation of cl and records it.
func (r *result) once(s *server, cl *client) {
	ctx := context.Background()
	t0 := time.Now()
	st, body := post(s.hc, s.url+"/attestation/attest", "", "", cl.body)
	t1 := time.Now()
	var ar attestationca.AttestResponse
	if st != 200 || json.Unmarshal(body, &ar) != nil {
		r.fail("attest", st, body)
		return
	}
	secret, err := cl.ak.ActivateCredential(ctx, tpm.EncryptedCredential{Credential: ar.Credential, Secret: ar.Secret})
	t2 := time.Now()
	if err != nil {
		r.fail("activate", 0, []byte(err.Error()))
		return
	}
	st, body = post(s.hc, s.url+"/attestation/secret", "", "", mustJSON(attestationca.SecretRequest{Secret: secret}))
	t3 := time.Now()
	if st != 200 {
		r.fail("secret", st, body)
		return
	}
	r.mu.Lock()
	r.lat = append(r.lat, t1.Sub(t0)+t3.Sub(t2))
	r.tpmTime += t2.Sub(t1)
	r.mu.Unlock()
}

// fail counts a failure under its step and the server's error code (or the
// transport error), so a rate-limited or replaced session shows as such.
func (r *result) fail(step string, status int, body []byte) {
	var e struct {
		Error string `json:"error"`
	}
	reason := fmt.Sprintf("%s %d", step, status)
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		reason += " " + e.Error
	} else if status == 0 {
		reason += " " + brief(string(body))
	}
	r.mu.Lock()
	r.failures++
	r.reasons[reason]++
	r.mu.Unlock()
}

func (r *result) failureSummary() string {
	if r.failures == 0 {
		return "no failures"
	}
	parts := make([]string, 0, len(r.reasons))
	for k, v := range r.reasons {
		parts = append(parts, fmt.Sprintf("%s: %d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// print writes the attestation lines of the report.
func (r *result) print(conc int) {
	lat := r.lat
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))] }
	rate := float64(len(lat)) / r.elapsed.Seconds()
	serverRate := float64(conc) / (sumDur(lat).Seconds() / float64(len(lat)))
	pe, g := benchRateLimit.PerEK, benchRateLimit.Global
	fmt.Printf("attestation: rate limits raised for the bench (perEK burst %d, then 1 per %s; global %d/s, burst %d): it measures the server's capacity, not the default policy\n",
		pe.Burst, pe.Interval.Duration, g.PerSecond, g.Burst)
	fmt.Printf("attestation: %d completed in %s with %d clients (one swtpm and EK each), %d failures\n", len(lat), r.elapsed.Round(time.Millisecond), conc, r.failures)
	fmt.Printf("attestation: %.1f attestations/s end to end (swtpm ActivateCredential mean %s, one swtpm per client, on the same CPUs as the server)\n", rate, (r.tpmTime / time.Duration(len(lat))).Round(time.Microsecond))
	fmt.Printf("attestation: server round trips (attest+secret) p50 %s p99 %s; server capacity at %d clients ≈ %.0f attestations/s (target ≥ 200/s)\n",
		pct(0.5).Round(time.Microsecond), pct(0.99).Round(time.Microsecond), conc, serverRate)
	if r.serverCPU > 0 {
		per := r.serverCPU / time.Duration(len(lat))
		fmt.Printf("attestation: server CPU %s per attestation ≈ %.0f attestations/s per core (swtpm and the clients share the machine's %d CPUs)\n",
			per.Round(time.Microsecond), float64(time.Second)/float64(per), runtime.NumCPU())
	}
	if r.failures > 0 {
		fmt.Printf("attestation: failures: %s\n", r.failureSummary())
	}
}

// importDevices measures importing n devices from CSV, then re-importing
// the same file (every row unchanged).
func importDevices(s *server, n int) error {
	var csv bytes.Buffer
	csv.WriteString("Serial Number,Computer Name,Username\n")
	for i := range n {
		fmt.Fprintf(&csv, "BENCH-%07d,host-%07d,user%d\n", i, i, i%500)
	}
	url := s.url + "/api/v1/devices/import?map=" + strings.ReplaceAll("serial:Serial Number,name:Computer Name,owner:Username", " ", "%20")
	t0 := time.Now()
	st, body := post(s.hc, url, s.token, "text/csv", csv.Bytes())
	took := time.Since(t0)
	var rep struct{ Accepted, Rejected int }
	_ = json.Unmarshal(body, &rep)
	if st != 200 || rep.Accepted != n {
		return fmt.Errorf("import: %d accepted=%d rejected=%d %s", st, rep.Accepted, rep.Rejected, brief(string(body)))
	}
	fmt.Printf("inventory: imported %d devices in %.2fs (target ≤ 10s)\n", n, took.Seconds())
	t0 = time.Now()
	st, body = post(s.hc, url, s.token, "text/csv", csv.Bytes())
	fmt.Printf("inventory: re-import (all unchanged) in %.2fs (status %d)\n", time.Since(t0).Seconds(), st)
	if st != 200 {
		return fmt.Errorf("re-import: %d %s", st, brief(string(body)))
	}
	return nil
}

// brief shortens a response body or error for a message: one line, at
// most 200 bytes.
func brief(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		s = s[:200]
	}
	return s
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
