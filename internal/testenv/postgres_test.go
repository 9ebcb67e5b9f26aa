package testenv

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
)

func openDB(t *testing.T, pg *Postgres) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func count(t *testing.T, db *sql.DB) int {
	t.Helper()
	var n int
	if err := db.QueryRow("SELECT count(*) FROM certs").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestPostgres(t *testing.T) {
	start := time.Now()
	pg := StartPostgres(t)
	t.Logf("postgres started in %v: %s", time.Since(start), pg.DSN())
	if !strings.HasPrefix(pg.DSN(), "postgresql://stepfort:") || !strings.HasSuffix(pg.DSN(), "/") {
		t.Errorf("DSN() = %q", pg.DSN())
	}

	db := openDB(t, pg)
	var user, dbname string
	if err := db.QueryRow("SELECT current_user, current_database()").Scan(&user, &dbname); err != nil {
		t.Fatal(err)
	}
	if user != "stepfort" || dbname != "stepfort" {
		t.Errorf("connected as %s to %s, want stepfort to stepfort", user, dbname)
	}
	var shared string
	if err := db.QueryRow("SHOW shared_buffers").Scan(&shared); err != nil || shared != "32MB" {
		t.Errorf("shared_buffers = %q, %v", shared, err)
	}
	if _, err := db.Exec("CREATE TABLE certs (serial text PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("INSERT INTO certs VALUES ('1'), ('2')"); err != nil {
		t.Fatal(err)
	}

	// A wrong password is refused.
	bad := *pg
	bad.Password = "wrong"
	badDB, err := sql.Open("pgx", bad.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer badDB.Close()
	if err := badDB.Ping(); err == nil {
		t.Error("connected with a wrong password")
	}

	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := db.Ping(); err == nil {
		t.Fatal("ping succeeded with the server stopped")
	}
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	if n := count(t, db); n != 2 {
		t.Fatalf("after restart: %d rows, want 2", n)
	}

	if _, err := db.Exec("INSERT INTO certs VALUES ('3')"); err != nil {
		t.Fatal(err)
	}
	// Busy backends must die too, or Start fails on the shared memory.
	ctx := context.Background()
	for range 10 {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go c.ExecContext(ctx, "SELECT pg_sleep(30)") //nolint:errcheck // killed
	}
	time.Sleep(100 * time.Millisecond)
	if err := pg.Kill9(); err != nil {
		t.Fatal(err)
	}
	if pg.Running() {
		t.Fatal("running after Kill9")
	}
	start = time.Now()
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("recovered after Kill9 in %v", time.Since(start))
	// Pooled connections may hold the dying backend's last message.
	db = openDB(t, pg)
	if n := count(t, db); n != 3 {
		t.Fatalf("after Kill9 and Start: %d rows, want 3", n)
	}

	if err := pg.Restart(); err != nil {
		t.Fatal(err)
	}
	if n := count(t, db); n != 3 {
		t.Fatalf("after Restart: %d rows, want 3", n)
	}
}

// Two servers run side by side, isolated from each other.
func TestPostgresTwo(t *testing.T) {
	a, b := StartPostgres(t), StartPostgres(t)
	if a.Port == b.Port || a.Dir == b.Dir {
		t.Fatalf("servers share port %d or dir %s", a.Port, a.Dir)
	}
	dbA, dbB := openDB(t, a), openDB(t, b)
	if _, err := dbA.Exec("CREATE TABLE certs (serial text)"); err != nil {
		t.Fatal(err)
	}
	if _, err := dbB.Exec("SELECT 1 FROM certs"); err == nil {
		t.Fatal("table created on a is visible on b")
	}
}

// NewPostgres in a given directory; Close stops the server but leaves the
// directory.
func TestNewPostgresDir(t *testing.T) {
	base := t.TempDir()
	// t.TempDir's parent is private to root; the postgres user must reach dir.
	for _, d := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(base, "pg")
	pg, err := NewPostgres(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	if pg.Dir != dir || pg.DataDir != filepath.Join(dir, "data") {
		t.Errorf("Dir, DataDir = %s, %s", pg.Dir, pg.DataDir)
	}
	if err := WaitTCP(fmt.Sprintf("%s:%d", pg.Host, pg.Port), time.Second); err != nil {
		t.Fatal(err)
	}
	if err := pg.Close(); err != nil {
		t.Fatal(err)
	}
	if pg.Running() {
		t.Fatal("running after Close")
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "PG_VERSION")); err != nil {
		t.Fatalf("data dir removed by Close: %v", err)
	}
	if _, err := NewPostgres(dir); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("NewPostgres on a used dir: %v, want an error", err)
	}
}
