package storage

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/internal/testenv"
)

func TestTuneFindsThePool(t *testing.T) {
	pg := testenv.StartPostgres(t)
	d, err := nosql.New("postgresql", pg.DSN(), nosql.WithDatabase("pooltest"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if !TunePool(d, PoolSettings{MaxIdleConns: 7, MaxOpenConns: 9, ConnMaxIdleTime: time.Minute}) {
		t.Fatal("the *sql.DB inside smallstep/nosql's postgresql.DB was not found")
	}
	stats := SQLPool(d).Stats()
	if stats.MaxOpenConnections != 9 {
		t.Fatalf("stats = %+v", stats)
	}
	b, err := nosql.New("bbolt", filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if TunePool(b, PoolSettings{MaxIdleConns: 1}) {
		t.Fatal("bbolt reported as a SQL database")
	}
}
