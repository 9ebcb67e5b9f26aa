package certindex

import (
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/provisioners/billing"
)

// Events delivered more than once and in any order (a revocation before its
// issuance, from another replica) give the record of the natural order.
func TestEventsInAnyOrderConverge(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			f := newFixture(t, backend)
			iss := f.issue(jwk, "", t0, 24*time.Hour, "dev.example", "dev.example", "10.0.0.7", "ops@example.com", "spiffe://x/y")
			iss.PermanentIdentifier = "urn:ek:sha256:abc"
			rev := f.revokeEvent(iss, 4, t0.Add(time.Hour))
			natural := newFixture(t, backend)
			natural.observe(iss, rev)
			want := natural.get(iss.Serial)

			revNoDER := rev
			revNoDER.CertificateDER, revNoDER.Provisioner = nil, nil
			f.observe(revNoDER, rev, iss, iss, rev)
			got := f.get(iss.Serial)
			if mustJSON(got) != mustJSON(want) {
				t.Fatalf("out of order:\n got %s\nwant %s", mustJSON(got), mustJSON(want))
			}
			if got.Status(t0) != StatusRevoked || got.Device != "urn:ek:sha256:abc" || got.Provisioner != jwk ||
				got.Revocation.ReasonCode != 4 || got.Endpoint != lineageEndpointID(iss.Serial) || got.AuthorityKeyID != "01020304" ||
				len(got.IPAddresses) != 1 || got.URIs[0] != "spiffe://x/y" {
				t.Fatalf("record %s", mustJSON(got))
			}
		})
	}
}

// A revocation of a serial the CA does not hold waits as a stub, never
// listed, and becomes a full record when the issuance arrives.
func TestRevocationBeforeIssuanceStub(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			f := newFixture(t, backend)
			c := newCert(t, t0, time.Hour, "late.example")
			ev := plugins.CertificateEvent{ID: "r", Kind: plugins.EventRevoked, Serial: c.SerialNumber.String(), OccurredAt: t0,
				Revocation: &plugins.Revocation{ReasonCode: 1, RevokedAt: t0}}
			f.observe(ev)
			if r := f.get(ev.Serial); r.HasCertificate() || r.Revocation == nil {
				t.Fatalf("stub %s", mustJSON(r))
			}
			if recs := f.list(&Query{Sort: SortNotAfter, Limit: 10, Now: t0}); len(recs) != 0 {
				t.Fatalf("stub listed: %v", recs)
			}
			f.observe(plugins.CertificateEvent{ID: "i", Kind: plugins.EventIssued, Serial: ev.Serial, OccurredAt: t0, Provisioner: &jwk, CertificateDER: c.Raw})
			if r := f.get(ev.Serial); r.CommonName != "late.example" || r.Status(t0) != StatusRevoked || r.Provisioner != jwk {
				t.Fatalf("merged %s", mustJSON(r))
			}
		})
	}
}

func (f *fixture) list(q *Query) []*Record {
	f.t.Helper()
	recs, _, err := f.p.store.List(q)
	if err != nil {
		f.t.Fatal(err)
	}
	return recs
}

// population issues n certificates with varied names, provisioners,
// dates and statuses, and returns their records as the oracle.
func (f *fixture) population(n int, rnd *rand.Rand) []*Record {
	f.t.Helper()
	var out []plugins.CertificateEvent
	for i := range n {
		prov := jwk
		if i%3 == 0 {
			prov = acme
		}
		nb := t0.Add(time.Duration(rnd.IntN(48)-24) * time.Hour)
		life := time.Duration(1+rnd.IntN(72)) * time.Hour
		names := []string{fmt.Sprintf("Host%03d.Dept%d.example.com", i, i%5), fmt.Sprintf("alt%d.example.net", i%7)}
		if i%4 == 0 {
			names = append(names, fmt.Sprintf("10.1.%d.%d", i/250, i%250))
		}
		ev := f.issue(prov, "", nb, life, names...)
		if i%6 == 0 {
			ev.PermanentIdentifier = fmt.Sprintf("dev-%d", i%12)
		}
		out = append(out, ev)
		if i%10 == 0 {
			out = append(out, f.revokeEvent(ev, 1, t0.Add(time.Duration(i/10)*time.Hour)))
		}
	}
	rnd.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	f.observe(out...)
	var recs []*Record
	seen := map[string]bool{}
	for _, ev := range out {
		if !seen[ev.Serial] {
			seen[ev.Serial] = true
			recs = append(recs, f.get(ev.Serial))
		}
	}
	return recs
}

// oracle filters records the slow, obvious way.
func oracle(recs []*Record, fl Filter, now time.Time) []string {
	var out []string
	for _, r := range recs {
		if fl.Q != "" && !slices.ContainsFunc(r.Names(), func(n string) bool { return strings.Contains(strings.ToLower(n), fl.Q) }) {
			continue
		}
		if len(fl.Serials) > 0 && !slices.Contains(fl.Serials, r.Serial) || fl.Provisioner != "" && r.Provisioner.Name != fl.Provisioner ||
			fl.Status != "" && r.Status(now) != fl.Status || fl.Device != "" && r.Device != fl.Device ||
			fl.Endpoint != "" && r.Endpoint != fl.Endpoint ||
			fl.ExpiresBefore != nil && !r.NotAfter.Before(*fl.ExpiresBefore) || fl.ExpiresAfter != nil && !r.NotAfter.After(*fl.ExpiresAfter) ||
			(fl.RevokedSince != nil || fl.RevokedBefore != nil) && r.Revocation == nil ||
			fl.RevokedSince != nil && r.Revocation.RevokedAt.Unix() < fl.RevokedSince.Unix() ||
			fl.RevokedBefore != nil && r.Revocation.RevokedAt.Unix() >= fl.RevokedBefore.Unix() {
			continue
		}
		out = append(out, r.Serial)
	}
	slices.Sort(out)
	return out
}

// Every filter, alone and combined, returns what the oracle returns, on
// both backends, and paging walks the sort order without duplicates.
func TestFiltersAgreeWithOracle(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			f := newFixture(t, backend)
			recs := f.population(120, rand.New(rand.NewPCG(1, 2)))
			hexSerial := recs[5].SerialHex
			colons := strings.ToUpper(hexSerial[:2]) + ":" + hexSerial[2:]
			cases := []url.Values{
				{}, {"q": {"host01"}}, {"q": {"DEPT3"}}, {"q": {"10.1.0."}}, {"q": {"no-such"}}, {"q": {"%"}}, {"q": {"_"}},
				{"serial": {recs[3].Serial}}, {"serial": {colons}}, {"serial": {"0x" + hexSerial}},
				{"provisioner": {"acme"}}, {"status": {"active"}}, {"status": {"expired"}}, {"status": {"revoked"}},
				{"expiresBefore": {t0.Add(12 * time.Hour).Format(time.RFC3339)}}, {"expiresAfter": {t0.Format(time.RFC3339)}},
				{"device": {"dev-6"}}, {"endpoint": {recs[7].Endpoint}},
				{"revokedSince": {t0.Add(3 * time.Hour).Format(time.RFC3339)}}, {"revokedBefore": {t0.Add(5 * time.Hour).Format(time.RFC3339)}},
				{"revokedSince": {t0.Add(2 * time.Hour).Format(time.RFC3339)}, "revokedBefore": {t0.Add(7 * time.Hour).Format(time.RFC3339)}, "q": {"dept"}},
				{"q": {"example.net"}, "provisioner": {"admin"}, "status": {"active"}, "expiresAfter": {t0.Add(-time.Hour).Format(time.RFC3339)}},
			}
			// The ordered walk for every name (a sample of 0 rows sees no
			// row: the walk is tried), for names the whole-table sample
			// finds common enough for a 40-row walk, and the trigram scan.
			for _, walk := range []struct{ probe, sample int }{{20000, 0}, {40, 20000}, {3, 20000}} {
				probeRows, sqlProbeRows, sqlSampleRows = walk.probe, walk.probe, walk.sample
				for _, v := range cases {
					f.checkCase(recs, v)
				}
			}
			probeRows, sqlProbeRows, sqlSampleRows = 20000, 10000, 1000
		})
	}
}

func (f *fixture) checkCase(recs []*Record, v url.Values) {
	t := f.t
	t.Helper()
	{
		{
			for _, sortBy := range []string{SortNotAfter, SortIssued} {
				for _, order := range []string{"asc", "desc"} {
					v.Set("sort", sortBy)
					v.Set("order", order)
					v.Set("limit", "7")
					q, err := ParseQuery(v, t0)
					if err != nil {
						t.Fatalf("%v: %v", v, err)
					}
					want := oracle(recs, q.Filter, t0)
					got := f.walk(q)
					if !slices.Equal(sortedSerials(got), want) {
						t.Fatalf("%v: got %d serials %v, want %d %v", v, len(got), sortedSerials(got), len(want), want)
					}
					checkOrder(t, got, q)
					if n, err := f.p.store.Count(&q.Filter, t0); err != nil || n != len(want) {
						t.Fatalf("%v: count %d %v, want %d", v, n, err, len(want))
					}
				}
			}
		}
	}
}

// walk follows the cursor to the last page.
func (f *fixture) walk(q *Query) []*Record {
	f.t.Helper()
	var all []*Record
	for range 1000 {
		page, next, err := f.p.store.List(q)
		if err != nil {
			f.t.Fatal(err)
		}
		all = append(all, page...)
		if next == nil {
			return all
		}
		c, err := decodeCursor(next.Encode())
		if err != nil {
			f.t.Fatal(err)
		}
		q.After = c
	}
	f.t.Fatal("cursor never ends")
	return nil
}

func checkOrder(t testing.TB, recs []*Record, q *Query) {
	t.Helper()
	o := order{q.Sort, q.Desc}
	for i := 1; i < len(recs); i++ {
		a, b := recs[i-1], recs[i]
		ka, kb := sortKey(q.Sort, a.NotBefore.Unix(), a.NotAfter.Unix()), sortKey(q.Sort, b.NotBefore.Unix(), b.NotAfter.Unix())
		if !o.before(ka, a.Serial, kb, b.Serial) {
			t.Fatalf("out of order at %d: %s then %s", i, a.Serial, b.Serial)
		}
	}
}

// Paging while certificates are being issued: every certificate that
// existed before the first page appears exactly once.
func TestPagingWhileIssuing(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			f := newFixture(t, backend)
			recs := f.population(150, rand.New(rand.NewPCG(3, 4)))
			var wg sync.WaitGroup
			stop := make(chan struct{})
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					ev := f.issue(jwk, "", t0.Add(time.Duration(i%40-20)*time.Hour), time.Duration(1+i%50)*time.Hour, fmt.Sprintf("new%d.example.com", i))
					if err := f.p.ObserveCertificate(t.Context(), ev); err != nil {
						t.Error(err)
						return
					}
				}
			}()
			for _, sortBy := range []string{SortNotAfter, SortIssued} {
				q := &Query{Sort: sortBy, Limit: 9, Now: t0}
				got := f.walk(q)
				seen := map[string]int{}
				for _, r := range got {
					seen[r.Serial]++
					if seen[r.Serial] > 1 {
						t.Fatalf("%s: duplicate %s", sortBy, r.Serial)
					}
				}
				for _, r := range recs {
					if seen[r.Serial] != 1 {
						t.Fatalf("%s: gap: %s missing", sortBy, r.Serial)
					}
				}
				checkOrder(t, got, q)
			}
			close(stop)
			wg.Wait()
		})
	}
}

// The Endpoint the index computes is billing's, for /sign, renewals and
// subject-grouped ACME certificates.
func TestEndpointMatchesBilling(t *testing.T) {
	f := newFixture(t, "bbolt")
	bs, err := billing.NewStore(f.db, policy{}, f.host.Logger())
	if err != nil {
		t.Fatal(err)
	}
	s1 := f.issue(jwk, "", t0, time.Hour, "a.example")
	r1 := f.issue(jwk, s1.Serial, t0.Add(time.Minute), time.Hour, "a.example")
	r2 := f.issue(jwk, r1.Serial, t0.Add(2*time.Minute), time.Hour, "a.example")
	a1 := f.issue(acme, "", t0, time.Hour, "x.example", "x.example", "Y.example")
	a2 := f.issue(acme, "", t0, time.Hour, "y.example", "X.example", "y.example")
	evs := []plugins.CertificateEvent{s1, r1, r2, a1, a2}
	for _, ev := range evs {
		if err := bs.Record(ev); err != nil {
			t.Fatal(err)
		}
	}
	f.observe(evs...)
	want := map[string]string{}
	if err := bs.Endpoints(func(e *billing.Endpoint) error {
		certs, err := bs.Lineage(e)
		for _, c := range certs {
			want[c.Serial] = e.ID
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		if got := f.get(ev.Serial).Endpoint; got == "" || got != want[ev.Serial] {
			t.Fatalf("%s: index Endpoint %q, billing %q", ev.Serial, got, want[ev.Serial])
		}
	}
	if f.get(a1.Serial).Endpoint != f.get(a2.Serial).Endpoint || f.get(r2.Serial).Endpoint != f.get(s1.Serial).Endpoint {
		t.Fatal("grouping lost")
	}
}

type policy struct{}

func (policy) Grouping(ref plugins.ProvisionerRef) (string, error) {
	if ref.Type == "ACME" {
		return billing.GroupingSubject, nil
	}
	return billing.GroupingLineage, nil
}

// Reindex of upstream's tables gives the rows the events gave, except
// what the tables do not hold (device, renewal parent, lineage Endpoint).
func TestReindexMatchesLiveIndex(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			f := newFixture(t, backend)
			live := f.population(60, rand.New(rand.NewPCG(5, 6)))
			orphan := newCert(t, t0, time.Hour, "orphan")
			ev := plugins.CertificateEvent{ID: "o", Kind: plugins.EventRevoked, Serial: orphan.SerialNumber.String(), OccurredAt: t0,
				Revocation: &plugins.Revocation{ReasonCode: 1, RevokedAt: t0}}
			ev = f.revokeEvent(ev, 1, t0)
			f.observe(ev)
			other := newFixture(t, backend)
			res, err := Reindex(f.db, other.p.store)
			if err != nil || len(res.Errors) > 0 || res.Certificates != len(live) || res.Revocations != 1 {
				t.Fatalf("reindex %+v %v", res, err)
			}
			for _, want := range append(live, f.get(ev.Serial)) {
				got := other.get(want.Serial)
				w := *want
				w.Device = ""
				if w.Provisioner.Type != "ACME" {
					w.Endpoint = ""
				}
				if mustJSON(got) != mustJSON(&w) {
					t.Fatalf("reindexed\n got %s\nwant %s", mustJSON(got), mustJSON(&w))
				}
			}
			// On the live index itself, reindex changes nothing.
			before := mustJSON(f.walk(&Query{Sort: SortNotAfter, Limit: 50, Now: t0}))
			if _, err := Reindex(f.db, f.p.store); err != nil {
				t.Fatal(err)
			}
			if after := mustJSON(f.walk(&Query{Sort: SortNotAfter, Limit: 50, Now: t0})); after != before {
				t.Fatal("reindex changed the live index")
			}
		})
	}
}

func TestSerialForms(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		bad  bool
	}{
		{in: "255", want: []string{"255", "597"}},
		{in: "ff", want: []string{"255"}},
		{in: "0xFF", want: []string{"255"}},
		{in: "01:00", want: []string{"256"}},
		{in: "zz", bad: true},
		{in: "-5", bad: true},
		{in: "", bad: true},
		{in: strings.Repeat("1", 65), bad: true},
	}
	for _, tt := range tests {
		got, err := SerialForms(tt.in)
		if (err != nil) != tt.bad || !tt.bad && !slices.Equal(got, tt.want) {
			t.Errorf("SerialForms(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestBadQueriesNameTheParameter(t *testing.T) {
	for _, tt := range []struct{ v, field string }{
		{"limit=0", "limit"}, {"limit=1001", "limit"}, {"sort=cn", "sort"}, {"order=up", "order"},
		{"status=valid", "status"}, {"expiresBefore=tomorrow", "expiresBefore"}, {"cursor=%21", "cursor"},
		{"q=" + strings.Repeat("a", 257), "q"}, {"q=a%0Ab", "q"}, {"serial=xyz", "serial"},
		{"cursor=" + (&Cursor{Sort: SortIssued, Key: 1, Serial: "1"}).Encode(), "cursor"},
	} {
		v, _ := url.ParseQuery(tt.v)
		_, err := ParseQuery(v, t0)
		if err == nil || !strings.HasPrefix(err.Error(), tt.field+":") {
			t.Errorf("%s: error %v, want one naming %s", tt.v, err, tt.field)
		}
	}
}
