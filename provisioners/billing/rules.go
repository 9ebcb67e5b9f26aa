package billing

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"

	"github.com/stepfort/stepfort/internal/endpoint"
	"github.com/stepfort/stepfort/plugins"
)

// IncludedCertificates is how many concurrently active certificates one
// Endpoint-month includes; each one above is billed as another Endpoint.
const IncludedCertificates = 3

// Billing modes.
const (
	ModeEndpoint    = "endpoint"
	ModeCertificate = "certificate"
)

// compactAfter is how long after an interval ends its months are frozen into
// MonthUsage and the interval dropped from the Endpoint record. It bounds the
// record's size independently of the Endpoint's age; events delivered later
// than this cannot change frozen months (docs/billing.md).
const compactAfter = 62 * 24 * time.Hour

// Month is a UTC calendar month.
type Month struct {
	Year  int
	Month time.Month
}

// ParseMonth parses "YYYY-MM".
func ParseMonth(s string) (Month, error) {
	t, err := time.Parse("2006-01", s)
	if err != nil || len(s) != 7 {
		return Month{}, fmt.Errorf("invalid month %q: use YYYY-MM", s)
	}
	return Month{t.Year(), t.Month()}, nil
}

// MonthOf returns the UTC month containing t.
func MonthOf(t time.Time) Month {
	t = t.UTC()
	return Month{t.Year(), t.Month()}
}

func (m Month) String() string { return fmt.Sprintf("%04d-%02d", m.Year, int(m.Month)) }

// Start is the first instant of the month.
func (m Month) Start() time.Time { return time.Date(m.Year, m.Month, 1, 0, 0, 0, 0, time.UTC) }

// End is the first instant of the next month.
func (m Month) End() time.Time { return m.Start().AddDate(0, 1, 0) }

// Next is the following month.
func (m Month) Next() Month { return MonthOf(m.End()) }

// usage computes an Endpoint's usage in [from, to) from intervals: the peak
// number of simultaneously active certificates and the number active at
// some instant. Intervals are half-open, so a certificate ending at the
// instant another starts does not overlap it.
func usage(ivs []Interval, from, to int64) MonthUsage {
	type edge struct {
		at    int64
		delta int
	}
	var edges []edge
	var u MonthUsage
	for _, iv := range ivs {
		s, e := max(iv.Start, from), min(iv.End, to)
		if s >= e {
			continue
		}
		u.Certificates++
		edges = append(edges, edge{s, +1}, edge{e, -1})
	}
	sort.Slice(edges, func(i, j int) bool {
		if edges[i].at != edges[j].at {
			return edges[i].at < edges[j].at
		}
		return edges[i].delta < edges[j].delta // ends before starts
	})
	cur := 0
	for _, ed := range edges {
		cur += ed.delta
		u.Peak = max(u.Peak, cur)
	}
	return u
}

// MonthUsage returns the Endpoint's usage in month m.
func (e *Endpoint) MonthUsage(m Month) MonthUsage {
	if u, ok := e.Months[m.String()]; ok {
		return u
	}
	return usage(e.Intervals, m.Start().Unix(), m.End().Unix())
}

// Units is what usage u bills in a mode: in endpoint mode, 1 Endpoint-month
// if active at all plus 1 for each certificate above IncludedCertificates at
// the month's peak; in certificate mode, the certificates active in the
// month.
func (u MonthUsage) Units(mode string) int {
	if mode == ModeCertificate {
		return u.Certificates
	}
	if u.Peak == 0 {
		return 0
	}
	return 1 + max(0, u.Peak-IncludedCertificates)
}

// compact freezes the usage of months that ended before now-compactAfter
// and drops intervals that ended before then. A month frozen once is never
// recomputed: the intervals still kept that overlap it are already counted
// in its MonthUsage.
func (e *Endpoint) compact(now time.Time) {
	cutoff := MonthOf(now.Add(-compactAfter)).Start()
	if !cutoff.After(e.Compacted) {
		return
	}
	c := cutoff.Unix()
	for _, iv := range e.Intervals {
		if iv.Start >= c || iv.Start >= iv.End {
			continue
		}
		for m := MonthOf(time.Unix(iv.Start, 0)); m.Start().Before(cutoff) && m.Start().Unix() < iv.End; m = m.Next() {
			if _, done := e.Months[m.String()]; done {
				continue
			}
			if e.Months == nil {
				e.Months = map[string]MonthUsage{}
			}
			e.Months[m.String()] = usage(e.Intervals, m.Start().Unix(), m.End().Unix())
		}
	}
	kept := e.Intervals[:0]
	for _, iv := range e.Intervals {
		if iv.End > c {
			kept = append(kept, iv)
		}
	}
	e.Intervals = kept
	e.Compacted = cutoff
}

// RenewalPolicy decides whether a provisioner's certificates are grouped
// by lineage or by subject.
type RenewalPolicy interface {
	// Grouping returns GroupingLineage or GroupingSubject for certificates
	// signed (not renewed) by the provisioner.
	Grouping(ref plugins.ProvisionerRef) (string, error)
}

// neverRenews lists provisioner types whose flows re-enrol instead of
// renewing: their certificates are always grouped by subject.
var neverRenews = map[string]bool{"ACME": true, "SCEP": true}

// provisionerSource is what the policy needs of upstream's
// *authority.Authority.
type provisionerSource interface {
	LoadProvisionerByID(id string) (provisioner.Interface, error)
	LoadProvisionerByName(name string) (provisioner.Interface, error)
	GetConfig() *config.Config
}

// authorityPolicy reads the provisioner's effective disableRenewal claim
// from the running authority (per provisioner, else authority.claims, else
// upstream's default). It asks the host for the authority on every call
// because a reload replaces it.
type authorityPolicy struct {
	authority func() provisionerSource
}

// hostAuthority adapts plugins.Host.Authority, keeping a nil authority nil.
func hostAuthority(h plugins.Host) func() provisionerSource {
	return func() provisionerSource {
		if a := h.Authority(); a != nil {
			return a
		}
		return nil
	}
}

var _ provisionerSource = (*authority.Authority)(nil)

func (p authorityPolicy) Grouping(ref plugins.ProvisionerRef) (string, error) {
	if neverRenews[strings.ToUpper(ref.Type)] {
		return GroupingSubject, nil
	}
	a := p.authority()
	if a == nil {
		return "", errors.New("authority not available")
	}
	var prov provisioner.Interface
	var err error
	if ref.ID != "" {
		prov, err = a.LoadProvisionerByID(ref.ID)
	}
	if prov == nil && ref.Name != "" {
		prov, err = a.LoadProvisionerByName(ref.Name)
	}
	if prov == nil {
		return "", fmt.Errorf("load provisioner %q (%s): %w", ref.Name, ref.ID, errOr(err, "not found"))
	}
	if neverRenews[strings.ToUpper(prov.GetType().String())] {
		return GroupingSubject, nil
	}
	var global *provisioner.Claims
	if cfg := a.GetConfig(); cfg != nil && cfg.AuthorityConfig != nil {
		global = cfg.AuthorityConfig.Claims
	}
	disabled, err := DisableRenewal(prov, global)
	if err != nil {
		return "", err
	}
	if disabled {
		return GroupingSubject, nil
	}
	return GroupingLineage, nil
}

func errOr(err error, msg string) error {
	if err != nil {
		return err
	}
	return errors.New(msg)
}

// DisableRenewal is the provisioner's effective disableRenewal claim
// (internal/endpoint.DisableRenewal, shared with the certificate index).
func DisableRenewal(prov provisioner.Interface, global *provisioner.Claims) (bool, error) {
	return endpoint.DisableRenewal(prov, global)
}
