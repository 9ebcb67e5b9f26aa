package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/smallstep/nosql"
)

// Backends are the databases storage tests run on.
var Backends = []string{"bbolt", "postgresql"}

// shared is one PostgreSQL server per test binary, started by the first
// test that opens a PostgreSQL store; each store is a database of its own.
var shared struct {
	once sync.Once
	srv  *Postgres
	err  error
	dbs  atomic.Int64
}

// OpenStore opens a fresh, empty store on backend ("bbolt" or
// "postgresql"), closed when the test ends. A package that uses it runs
// its tests through RunMain, which stops the shared server.
func OpenStore(t testing.TB, backend string) nosql.DB {
	t.Helper()
	var db nosql.DB
	var err error
	switch backend {
	case "bbolt":
		db, err = nosql.New("bbolt", filepath.Join(t.TempDir(), "db"))
	case "postgresql":
		shared.once.Do(func() { shared.srv, shared.err = NewPostgres("") })
		if shared.err != nil {
			t.Fatal(shared.err)
		}
		db, err = nosql.New("postgresql", shared.srv.DSN(), nosql.WithDatabase(fmt.Sprintf("store%d", shared.dbs.Add(1))))
	default:
		t.Fatalf("unknown backend %q", backend)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// RunMain runs the tests, then stops the server OpenStore started.
func RunMain(m *testing.M) {
	code := m.Run()
	if shared.srv != nil {
		if err := shared.srv.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "stop postgres:", err)
		}
	}
	os.Exit(code)
}
