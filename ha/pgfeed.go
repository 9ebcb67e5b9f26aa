package ha

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/internal/storage"
)

// notifyChannel carries "i:<serial>" (issued), "r:<serial>" (revoked) and
// "rd:<serial>" (revocation row deleted) from database triggers, so every
// transaction that writes these rows announces them on commit, whichever
// replica (or upstream step-ca process) made it.
const notifyChannel = "stepfort_certs"

// Feed timing: a quiet listener pings the server this often, and a ping or
// reconnect attempt that takes longer than feedTimeout marks the index stale
// (requests then read the database) until the feed is back and resynced.
const (
	feedIdle    = 400 * time.Millisecond
	feedTimeout = 500 * time.Millisecond
)

// installNotifyTriggers creates the trigger function and the triggers on
// upstream's x509_certs and revoked_x509_certs tables, once, under an
// advisory lock so replicas starting together do not race. The triggers are
// only created when missing: CREATE TRIGGER locks the table against writes.
func installNotifyTriggers(ctx context.Context, pool *sql.DB) error {
	const ddl = `
DO $stepfort$
BEGIN
  PERFORM pg_advisory_xact_lock(7419001);
  CREATE OR REPLACE FUNCTION stepfort_cert_notify() RETURNS trigger LANGUAGE plpgsql AS $f$
  BEGIN
    IF TG_OP = 'DELETE' THEN
      PERFORM pg_notify('` + notifyChannel + `', TG_ARGV[0] || 'd:' || encode(OLD.nkey, 'escape'));
      RETURN OLD;
    END IF;
    PERFORM pg_notify('` + notifyChannel + `', TG_ARGV[0] || ':' || encode(NEW.nkey, 'escape'));
    RETURN NEW;
  END $f$;
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'stepfort_notify' AND tgrelid = 'revoked_x509_certs'::regclass) THEN
    CREATE TRIGGER stepfort_notify AFTER INSERT OR UPDATE OR DELETE ON revoked_x509_certs
      FOR EACH ROW EXECUTE FUNCTION stepfort_cert_notify('r');
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'stepfort_notify' AND tgrelid = 'x509_certs'::regclass) THEN
    CREATE TRIGGER stepfort_notify AFTER INSERT ON x509_certs
      FOR EACH ROW EXECUTE FUNCTION stepfort_cert_notify('i');
  END IF;
END $stepfort$;`
	tx, err := pool.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, ddl); err != nil {
		return err
	}
	return tx.Commit()
}

// pgFeed keeps a statusIndex live from PostgreSQL notifications. Each
// session takes one connection out of upstream's pool, LISTENs, then loads
// the revoked set (so nothing committed after the LISTEN is missed), marks
// the index live and applies notifications until the connection fails or
// stops answering pings; then the index goes stale and a new session starts.
type pgFeed struct {
	pool    *sql.DB
	store   nosql.DB
	idx     *statusIndex
	log     *slog.Logger
	changed func(serial string) // after the index learned about serial
	resyncs prometheus.Counter
}

// newPGFeed returns a feed for the PostgreSQL store, or nil (with the
// reason logged) when requests must keep reading the database: the
// triggers could not be installed, or the pool was not found.
func newPGFeed(store nosql.DB, idx *statusIndex, log *slog.Logger, reg prometheus.Registerer) *pgFeed {
	pool := storage.SQLPool(store)
	if pool == nil {
		log.Warn("OCSP status cache off: PostgreSQL connection pool not found; every request reads the database")
		return nil
	}
	// Plugins are built before the daemon serves and without a context;
	// the bound keeps a stuck database from hanging start-up.
	ictx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := installNotifyTriggers(ictx, pool); err != nil {
		log.Warn("OCSP status cache off: cannot install notification triggers; every request reads the database", "error", err)
		return nil
	}
	f := &pgFeed{pool: pool, store: store, idx: idx, log: log}
	f.resyncs = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "stepfort", Subsystem: "ocsp", Name: "status_resyncs_total",
		Help: "Full reloads of the revoked set after the PostgreSQL notification feed (re)connected"})
	var err error
	if f.resyncs, err = register(reg, f.resyncs); err != nil {
		log.Warn("register metric", "error", err)
	}
	return f
}

// Run keeps sessions going until ctx ends.
func (f *pgFeed) Run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		err := f.session(ctx)
		f.idx.setLive(false)
		if ctx.Err() != nil {
			return
		}
		f.log.Warn("OCSP notification feed lost; answering from the database until it is back", "error", err)
		if time.Since(start) > 10*time.Second {
			backoff = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (f *pgFeed) session(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	conn, err := f.pool.Conn(cctx)
	cancel()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("unexpected driver connection %T", dc)
		}
		pc := sc.Conn()
		// The connection never goes back to the pool listening.
		defer func() { _ = pc.Close(context.Background()) }()
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		// The name shows the session in pg_stat_activity.
		_, err := pc.Exec(lctx, "SET application_name = 'stepfort-ocsp-feed'; LISTEN "+notifyChannel)
		cancel()
		if err != nil {
			return fmt.Errorf("LISTEN: %w", err)
		}
		n, err := f.idx.load(f.store)
		if err != nil {
			return err
		}
		f.resyncs.Inc()
		f.log.Info("OCSP status cache live", "revoked", n, "database", "postgresql")
		return f.listen(ctx, pc)
	})
}

// listen applies notifications, pinging the server whenever it is quiet.
func (f *pgFeed) listen(ctx context.Context, pc *pgx.Conn) error {
	for {
		wctx, cancel := context.WithTimeout(ctx, feedIdle)
		n, err := pc.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			if err := f.apply(n.Payload); err != nil {
				return err
			}
			continue
		case ctx.Err() != nil:
			return ctx.Err()
		case !pgconn.Timeout(err):
			return fmt.Errorf("wait for notification: %w", err)
		}
		pctx, cancel := context.WithTimeout(ctx, feedTimeout)
		err = pc.Ping(pctx)
		cancel()
		if err != nil {
			return fmt.Errorf("ping: %w", err)
		}
	}
}

// apply updates the index from one notification. A failed read of a
// revocation ends the session (the index goes stale, then resyncs) rather
// than leaving the index without it.
func (f *pgFeed) apply(payload string) error {
	kind, serial, ok := strings.Cut(payload, ":")
	if !ok || serial == "" {
		f.log.Warn("OCSP feed: ignoring malformed notification", "payload", payload)
		return nil
	}
	switch kind {
	case "i":
		f.idx.issuedNow(serial)
	case "r":
		rci, err := storage.Revocation(f.store, serial)
		if err != nil {
			return err
		}
		if rci == nil {
			return nil // deleted since
		}
		f.idx.revokedNow(serial, fromInfo(rci))
	case "rd":
		f.idx.unrevokedNow(serial)
	default:
		return nil
	}
	if f.changed != nil {
		f.changed(serial)
	}
	return nil
}

// loadRevoked reads the whole revoked table, streaming it (a million
// revocations are about 100 MB in the index, not the table's gigabytes).
func loadRevoked(store nosql.DB) (map[string]revocation, error) {
	out := map[string]revocation{}
	err := storage.ForEach(store, storage.RevokedCertsTable, func(key, value []byte) error {
		row, err := decodeCRLRow(value)
		if err != nil {
			return fmt.Errorf("revocation %s: %w", key, err)
		}
		out[string(key)] = revocation{at: row.revokedAt, reason: row.reason}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load revocations: %w", err)
	}
	return out, nil
}

// register registers c, or returns the collector already registered under
// the same name (a plugin started again in one process keeps counting into
// the collector the registry exposes).
func register[T prometheus.Collector](reg prometheus.Registerer, c T) (T, error) {
	if err := reg.Register(c); err != nil {
		var already prometheus.AlreadyRegisteredError
		if errors.As(err, &already) {
			if existing, ok := already.ExistingCollector.(T); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}
