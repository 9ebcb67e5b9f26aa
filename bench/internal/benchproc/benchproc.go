// Package benchproc is the plumbing the benchmarks share: building
// stepfort the way step-ca is built, finding upstream step-ca, starting a CA
// process and waiting for /health, stopping it, reading its CPU time and
// memory from /proc, the scratch directory, settings from the environment,
// and cloning and watching the PostgreSQL databases the runs use.
package benchproc

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/stepfort/stepfort/internal/testenv"
)

// UpstreamVersion is the step-ca release stepfort is compared with.
const UpstreamVersion = "0.30.2"

// BuildStepfort builds ./cmd/stepfort of the repository at root into out
// with CGO_ENABLED=0 and the flags scripts/install-tools.sh uses for
// step-ca, so neither binary has an advantage from how it was built.
func BuildStepfort(ctx context.Context, root, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, "./cmd/stepfort")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build stepfort: %w\n%s", err, b)
	}
	return nil
}

// FindStepCA returns the upstream step-ca binary (path, or the one
// scripts/install-tools.sh installed) after checking its version.
func FindStepCA(path string) (string, error) {
	if path == "" {
		p, err := testenv.Tool("step-ca")
		if err != nil {
			return "", err
		}
		path = p
	}
	b, err := exec.Command(path, "version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s version: %w: %s", path, err, b)
	}
	if !strings.Contains(string(b), "/"+UpstreamVersion+" ") {
		return "", fmt.Errorf("%s is not step-ca %s (it says %q); run scripts/install-tools.sh", path, UpstreamVersion, strings.TrimSpace(string(b)))
	}
	return path, nil
}

// Server is a running CA process (stepfort serve or upstream step-ca).
type Server struct {
	Name string
	Proc *testenv.Process
	URL  string // https://127.0.0.1:PORT
}

// Start runs bin with args and env (plus a STEPPATH under dir, away from
// the user's ~/.step), logging to dir/server.log, and waits until /health on
// port answers over TLS verified against roots.
func Start(ctx context.Context, name, bin string, args, env []string, dir string, port int, roots *x509.CertPool) (*Server, error) {
	env = append(env, "STEPPATH="+filepath.Join(dir, "steppath"))
	p, err := testenv.NewProcess(filepath.Join(dir, "server.log"), bin, args, env)
	if err != nil {
		return nil, err
	}
	s := &Server{Name: name, Proc: p, URL: fmt.Sprintf("https://127.0.0.1:%d", port)}
	if err := s.waitReady(ctx, roots, 60*time.Second); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Server) waitReady(ctx context.Context, roots *x509.CertPool, timeout time.Duration) error {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get(s.URL + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = errors.New(resp.Status)
		}
		switch {
		case s.Proc.Exited():
			return fmt.Errorf("%s exited during start-up; log %s:\n%s", s.Name, s.Proc.LogPath(), Tail(s.Proc.Log(), 2000))
		case time.Now().After(deadline):
			return fmt.Errorf("%s not ready after %v: %v; log %s", s.Name, timeout, err, s.Proc.LogPath())
		case ctx.Err() != nil:
			return ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Check returns an error if the server is no longer running.
func (s *Server) Check() error {
	if s.Proc.Exited() {
		return fmt.Errorf("%s exited; log %s:\n%s", s.Name, s.Proc.LogPath(), Tail(s.Proc.Log(), 2000))
	}
	return nil
}

// Stop sends SIGTERM and kills the process group if it has not exited
// after 15 s. It is safe to call more than once, and on nil.
func (s *Server) Stop() {
	if s == nil || s.Proc.Exited() {
		return
	}
	_ = s.Proc.Signal(syscall.SIGTERM)
	if err := s.Proc.Wait(15 * time.Second); errors.Is(err, testenv.ErrTimeout) {
		_ = s.Proc.Kill9()
	}
}

// Memory returns the server's VmRSS and VmHWM in MiB.
func (s *Server) Memory() (rss, peak float64, err error) {
	return ProcMemory(strconv.Itoa(s.Proc.Pid()))
}

// CPUTime returns the CPU time (user + system) the server has used so far.
func (s *Server) CPUTime() (time.Duration, error) { return CPUTime(s.Proc.Pid()) }

// ProcMemory returns VmRSS and VmHWM (peak) of pid ("self" allowed) in MiB.
func ProcMemory(pid string) (rss, peak float64, err error) {
	f, err := os.Open("/proc/" + pid + "/status")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		if err != nil {
			return 0, 0, fmt.Errorf("parse %s of pid %s: %w", k, pid, err)
		}
		if k == "VmRSS" {
			rss = kb / 1024
		} else {
			peak = kb / 1024
		}
	}
	if rss == 0 {
		return 0, 0, fmt.Errorf("no VmRSS in /proc/%s/status", pid)
	}
	return rss, peak, sc.Err()
}

// clockTicks is USER_HZ, the unit of the CPU times in /proc/PID/stat; it is
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// CPUTime returns the user + system CPU time pid has used so far.
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses: state is
	// field 3, utime 14 and stime 15.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	var ticks int64
	for _, v := range f[11:13] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// TwoPorts returns two distinct free loopback ports.
func TwoPorts() (int, int, error) {
	a, err := testenv.FreePort()
	if err != nil {
		return 0, 0, err
	}
	for range 10 {
		b, err := testenv.FreePort()
		if err != nil {
			return 0, 0, err
		}
		if b != a {
			return a, b, nil
		}
	}
	return 0, 0, errors.New("no second free port")
}

// Tail returns the last n bytes of s.
func Tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
