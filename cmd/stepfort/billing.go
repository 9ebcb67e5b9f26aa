package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli"

	"github.com/stepfort/stepfort/provisioners/billing"
)

func endpointsCommand() cli.Command {
	return cli.Command{
		Name:  "endpoints",
		Usage: "list and inspect billing Endpoints",
		Subcommands: []cli.Command{
			{
				Name:      "list",
				Usage:     "list Endpoints, filtered and paginated",
				UsageText: "stepfort endpoints list [--state active|ended] [--provisioner NAME] [--q TEXT] [--limit N] [--cursor ID] [--all]",
				Flags: adminFlags(
					cli.StringFlag{Name: "state", Usage: "active or ended"},
					cli.StringFlag{Name: "provisioner", Usage: "provisioner name or ID"},
					cli.StringFlag{Name: "q", Usage: "text in the subject (CN or SAN) or ID, case-insensitive"},
					cli.IntFlag{Name: "limit", Usage: "page size, 1 to 1000", Value: 100},
					cli.StringFlag{Name: "cursor", Usage: "continue after this Endpoint ID (nextCursor of the previous page)"},
					cli.BoolFlag{Name: "all", Usage: "follow nextCursor until the last page"},
				),
				Action: func(c *cli.Context) error {
					if s := c.String("state"); s != "" && s != billing.StateActive && s != billing.StateEnded {
						return fmt.Errorf("--state: must be active or ended, got %q", s)
					}
					if l := c.Int("limit"); l < 1 || l > 1000 {
						return fmt.Errorf("--limit: must be from 1 to 1000, got %d", l)
					}
					cl, err := adminClient(c)
					if err != nil {
						return err
					}
					q := url.Values{}
					for _, k := range []string{"state", "provisioner", "q"} {
						if v := c.String(k); v != "" {
							q.Set(k, v)
						}
					}
					q.Set("limit", strconv.Itoa(c.Int("limit")))
					cursor := c.String("cursor")
					var all billing.EndpointList
					for {
						if cursor != "" {
							q.Set("cursor", cursor)
						}
						var page billing.EndpointList
						if err := cl.Do("GET", "/endpoints?"+q.Encode(), nil, &page); err != nil {
							return err
						}
						all.Endpoints = append(all.Endpoints, page.Endpoints...)
						all.NextCursor = page.NextCursor
						if !c.Bool("all") || page.NextCursor == "" {
							break
						}
						cursor = page.NextCursor
					}
					if all.Endpoints == nil {
						all.Endpoints = []billing.EndpointView{}
					}
					if c.Bool("json") {
						return printJSON(all)
					}
					w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(w, "ID\tSTATE\tPROVISIONER\tSUBJECT\tCERTS\tACTIVE\tENDS")
					for _, e := range all.Endpoints {
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%s\n", e.ID, stateText(e), e.Provisioner.Name, e.SubjectKey,
							e.Certificates, e.ActiveCertificates, e.EndsAt.Format(time.RFC3339))
					}
					if err := w.Flush(); err != nil {
						return err
					}
					if all.NextCursor != "" {
						fmt.Fprintf(os.Stderr, "More Endpoints: --cursor %s (or --all)\n", all.NextCursor)
					}
					return nil
				},
			},
			{
				Name:      "show",
				Usage:     "show an Endpoint and its lineage",
				UsageText: "stepfort endpoints show <id>",
				Flags:     adminFlags(),
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return errors.New("expected one argument, the Endpoint ID")
					}
					cl, err := adminClient(c)
					if err != nil {
						return err
					}
					var d billing.EndpointDetail
					if err := cl.Do("GET", "/endpoints/"+url.PathEscape(c.Args().First()), nil, &d); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(d)
					}
					w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintf(w, "ID:\t%s\n", d.ID)
					fmt.Fprintf(w, "State:\t%s\n", stateText(d.EndpointView))
					fmt.Fprintf(w, "Provisioner:\t%s (%s)\n", d.Provisioner.Name, d.Provisioner.Type)
					fmt.Fprintf(w, "Grouping:\t%s\n", d.Grouping)
					fmt.Fprintf(w, "Subject:\t%s\n", d.SubjectKey)
					fmt.Fprintf(w, "Certificates:\t%d (%d active, %d renewals, %d rekeys, %d revocations)\n", d.Certificates, d.ActiveCertificates, d.Renewals, d.Rekeys, d.Revocations)
					fmt.Fprintln(w)
					fmt.Fprintln(w, "SERIAL\tBY\tPARENT\tNOT BEFORE\tNOT AFTER\tSTATUS")
					for _, l := range d.Lineage {
						by := l.ObtainedBy
						if l.Inferred {
							by += " (inferred)"
						}
						status := l.Status
						if l.Revoked {
							status += " " + l.RevokedAt.Format(time.RFC3339)
						}
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", l.Serial, by, orDash(l.ParentSerial), l.NotBefore.Format(time.RFC3339), l.NotAfter.Format(time.RFC3339), status)
					}
					return w.Flush()
				},
			},
		},
	}
}

func billingCommand() cli.Command {
	return cli.Command{
		Name:  "billing",
		Usage: "Endpoint-month reports and rebuilding billing data",
		Subcommands: []cli.Command{
			{
				Name:      "report",
				Usage:     "the bill of one UTC calendar month, with a per-provisioner breakdown",
				UsageText: "stepfort billing report --month YYYY-MM [--format table|csv|json]",
				Flags: adminFlags(
					cli.StringFlag{Name: "month", Usage: "UTC calendar month, YYYY-MM"},
					cli.StringFlag{Name: "format", Usage: "table, csv or json", Value: "table"},
				),
				Action: func(c *cli.Context) error {
					if c.String("month") == "" {
						return errors.New("--month: required (YYYY-MM)")
					}
					if _, err := billing.ParseMonth(c.String("month")); err != nil {
						return fmt.Errorf("--month: %w", err)
					}
					format := c.String("format")
					if c.Bool("json") {
						format = "json"
					}
					if format != "table" && format != "csv" && format != "json" {
						return fmt.Errorf("--format: must be table, csv or json, got %q", format)
					}
					cl, err := adminClient(c)
					if err != nil {
						return err
					}
					var r billing.Report
					if err := cl.Do("GET", "/billing/report?month="+url.QueryEscape(c.String("month"))+"&format=json", nil, &r); err != nil {
						return err
					}
					switch format {
					case "json":
						return printJSON(r)
					case "csv":
						return r.WriteCSV(os.Stdout)
					}
					fmt.Printf("Billing report for %s (UTC), mode %s, unit %s\n\n", r.Month, r.Mode, r.Unit)
					w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
					fmt.Fprintln(w, "PROVISIONER\tTYPE\tENDPOINTS\tEXTRA CERTS\tCERTIFICATES\tBILLABLE\t")
					for _, l := range append(r.Provisioners, &r.Total) {
						fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%d\t\n", l.Provisioner, orDash(l.Type), l.Endpoints, l.ExtraCertificates, l.Certificates, l.Billable)
					}
					return w.Flush()
				},
			},
			{
				Name:      "rebuild",
				Usage:     "record certificates already in the database (for example one moved from step-ca)",
				UsageText: "stepfort billing rebuild",
				Flags:     adminFlags(),
				Action: func(c *cli.Context) error {
					cl, err := adminClient(c)
					if err != nil {
						return err
					}
					var res billing.RebuildResult
					if err := cl.Do("POST", "/billing/rebuild", nil, &res); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(res)
					}
					fmt.Printf("Scanned %d certificates: %d recorded (%d renewals inferred), %d already known, %d revocations applied, %d errors\n",
						res.Scanned, res.Recorded, res.InferredLinks, res.AlreadyKnown, res.Revoked, len(res.Errors))
					for _, e := range res.Errors {
						fmt.Fprintln(os.Stderr, "  "+e)
					}
					return nil
				},
			},
		},
	}
}

func stateText(e billing.EndpointView) string {
	if e.EndedAt == nil {
		return e.State
	}
	return fmt.Sprintf("%s (%s %s)", e.State, e.EndReason, e.EndedAt.Format(time.RFC3339))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
