package billing

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/plugins"
)

// TestConcurrentRenewals: two replicas (two stores on one database) record
// concurrent renewals of the certificates of one Endpoint, with every event
// delivered twice. There must be one Endpoint whose lineage holds every
// certificate exactly once.
func TestConcurrentRenewals(t *testing.T) {
	for _, backend := range []string{"bbolt", "postgresql"} {
		t.Run(backend, func(t *testing.T) {
			var d nosql.DB
			if backend == "bbolt" {
				d = bboltDB(t)
			} else {
				d = postgresDB(t)
			}
			replicas := []*Store{newTestStore(t, d), newTestStore(t, d)}
			root, rootDER := newCert(t, t0, 30*day, "shared.example")
			rootSerial := root.SerialNumber.String()
			issued := plugins.CertificateEvent{ID: "i", Kind: plugins.EventIssued, Serial: rootSerial, OccurredAt: t0, Provisioner: &jwk, CertificateDER: rootDER}

			const renewals = 20
			var evs []plugins.CertificateEvent
			for i := range renewals {
				c, der := newCert(t, t0.Add(time.Duration(i+1)*time.Hour), 30*day, "shared.example")
				evs = append(evs, plugins.CertificateEvent{ID: fmt.Sprint(i), Kind: plugins.EventRenewed, Serial: c.SerialNumber.String(),
					ParentSerial: rootSerial, OccurredAt: t0.Add(time.Duration(i+1) * time.Hour), Provisioner: &jwk, CertificateDER: der})
			}
			var wg sync.WaitGroup
			errs := make(chan error, 4*renewals+2)
			for r, s := range replicas {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- s.Record(issued)
					for i, ev := range evs {
						if (i+r)%2 == 0 {
							errs <- s.Record(ev)
						}
					}
				}()
			}
			wg.Wait()
			for r, s := range replicas { // redelivery of everything, on both
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range evs {
						errs <- s.Record(evs[(i+r*7)%len(evs)])
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			n := 0
			var ep *Endpoint
			if err := replicas[0].Endpoints(func(e *Endpoint) error { n++; ep = e; return nil }); err != nil {
				t.Fatal(err)
			}
			if n != 1 || ep.Certificates != renewals+1 || ep.Renewals != renewals {
				t.Fatalf("%d endpoints; endpoint %+v", n, ep)
			}
			lineage, err := replicas[1].Lineage(ep)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			for _, c := range lineage {
				if seen[c.Serial] || c.EndpointID != ep.ID || !c.Recorded {
					t.Fatalf("bad lineage entry %+v", c)
				}
				seen[c.Serial] = true
			}
			if len(seen) != renewals+1 || !seen[rootSerial] {
				t.Fatalf("lineage holds %d certificates, want %d", len(seen), renewals+1)
			}
		})
	}
}

// TestEventCostIsConstant: recording reads and writes a fixed number of
// keys however many Endpoints exist (no List, no scan).
func TestEventCostIsConstant(t *testing.T) {
	for _, existing := range []int{0, 200} {
		t.Run(fmt.Sprint(existing), func(t *testing.T) {
			cdb := &countingDB{DB: bboltDB(t)}
			f := newFixture(t, cdb)
			for i := range existing {
				f.sign(jwk, t0, day, fmt.Sprintf("bulk%d.example", i))
			}
			cdb.reset()
			a := f.sign(jwk, t0, day, "probe.example")
			f.renew(a, t0.Add(time.Hour), day, false)
			f.revoke(a, t0.Add(2*time.Hour))
			if cdb.lists != 0 || cdb.ops > 16 {
				t.Fatalf("with %d endpoints: %d lists, %d keyed operations", existing, cdb.lists, cdb.ops)
			}
		})
	}
}

type countingDB struct {
	nosql.DB
	mu         sync.Mutex
	ops, lists int
}

func (c *countingDB) reset() { c.mu.Lock(); c.ops, c.lists = 0, 0; c.mu.Unlock() }
func (c *countingDB) count(list bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if list {
		c.lists++
	} else {
		c.ops++
	}
}
func (c *countingDB) Get(b, k []byte) ([]byte, error) { c.count(false); return c.DB.Get(b, k) }
func (c *countingDB) Set(b, k, v []byte) error        { c.count(false); return c.DB.Set(b, k, v) }
func (c *countingDB) CmpAndSwap(b, k, o, n []byte) ([]byte, bool, error) {
	c.count(false)
	return c.DB.CmpAndSwap(b, k, o, n)
}
func (c *countingDB) List(b []byte) ([]*database.Entry, error) { c.count(true); return c.DB.List(b) }
func (c *countingDB) Update(tx *database.Tx) error {
	c.count(false)
	return c.DB.Update(tx)
}

// racingDB lets another writer record a certificate in a different
// Endpoint just before this replica's record transaction.
type racingDB struct {
	nosql.DB
	serial string
	other  []byte
}

func (r *racingDB) Update(tx *database.Tx) error {
	for _, op := range tx.Operations {
		if r.other != nil && string(op.Bucket) == string(certsTable) && string(op.Key) == r.serial {
			if err := r.DB.Set(certsTable, []byte(r.serial), r.other); err != nil {
				return err
			}
			r.other = nil
		}
	}
	return r.DB.Update(tx)
}

// TestRecordRaceWithdraws: when another writer records the certificate in
// a different Endpoint first, the interval this writer added is withdrawn:
// the certificate is billed once.
func TestRecordRaceWithdraws(t *testing.T) {
	c, der := newCert(t, t0, day, "race.example")
	serial := c.SerialNumber.String()
	other, _ := json.Marshal(CertRecord{Serial: serial, EndpointID: "ep_other", Seq: 0, Recorded: true, ObtainedBy: ObtainedSign})
	rdb := &racingDB{DB: bboltDB(t), serial: serial, other: other}
	f := newFixture(t, rdb)
	ev := plugins.CertificateEvent{ID: "r", Kind: plugins.EventIssued, Serial: serial, OccurredAt: t0, Provisioner: &jwk, CertificateDER: der}
	if err := f.s.Record(ev); err != nil {
		t.Fatal(err)
	}
	e, err := f.s.Endpoint(lineageEndpointID(serial))
	if err != nil || e == nil {
		t.Fatalf("endpoint: %v", err)
	}
	lineage, _ := f.s.Lineage(e)
	if len(e.Intervals) != 0 || e.Certificates != 0 || len(lineage) != 0 {
		t.Fatalf("withdrawn certificate still billed: %+v, lineage %d", e, len(lineage))
	}
	if list, _ := f.s.List(ListQuery{Limit: 10}, t0); len(list.Endpoints) != 0 {
		t.Fatalf("emptied Endpoint listed: %+v", list.Endpoints)
	}
	if e.MonthUsage(MonthOf(t0)).Units(ModeEndpoint) != 0 {
		t.Fatal("withdrawn certificate still in the report")
	}
}

// putUpstream writes a certificate the way upstream step-ca stores it.
func putUpstream(t *testing.T, d nosql.DB, c *x509.Certificate, p plugins.ProvisionerRef) {
	t.Helper()
	for _, tbl := range [][]byte{upstreamCerts, upstreamCertData, upstreamRevoked} {
		if err := d.CreateTable(tbl); err != nil {
			t.Fatal(err)
		}
	}
	s := []byte(c.SerialNumber.String())
	if err := d.Set(upstreamCerts, s, c.Raw); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(db.CertificateData{Provisioner: &db.ProvisionerData{ID: p.ID, Name: p.Name, Type: p.Type}})
	if err := d.Set(upstreamCertData, s, b); err != nil {
		t.Fatal(err)
	}
}

func TestRebuild(t *testing.T) {
	d := bboltDB(t)
	var certs []*x509.Certificate
	add := func(p plugins.ProvisionerRef, at time.Time, life time.Duration, names ...string) *x509.Certificate {
		c, _ := newCert(t, at, life, names...)
		putUpstream(t, d, c, p)
		certs = append(certs, c)
		return c
	}
	// Device A: renewed twice before expiry (one lineage), then revoked.
	add(jwk, t0, day, "a.example")
	add(jwk, t0.Add(16*time.Hour), day, "a.example")
	a3 := add(jwk, t0.Add(32*time.Hour), day, "a.example")
	// Device A again much later, after the lineage lapsed: a new Endpoint.
	add(jwk, t0.Add(10*day), day, "a.example")
	// ACME: grouped by subject.
	add(acmeP, t0, day, "x.example", "x.example", "Y.example")
	add(acmeP, t0.Add(5*day), day, "y.example", "X.example")
	rci, _ := json.Marshal(db.RevokedCertificateInfo{Serial: a3.SerialNumber.String(), ReasonCode: 1, Reason: "key compromise", RevokedAt: t0.Add(40 * time.Hour)})
	if err := d.Set(upstreamRevoked, []byte(a3.SerialNumber.String()), rci); err != nil {
		t.Fatal(err)
	}

	s := newTestStore(t, d)
	res, err := s.Rebuild(t0.Add(20 * day))
	if err != nil {
		t.Fatal(err)
	}
	if res.Scanned != 6 || res.Recorded != 6 || res.InferredLinks != 2 || res.Revoked != 1 || len(res.Errors) != 0 {
		t.Fatalf("rebuild = %+v", res)
	}
	f := &fixture{t: t, s: s}
	if n := f.countEndpoints(); n != 3 {
		t.Fatalf("%d endpoints after rebuild, want 3", n)
	}
	e := f.endpointOf(a3.SerialNumber.String())
	if e.Certificates != 3 || e.Renewals != 2 || e.EndReason != EndRevoked || !e.EndsAt.Equal(t0.Add(40*time.Hour)) {
		t.Fatalf("rebuilt lineage endpoint = %+v", e)
	}
	d2, _ := s.Detail(e.ID, t0)
	if !d2.Lineage[1].Inferred || d2.Lineage[1].ParentSerial != certs[0].SerialNumber.String() {
		t.Fatalf("inferred link = %+v", d2.Lineage[1])
	}
	again, err := s.Rebuild(t0.Add(20 * day))
	if err != nil || again.Recorded != 0 || again.AlreadyKnown != 6 || again.Revoked != 0 {
		t.Fatalf("second rebuild = %+v, %v", again, err)
	}
}

// TestIngestUnknownParent: a renewal of a certificate issued before billing
// was enabled imports the parent from upstream's tables.
func TestIngestUnknownParent(t *testing.T) {
	d := bboltDB(t)
	old, _ := newCert(t, t0, 30*day, "legacy.example")
	putUpstream(t, d, old, jwk)
	f := newFixture(t, d)
	f.certs[old.SerialNumber.String()] = old
	child := f.renew(old.SerialNumber.String(), t0.Add(20*day), 30*day, false)
	e := f.endpointOf(child)
	if e.Certificates != 2 || e.FirstSerial != old.SerialNumber.String() {
		t.Fatalf("endpoint = %+v", e)
	}
}

// TestUnknownCertificates: a revocation of a serial nobody stored bills
// nothing and does not fail forever; a renewal of a certificate the
// database lacks starts the lineage of that parent.
func TestUnknownCertificates(t *testing.T) {
	f := newFixture(t, nil)
	ev := f.event(plugins.EventRevoked, "123456789")
	ev.Revocation = &plugins.Revocation{ReasonCode: 1, RevokedAt: t0}
	if err := f.s.Record(ev); err != nil {
		t.Fatalf("revocation of an unknown serial: %v", err)
	}
	ghost, _ := newCert(t, t0, 30*day, "ghost.example")
	f.certs[ghost.SerialNumber.String()] = ghost
	a := f.renew(ghost.SerialNumber.String(), t0.Add(20*day), 30*day, false)
	b := f.renew(a, t0.Add(40*day), 30*day, false)
	e := f.endpointOf(b)
	if f.countEndpoints() != 1 || e.Certificates != 2 || e.ID != lineageEndpointID(ghost.SerialNumber.String()) {
		t.Fatalf("endpoint = %+v", e)
	}
}
