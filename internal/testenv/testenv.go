// Package testenv provides the plumbing shared by stepfort's end-to-end tests
// and benchmark programs: locating the repository and external tools,
// allocating ports, waiting for servers, running subprocesses and throwaway
// PostgreSQL servers.
//
// It is meant for tests and bench programs only; the daemon must not import
// it. External tools are installed by scripts/install-tools.sh (make tools).
package testenv

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ModulePath is the Go module path that identifies the repository root.
const ModulePath = "github.com/stepfort/stepfort"

// RepoRoot returns the repository root: the nearest directory, walking up
// from the working directory, whose go.mod declares ModulePath.
func RepoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("repo root: %w", err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if modulePath(filepath.Join(dir, "go.mod")) == ModulePath {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("repo root: no go.mod for module %s in %s or its parents", ModulePath, wd)
		}
	}
}

// modulePath returns the module path declared in the go.mod file at path, or
// "" if it cannot be read.
func modulePath(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "module" {
			return strings.Trim(fields[1], `"`)
		}
	}
	return ""
}

// Tool returns the path of the external tool name: .tools/bin/<name> in the
// repository if it exists, otherwise name looked up in PATH. The error tells
// how to install the tool (make tools).
func Tool(name string) (string, error) {
	if root, err := RepoRoot(); err == nil {
		p := filepath.Join(root, ".tools", "bin", name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("tool %q not found in .tools/bin or PATH; run `make tools` (scripts/install-tools.sh): %w", name, err)
	}
	return p, nil
}

// MustTool is like Tool but fails the test (never skips it) if the tool is
// missing.
func MustTool(tb testing.TB, name string) string {
	tb.Helper()
	p, err := Tool(name)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// FreePort returns a TCP port on 127.0.0.1 that was free at the time of the
// call.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// pollInterval is how often the Wait functions retry.
const pollInterval = 25 * time.Millisecond

// WaitTCP waits until a TCP connection to addr (host:port) succeeds, or
// returns an error after timeout.
func WaitTCP(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for tcp %s: not reachable after %v: %w", addr, timeout, err)
		}
		time.Sleep(pollInterval)
	}
}

// WaitHTTPS waits until a GET of url returns a response with a status below
// 500, or returns an error after timeout. The server certificate is not
// verified.
func WaitHTTPS(url string, timeout time.Duration) error {
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // only waiting for readiness
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 500 {
				return nil
			}
			err = errors.New(resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for %s: not ready after %v: %w", url, timeout, err)
		}
		time.Sleep(pollInterval)
	}
}
