package certindex

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// sqlStore is the index as a PostgreSQL table with one column per filter:
// B-tree indexes serve the sort orders (with the serial as tie-breaker, so
// a cursor is an index seek) and the equality filters, and a trigram GIN
// index (pg_trgm) serves the substring search. doc holds the whole record
// as JSON, which is what reads return.
type sqlStore struct {
	db *sql.DB
}

// schema is created idempotently under an advisory lock (two replicas
// starting together would otherwise race on CREATE ... IF NOT EXISTS).
var schema = []string{
	`CREATE TABLE IF NOT EXISTS stepfort_certindex (
		serial TEXT COLLATE "C" PRIMARY KEY,
		serial_hex TEXT COLLATE "C" NOT NULL,
		search TEXT NOT NULL,
		provisioner TEXT NOT NULL,
		not_before BIGINT NOT NULL,
		not_after BIGINT NOT NULL,
		status TEXT NOT NULL,
		device TEXT NOT NULL,
		endpoint TEXT NOT NULL,
		doc BYTEA NOT NULL,
		revoked_at BIGINT NOT NULL DEFAULT 0)`,
	`CREATE INDEX IF NOT EXISTS stepfort_certindex_not_after ON stepfort_certindex (not_after, serial)`,
	`CREATE INDEX IF NOT EXISTS stepfort_certindex_not_before ON stepfort_certindex (not_before, serial)`,
	`CREATE INDEX IF NOT EXISTS stepfort_certindex_provisioner ON stepfort_certindex (provisioner, not_after, serial)`,
	`CREATE INDEX IF NOT EXISTS stepfort_certindex_status ON stepfort_certindex (status, not_after, serial)`,
	`CREATE INDEX IF NOT EXISTS stepfort_certindex_device ON stepfort_certindex (device) WHERE device <> ''`,
	`CREATE INDEX IF NOT EXISTS stepfort_certindex_endpoint ON stepfort_certindex (endpoint) WHERE endpoint <> ''`,
	// revoked_at came later (the dashboard's "revoked this month"): an
	// older table gets it, filled from the stored records, once. The
	// check comes first because ALTER TABLE locks the table against
	// every reader and writer even when the column exists.
	`DO $$ BEGIN
		IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
			AND table_name = 'stepfort_certindex' AND column_name = 'revoked_at') THEN
			ALTER TABLE stepfort_certindex ADD COLUMN revoked_at BIGINT NOT NULL DEFAULT 0;
			UPDATE stepfort_certindex SET revoked_at = floor(extract(epoch FROM
				(convert_from(doc, 'UTF8')::jsonb #>> '{revocation,revokedAt}')::timestamptz))::bigint
				WHERE status = 'revoked';
		END IF;
	END $$`,
	// Counts (GET /certificates/count, the dashboard's overview) as
	// index-only scans: "active" and "expiring" read not_after of valid
	// rows (76 ms for 900,000 instead of 180 ms through the status index),
	// "revoked since" revoked_at of revoked rows (5 ms instead of 190 ms).
	`CREATE INDEX IF NOT EXISTS stepfort_certindex_revoked ON stepfort_certindex (revoked_at, not_after) WHERE status = 'revoked'`,
	`CREATE INDEX IF NOT EXISTS stepfort_certindex_valid ON stepfort_certindex (not_after) WHERE status = 'valid'`,
}

// trigram needs the pg_trgm extension (contrib, in Debian's
// postgresql-15): a trusted extension since PostgreSQL 13, so the
// database owner may create it.
var trigram = []string{
	`CREATE EXTENSION IF NOT EXISTS pg_trgm`,
	`CREATE INDEX IF NOT EXISTS stepfort_certindex_search ON stepfort_certindex USING gin (search gin_trgm_ops)`,
}

const schemaLock = 0x73746663 // "stfc": pg_advisory_xact_lock key of the DDL

func openSQL(db *sql.DB) (*sqlStore, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := ddl(ctx, db, schema); err != nil {
		return nil, fmt.Errorf("create %s: %w", Table, err)
	}
	if err := ddl(ctx, db, trigram); err != nil {
		// Fail closed on configuration: without the index a name search
		// is a sequential scan, far off the latency target.
		return nil, fmt.Errorf("create the trigram index of %s (needs the pg_trgm extension and the right to create it): %w", Table, err)
	}
	return &sqlStore{db: db}, nil
}

func ddl(ctx context.Context, db *sql.DB, stmts []string) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, schemaLock); err != nil {
		return err
	}
	for _, s := range stmts {
		if _, err := tx.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", strings.Fields(s)[0:3], err)
		}
	}
	return tx.Commit()
}

const maxPutAttempts = 5

// Put merges under row locks: existing rows are read FOR UPDATE, merged and
// updated; absent rows are inserted with ON CONFLICT DO NOTHING, and a row
// another writer inserted meanwhile goes round again (read, merge, update),
// so no writer ever overwrites what another merged.
func (s *sqlStore) Put(recs []*Record) error {
	pending := dedupe(recs)
	for attempt := 0; len(pending) > 0; attempt++ {
		if attempt == maxPutAttempts {
			return fmt.Errorf("write %s: %d rows still contended after %d attempts", Table, len(pending), attempt)
		}
		var err error
		if pending, err = s.put(pending); err != nil {
			return err
		}
	}
	return nil
}

// dedupe merges records of the same serial within one batch.
func dedupe(recs []*Record) []*Record {
	by := make(map[string]*Record, len(recs))
	out := make([]*Record, 0, len(recs))
	for _, r := range recs {
		if cur, ok := by[r.Serial]; ok {
			cur.merge(r)
			continue
		}
		c := *r
		by[r.Serial] = &c
		out = append(out, &c)
	}
	return out
}

// put writes one batch and returns the records whose insert lost a race.
func (s *sqlStore) put(recs []*Record) ([]*Record, error) {
	ctx := context.Background()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	serials := make([]string, len(recs))
	for i, r := range recs {
		serials[i] = r.Serial
	}
	rows, err := tx.QueryContext(ctx, `SELECT doc FROM stepfort_certindex WHERE serial = ANY($1) FOR UPDATE`, serials)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", Table, err)
	}
	existing := map[string]*Record{}
	for rows.Next() {
		var b []byte
		var r Record
		if err := rows.Scan(&b); err == nil {
			err = json.Unmarshal(b, &r)
		}
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("decode %s row: %w", Table, err)
		}
		existing[r.Serial] = &r
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var updates, inserts []*Record
	for _, r := range recs {
		if cur, ok := existing[r.Serial]; ok {
			if cur.merge(r) {
				updates = append(updates, cur)
			}
			continue
		}
		inserts = append(inserts, r)
	}
	if err := s.write(ctx, tx, updates); err != nil {
		return nil, err
	}
	inserted, err := s.insert(ctx, tx, inserts)
	if err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("write %s: %w", Table, err)
	}
	var lost []*Record
	for _, r := range inserts {
		if !inserted[r.Serial] {
			lost = append(lost, r)
		}
	}
	return lost, nil
}

// columns are the arrays of a batch, in the order of the table.
type columns struct {
	serial, hex, search, prov, status, device, endpoint []string
	notBefore, notAfter, revokedAt                      []int64
	doc                                                 [][]byte
}

func toColumns(recs []*Record) (*columns, error) {
	c := &columns{}
	for _, r := range recs {
		b, err := json.Marshal(r)
		if err != nil {
			return nil, err
		}
		var nb, na, ra int64
		if r.HasCertificate() {
			nb, na = r.NotBefore.Unix(), r.NotAfter.Unix()
		}
		status := "valid"
		if r.Revocation != nil {
			status, ra = StatusRevoked, r.Revocation.RevokedAt.Unix()
		}
		c.serial = append(c.serial, r.Serial)
		c.hex = append(c.hex, r.SerialHex)
		c.search = append(c.search, r.searchText())
		c.prov = append(c.prov, r.Provisioner.Name)
		c.status = append(c.status, status)
		c.device = append(c.device, r.Device)
		c.endpoint = append(c.endpoint, r.Endpoint)
		c.notBefore = append(c.notBefore, nb)
		c.notAfter = append(c.notAfter, na)
		c.revokedAt = append(c.revokedAt, ra)
		c.doc = append(c.doc, b)
	}
	return c, nil
}

func (c *columns) args() []any {
	return []any{c.serial, c.hex, c.search, c.prov, c.notBefore, c.notAfter, c.status, c.device, c.endpoint, c.doc, c.revokedAt}
}

const unnest = `SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::bytea[], $11::bigint[])
	AS u(serial, serial_hex, search, provisioner, not_before, not_after, status, device, endpoint, doc, revoked_at)`

// write updates rows that exist (and are locked by this transaction).
func (s *sqlStore) write(ctx context.Context, tx *sql.Tx, recs []*Record) error {
	if len(recs) == 0 {
		return nil
	}
	c, err := toColumns(recs)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `UPDATE stepfort_certindex t SET serial_hex = u.serial_hex, search = u.search,
		provisioner = u.provisioner, not_before = u.not_before, not_after = u.not_after, status = u.status,
		device = u.device, endpoint = u.endpoint, doc = u.doc, revoked_at = u.revoked_at FROM (`+unnest+`) u WHERE t.serial = u.serial`, c.args()...)
	if err != nil {
		return fmt.Errorf("update %s: %w", Table, err)
	}
	return nil
}

// insert creates absent rows and returns the serials it inserted.
func (s *sqlStore) insert(ctx context.Context, tx *sql.Tx, recs []*Record) (map[string]bool, error) {
	done := map[string]bool{}
	if len(recs) == 0 {
		return done, nil
	}
	c, err := toColumns(recs)
	if err != nil {
		return nil, err
	}
	rows, err := tx.QueryContext(ctx, `INSERT INTO stepfort_certindex (serial, serial_hex, search, provisioner, not_before,
		not_after, status, device, endpoint, doc, revoked_at) `+unnest+` ON CONFLICT (serial) DO NOTHING RETURNING serial`, c.args()...)
	if err != nil {
		return nil, fmt.Errorf("insert into %s: %w", Table, err)
	}
	defer rows.Close()
	for rows.Next() {
		var sn string
		if err := rows.Scan(&sn); err != nil {
			return nil, err
		}
		done[sn] = true
	}
	return done, rows.Err()
}

// Analyze vacuums the table and refreshes the planner's statistics. The
// planner picks between the trigram index and an ordered scan of
// not_after by the estimated selectivity of a name pattern, so after a
// bulk load (a reindex) the statistics must describe the rows; the vacuum
// sets the rows' hint bits, which the first reads would otherwise write.
// Autovacuum would do both, later.
func (s *sqlStore) Analyze() error {
	if _, err := s.db.Exec(`VACUUM (ANALYZE) stepfort_certindex`); err != nil {
		return fmt.Errorf("analyze %s: %w", Table, err)
	}
	return nil
}

func (s *sqlStore) Get(serial string) (*Record, error) {
	var b []byte
	err := s.db.QueryRow(`SELECT doc FROM stepfort_certindex WHERE serial = $1`, serial).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s/%s: %w", Table, serial, err)
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decode %s/%s: %w", Table, serial, err)
	}
	return &r, nil
}

// where builds the WHERE clause of a filter; it must agree with
// Filter.matches (TestStoresAgree).
func where(f *Filter, now time.Time) (string, []any) {
	var b clause
	b.filter(f, now)
	b.name(f.Q)
	return b.String(), b.args
}

// clause builds a WHERE clause with numbered arguments.
type clause struct {
	conds []string
	args  []any
}

func (b *clause) arg(v any) string {
	b.args = append(b.args, v)
	return "$" + strconv.Itoa(len(b.args))
}

func (b *clause) String() string { return strings.Join(b.conds, " AND ") }

// name adds the name filter. pg_trgm indexes alphanumeric words; the
// needle's trigrams from words most names share (".example", ".internal")
// make the GIN scan read posting lists of nearly every row. The index is
// given the needle's longest word, and strpos checks the needle exactly.
func (b *clause) name(q string) {
	switch w := longestWord(q); {
	case q == "":
	case len(w) >= 3 && w != q:
		b.conds = append(b.conds, "search LIKE "+b.arg("%"+w+"%"), "strpos(search, "+b.arg(q)+") > 0")
	default:
		b.conds = append(b.conds, "search LIKE "+b.arg("%"+likeEscape(q)+"%"))
	}
}

// filter adds every condition but the name.
func (b *clause) filter(f *Filter, now time.Time) {
	b.conds = append(b.conds, "not_after > 0")
	if len(f.Serials) > 0 {
		b.conds = append(b.conds, "serial = ANY("+b.arg(f.Serials)+")")
	}
	for _, c := range [...]struct{ col, v string }{{"provisioner", f.Provisioner}, {"device", f.Device}, {"endpoint", f.Endpoint}} {
		if c.v != "" {
			b.conds = append(b.conds, c.col+" = "+b.arg(c.v))
		}
	}
	if f.notRevoked {
		b.conds = append(b.conds, "status = 'valid'")
	}
	switch f.Status {
	case StatusRevoked:
		b.conds = append(b.conds, "status = 'revoked'")
	case StatusActive:
		b.conds = append(b.conds, "status = 'valid'", "not_after > "+b.arg(now.Unix()))
	case StatusExpired:
		b.conds = append(b.conds, "status = 'valid'", "not_after <= "+b.arg(now.Unix()))
	}
	if f.ExpiresBefore != nil {
		b.conds = append(b.conds, "not_after < "+b.arg(f.ExpiresBefore.Unix()))
	}
	if f.ExpiresAfter != nil {
		b.conds = append(b.conds, "not_after > "+b.arg(f.ExpiresAfter.Unix()))
	}
	if f.RevokedSince != nil || f.RevokedBefore != nil {
		b.conds = append(b.conds, "status = 'revoked'")
	}
	if f.RevokedSince != nil {
		b.conds = append(b.conds, "revoked_at >= "+b.arg(f.RevokedSince.Unix()))
	}
	if f.RevokedBefore != nil {
		b.conds = append(b.conds, "revoked_at < "+b.arg(f.RevokedBefore.Unix()))
	}
}

// after adds the cursor condition and returns the ORDER BY of q; the
// sort column can be wrapped (not_after+0) to keep the planner from
// walking its B-tree.
func (b *clause) after(q *Query, wrap string) string {
	col, dir, cmp := "not_after", "ASC", ">"
	if q.Sort == SortIssued {
		col = "not_before"
	}
	if q.Desc {
		dir, cmp = "DESC", "<"
	}
	if q.After != nil {
		b.conds = append(b.conds, fmt.Sprintf("(%s, serial) %s (%s, %s)", col, cmp, b.arg(q.After.Key), b.arg(q.After.Serial)))
	}
	return fmt.Sprintf(" ORDER BY %s%s %s, serial %s", col, wrap, dir, dir)
}

// longestWord is the longest run of ASCII letters and digits in s.
func longestWord(s string) string {
	best, start := "", -1
	for i := 0; i <= len(s); i++ {
		alnum := i < len(s) && (s[i] >= 'a' && s[i] <= 'z' || s[i] >= '0' && s[i] <= '9')
		switch {
		case alnum && start < 0:
			start = i
		case !alnum && start >= 0:
			if i-start > len(best) {
				best = s[start:i]
			}
			start = -1
		}
	}
	return best
}

// likeEscape escapes LIKE's wildcards (the default escape is backslash).
func likeEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

// sqlProbeRows bounds the ordered walk of a name query, and
// sqlSampleRows is about how many rows the page sample before it reads.
var sqlProbeRows, sqlSampleRows = 10000, 1000 // variables for tests

// List answers a query. Without a name filter the B-tree of the sort
// order serves it directly. With one, the planner's choice between the
// trigram index and the ordered B-tree rests on a selectivity estimate
// that pg_trgm gets badly wrong for some patterns (an IP prefix made of
// one- and two-digit words), and a wrong choice walks a million rows. So
// the plan is fixed here, on an estimate of our own:
//
//   - a sample of the table's pages (TABLESAMPLE SYSTEM, about
//     sqlSampleRows rows, a few milliseconds) gives the share of the
//     filter's rows that hold the name;
//   - a common name (the page fills within sqlProbeRows rows at that
//     share) walks the B-tree in order, at most sqlProbeRows rows;
//   - a rare one (or a walk that did not fill the page) asks the trigram
//     index with sequential scans off and sorts what it finds: few rows,
//     since the name is rare.
//
// The sample is of pages, not of the sort order's head: certificates
// issued together expire together, so the first rows in expiry order
// can all miss a name that one in fifty certificates holds. Every path
// answers the same rows (TestFiltersAgreeWithOracle runs every case
// through each).
func (s *sqlStore) List(q *Query) ([]*Record, *Cursor, error) {
	n := q.Limit + 1
	var out []*Record
	collect := func(r *Record) error {
		out = append(out, r)
		return nil
	}
	var b clause
	b.filter(&q.Filter, q.Now)
	if q.Q == "" {
		order := b.after(q, "")
		stmt := `SELECT doc FROM stepfort_certindex WHERE ` + b.String() + order + ` LIMIT ` + b.arg(n)
		if err := s.query(s.db, stmt, b.args, collect); err != nil {
			return nil, nil, err
		}
		return page(q, out)
	}
	common, err := s.commonName(q, n)
	if err != nil {
		return nil, nil, err
	}
	if common {
		order := b.after(q, "")
		inner := `SELECT doc, search, serial, not_after, not_before FROM stepfort_certindex WHERE ` + b.String() + order + ` LIMIT ` + b.arg(sqlProbeRows)
		outer := clause{args: b.args}
		outer.name(q.Q)
		stmt := `SELECT doc FROM (` + inner + `) probe WHERE ` + outer.String() + order + ` LIMIT ` + outer.arg(n)
		if err := s.query(s.db, stmt, outer.args, collect); err != nil {
			return nil, nil, err
		}
		if len(out) == n {
			return page(q, out)
		}
	}
	out = out[:0]
	b = clause{}
	b.filter(&q.Filter, q.Now)
	b.name(q.Q)
	order := b.after(q, "+0")
	stmt := `SELECT doc FROM stepfort_certindex WHERE ` + b.String() + order + ` LIMIT ` + b.arg(n)
	err = s.inTx(func(tx *sql.Tx) error {
		if _, err := tx.Exec(`SET LOCAL enable_seqscan = off`); err != nil {
			return err
		}
		return s.query(tx, stmt, b.args, collect)
	})
	if err != nil {
		return nil, nil, err
	}
	return page(q, out)
}

// commonName estimates from a sample of the table's pages whether the
// ordered walk fills a page of n rows within sqlProbeRows rows: true when
// the sampled rows that pass the filter hold the name at least at that
// rate, or when the sample saw no row that passes the filter (nothing to
// go on: the walk is bounded either way). REPEATABLE makes the sample,
// and so the plan, the same for the same table.
func (s *sqlStore) commonName(q *Query, n int) (bool, error) {
	var rows float64
	if err := s.db.QueryRow(`SELECT reltuples FROM pg_class WHERE oid = 'stepfort_certindex'::regclass`).Scan(&rows); err != nil {
		return false, fmt.Errorf("query %s: %w", Table, err)
	}
	pct := 100.0
	if rows > 0 {
		pct = min(100, max(0.0001, 100*float64(sqlSampleRows)/rows))
	}
	var b clause
	b.filter(&q.Filter, q.Now)
	named := clause{args: b.args}
	named.name(q.Q)
	var hits, seen int
	stmt := `SELECT count(*) FILTER (WHERE ` + named.String() + `), count(*) FROM stepfort_certindex TABLESAMPLE SYSTEM (` +
		named.arg(pct) + `) REPEATABLE (0) WHERE ` + b.String()
	if err := s.db.QueryRow(stmt, named.args...).Scan(&hits, &seen); err != nil {
		return false, fmt.Errorf("sample %s: %w", Table, err)
	}
	return seen == 0 || n*seen <= hits*sqlProbeRows, nil
}

// page cuts the extra row and makes the next cursor.
func page(q *Query, out []*Record) ([]*Record, *Cursor, error) {
	var next *Cursor
	if len(out) > q.Limit {
		out = out[:q.Limit]
		last := out[q.Limit-1]
		next = &Cursor{Sort: q.Sort, Desc: q.Desc, Key: sortKey(q.Sort, last.NotBefore.Unix(), last.NotAfter.Unix()), Serial: last.Serial}
	}
	return out, next, nil
}

func (s *sqlStore) inTx(fn func(tx *sql.Tx) error) error {
	tx, err := s.db.Begin()
	if err != nil {
		return fmt.Errorf("query %s: %w", Table, err)
	}
	defer tx.Rollback() //nolint:errcheck // read-only
	return fn(tx)
}

// querier is *sql.DB or *sql.Tx.
type querier interface {
	Query(query string, args ...any) (*sql.Rows, error)
}

func (s *sqlStore) query(db querier, stmt string, args []any, fn func(*Record) error) error {
	rows, err := db.Query(stmt, args...)
	if err != nil {
		return fmt.Errorf("query %s: %w", Table, err)
	}
	defer rows.Close()
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			return err
		}
		var r Record
		if err := json.Unmarshal(b, &r); err != nil {
			return fmt.Errorf("decode %s row: %w", Table, err)
		}
		if err := fn(&r); err != nil {
			return err
		}
	}
	return rows.Err()
}

func (s *sqlStore) Count(f *Filter, now time.Time) (int, error) {
	cond, args := where(f, now)
	var n int
	if err := s.db.QueryRow(`SELECT count(*) FROM stepfort_certindex WHERE `+cond, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count %s: %w", Table, err)
	}
	return n, nil
}

// Export streams the rows (a sequential scan, no sort): the driver reads
// them from the connection as fn consumes them, so memory stays bounded.
func (s *sqlStore) Export(q *Query, fn func(doc []byte, status string) error) error {
	cond, args := where(&q.Filter, q.Now)
	rows, err := s.db.Query(`SELECT doc, status, not_after FROM stepfort_certindex WHERE `+cond, args...)
	if err != nil {
		return fmt.Errorf("query %s: %w", Table, err)
	}
	defer rows.Close()
	var doc sql.RawBytes
	var st string
	var notAfter int64
	now := q.Now.Unix()
	for rows.Next() {
		if err := rows.Scan(&doc, &st, &notAfter); err != nil {
			return err
		}
		if err := fn(doc, status(st == StatusRevoked, notAfter, now)); err != nil {
			return err
		}
	}
	return rows.Err()
}
