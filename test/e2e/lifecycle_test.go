package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMetricsReloadAndGracefulShutdown covers /metrics with upstream's metric
// names, SIGHUP reload, and SIGTERM letting an in-flight request finish.
func TestMetricsReloadAndGracefulShutdown(t *testing.T) {
	c := initCA(t)
	metricsPort := freePort(t)
	editConfig(t, c.Config, func(m map[string]any) {
		m["metricsAddress"] = fmt.Sprintf("127.0.0.1:%d", metricsPort)
	})
	daemon := serve(t, c.Config, c.Password, c.Port)
	step := newStepCLI(t)
	step.bootstrap(c, c.URL)
	dir := t.TempDir()
	step.must("ca", "certificate", "m.example", filepath.Join(dir, "m.crt"), filepath.Join(dir, "m.key"), "--provisioner", "admin", "--provisioner-password-file", c.Password)

	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)
	eventually(t, 10*time.Second, func() error {
		body, err := httpGet(metricsURL)
		if err != nil {
			return err
		}
		for _, want := range []string{
			`step_ca_x509_signed_total{provisioner="admin",success="true"} 1`,
			`step_ca_uptime_seconds`,
			`stepfort_events_delivered_total{kind="issued",observer="auditLog"} 1`,
			`stepfort_http_requests_total{code="2xx",listener="https"}`,
		} {
			if !strings.Contains(body, want) {
				return fmt.Errorf("metrics lack %q", want)
			}
		}
		return nil
	})

	// SIGHUP: a provisioner added to ca.json appears without a restart.
	editConfig(t, c.Config, func(m map[string]any) {
		auth := m["authority"].(map[string]any)
		auth["provisioners"] = append(auth["provisioners"].([]any), map[string]any{"type": "ACME", "name": "acme-reloaded"})
	})
	if err := daemon.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	hc := apiClient(t, c)
	eventually(t, 10*time.Second, func() error {
		body, err := httpGetWith(hc, c.URL+"/provisioners")
		if err != nil {
			return err
		}
		if !strings.Contains(body, "acme-reloaded") {
			return fmt.Errorf("new provisioner not served yet")
		}
		return nil
	})
	// A broken ca.json on SIGHUP keeps the running configuration.
	good, _ := os.ReadFile(c.Config)
	if err := os.WriteFile(c.Config, []byte("{broken"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := daemon.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error {
		if !strings.Contains(daemon.Log(), "reload failed; still running with the previous configuration") {
			return fmt.Errorf("reload failure not logged")
		}
		return nil
	})
	if _, err := httpGetWith(hc, c.URL+"/health"); err != nil {
		t.Fatalf("daemon down after a failed reload: %v", err)
	}
	_ = os.WriteFile(c.Config, good, 0o644)

	// SIGTERM with a request in flight: the request still gets its answer.
	pool := x509.NewCertPool()
	rootPEM, _ := os.ReadFile(c.Root)
	pool.AppendCertsFromPEM(rootPEM)
	conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", c.Port), &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"csr":"x","ott":"y"}`
	fmt.Fprintf(conn, "POST /1.0/sign HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body[:5])
	time.Sleep(300 * time.Millisecond) // the server is now reading the body
	if err := daemon.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if _, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", c.Port), &tls.Config{RootCAs: pool, ServerName: "localhost"}); err == nil {
		t.Fatal("new connections accepted after SIGTERM")
	}
	if _, err := io.WriteString(conn, body[5:]); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("in-flight request cut off by shutdown: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("in-flight request answered %d, want upstream's 400 for a bad CSR", resp.StatusCode)
	}
	if err := daemon.Wait(20 * time.Second); err != nil {
		t.Fatalf("daemon did not exit cleanly after SIGTERM: %v\n%s", err, daemon.Log())
	}
}

func httpGet(url string) (string, error) {
	return httpGetWith(http.DefaultClient, url)
}

func httpGetWith(hc *http.Client, url string) (string, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}
