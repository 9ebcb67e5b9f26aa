package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// auditCA is a CA whose trail checkpoints every few records and ships to
// sink (when not "").
func auditCA(t *testing.T, sink string) *ca {
	t.Helper()
	c := initCA(t)
	editConfig(t, c.Config, func(m map[string]any) {
		pl := m["stepfort"].(map[string]any)["plugins"].(map[string]any)
		al := pl["auditLog"].(map[string]any)
		al["checkpointEvery"] = 5
		if sink != "" {
			al["sink"] = map[string]any{"network": "tcp", "address": sink, "format": "syslog"}
		}
		m["stepfort"].(map[string]any)["events"] = map[string]any{"retryInterval": "200ms"}
	})
	return c
}

func stepfortCmd(c *ca, args ...string) (string, error) {
	full := append(args, "--ca-url", c.URL, "--root", c.Root, "--token-file", c.AdminToken)
	out, err := exec.Command(stepfortBin, full...).CombinedOutput()
	return string(out), err
}

// auditExport exports the live trail to a file and returns its lines.
func auditExport(t *testing.T, c *ca) (string, []string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "audit.jsonl")
	if out, err := stepfortCmd(c, "audit", "export", "--output", f); err != nil {
		t.Fatalf("audit export: %v\n%s", err, out)
	}
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

func verifyFile(c *ca, lines []string) (string, error) {
	f, _ := os.CreateTemp("", "audit-*.jsonl")
	defer os.Remove(f.Name())
	f.WriteString(strings.Join(lines, "\n") + "\n")
	f.Close()
	out, err := exec.Command(stepfortBin, "audit", "verify", f.Name(), "--key", filepath.Join(c.Dir, "secrets", "audit_key.pub")).CombinedOutput()
	return string(out), err
}

// TestAuditTrailVerifyAndTamper: a live CA's trail verifies (live and as
// an export); an edited byte, a deleted record, two swapped records and a
// truncated tail each fail naming the sequence number; a bad admin token
// leaves a failed-access record with the remote address; no secret is in
// any record; records reach a syslog listener.
func TestAuditTrailVerifyAndTamper(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var shipped atomic.Value
	shipped.Store("")
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		var all strings.Builder
		r := bufio.NewReader(conn)
		buf := make([]byte, 64<<10)
		for {
			n, err := r.Read(buf)
			all.Write(buf[:n])
			shipped.Store(all.String())
			if err != nil {
				return
			}
		}
	}()

	c := auditCA(t, ln.Addr().String())
	serve(t, c.Config, c.Password, c.Port)
	step := newStepCLI(t)
	step.bootstrap(c, c.URL)
	dir := t.TempDir()
	for i := range 3 {
		crt, key := filepath.Join(dir, fmt.Sprint(i, ".crt")), filepath.Join(dir, fmt.Sprint(i, ".key"))
		step.must("ca", "certificate", fmt.Sprintf("audit%d.example", i), crt, key, "--provisioner", "admin", "--provisioner-password-file", c.Password)
	}
	hc := apiClient(t, c)
	base := c.URL + "/api/v1"
	if status, _ := call(t, hc, "GET", base+"/tokens", "sft_0123456789abcdef_forged", nil); status != http.StatusUnauthorized {
		t.Fatalf("forged token: %d", status)
	}
	root := readToken(t, c)

	// The certificate records arrive through the outbox.
	var page map[string]any
	eventually(t, 20*time.Second, func() error {
		var status int
		status, page = call(t, hc, "GET", base+"/audit?action=certificate.issue", root, nil)
		if status != 200 {
			return fmt.Errorf("GET /audit: %d %v", status, page)
		}
		if n := len(page["records"].([]any)); n != 3 {
			return fmt.Errorf("%d issue records", n)
		}
		return nil
	})
	// Admin records are queued (not failClosed): wait for them.
	var recs []any
	eventually(t, 10*time.Second, func() error {
		status, page := call(t, hc, "GET", base+"/audit?outcome=denied&action=admin.request", root, nil)
		recs, _ = page["records"].([]any)
		if status != 200 || len(recs) == 0 {
			return fmt.Errorf("no denied admin record: %d %v", status, page)
		}
		return nil
	})
	denied := recs[0].(map[string]any)
	actor := denied["actor"].(map[string]any)
	if actor["remoteAddr"] == nil || actor["id"] != "0123456789abcdef" || denied["details"].(map[string]any)["status"] != "401" {
		t.Fatalf("failed-access record = %v", denied)
	}
	if status, _ := call(t, hc, "GET", base+"/audit?since=yesterday", root, nil); status != http.StatusBadRequest {
		t.Fatalf("bad filter: %d", status)
	}

	if out, err := stepfortCmd(c, "audit", "verify", "--key", filepath.Join(c.Dir, "secrets", "audit_key.pub")); err != nil || !strings.Contains(out, "OK") {
		t.Fatalf("live verify: %v\n%s", err, out)
	}
	text, lines := auditExport(t, c)
	if out, err := verifyFile(c, lines); err != nil {
		t.Fatalf("clean export does not verify: %v\n%s", err, out)
	}
	if len(lines) < 12 {
		t.Fatalf("only %d lines exported", len(lines))
	}

	// Secrets: the admin token (and its secret part), the CA password, the
	// SCEP challenges in ca.json.
	secrets := []string{root, strings.SplitN(root, "_", 3)[2]}
	pw, _ := os.ReadFile(c.Password)
	secrets = append(secrets, strings.TrimSpace(string(pw)))
	cfg, _ := os.ReadFile(c.Config)
	for _, m := range regexp.MustCompile(`"challenge"\s*:\s*"([^"]+)"`).FindAllStringSubmatch(string(cfg), -1) {
		secrets = append(secrets, m[1])
	}
	for _, s := range secrets {
		if s != "" && strings.Contains(text, s) {
			t.Fatalf("the trail holds a secret (%d chars)", len(s))
		}
	}

	// line i+1 holds seq from+i; the export starts at 0.
	cases := map[string]struct {
		edit func([]string) []string
		seq  int
	}{
		"edited byte": {func(l []string) []string {
			i := strings.Index(l[5], `"action":"`) + len(`"action":"`)
			l[5] = l[5][:i] + "X" + l[5][i+1:]
			return l
		}, 4},
		"deleted record":  {func(l []string) []string { return append(l[:7:7], l[8:]...) }, 6},
		"swapped records": {func(l []string) []string { l[3], l[4] = l[4], l[3]; return l }, 2},
		"truncated tail":  {func(l []string) []string { return l[:len(l)-2] }, len(lines) - 3},
	}
	for name, tc := range cases {
		out, err := verifyFile(c, tc.edit(append([]string(nil), lines...)))
		if err == nil || !strings.Contains(out, fmt.Sprintf("seq %d:", tc.seq)) {
			t.Errorf("%s: want a failure naming seq %d, got %v\n%s", name, tc.seq, err, out)
		}
	}

	eventually(t, 10*time.Second, func() error {
		s := shipped.Load().(string)
		if !strings.Contains(s, "<110>1 ") || !strings.Contains(s, "certificate.issue") || !strings.Contains(s, `"checkpoint"`) {
			return fmt.Errorf("syslog listener got %d bytes", len(s))
		}
		return nil
	})
}

// TestAuditKill9DuringIssuance: the step CLI issues in a loop, the daemon
// is killed with SIGKILL, restarted: every certificate issued has its
// audit record, and the trail verifies.
func TestAuditKill9DuringIssuance(t *testing.T) {
	c := auditCA(t, "")
	daemon := serve(t, c.Config, c.Password, c.Port)
	step := newStepCLI(t)
	step.bootstrap(c, c.URL)
	dir := t.TempDir()

	var mu sync.Mutex
	var issued []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				crt, key := filepath.Join(dir, fmt.Sprintf("%d-%d.crt", w, i)), filepath.Join(dir, fmt.Sprintf("%d-%d.key", w, i))
				if _, err := step.run("ca", "certificate", fmt.Sprintf("k%d-%d.example", w, i), crt, key, "--provisioner", "admin", "--provisioner-password-file", c.Password, "--force"); err != nil {
					continue // the daemon died under this one
				}
				mu.Lock()
				issued = append(issued, certSerial(t, crt))
				mu.Unlock()
			}
		}()
	}
	eventually(t, 30*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(issued) < 8 {
			return fmt.Errorf("%d issued", len(issued))
		}
		return nil
	})
	if err := daemon.Kill9(); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	serve(t, c.Config, c.Password, c.Port)

	hc := apiClient(t, c)
	root := readToken(t, c)
	eventually(t, 30*time.Second, func() error {
		have := map[string]bool{}
		after := -1
		for {
			status, page := call(t, hc, "GET", fmt.Sprintf("%s/api/v1/audit?action=certificate.issue&limit=1000&after=%d", c.URL, after), root, nil)
			if status != 200 {
				return fmt.Errorf("GET /audit: %d %v", status, page)
			}
			for _, r := range page["records"].([]any) {
				have[r.(map[string]any)["object"].(map[string]any)["serial"].(string)] = true
			}
			next, ok := page["next"].(float64)
			if !ok {
				break
			}
			after = int(next)
		}
		for _, s := range issued {
			if !have[s] {
				return fmt.Errorf("certificate %s has no audit record (%d of %d recorded)", s, len(have), len(issued))
			}
		}
		return nil
	})
	_, lines := auditExport(t, c)
	if out, err := verifyFile(c, lines); err != nil {
		t.Fatalf("trail after kill -9 does not verify: %v\n%s", err, out)
	}
	var hd struct {
		Header struct{ To int } `json:"header"`
	}
	_ = json.Unmarshal([]byte(lines[0]), &hd)
	t.Logf("%d certificates issued before kill -9; trail has %d records", len(issued), hd.Header.To)
}
