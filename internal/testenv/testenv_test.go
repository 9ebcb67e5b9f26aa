package testenv

import (
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestRepoRoot(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if modulePath(filepath.Join(root, "go.mod")) != ModulePath {
		t.Fatalf("RepoRoot() = %s: go.mod does not declare %s", root, ModulePath)
	}
	if _, err := os.Stat(filepath.Join(root, "internal", "testenv")); err != nil {
		t.Fatal(err)
	}
}

func TestTool(t *testing.T) {
	if p := MustTool(t, "sh"); !filepath.IsAbs(p) {
		t.Errorf("MustTool(sh) = %q, want an absolute path", p)
	}
	_, err := Tool("no-such-tool-xyz")
	if err == nil || !strings.Contains(err.Error(), "make tools") {
		t.Errorf("Tool(missing) error = %v, want one mentioning make tools", err)
	}
	// The tools that scripts/install-tools.sh provides.
	for _, name := range []string{"step", "step-ca", "openssl", "curl", "lego", "swtpm"} {
		MustTool(t, name)
	}
}

func TestFreePortWaitTCP(t *testing.T) {
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	if err := WaitTCP(addr, 100*time.Millisecond); err == nil {
		t.Fatalf("WaitTCP(%s) succeeded with nothing listening", addr)
	}
	go func() {
		time.Sleep(200 * time.Millisecond)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Error(err)
			return
		}
		t.Cleanup(func() { l.Close() })
	}()
	if err := WaitTCP(addr, 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestWaitHTTPS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	if err := WaitHTTPS(srv.URL+"/health", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	bad := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer bad.Close()
	if err := WaitHTTPS(bad.URL, 100*time.Millisecond); err == nil {
		t.Fatal("WaitHTTPS succeeded on a 503")
	}
}

func TestProcess(t *testing.T) {
	p := StartProcess(t, "sh", []string{"-c", `echo "hello $GREETING"; exec sleep 60`}, []string{"GREETING=world"})
	if err := p.Wait(200 * time.Millisecond); err == nil {
		t.Fatal("Wait returned before the process exited")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(p.Log(), "hello world") {
		if time.Now().After(deadline) {
			t.Fatalf("log = %q, want hello world", p.Log())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(5 * time.Second); err == nil || !p.Exited() {
		t.Fatalf("Wait after SIGTERM = %v, want a signal exit", err)
	}

	q := StartProcess(t, "sh", []string{"-c", "sleep 60"}, nil)
	if err := q.Kill9(); err != nil {
		t.Fatal(err)
	}
	if !q.Exited() {
		t.Fatal("not exited after Kill9")
	}

	r := StartProcess(t, "sh", []string{"-c", "exit 3"}, nil)
	if err := r.Wait(5 * time.Second); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("Wait = %v, want exit status 3", err)
	}
}
