package billing

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins"
)

// holdKey is the advisory lock the test holds to stop the slow replica.
const holdKey = 4242

// slowApp is the application_name of the slow replica's connections.
const slowApp = "billing-slow-replica"

// holdInserts makes every INSERT into table by a connection named slowApp
// wait (in a BEFORE INSERT trigger, so after its transaction's earlier
// statements) while the test holds the advisory lock holdKey.
func holdInserts(t *testing.T, pool *sql.DB, table string) {
	t.Helper()
	for _, stmt := range []string{
		`CREATE OR REPLACE FUNCTION billing_test_hold() RETURNS trigger AS $$
		BEGIN
			IF current_setting('application_name') = '` + slowApp + `' THEN
				PERFORM pg_advisory_lock_shared(` + fmt.Sprint(holdKey) + `);
				PERFORM pg_advisory_unlock_shared(` + fmt.Sprint(holdKey) + `);
			END IF;
			RETURN NEW;
		END $$ LANGUAGE plpgsql`,
		`CREATE TRIGGER billing_test_hold BEFORE INSERT ON ` + table + ` FOR EACH ROW EXECUTE FUNCTION billing_test_hold()`,
	} {
		if _, err := pool.Exec(stmt); err != nil {
			t.Fatal(err)
		}
	}
}

// waitHeld waits until a connection waits for the advisory lock.
func waitHeld(t *testing.T, pool *sql.DB) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		var n int
		if err := pool.QueryRow(`SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the slow replica never reached its insert")
}

// TestLateEndpointCreation: two replicas record the same issued event on
// PostgreSQL. Replica A reads the Endpoint as absent and is paused just
// before creating it; meanwhile replica B creates it and records a renewal
// into it. When A resumes, its "create" must lose: with nosql's
// compare-and-swap it overwrote the Endpoint and the renewal was lost (the
// cause of TestConcurrentRenewals/postgresql failing now and then).
// Deterministic: the pause is an advisory lock in an insert trigger.
func TestLateEndpointCreation(t *testing.T) {
	pg := testenv.StartPostgres(t)
	open := func(dsn string) nosql.DB {
		d, err := nosql.New("postgresql", dsn, nosql.WithDatabase("billing"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		return d
	}
	fast := open(pg.DSN())
	slow := open(pg.DSN() + "?application_name=" + slowApp)
	a, b := newTestStore(t, slow), newTestStore(t, fast)
	pool := storage.SQLPool(fast)
	holdInserts(t, pool, string(endpointsTable))

	root, rootDER := newCert(t, t0, 30*day, "late.example")
	issued := plugins.CertificateEvent{ID: "i", Kind: plugins.EventIssued, Serial: root.SerialNumber.String(),
		OccurredAt: t0, Provisioner: &jwk, CertificateDER: rootDER}
	c, der := newCert(t, t0.Add(time.Hour), 30*day, "late.example")
	renewed := plugins.CertificateEvent{ID: "r", Kind: plugins.EventRenewed, Serial: c.SerialNumber.String(),
		ParentSerial: issued.Serial, OccurredAt: t0.Add(time.Hour), Provisioner: &jwk, CertificateDER: der}

	ctx := context.Background()
	lock, err := pool.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if _, err := lock.ExecContext(ctx, "SELECT pg_advisory_lock($1)", holdKey); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Record(issued) }()
	waitHeld(t, pool)
	errB := b.Record(issued)
	if errB == nil {
		errB = b.Record(renewed)
	}
	if _, err := lock.ExecContext(ctx, "SELECT pg_advisory_unlock($1)", holdKey); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal("replica A:", err)
	}
	if errB != nil {
		t.Fatal("replica B:", errB)
	}
	for _, s := range []*Store{a, b} { // redelivery changes nothing
		for _, ev := range []plugins.CertificateEvent{issued, renewed} {
			if err := s.Record(ev); err != nil {
				t.Fatal(err)
			}
		}
	}
	e, err := b.Endpoint(lineageEndpointID(issued.Serial))
	if err != nil || e == nil {
		t.Fatalf("endpoint: %v, %v", e, err)
	}
	if e.Certificates != 2 || e.Renewals != 1 {
		t.Fatalf("endpoint holds %d certificates (%d renewals), want 2 (1): replica A's late creation overwrote it", e.Certificates, e.Renewals)
	}
	lineage, err := a.Lineage(e)
	if err != nil || len(lineage) != 2 {
		t.Fatalf("lineage %d entries, %v", len(lineage), err)
	}
}
