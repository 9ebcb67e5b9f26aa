package e2e

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/testenv"
)

// TestPostgresOutage stops PostgreSQL under a running replica: /health and
// issuance fail fast and cleanly, and service resumes by itself when the
// database is back.
func TestPostgresOutage(t *testing.T) {
	pg := testenv.StartPostgres(t)
	c := initCA(t, "--db", "postgresql", "--db-dsn", pg.DSN(), "--db-name", "outage")
	serve(t, c.Config, c.Password, c.Port)
	hc := apiClient(t, c)
	health := func() (int, string) {
		resp, err := hc.Get(c.URL + "/health")
		if err != nil {
			t.Fatalf("/health: %v", err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		_, _ = fmt.Fprint(&b, readAll(resp))
		return resp.StatusCode, b.String()
	}
	if code, body := health(); code != http.StatusOK || !strings.Contains(body, `"database":"ok"`) || !strings.Contains(body, `"crlPublisher"`) {
		t.Fatalf("healthy /health: %d %s", code, body)
	}
	step := newStepCLI(t)
	step.bootstrap(c, c.URL)
	dir := t.TempDir()

	// OCSP answers from memory while its PostgreSQL feed is live.
	pre := filepath.Join(dir, "pre.crt")
	step.must("ca", "certificate", "pre.example", pre, filepath.Join(dir, "pre.key"), "--provisioner", "admin", "--provisioner-password-file", c.Password)
	ocspURL := fmt.Sprintf("http://127.0.0.1:%d/ocsp", c.HTTPPort)
	inter := filepath.Join(c.Dir, "certs", "intermediate_ca.crt")
	ocspAnswer := func() string {
		out, _ := openssl(t, "ocsp", "-issuer", inter, "-cert", pre, "-url", ocspURL, "-CAfile", c.Root, "-verify_other", inter, "-no_nonce", "-timeout", "10")
		return out
	}
	eventually(t, 10*time.Second, func() error {
		if _, body := health(); !strings.Contains(body, `"ocspStatusSource":"memory"`) {
			return fmt.Errorf("OCSP status index not live: %s", body)
		}
		return nil
	})
	if out := ocspAnswer(); !strings.Contains(out, pre+": good") {
		t.Fatalf("OCSP before the outage:\n%s", out)
	}

	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if code, body := health(); code != http.StatusServiceUnavailable || !strings.Contains(body, `"status":"unavailable"`) {
		t.Fatalf("/health during the outage: %d %s", code, body)
	}
	out, err := step.run("ca", "certificate", "outage.example", filepath.Join(dir, "o.crt"), filepath.Join(dir, "o.key"),
		"--provisioner", "admin", "--provisioner-password-file", c.Password)
	if err == nil {
		t.Fatalf("issuance succeeded without a database:\n%s", out)
	}
	if elapsed := time.Since(start); elapsed > 20*time.Second {
		t.Fatalf("requests hung for %v during the outage", elapsed)
	}
	if !strings.Contains(out, "Internal Server Error") {
		t.Fatalf("unexpected failure during the outage: %v\n%s", err, out)
	}
	// The feed notices within a second; OCSP then fails closed with
	// tryLater (it cannot know about revocations it is not told of).
	eventually(t, 5*time.Second, func() error {
		if out := ocspAnswer(); !strings.Contains(strings.ToLower(out), "trylater") {
			return fmt.Errorf("OCSP during the outage:\n%s", out)
		}
		return nil
	})

	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, func() error {
		if code, body := health(); code != http.StatusOK {
			return fmt.Errorf("/health %d %s", code, body)
		}
		return nil
	})
	eventually(t, 30*time.Second, func() error {
		if out := ocspAnswer(); !strings.Contains(out, pre+": good") {
			return fmt.Errorf("OCSP after the outage:\n%s", out)
		}
		if _, body := health(); !strings.Contains(body, `"ocspStatusSource":"memory"`) {
			return fmt.Errorf("OCSP status index not live again: %s", body)
		}
		return nil
	})
	eventually(t, 30*time.Second, func() error {
		_, err := step.run("ca", "certificate", "after.example", filepath.Join(dir, "a.crt"), filepath.Join(dir, "a.key"),
			"--provisioner", "admin", "--provisioner-password-file", c.Password)
		return err
	})
}

// TestKill9DuringLoad kills a replica while clients issue and revoke through
// it: every certificate a client received is known to the other replica
// (OCSP "good", not "unknown"), and every acknowledged revocation is in the
// CRL the other replica serves.
func TestKill9DuringLoad(t *testing.T) {
	pg := testenv.StartPostgres(t)
	c := initCA(t, "--db", "postgresql", "--db-dsn", pg.DSN(), "--db-name", "kill9")
	editConfig(t, c.Config, func(m map[string]any) {
		rev := m["stepfort"].(map[string]any)["plugins"].(map[string]any)["revocation"].(map[string]any)
		rev["crl"] = map[string]any{"publishDelay": "1s", "leaseTTL": "3s"}
	})
	configB, portB, httpB := replicaConfigPorts(t, c, "replica-b")
	a := serve(t, c.Config, c.Password, c.Port)
	serve(t, configB, c.Password, portB)
	dir := t.TempDir()

	// Phase 1: issuance through A from 3 clients; kill A part-way.
	type issued struct{ crt, key string }
	var mu sync.Mutex
	var got []issued
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := newStepCLI(t)
			if _, err := s.run("ca", "bootstrap", "--ca-url", c.URL, "--fingerprint", c.Fingerprint, "--force"); err != nil {
				return
			}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				crt, key := filepath.Join(dir, fmt.Sprintf("w%d-%d.crt", w, i)), filepath.Join(dir, fmt.Sprintf("w%d-%d.key", w, i))
				if _, err := s.run("ca", "certificate", fmt.Sprintf("load-%d-%d.example", w, i), crt, key,
					"--provisioner", "admin", "--provisioner-password-file", c.Password); err != nil {
					return // A is gone
				}
				mu.Lock()
				got = append(got, issued{crt, key})
				mu.Unlock()
			}
		}()
	}
	time.Sleep(3 * time.Second)
	if err := a.Kill9(); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	if len(got) < 3 {
		t.Fatalf("only %d certificates issued before the kill; load too light to mean anything", len(got))
	}
	ocspB := fmt.Sprintf("http://127.0.0.1:%d/ocsp", httpB)
	for _, g := range got {
		if out := ocspStatus(t, c, ocspB, "-cert", g.crt); !strings.Contains(out, ": good") {
			t.Fatalf("certificate received by a client is not in the database:\n%s", out)
		}
	}
	t.Logf("%d certificates received before kill -9; all known to replica B", len(got))

	// Phase 2: restart A, revoke through it concurrently, kill it again.
	a = serve(t, c.Config, c.Password, c.Port)
	var acked []string
	stop = make(chan struct{})
	jobs := make(chan issued, len(got))
	for _, g := range got {
		jobs <- g
	}
	close(jobs)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := newStepCLI(t)
			if _, err := s.run("ca", "bootstrap", "--ca-url", c.URL, "--fingerprint", c.Fingerprint, "--force"); err != nil {
				return
			}
			for g := range jobs {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := s.run("ca", "revoke", "--cert", g.crt, "--key", g.key); err != nil {
					return
				}
				mu.Lock()
				acked = append(acked, g.crt)
				mu.Unlock()
			}
		}()
	}
	time.Sleep(1500 * time.Millisecond)
	if err := a.Kill9(); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	if len(acked) == 0 {
		t.Fatal("no revocation was acknowledged before the kill")
	}
	eventually(t, 15*time.Second, func() error {
		crl, _, err := fetchCRL(httpB)
		if err != nil {
			return err
		}
		for _, crt := range acked {
			if !crlLists(crl, readCert(t, crt).SerialNumber) {
				return fmt.Errorf("acknowledged revocation of %s missing from CRL %d", crt, crl.Number)
			}
		}
		return nil
	})
	t.Logf("%d acknowledged revocations all in replica B's CRL", len(acked))
}

func readAll(resp *http.Response) string {
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}
