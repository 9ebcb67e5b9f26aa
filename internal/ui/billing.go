package ui

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
)

// chartMonths is how many months the billing chart shows.
const chartMonths = 12

type reportLine struct {
	Provisioner       string `json:"provisioner"`
	Type              string `json:"type"`
	Endpoints         int    `json:"endpoints"`
	ExtraCertificates int    `json:"extraCertificates"`
	Certificates      int    `json:"certificates"`
	Billable          int    `json:"billable"`
}

type report struct {
	Month        string        `json:"month"`
	Mode         string        `json:"mode"`
	Unit         string        `json:"unit"`
	Total        reportLine    `json:"total"`
	Provisioners []*reportLine `json:"provisioners"`
}

type endpointView struct {
	ID          string `json:"id"`
	State       string `json:"state"`
	Provisioner struct {
		Name string `json:"name"`
	} `json:"provisioner"`
	Grouping           string     `json:"grouping"`
	SubjectKey         string     `json:"subjectKey"`
	CreatedAt          time.Time  `json:"createdAt"`
	EndsAt             time.Time  `json:"endsAt"`
	EndedAt            *time.Time `json:"endedAt"`
	EndReason          string     `json:"endReason"`
	LastSerial         string     `json:"lastSerial"`
	Certificates       int        `json:"certificates"`
	ActiveCertificates int        `json:"activeCertificates"`
	Renewals           int        `json:"renewals"`
	Rekeys             int        `json:"rekeys"`
	Revocations        int        `json:"revocations"`
	Alert              *struct {
		RaisedAt  time.Time `json:"raisedAt"`
		ExpiresAt time.Time `json:"expiresAt"`
	} `json:"alert"`
	Lineage []struct {
		Serial       string    `json:"serial"`
		Seq          int       `json:"seq"`
		ObtainedBy   string    `json:"obtainedBy"`
		ParentSerial string    `json:"parentSerial"`
		Subject      string    `json:"subject"`
		NotBefore    time.Time `json:"notBefore"`
		NotAfter     time.Time `json:"notAfter"`
		Status       string    `json:"status"`
	} `json:"lineage"`
}

type billingPage struct {
	Month      string
	Report     *report
	Chart      *chart
	Endpoints  []endpointView
	NextCursor string
	State, Q   string
	FirstPage  bool
}

func (s *Server) billing(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	now := s.opts.Now().UTC()
	month := q.Get("month")
	if _, err := time.Parse("2006-01", month); err != nil {
		month = now.Format("2006-01")
	}
	d := &billingPage{Month: month, State: q.Get("state"), Q: q.Get("q"), FirstPage: q.Get("cursor") == ""}
	p := &page{Title: "Billing", Nav: "billing", Data: d}
	// The chart: the months up to the one shown, oldest first.
	sel, _ := time.Parse("2006-01", month)
	var bars []bar
	for i := chartMonths - 1; i >= 0; i-- {
		m := sel.AddDate(0, -i, 0).Format("2006-01")
		var rep report
		res := s.call(r, http.MethodGet, "/api/v1/billing/report?month="+m, nil, &rep)
		if !res.ok() {
			s.apiFailed(w, r, res, "billing", p)
			return
		}
		bars = append(bars, bar{Label: m, Value: rep.Total.Billable, Title: fmt.Sprintf("%s: %d %s", m, rep.Total.Billable, rep.Unit)})
		if m == month {
			d.Report = &rep
		}
	}
	d.Chart = newChart(bars, d.Report.Unit)
	v := url.Values{"limit": {strconv.Itoa(pageSize)}}
	for k, val := range map[string]string{"state": d.State, "q": d.Q, "cursor": q.Get("cursor")} {
		if val != "" {
			v.Set(k, val)
		}
	}
	var list struct {
		Endpoints  []endpointView `json:"endpoints"`
		NextCursor string         `json:"nextCursor"`
	}
	if res := s.call(r, http.MethodGet, "/api/v1/endpoints?"+v.Encode(), nil, &list); res.ok() {
		d.Endpoints, d.NextCursor = list.Endpoints, list.NextCursor
	} else if res.status != http.StatusForbidden {
		p.Error = "Endpoints: " + res.err
	}
	s.render(w, r, http.StatusOK, "billing", p)
}

func (s *Server) endpoint(w http.ResponseWriter, r *http.Request) {
	var e endpointView
	p := &page{Title: "Endpoint", Nav: "billing", Data: &e}
	if res := s.call(r, http.MethodGet, "/api/v1/endpoints/"+url.PathEscape(chi.URLParam(r, "id")), nil, &e); !res.ok() {
		s.apiFailed(w, r, res, "endpoint", p)
		return
	}
	p.Title = "Endpoint " + e.SubjectKey
	s.render(w, r, http.StatusOK, "endpoint", p)
}
