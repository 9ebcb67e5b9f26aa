package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/stepfort/stepfort/internal/testenv"
)

// serverKind says how to run one of the compared servers on a ca.json.
type serverKind struct {
	stepfort    bool // run the stepfort binary (else upstream step-ca)
	idlePlugins bool // disable every stepfort plugin in ca.json
}

// serverKinds are the servers -servers can name. "stepfort" follows
// -plugins; "stepfort-plugins" always keeps the plugins stepfort init
// configured (an informative extra row, not the target).
var serverKinds = map[string]serverKind{
	"upstream":         {},
	"stepfort":         {stepfort: true, idlePlugins: true},
	"stepfort-plugins": {stepfort: true},
}

// server is a running CA process.
type server struct {
	name string
	proc *testenv.Process
	url  string // https://127.0.0.1:PORT
}

// startServer starts bin on cfgFile, with env added to its environment, and
// waits until /health answers over TLS verified against roots.
func startServer(ctx context.Context, name, bin string, stepfort bool, cfgFile, passwordFile, dir string, port int, roots *x509.CertPool, env []string) (*server, error) {
	args := []string{cfgFile, "--password-file", passwordFile}
	if stepfort {
		args = append([]string{"serve"}, args...)
	}
	// STEPPATH keeps both servers away from the user's ~/.step.
	env = append(env, "STEPPATH="+filepath.Join(dir, "steppath"))
	p, err := testenv.NewProcess(filepath.Join(dir, "server.log"), bin, args, env)
	if err != nil {
		return nil, err
	}
	s := &server{name: name, proc: p, url: fmt.Sprintf("https://127.0.0.1:%d", port)}
	if err := s.waitReady(ctx, roots, 60*time.Second); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

func (s *server) waitReady(ctx context.Context, roots *x509.CertPool, timeout time.Duration) error {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get(s.url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = errors.New(resp.Status)
		}
		switch {
		case s.proc.Exited():
			return fmt.Errorf("%s exited during start-up; log %s:\n%s", s.name, s.proc.LogPath(), tail(s.proc.Log(), 2000))
		case time.Now().After(deadline):
			return fmt.Errorf("%s not ready after %v: %v; log %s", s.name, timeout, err, s.proc.LogPath())
		case ctx.Err() != nil:
			return ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// check returns an error if the server is no longer running.
func (s *server) check() error {
	if s.proc.Exited() {
		return fmt.Errorf("%s exited while under load; log %s:\n%s", s.name, s.proc.LogPath(), tail(s.proc.Log(), 2000))
	}
	return nil
}

// stop asks the server to shut down and kills it (and its process group)
// if it has not exited after 15 s. It is safe to call more than once.
func (s *server) stop() {
	if s.proc.Exited() {
		return
	}
	_ = s.proc.Signal(syscall.SIGTERM)
	if err := s.proc.Wait(15 * time.Second); errors.Is(err, testenv.ErrTimeout) {
		_ = s.proc.Kill9()
	}
}

// memory returns the server's resident set size and its peak (VmRSS and
// VmHWM from /proc/PID/status) in MiB.
func (s *server) memory() (rss, peak float64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", s.proc.Pid()))
	if err != nil {
		return 0, 0, fmt.Errorf("read RSS of %s: %w", s.name, err)
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
			return 0, 0, fmt.Errorf("parse %s of %s: %w", k, s.name, err)
		}
		if k == "VmRSS" {
			rss = kb / 1024
		} else {
			peak = kb / 1024
		}
	}
	if rss == 0 {
		return 0, 0, fmt.Errorf("no VmRSS for %s (pid %d)", s.name, s.proc.Pid())
	}
	return rss, peak, sc.Err()
}

// clockTicks is USER_HZ, the unit of the CPU times in /proc/PID/stat; it is
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// cpuTime returns the CPU time (user + system) the server has used so far.
func (s *server) cpuTime() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.proc.Pid()))
	if err != nil {
		return 0, fmt.Errorf("read CPU time of %s: %w", s.name, err)
	}
	// Fields after the command name, which is in parentheses: state is
	// field 3, utime 14 and stime 15.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat of %s", s.proc.Pid(), s.name)
	}
	var ticks int64
	for _, v := range f[11:13] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse /proc/%d/stat of %s: %w", s.proc.Pid(), s.name, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
