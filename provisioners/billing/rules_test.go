package billing

import (
	"errors"
	"testing"
	"time"

	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"

	"github.com/stepfort/stepfort/plugins"
)

const day = 24 * time.Hour

// The subject key and Endpoint IDs are tested in internal/endpoint.

// TestGroupingRules covers which certificates share an Endpoint.
func TestGroupingRules(t *testing.T) {
	tests := []struct {
		name      string
		run       func(f *fixture) []string // serials
		endpoints int
		sameAs    [][2]int // pairs of serial indexes that share an Endpoint
	}{
		{"sign twice for one name on a renewal-enabled provisioner: two Endpoints", func(f *fixture) []string {
			return []string{f.sign(jwk, t0, day, "dev.example"), f.sign(jwk, t0.Add(time.Hour), day, "dev.example")}
		}, 2, nil},
		{"renew and rekey keep the Endpoint", func(f *fixture) []string {
			a := f.sign(jwk, t0, day, "dev.example")
			b := f.renew(a, t0.Add(16*time.Hour), day, false)
			c := f.renew(b, t0.Add(32*time.Hour), day, true)
			return []string{a, b, c}
		}, 1, [][2]int{{0, 1}, {1, 2}}},
		{"renewal-disabled provisioner groups by subject, ignoring SAN order and case", func(f *fixture) []string {
			return []string{f.sign(oidc, t0, day, "a.example", "a.example", "B.example"), f.sign(oidc, t0.Add(day), day, "b.example", "b.example", "A.example")}
		}, 1, [][2]int{{0, 1}}},
		{"ACME never renews: subject grouping", func(f *fixture) []string {
			return []string{f.sign(acmeP, t0, day, "a.example", "a.example", "B.example"), f.sign(acmeP, t0.Add(day), day, "b.example", "b.example", "A.example")}
		}, 1, [][2]int{{0, 1}}},
		{"subject grouping is per provisioner", func(f *fixture) []string {
			return []string{f.sign(acmeP, t0, day, "a.example"), f.sign(oidc, t0, day, "a.example")}
		}, 2, nil},
		{"different subjects on a renewal-disabled provisioner", func(f *fixture) []string {
			return []string{f.sign(oidc, t0, day, "a.example"), f.sign(oidc, t0, day, "c.example")}
		}, 2, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, nil)
			serials := tt.run(f)
			if n := f.countEndpoints(); n != tt.endpoints {
				t.Fatalf("%d Endpoints, want %d", n, tt.endpoints)
			}
			for _, p := range tt.sameAs {
				if a, b := f.endpointOf(serials[p[0]]).ID, f.endpointOf(serials[p[1]]).ID; a != b {
					t.Errorf("certificates %d and %d in Endpoints %s and %s", p[0], p[1], a, b)
				}
			}
		})
	}
}

func TestLineageAndCounters(t *testing.T) {
	f := newFixture(t, nil)
	a := f.sign(jwk, t0, day, "dev.example")
	b := f.renew(a, t0.Add(16*time.Hour), day, false)
	c := f.renew(b, t0.Add(32*time.Hour), day, true)
	e := f.endpointOf(c)
	if e.Certificates != 3 || e.Renewals != 1 || e.Rekeys != 1 || e.FirstSerial != a || e.LastSerial != c || e.Grouping != GroupingLineage {
		t.Fatalf("endpoint = %+v", e)
	}
	d, err := f.s.Detail(e.ID, t0.Add(33*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	want := []struct{ serial, by, parent, status string }{
		{a, ObtainedSign, "", "expired"}, {b, ObtainedRenew, a, "active"}, {c, ObtainedRekey, b, "active"},
	}
	if len(d.Lineage) != len(want) {
		t.Fatalf("lineage has %d entries, want %d", len(d.Lineage), len(want))
	}
	for i, w := range want {
		l := d.Lineage[i]
		if l.Serial != w.serial || l.ObtainedBy != w.by || l.ParentSerial != w.parent || l.Status != w.status {
			t.Errorf("lineage[%d] = %+v, want %+v", i, l, w)
		}
	}
	if d.ActiveCertificates != 2 || d.State != StateActive {
		t.Errorf("view = %+v", d.EndpointView)
	}
}

// TestEndingRules: an Endpoint ends when its last certificate expires or is
// revoked, evaluated lazily against the clock.
func TestEndingRules(t *testing.T) {
	tests := []struct {
		name       string
		run        func(f *fixture) string
		at         time.Time
		state      string
		endedAt    time.Time
		reason     string
		wantActive int
	}{
		{"active before expiry", func(f *fixture) string { return f.sign(jwk, t0, day, "x") }, t0.Add(day - time.Second), StateActive, time.Time{}, "", 1},
		{"expiry ends it", func(f *fixture) string { return f.sign(jwk, t0, day, "x") }, t0.Add(day), StateEnded, t0.Add(day), EndExpired, 0},
		{"revocation ends it at the revocation time", func(f *fixture) string {
			s := f.sign(jwk, t0, day, "x")
			f.revoke(s, t0.Add(5*time.Hour))
			return s
		}, t0.Add(6 * time.Hour), StateEnded, t0.Add(5 * time.Hour), EndRevoked, 0},
		{"revoking the old certificate after renewal keeps it active", func(f *fixture) string {
			a := f.sign(jwk, t0, day, "x")
			b := f.renew(a, t0.Add(16*time.Hour), day, false)
			f.revoke(a, t0.Add(17*time.Hour))
			return b
		}, t0.Add(18 * time.Hour), StateActive, time.Time{}, "", 1},
		{"revoking the newest after renewal leaves the older one billing until it expires", func(f *fixture) string {
			a := f.sign(jwk, t0, day, "x")
			b := f.renew(a, t0.Add(16*time.Hour), day, false)
			f.revoke(b, t0.Add(17*time.Hour))
			return b
		}, t0.Add(day), StateEnded, t0.Add(day), EndExpired, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, nil)
			v := f.endpointOf(tt.run(f)).View(tt.at)
			if v.State != tt.state || v.EndReason != tt.reason || v.ActiveCertificates != tt.wantActive {
				t.Fatalf("view = %+v, want state %s reason %q active %d", v, tt.state, tt.reason, tt.wantActive)
			}
			if tt.state == StateEnded && !v.EndedAt.Equal(tt.endedAt) {
				t.Fatalf("endedAt = %v, want %v", v.EndedAt, tt.endedAt)
			}
		})
	}
}

// TestWorkedExample: one device with one 30-day certificate is billed the
// same as one device with 60 one-day certificates renewed every 12 hours.
func TestWorkedExample(t *testing.T) {
	for _, mode := range []string{ModeEndpoint} {
		long := newFixture(t, nil)
		long.sign(jwk, t0, 30*day, "long.example")

		short := newFixture(t, nil)
		s := short.sign(jwk, t0, day, "short.example")
		for i := 1; i < 60; i++ {
			s = short.renew(s, t0.Add(time.Duration(i)*12*time.Hour), day, false)
		}
		if e := short.endpointOf(s); e.Certificates != 60 {
			t.Fatalf("short-lived endpoint has %d certificates, want 60", e.Certificates)
		}
		for _, m := range []string{"2026-02", "2026-03", "2026-04", "2026-05"} {
			a, b := long.report(m, mode).Total, short.report(m, mode).Total
			if a.Billable != b.Billable {
				t.Errorf("%s %s: 30-day certificate bills %d, 60 renewed one-day certificates bill %d", mode, m, a.Billable, b.Billable)
			}
			wantBillable := 0
			if m == "2026-03" || m == "2026-04" {
				wantBillable = 1
			}
			if a.Billable != wantBillable {
				t.Errorf("%s %s: billable %d, want %d", mode, m, a.Billable, wantBillable)
			}
		}
	}
}

// TestThreeCertificateLimit: up to three concurrently active certificates
// are included; each above three bills one more Endpoint-month, and
// revoking unused certificates avoids that.
func TestThreeCertificateLimit(t *testing.T) {
	tests := []struct {
		name        string
		concurrent  int
		revokeExtra bool
		want        int
	}{
		{"three included", 3, false, 1},
		{"four bills two", 4, false, 2},
		{"six bills four", 6, false, 4},
		{"revoking renewed-away certificates at once avoids extra", 6, true, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, nil)
			s := f.sign(jwk, t0, 10*day, "multi.example")
			for i := 1; i < tt.concurrent; i++ {
				prev := s
				at := t0.Add(time.Duration(i) * time.Hour)
				s = f.renew(prev, at, 10*day, false)
				if tt.revokeExtra {
					f.revoke(prev, at)
				}
			}
			r := f.report("2026-03", ModeEndpoint)
			if r.Total.Billable != tt.want || r.Total.Endpoints != 1 || r.Total.ExtraCertificates != tt.want-1 {
				t.Fatalf("total = %+v, want billable %d", r.Total, tt.want)
			}
		})
	}
}

func TestMonthBoundaries(t *testing.T) {
	march := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	april := time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name         string
		start        time.Time
		life         time.Duration
		march, april int
	}{
		{"ends at the first instant of April: March only", april.Add(-day), day, 1, 0},
		{"ends one second into April: both", april.Add(-day), day + time.Second, 1, 1},
		{"starts at the last second of March: both", april.Add(-time.Second), day, 1, 1},
		{"starts at the first instant of April: April only", april, day, 0, 1},
		{"spans all of March", march.Add(-day), 40 * day, 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, nil)
			f.sign(jwk, tt.start, tt.life, "edge.example")
			if got := f.report("2026-03", ModeEndpoint).Total.Billable; got != tt.march {
				t.Errorf("March = %d, want %d", got, tt.march)
			}
			if got := f.report("2026-04", ModeEndpoint).Total.Billable; got != tt.april {
				t.Errorf("April = %d, want %d", got, tt.april)
			}
		})
	}
}

func TestRevocationEndsBillingInMonth(t *testing.T) {
	f := newFixture(t, nil)
	s := f.sign(jwk, time.Date(2026, 3, 20, 0, 0, 0, 0, time.UTC), 30*day, "r.example")
	f.revoke(s, time.Date(2026, 3, 25, 0, 0, 0, 0, time.UTC))
	if got := f.report("2026-03", ModeEndpoint).Total.Billable; got != 1 {
		t.Errorf("March = %d, want 1", got)
	}
	if got := f.report("2026-04", ModeEndpoint).Total.Billable; got != 0 {
		t.Errorf("April = %d after revocation in March, want 0", got)
	}
}

func TestCertificateMode(t *testing.T) {
	f := newFixture(t, nil)
	s := f.sign(jwk, t0, day, "short.example")
	for i := 1; i < 10; i++ {
		s = f.renew(s, t0.Add(time.Duration(i)*12*time.Hour), day, false)
	}
	f.sign(oidc, t0, 60*day, "other.example")
	r := f.report("2026-03", ModeCertificate)
	if r.Total.Billable != 11 || r.Unit != "certificate" {
		t.Fatalf("certificate mode total = %+v unit %s, want 11 certificates", r.Total, r.Unit)
	}
	if e := f.report("2026-03", ModeEndpoint).Total.Billable; e != 2 {
		t.Fatalf("endpoint mode = %d, want 2", e)
	}
	if len(r.Provisioners) != 2 || r.Provisioners[0].Provisioner != "admin" || r.Provisioners[0].Billable != 10 || r.Provisioners[1].Billable != 1 {
		t.Fatalf("breakdown = %+v %+v", r.Provisioners[0], r.Provisioners[1])
	}
}

// TestCompactionKeepsBills: a year of 12-hourly renewals keeps the record
// small and every month's bill unchanged.
func TestCompactionKeepsBills(t *testing.T) {
	f := newFixture(t, nil)
	s := f.sign(jwk, t0, day, "year.example")
	var all []Interval
	for i := 1; i < 730; i++ {
		s = f.renew(s, t0.Add(time.Duration(i)*12*time.Hour), day, false)
	}
	for serial, c := range f.certs {
		all = append(all, Interval{Serial: serial, Start: c.NotBefore.Unix(), End: c.NotAfter.Unix()})
	}
	e := f.endpointOf(s)
	if len(e.Intervals) > 200 {
		t.Fatalf("record keeps %d intervals after a year; compaction is not bounding it", len(e.Intervals))
	}
	for m := MonthOf(t0); m.Start().Before(t0.Add(366 * day)); m = m.Next() {
		want := usage(all, m.Start().Unix(), m.End().Unix())
		if got := e.MonthUsage(m); got != want {
			t.Errorf("%s: usage %+v, want %+v", m, got, want)
		}
	}
}

// TestRedeliveryAndOrder: events are delivered at least once and in no
// particular order.
func TestRedeliveryAndOrder(t *testing.T) {
	d := bboltDB(t)
	f := newFixture(t, d)
	c, der := newCert(t, t0, day, "o.example")
	putUpstream(t, d, c, jwk) // upstream stores it with its event
	parent := c.SerialNumber.String()
	f.certs[parent] = c
	// The renewal arrives before the parent's own event: it must wait.
	if _, err := f.tryRenew(parent, t0.Add(time.Minute), day, false); !errors.Is(err, errRetry) {
		t.Fatalf("renewal before its parent: err = %v, want a retry", err)
	}
	issued := plugins.CertificateEvent{ID: "i", Kind: plugins.EventIssued, Serial: parent, OccurredAt: t0, Provisioner: &jwk, CertificateDER: der}
	for range 3 {
		if err := f.s.Record(issued); err != nil {
			t.Fatal(err)
		}
	}
	child := f.renew(parent, t0.Add(time.Minute), day, false)
	f.revoke(child, t0.Add(time.Hour))
	f.revoke(child, t0.Add(time.Hour))
	e := f.endpointOf(child)
	if f.countEndpoints() != 1 || e.Certificates != 2 || e.Revocations != 1 {
		t.Fatalf("after redelivery: %d endpoints, endpoint %+v", f.countEndpoints(), e)
	}
}

func TestDisableRenewal(t *testing.T) {
	yes, no := true, false
	tests := []struct {
		name        string
		prov, globl *bool
		want        bool
	}{
		{"default is enabled", nil, nil, false},
		{"provisioner disables", &yes, nil, true},
		{"global disables", nil, &yes, true},
		{"provisioner overrides global", &no, &yes, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &provisioner.JWK{Name: "p", Type: "JWK"}
			if tt.prov != nil {
				p.Claims = &provisioner.Claims{DisableRenewal: tt.prov}
			}
			var global *provisioner.Claims
			if tt.globl != nil {
				global = &provisioner.Claims{DisableRenewal: tt.globl}
			}
			got, err := DisableRenewal(p, global)
			if err != nil || got != tt.want {
				t.Fatalf("DisableRenewal = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestParseMonth(t *testing.T) {
	for _, s := range []string{"2026-3", "2026-13", "26-03", "2026-03-01", ""} {
		if _, err := ParseMonth(s); err == nil {
			t.Errorf("ParseMonth(%q) accepted", s)
		}
	}
	if m, err := ParseMonth("2026-12"); err != nil || m.Next().String() != "2027-01" {
		t.Fatalf("ParseMonth(2026-12) = %v, %v", m, err)
	}
}

// fakeAuthority serves provisioners and global claims like upstream's
// authority.
type fakeAuthority struct {
	provs  []provisioner.Interface
	global *provisioner.Claims
}

func (a *fakeAuthority) LoadProvisionerByID(id string) (provisioner.Interface, error) {
	for _, p := range a.provs {
		if p.GetID() == id {
			return p, nil
		}
	}
	return nil, errors.New("not found")
}

func (a *fakeAuthority) LoadProvisionerByName(name string) (provisioner.Interface, error) {
	for _, p := range a.provs {
		if p.GetName() == name {
			return p, nil
		}
	}
	return nil, errors.New("not found")
}

func (a *fakeAuthority) GetConfig() *config.Config {
	return &config.Config{AuthorityConfig: &config.AuthConfig{Claims: a.global}}
}

// TestAuthorityPolicy: the grouping follows the effective disableRenewal
// claim of the provisioner as the authority has it; ACME and SCEP always
// group by subject; an unknown provisioner fails (the event is retried).
func TestAuthorityPolicy(t *testing.T) {
	yes := true
	tests := []struct {
		name   string
		ref    plugins.ProvisionerRef
		global *provisioner.Claims
		want   string
	}{
		{"JWK renews", plugins.ProvisionerRef{ID: "jwk/id", Name: "jwk", Type: "JWK"}, nil, GroupingLineage},
		{"JWK found by name", plugins.ProvisionerRef{Name: "jwk", Type: "JWK"}, nil, GroupingLineage},
		{"OIDC with disableRenewal", plugins.ProvisionerRef{ID: "oidc/id", Name: "oidc", Type: "OIDC"}, nil, GroupingSubject},
		{"global disableRenewal", plugins.ProvisionerRef{ID: "jwk/id", Name: "jwk", Type: "JWK"}, &provisioner.Claims{DisableRenewal: &yes}, GroupingSubject},
		{"ACME", plugins.ProvisionerRef{Name: "acme", Type: "ACME"}, nil, GroupingSubject},
		{"SCEP", plugins.ProvisionerRef{Name: "scep", Type: "SCEP"}, nil, GroupingSubject},
		{"unknown provisioner", plugins.ProvisionerRef{ID: "x", Name: "gone", Type: "JWK"}, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &fakeAuthority{global: tt.global, provs: []provisioner.Interface{
				&provisioner.JWK{ID: "jwk/id", Name: "jwk", Type: "JWK"},
				&provisioner.OIDC{ID: "oidc/id", Name: "oidc", Type: "OIDC", Claims: &provisioner.Claims{DisableRenewal: &yes}},
			}}
			got, err := authorityPolicy{authority: func() provisionerSource { return a }}.Grouping(tt.ref)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("unknown provisioner accepted: %s", got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Grouping = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	if _, err := (authorityPolicy{authority: func() provisionerSource { return nil }}).Grouping(jwk); err == nil {
		t.Fatal("no authority: accepted")
	}
}
