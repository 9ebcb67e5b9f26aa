package billing

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/plugins"
)

// ReportLine is the usage of one provisioner (or the total) in a month.
type ReportLine struct {
	Provisioner string `json:"provisioner"`
	Type        string `json:"type,omitempty"`
	// Endpoints active at some instant of the month.
	Endpoints int `json:"endpoints"`
	// ExtraCertificates is the sum over Endpoints of the certificates above
	// IncludedCertificates at the month's peak.
	ExtraCertificates int `json:"extraCertificates"`
	// Certificates active at some instant of the month.
	Certificates int `json:"certificates"`
	// Billable is what the month bills in the configured mode: Endpoint-
	// months (Endpoints + ExtraCertificates) or certificates.
	Billable int `json:"billable"`
}

func (l *ReportLine) add(u MonthUsage, mode string) {
	if u.Peak == 0 {
		return
	}
	l.Endpoints++
	l.ExtraCertificates += max(0, u.Peak-IncludedCertificates)
	l.Certificates += u.Certificates
	l.Billable += u.Units(mode)
}

func (l *ReportLine) merge(o *ReportLine) {
	l.Endpoints += o.Endpoints
	l.ExtraCertificates += o.ExtraCertificates
	l.Certificates += o.Certificates
	l.Billable += o.Billable
}

// usageView is the part of a stored Endpoint the report reads.
type usageView struct {
	Provisioner plugins.ProvisionerRef `json:"provisioner"`
	Intervals   []Interval             `json:"intervals"`
	Months      map[string]MonthUsage  `json:"months"`
}

// Report is a month's bill: totals and a per-provisioner breakdown.
type Report struct {
	Month        string        `json:"month"`
	Mode         string        `json:"mode"`
	Unit         string        `json:"unit"`
	From         time.Time     `json:"from"`
	To           time.Time     `json:"to"`
	GeneratedAt  time.Time     `json:"generatedAt"`
	Total        ReportLine    `json:"total"`
	Provisioners []*ReportLine `json:"provisioners"`
}

// Report computes the bill of month m by scanning Endpoint summaries only.
func (s *Store) Report(m Month, mode string, now time.Time) (*Report, error) {
	r := &Report{Month: m.String(), Mode: mode, Unit: "endpoint-month", From: m.Start(), To: m.End(), GeneratedAt: now.UTC()}
	if mode == ModeCertificate {
		r.Unit = "certificate"
	}
	r.Total.Provisioner = "total"
	entries, err := s.db.List(endpointsTable)
	if err != nil && !database.IsErrNotFound(err) {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	// Decoding dominates: split it over the CPUs, each worker summing its
	// share, then merge.
	workers := min(runtime.GOMAXPROCS(0), max(1, len(entries)/1000))
	parts := make([]map[string]*ReportLine, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			by := map[string]*ReportLine{}
			parts[w] = by
			for i := w; i < len(entries); i += workers {
				var e usageView
				if err := json.Unmarshal(entries[i].Value, &e); err != nil {
					errs[w] = fmt.Errorf("decode endpoint %s: %w", entries[i].Key, err)
					return
				}
				ep := Endpoint{Intervals: e.Intervals, Months: e.Months}
				u := ep.MonthUsage(m)
				if u.Peak == 0 {
					continue
				}
				key := provisionerKey(e.Provisioner)
				l := by[key]
				if l == nil {
					l = &ReportLine{Provisioner: e.Provisioner.Name, Type: e.Provisioner.Type}
					by[key] = l
				}
				l.add(u, mode)
			}
		}()
	}
	wg.Wait()
	by := map[string]*ReportLine{}
	for w := range workers {
		if errs[w] != nil {
			return nil, errs[w]
		}
		for key, l := range parts[w] {
			t := by[key]
			if t == nil {
				t = &ReportLine{Provisioner: l.Provisioner, Type: l.Type}
				by[key] = t
			}
			t.merge(l)
			r.Total.merge(l)
		}
	}
	r.Provisioners = make([]*ReportLine, 0, len(by))
	for _, l := range by {
		r.Provisioners = append(r.Provisioners, l)
	}
	sort.Slice(r.Provisioners, func(i, j int) bool {
		a, b := r.Provisioners[i], r.Provisioners[j]
		if a.Provisioner != b.Provisioner {
			return a.Provisioner < b.Provisioner
		}
		return a.Type < b.Type
	})
	return r, nil
}

// WriteCSV writes the report as CSV: a header, one row per provisioner and
// a final "total" row.
func (r *Report) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"month", "mode", "provisioner", "type", "endpoints", "extra_certificates", "certificates", "billable"})
	row := func(l *ReportLine) {
		_ = cw.Write([]string{r.Month, r.Mode, l.Provisioner, l.Type, strconv.Itoa(l.Endpoints),
			strconv.Itoa(l.ExtraCertificates), strconv.Itoa(l.Certificates), strconv.Itoa(l.Billable)})
	}
	for _, l := range r.Provisioners {
		row(l)
	}
	row(&r.Total)
	cw.Flush()
	return cw.Error()
}
