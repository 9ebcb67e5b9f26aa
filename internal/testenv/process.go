package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Process is a subprocess whose stdout and stderr go to a log file. It runs
// in its own process group so that Kill9 and Signal also reach its children,
// and gets SIGKILL if the process that started it dies (e.g. a test binary
// killed on timeout).
type Process struct {
	Cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // set before done is closed
}

// StartProcess starts name (a path, or a tool name resolved with Tool) with
// args. env entries are added to the current environment, overriding it.
// Output goes to a file in tb.TempDir(). The test fails if the process cannot
// be started. Cleanup kills the process and, if the test failed, logs the
// tail of its output.
func StartProcess(tb testing.TB, name string, args []string, env []string) *Process {
	tb.Helper()
	logPath := filepath.Join(tb.TempDir(), filepath.Base(name)+".log")
	p, err := NewProcess(logPath, name, args, env)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = p.Kill9()
		if tb.Failed() {
			tb.Logf("output of %s (%s):\n%s", name, logPath, tail(p.Log(), 8<<10))
		}
	})
	return p
}

// NewProcess is StartProcess for programs without a testing.TB: output goes
// to logPath (created or truncated), and the caller must stop the process.
func NewProcess(logPath, name string, args []string, env []string) (*Process, error) {
	path := name
	if !strings.ContainsRune(name, os.PathSeparator) {
		var err error
		if path, err = Tool(name); err != nil {
			return nil, err
		}
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer logf.Close()
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return startCmd(cmd, logPath)
}

// startCmd starts cmd (which must have Setpgid set) and reaps it in the
// background.
func startCmd(cmd *exec.Cmd, logPath string) (*Process, error) {
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	p := &Process{Cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid returns the process id.
func (p *Process) Pid() int { return p.Cmd.Process.Pid }

// LogPath returns the path of the file holding the process output.
func (p *Process) LogPath() string { return p.logPath }

// Log returns the process output so far.
func (p *Process) Log() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	return string(b)
}

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the process group. It is a no-op once the process has
// exited.
func (p *Process) Signal(sig os.Signal) error {
	if p.Exited() {
		return nil
	}
	s, ok := sig.(syscall.Signal)
	if !ok {
		return fmt.Errorf("signal %v to %s: not a syscall.Signal", sig, p.Cmd.Path)
	}
	if err := syscall.Kill(-p.Pid(), s); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %v to %s: %w", sig, p.Cmd.Path, err)
	}
	return nil
}

// Kill9 sends SIGKILL to the process group and waits for the process to
// exit.
func (p *Process) Kill9() error {
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	<-p.done
	return nil
}

// ErrTimeout is returned by Wait when the process is still running.
var ErrTimeout = errors.New("timeout")

// Wait waits up to timeout for the process to exit and returns its exit error
// (nil for status 0, *exec.ExitError otherwise), or an error wrapping
// ErrTimeout if it is still running.
func (p *Process) Wait(timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return p.err
	case <-t.C:
		return fmt.Errorf("wait for %s (pid %d): %w after %v", p.Cmd.Path, p.Pid(), ErrTimeout, timeout)
	}
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
