package testenv

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Postgres is a throwaway PostgreSQL server listening on 127.0.0.1 with a
// password-authenticated (SCRAM) superuser and a database both named
// "stepfort". It is tuned for speed, not durability (fsync=off), but data
// survives Kill9 since only the server processes die.
//
// When running as root, the server runs as the unprivileged "postgres" system
// user (PostgreSQL refuses to run as root), which is created if missing.
type Postgres struct {
	Host     string // always 127.0.0.1
	Port     int
	User     string // superuser
	Password string
	Database string // created empty, owned by User
	Dir      string // holds DataDir, the unix socket and postgres.log
	DataDir  string

	bin    string              // directory of the PostgreSQL binaries
	cred   *syscall.Credential // nil when not running as root
	ownDir bool                // Close removes Dir
	proc   *Process
}

// pgStartTimeout bounds how long Start waits for the server to be ready.
const pgStartTimeout = 60 * time.Second

// StartPostgres starts a new PostgreSQL server for the test. The test fails
// if it cannot be started. Cleanup stops it (fast shutdown), removes its
// files and, if the test failed, logs the tail of the server log.
func StartPostgres(tb testing.TB) *Postgres {
	tb.Helper()
	pg, err := NewPostgres("")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("postgres log (%s):\n%s", pg.LogPath(), tail(pg.Log(), 8<<10))
		}
		if err := pg.Close(); err != nil {
			tb.Error(err)
		}
	})
	return pg
}

// NewPostgres creates a PostgreSQL server in dir and starts it on a free
// port. If dir is "", a temporary directory is created (and removed by Close).
// dir/data must not exist yet. When running as root, dir and its parents must be traversable by the
// postgres user; dir itself is chowned to it.
//
// The data directory is copied from a template made once with initdb and
// cached in .cache/testenv at the repository root.
func NewPostgres(dir string) (*Postgres, error) {
	bin, err := pgBinDir()
	if err != nil {
		return nil, err
	}
	cred, err := pgCredential()
	if err != nil {
		return nil, err
	}
	tpl, err := pgTemplate(bin, cred)
	if err != nil {
		return nil, err
	}
	pg := &Postgres{Host: "127.0.0.1", User: pgUser, Password: tpl.password, Database: pgUser,
		Dir: dir, bin: bin, cred: cred}
	if dir == "" {
		if pg.Dir, err = os.MkdirTemp("", "testenv-pg-"); err != nil {
			return nil, fmt.Errorf("postgres: %w", err)
		}
		pg.ownDir = true
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := pg.init(tpl.dataDir); err != nil {
		pg.cleanup()
		return nil, err
	}
	return pg, nil
}

// init copies the template data directory and starts the server, retrying
// with another port if the chosen one was taken in the meantime.
func (pg *Postgres) init(tplData string) error {
	pg.DataDir = filepath.Join(pg.Dir, "data")
	if err := chown(pg.Dir, pg.cred); err != nil {
		return err
	}
	if pg.cred != nil {
		// The child changes directory after switching user, so this fails
		// unless the postgres user can reach pg.Dir.
		cmd := pg.command("postgres", "--version")
		cmd.Dir = pg.Dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("postgres: the postgres user cannot access %s (are its parents searchable by others?): %w: %s", pg.Dir, err, out)
		}
	}
	if _, err := os.Stat(pg.DataDir); err == nil {
		return fmt.Errorf("postgres: %s already exists", pg.DataDir)
	}
	if out, err := exec.Command("cp", "-a", tplData, pg.DataDir).CombinedOutput(); err != nil {
		return fmt.Errorf("postgres: copy template data dir: %w: %s", err, out)
	}
	sockDir := pg.Dir
	if len(sockDir) > 80 { // unix socket paths are limited to ~107 bytes
		sockDir = ""
	}
	var err error
	for range 3 {
		if pg.Port, err = FreePort(); err != nil {
			return err
		}
		// Later settings override earlier ones, so appending is enough.
		conf := fmt.Sprintf("\nlisten_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\n", pg.Port, sockDir)
		if err := appendFile(filepath.Join(pg.DataDir, "postgresql.conf"), conf); err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		var logged int64
		if fi, err := os.Stat(pg.LogPath()); err == nil {
			logged = fi.Size()
		}
		if err = pg.Start(); err == nil {
			return nil
		}
		if l := pg.Log(); int64(len(l)) < logged || !strings.Contains(l[logged:], "could not bind") {
			return err
		}
	}
	return err
}

// DSN returns the connection URL, postgresql://USER:PASSWORD@127.0.0.1:PORT/,
// which selects the database named like the user (pg.Database).
func (pg *Postgres) DSN() string {
	u := url.URL{Scheme: "postgresql", User: url.UserPassword(pg.User, pg.Password),
		Host: fmt.Sprintf("%s:%d", pg.Host, pg.Port), Path: "/"}
	return u.String()
}

// LogPath returns the path of the server log.
func (pg *Postgres) LogPath() string { return filepath.Join(pg.Dir, "postgres.log") }

// Log returns the server log.
func (pg *Postgres) Log() string {
	b, err := os.ReadFile(pg.LogPath())
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	return string(b)
}

// Running reports whether the server process is running.
func (pg *Postgres) Running() bool { return pg.proc != nil && !pg.proc.Exited() }

// Start starts the server on its data directory and port, and waits until it
// accepts connections. It is an error if it is already running.
func (pg *Postgres) Start() error {
	if pg.Running() {
		return fmt.Errorf("postgres on port %d: already running", pg.Port)
	}
	logf, err := os.OpenFile(pg.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	defer logf.Close()
	cmd := pg.command("postgres", "-D", pg.DataDir)
	cmd.Stdout, cmd.Stderr = logf, logf
	if pg.proc, err = startCmd(cmd, pg.LogPath()); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	if err := pg.waitReady(); err != nil {
		_ = pg.proc.Kill9()
		return fmt.Errorf("postgres on port %d: %w; log:\n%s", pg.Port, err, tail(pg.Log(), 2<<10))
	}
	return nil
}

// waitReady waits until postmaster.pid, written by our process, says the
// server is ready to accept connections (as pg_ctl does).
func (pg *Postgres) waitReady() error {
	deadline := time.Now().Add(pgStartTimeout)
	pidFile := filepath.Join(pg.DataDir, "postmaster.pid")
	for time.Now().Before(deadline) {
		if pg.proc.Exited() {
			return fmt.Errorf("server exited: %v", pg.proc.Wait(0))
		}
		if b, err := os.ReadFile(pidFile); err == nil {
			lines := strings.Split(string(b), "\n")
			if len(lines) >= 8 && lines[0] == strconv.Itoa(pg.proc.Pid()) && strings.TrimSpace(lines[7]) == "ready" {
				return nil
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("not ready after %v", pgStartTimeout)
}

// Stop shuts the server down (fast shutdown: clients are disconnected). It is
// a no-op if the server is not running.
func (pg *Postgres) Stop() error {
	if !pg.Running() {
		return nil
	}
	if err := pg.proc.Signal(syscall.SIGINT); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	if err := pg.proc.Wait(30 * time.Second); err != nil {
		_ = pg.proc.Kill9()
		return fmt.Errorf("postgres on port %d: stop: %w", pg.Port, err)
	}
	return nil
}

// Restart stops and starts the server.
func (pg *Postgres) Restart() error {
	if err := pg.Stop(); err != nil {
		return err
	}
	return pg.Start()
}

// Kill9 kills the server and all its backends with SIGKILL, simulating a
// crash, and waits until they are gone. Start recovers it.
func (pg *Postgres) Kill9() error {
	if !pg.Running() {
		return nil
	}
	// Backends call setsid, so killing the process group does not reach
	// them, and Start fails while any of them still holds the shared memory.
	// Freeze the postmaster so it forks no more, then kill it and them.
	pid := pg.proc.Pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("postgres: stop postmaster: %w", err)
	}
	kids := childPids(pid)
	if err := pg.proc.Kill9(); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	for _, k := range kids {
		_ = syscall.Kill(k, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, k := range kids {
		for alive(k) {
			if time.Now().After(deadline) {
				return fmt.Errorf("postgres: backend %d survived SIGKILL", k)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

// Close stops the server and, if NewPostgres created its directory, removes
// it.
func (pg *Postgres) Close() error {
	err := pg.Stop()
	pg.cleanup()
	return err
}

func (pg *Postgres) cleanup() {
	_ = pg.Kill9()
	if pg.ownDir {
		_ = os.RemoveAll(pg.Dir)
	}
}

func (pg *Postgres) command(name string, args ...string) *exec.Cmd {
	return pgCommand(pg.bin, pg.cred, name, args...)
}

// pgCommand returns a command running a PostgreSQL binary as cred (if not
// nil) in its own process group, killed if we die.
func pgCommand(bin string, cred *syscall.Credential, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(bin, name), args...)
	cmd.Env = []string{"PATH=" + bin + ":/usr/bin:/bin", "LC_ALL=C", "TZ=UTC"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	return cmd
}

// pgUser names the superuser and its database.
const pgUser = "stepfort"

// pgTemplateRev changes whenever the template's contents change.
const pgTemplateRev = "1"

// pgTemplateConf is added to the template's postgresql.conf.
const pgTemplateConf = `
# stepfort testenv: fast, not durable against OS crashes
fsync = off
shared_buffers = 32MB
max_connections = 200
`

type template struct{ dataDir, password string }

var (
	tplOnce sync.Once
	tplVal  template
	tplErr  error
)

// pgTemplate returns the cached template, creating it if needed: a data
// directory made by initdb, with the superuser and the database, and the
// superuser's password.
func pgTemplate(bin string, cred *syscall.Credential) (template, error) {
	tplOnce.Do(func() { tplVal, tplErr = loadTemplate(bin, cred) })
	return tplVal, tplErr
}

func loadTemplate(bin string, cred *syscall.Credential) (template, error) {
	out, err := exec.Command(filepath.Join(bin, "postgres"), "--version").Output()
	if err != nil {
		return template{}, fmt.Errorf("postgres --version: %w", err)
	}
	// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
	f := strings.Fields(string(out))
	if len(f) < 3 {
		return template{}, fmt.Errorf("postgres --version: unexpected output %q", out)
	}
	uid := os.Geteuid()
	if cred != nil {
		uid = int(cred.Uid)
	}
	cacheDir := filepath.Join(os.TempDir(), fmt.Sprintf("stepfort-testenv-%d", os.Geteuid()))
	if root, err := RepoRoot(); err == nil {
		d := filepath.Join(root, ".cache", "testenv")
		if os.MkdirAll(d, 0o755) == nil && syscall.Access(d, 2 /* W_OK */) == nil {
			cacheDir = d
		}
	}
	final := filepath.Join(cacheDir, fmt.Sprintf("pg%s-uid%d-r%s", f[2], uid, pgTemplateRev))
	tpl := template{dataDir: filepath.Join(final, "data")}
	if b, err := os.ReadFile(filepath.Join(final, "password")); err == nil {
		tpl.password = string(b)
		return tpl, nil
	}

	// Build it in a fresh directory under the temp dir, which the postgres
	// user can reach, then move it into the cache.
	tmp, err := os.MkdirTemp("", "testenv-pgtpl-")
	if err != nil {
		return template{}, fmt.Errorf("postgres template: %w", err)
	}
	defer os.RemoveAll(tmp)
	pw, err := buildTemplate(tmp, bin, cred)
	if err != nil {
		return template{}, fmt.Errorf("postgres template: %w", err)
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return template{}, fmt.Errorf("postgres template: %w", err)
	}
	staging, err := os.MkdirTemp(cacheDir, "tmp-")
	if err != nil {
		return template{}, fmt.Errorf("postgres template: %w", err)
	}
	defer os.RemoveAll(staging)
	if out, err := exec.Command("cp", "-a", filepath.Join(tmp, "data"), staging).CombinedOutput(); err != nil {
		return template{}, fmt.Errorf("postgres template: copy: %w: %s", err, out)
	}
	if err := os.WriteFile(filepath.Join(staging, "password"), []byte(pw), 0o600); err != nil {
		return template{}, fmt.Errorf("postgres template: %w", err)
	}
	if err := os.Rename(staging, final); err != nil {
		// Another process may have won the race; use its template.
		if b, rerr := os.ReadFile(filepath.Join(final, "password")); rerr == nil {
			tpl.password = string(b)
			return tpl, nil
		}
		return template{}, fmt.Errorf("postgres template: %w", err)
	}
	tpl.password = pw
	return tpl, nil
}

// buildTemplate runs initdb in dir/data and creates the database. It returns
// the superuser's password.
func buildTemplate(dir, bin string, cred *syscall.Credential) (string, error) {
	if err := chown(dir, cred); err != nil {
		return "", err
	}
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	pw := hex.EncodeToString(b)
	pwFile := filepath.Join(dir, "pwfile")
	if err := os.WriteFile(pwFile, []byte(pw+"\n"), 0o600); err != nil {
		return "", err
	}
	if err := chown(pwFile, cred); err != nil {
		return "", err
	}
	data := filepath.Join(dir, "data")
	cmd := pgCommand(bin, cred, "initdb", "-D", data, "-U", pgUser, "--pwfile", pwFile,
		"--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale",
		"--no-sync", "--no-instructions")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("initdb: %w: %s", err, out)
	}
	if err := appendFile(filepath.Join(data, "postgresql.conf"), pgTemplateConf); err != nil {
		return "", err
	}
	// Single-user mode needs neither a port nor a password.
	cmd = pgCommand(bin, cred, "postgres", "--single", "-D", data, "template1")
	cmd.Stdin = strings.NewReader("CREATE DATABASE " + pgUser + ";\n")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil || strings.Contains(out.String(), "ERROR") {
		return "", fmt.Errorf("create database: %v: %s", err, out.String())
	}
	return pw, nil
}

// pgBinDir returns the directory of the PostgreSQL server binaries:
// /usr/lib/postgresql/15/bin, else the newest /usr/lib/postgresql/*/bin, else
// the directory of "postgres" in PATH.
func pgBinDir() (string, error) {
	if isFile("/usr/lib/postgresql/15/bin/postgres") {
		return "/usr/lib/postgresql/15/bin", nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
	for _, d := range dirs {
		if isFile(filepath.Join(d, "postgres")) && isFile(filepath.Join(d, "initdb")) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("postgres: PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin or PATH; run `make tools` (scripts/install-tools.sh)")
}

// pgCredential returns the credential of the postgres system user when
// running as root (creating the user if needed), and nil otherwise.
func pgCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		out, uerr := exec.Command("useradd", "--system", "--user-group", "--no-create-home",
			"--shell", "/usr/sbin/nologin", "postgres").CombinedOutput()
		if uerr != nil {
			return nil, fmt.Errorf("postgres: create system user: %w: %s", uerr, out)
		}
		if u, err = user.Lookup("postgres"); err != nil {
			return nil, fmt.Errorf("postgres: %w", err)
		}
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres: uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres: gid %q: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func chown(path string, cred *syscall.Credential) error {
	if cred == nil {
		return nil
	}
	if err := os.Chown(path, int(cred.Uid), int(cred.Gid)); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	return nil
}

func appendFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(s); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func isFile(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}

// childPids returns the ids of the processes whose parent is pid.
func childPids(pid int) []int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var kids []int
	for _, f := range stats {
		if ppid, _, ok := procStat(f); ok && ppid == pid {
			if k, err := strconv.Atoi(filepath.Base(filepath.Dir(f))); err == nil {
				kids = append(kids, k)
			}
		}
	}
	return kids
}

// alive reports whether process pid exists and is not a zombie.
func alive(pid int) bool {
	_, state, ok := procStat(fmt.Sprintf("/proc/%d/stat", pid))
	return ok && state != "Z" && state != "X"
}

// procStat returns the parent pid and the state from a /proc/PID/stat file.
func procStat(path string) (ppid int, state string, ok bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, "", false
	}
	// "pid (comm) state ppid ...", where comm may contain spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, "", false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, "", false
	}
	ppid, err = strconv.Atoi(f[1])
	return ppid, f[0], err == nil
}
