package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	upconfig "github.com/smallstep/certificates/authority/config"
	"github.com/urfave/cli"

	"github.com/stepfort/stepfort/provisioners/certindex"
)

// certFilterFlags are the filters of list, export and revoke; each maps
// to the API parameter of the same meaning.
var certFilterFlags = []struct{ flag, param, usage string }{
	{"q", "q", "text in the subject CN or a SAN, case-insensitive"},
	{"serial", "serial", "serial in decimal, or hex (with colons or 0x)"},
	{"provisioner", "provisioner", "provisioner name"},
	{"status", "status", "active, expired or revoked"},
	{"expires-before", "expiresBefore", "notAfter before this RFC 3339 time"},
	{"expires-after", "expiresAfter", "notAfter after this RFC 3339 time"},
	{"revoked-since", "revokedSince", "revoked at or after this RFC 3339 time"},
	{"revoked-before", "revokedBefore", "revoked before this RFC 3339 time"},
	{"device", "device", "device identity (permanent identifier)"},
	{"endpoint", "endpoint", "billing Endpoint ID"},
}

func certFlags(extra ...cli.Flag) []cli.Flag {
	var fl []cli.Flag
	for _, f := range certFilterFlags {
		fl = append(fl, cli.StringFlag{Name: f.flag, Usage: f.usage})
	}
	return adminFlags(append(fl, extra...)...)
}

func certFilter(c *cli.Context) url.Values {
	v := url.Values{}
	for _, f := range certFilterFlags {
		if s := c.String(f.flag); s != "" {
			v.Set(f.param, s)
		}
	}
	return v
}

var sortFlags = []cli.Flag{
	cli.StringFlag{Name: "sort", Usage: "notAfter or issued", Value: certindex.SortNotAfter},
	cli.StringFlag{Name: "order", Usage: "asc or desc", Value: "asc"},
}

func certificatesCommand() cli.Command {
	return cli.Command{
		Name:  "certificates",
		Usage: "query, export and revoke the certificates this CA issued (the certificate index)",
		Subcommands: []cli.Command{
			certListCommand(), certCountCommand(), certShowCommand(), certExportCommand(), certRevokeCommand(), certReindexCommand(),
		},
	}
}

func certListCommand() cli.Command {
	return cli.Command{
		Name:      "list",
		Usage:     "list certificates, filtered and paginated",
		UsageText: "stepfort certificates list [--q TEXT] [--status active|expired|revoked] [--provisioner NAME] [...] [--limit N] [--all]",
		Flags: certFlags(append(sortFlags,
			cli.IntFlag{Name: "limit", Usage: "page size, 1 to 1000", Value: 100},
			cli.StringFlag{Name: "cursor", Usage: "continue from nextCursor of the previous page"},
			cli.BoolFlag{Name: "all", Usage: "follow nextCursor until the last page"})...),
		Action: func(c *cli.Context) error {
			if l := c.Int("limit"); l < 1 || l > certindex.MaxLimit {
				return fmt.Errorf("--limit: must be from 1 to %d, got %d", certindex.MaxLimit, l)
			}
			cl, err := adminClient(c)
			if err != nil {
				return err
			}
			q := certFilter(c)
			q.Set("sort", c.String("sort"))
			q.Set("order", c.String("order"))
			q.Set("limit", strconv.Itoa(c.Int("limit")))
			cursor := c.String("cursor")
			all := certindex.Page{Certificates: []certindex.View{}}
			for {
				if cursor != "" {
					q.Set("cursor", cursor)
				}
				var page certindex.Page
				if err := cl.Do("GET", "/certificates?"+q.Encode(), nil, &page); err != nil {
					return err
				}
				all.Certificates = append(all.Certificates, page.Certificates...)
				all.NextCursor = page.NextCursor
				if !c.Bool("all") || page.NextCursor == "" {
					break
				}
				cursor = page.NextCursor
			}
			if c.Bool("json") {
				return printJSON(all)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "SERIAL\tSUBJECT\tPROVISIONER\tNOT AFTER\tSTATUS")
			for _, v := range all.Certificates {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", v.Serial, subjectText(&v.Record), v.Provisioner.Name, v.NotAfter.Format(time.RFC3339), v.Status)
			}
			if err := w.Flush(); err != nil {
				return err
			}
			if all.NextCursor != "" {
				fmt.Fprintf(os.Stderr, "More certificates: --cursor %s (or --all)\n", all.NextCursor)
			}
			return nil
		},
	}
}

func certCountCommand() cli.Command {
	return cli.Command{
		Name:      "count",
		Usage:     "count the certificates a filter selects",
		UsageText: "stepfort certificates count [--status active|expired|revoked] [--q TEXT] [--revoked-since TIME] [...]",
		Flags:     certFlags(),
		Action: func(c *cli.Context) error {
			cl, err := adminClient(c)
			if err != nil {
				return err
			}
			var res certindex.CountResult
			if err := cl.Do("GET", "/certificates/count?"+certFilter(c).Encode(), nil, &res); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(res)
			}
			fmt.Println(res.Count)
			return nil
		},
	}
}

// subjectText is the CN, or the first SAN when there is no CN.
func subjectText(r *certindex.Record) string {
	names := r.Names()
	switch {
	case len(names) == 0:
		return "-"
	case len(names) > 1:
		return fmt.Sprintf("%s (+%d)", names[0], len(names)-1)
	}
	return names[0]
}

func certShowCommand() cli.Command {
	return cli.Command{
		Name:      "show",
		Usage:     "show one certificate with its PEM",
		UsageText: "stepfort certificates show <serial> [--pem]",
		Flags:     adminFlags(cli.BoolFlag{Name: "pem", Usage: "print only the PEM"}),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return errors.New("expected one argument, the serial (decimal, or hex with colons or 0x)")
			}
			cl, err := adminClient(c)
			if err != nil {
				return err
			}
			var v certindex.View
			if err := cl.Do("GET", "/certificates/"+url.PathEscape(c.Args().First()), nil, &v); err != nil {
				return err
			}
			switch {
			case c.Bool("json"):
				return printJSON(v)
			case c.Bool("pem"):
				_, err := os.Stdout.WriteString(v.PEM)
				return err
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "Serial:\t%s (hex %s)\n", v.Serial, v.SerialHex)
			fmt.Fprintf(w, "Subject:\t%s\n", v.CommonName)
			fmt.Fprintf(w, "Names:\t%s\n", strings.Join(v.Names(), ", "))
			fmt.Fprintf(w, "Provisioner:\t%s (%s)\n", v.Provisioner.Name, v.Provisioner.Type)
			fmt.Fprintf(w, "Validity:\t%s to %s\n", v.NotBefore.Format(time.RFC3339), v.NotAfter.Format(time.RFC3339))
			fmt.Fprintf(w, "Status:\t%s\n", v.Status)
			if r := v.Revocation; r != nil {
				fmt.Fprintf(w, "Revoked:\t%s, reason %d %s\n", r.RevokedAt.Format(time.RFC3339), r.ReasonCode, r.Reason)
			}
			fmt.Fprintf(w, "Endpoint:\t%s\nDevice:\t%s\nIssuer:\t%s\n", v.Endpoint, v.Device, v.Issuer)
			if err := w.Flush(); err != nil {
				return err
			}
			_, err = os.Stdout.WriteString(v.PEM)
			return err
		},
	}
}

func certExportCommand() cli.Command {
	return cli.Command{
		Name:      "export",
		Usage:     "export every matching certificate as CSV or JSON lines (streamed)",
		UsageText: "stepfort certificates export [--format csv|jsonl] [--out FILE] [filters]",
		Flags: certFlags(
			cli.StringFlag{Name: "format", Usage: "csv or jsonl", Value: "csv"},
			cli.StringFlag{Name: "out", Usage: "file to write (default standard output)"}),
		Action: func(c *cli.Context) error {
			f := c.String("format")
			if f != "csv" && f != "jsonl" {
				return fmt.Errorf("--format: must be csv or jsonl, got %q", f)
			}
			q := certFilter(c)
			q.Set("format", f)
			out := io.Writer(os.Stdout)
			if p := c.String("out"); p != "" {
				file, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
				if err != nil {
					return fmt.Errorf("--out: %w", err)
				}
				defer file.Close()
				out = file
			}
			return streamGet(c, "/certificates/export?"+q.Encode(), out)
		},
	}
}

// streamGet copies an admin API answer to out as it arrives. The admin
// client reads whole answers into memory (fine for JSON pages, not for an
// export of a million rows), so this makes the request itself, with the
// same trust (the CA root only) and token.
func streamGet(c *cli.Context, path string, out io.Writer) error {
	if _, err := adminClient(c); err != nil { // the same flag checks
		return err
	}
	token := c.String("token")
	if token == "" {
		b, err := os.ReadFile(c.String("token-file"))
		if err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	root, err := os.ReadFile(c.String("root"))
	if err != nil {
		return fmt.Errorf("--root: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(root) {
		return fmt.Errorf("--root: %s holds no PEM certificate", c.String("root"))
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		ResponseHeaderTimeout: time.Minute}}
	req, err := http.NewRequest("GET", strings.TrimRight(c.String("ca-url"), "/")+"/api/v1"+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return fmt.Errorf("%s (HTTP %d)", strings.TrimSpace(string(b)), resp.StatusCode)
	}
	_, err = io.Copy(out, resp.Body)
	return err
}

func certRevokeCommand() cli.Command {
	return cli.Command{
		Name:  "revoke",
		Usage: "revoke every certificate that matches the filters (run with --dry-run first)",
		UsageText: "stepfort certificates revoke [filters] [--reason-code N] [--reason TEXT] --dry-run\n" +
			"   stepfort certificates revoke [filters] [--reason-code N] [--reason TEXT] --yes",
		Flags: certFlags(
			cli.IntFlag{Name: "reason-code", Usage: "RFC 5280 CRLReason: 0 unspecified, 1 keyCompromise, 3 affiliationChanged, 4 superseded, 5 cessationOfOperation, ..."},
			cli.StringFlag{Name: "reason", Usage: "free text recorded with the revocation"},
			cli.BoolFlag{Name: "dry-run", Usage: "count the matches and list the first ones; revoke nothing"},
			cli.BoolFlag{Name: "yes", Usage: "really revoke (without --dry-run)"},
			cli.BoolFlag{Name: "all", Usage: "allow an empty filter (every certificate)"}),
		Action: func(c *cli.Context) error {
			if !c.Bool("dry-run") && !c.Bool("yes") {
				return errors.New("--yes: required to revoke (run with --dry-run first to see what matches)")
			}
			cl, err := adminClient(c)
			if err != nil {
				return err
			}
			filter := map[string]string{}
			for k, v := range certFilter(c) {
				filter[k] = v[0]
			}
			req := certindex.RevokeRequest{Filter: filter, All: c.Bool("all"), ReasonCode: c.Int("reason-code"),
				Reason: c.String("reason"), DryRun: c.Bool("dry-run")}
			total := certindex.RevokeResult{DryRun: req.DryRun, Serials: []string{}}
			for round := 0; ; round++ {
				var res certindex.RevokeResult
				if err := cl.Do("POST", "/certificates/revoke", req, &res); err != nil {
					return err
				}
				if round == 0 {
					total.Matched = res.Matched
				}
				total.Serials = append(total.Serials, res.Serials...)
				total.Revoked += res.Revoked
				total.AlreadyRevoked += res.AlreadyRevoked
				total.Failed = append(total.Failed, res.Failed...)
				total.Remaining = res.Remaining
				// Each request revokes a bounded batch; stop when nothing
				// is left or a round made no progress (only failures).
				if req.DryRun || res.Remaining == 0 || res.Revoked+res.AlreadyRevoked == 0 {
					break
				}
			}
			if c.Bool("json") {
				return printJSON(total)
			}
			if req.DryRun {
				fmt.Printf("%d certificates match; nothing revoked (dry run). First %d:\n", total.Matched, len(total.Serials))
				for _, s := range total.Serials {
					fmt.Println(s)
				}
				return nil
			}
			fmt.Printf("Revoked %d of %d matching certificates (%d already revoked, %d failed, %d remaining).\n",
				total.Revoked, total.Matched, total.AlreadyRevoked, len(total.Failed), total.Remaining)
			for _, f := range total.Failed {
				fmt.Fprintf(os.Stderr, "%s: %s\n", f.Serial, f.Error)
			}
			if len(total.Failed) > 0 || total.Remaining > 0 {
				return fmt.Errorf("%d failed, %d remaining", len(total.Failed), total.Remaining)
			}
			return nil
		},
	}
}

func certReindexCommand() cli.Command {
	return cli.Command{
		Name:  "reindex",
		Usage: "rebuild the certificate index from upstream's tables (x509_certs, x509_certs_data, revoked_x509_certs)",
		UsageText: "stepfort certificates reindex --config ca.json [--json]\n\n" +
			"Opens the database of ca.json directly: on bbolt stop the daemon first (one process at a time);\n" +
			"on a running CA, POST /api/v1/certificates/reindex does the same.",
		Flags: []cli.Flag{
			cli.StringFlag{Name: "config", Usage: "path of ca.json"},
			cli.BoolFlag{Name: "json", Usage: "print JSON"},
		},
		Action: func(c *cli.Context) error {
			path := c.String("config")
			if path == "" {
				return errors.New("--config: required")
			}
			up, err := upconfig.LoadConfiguration(path)
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			if up.DB == nil {
				return fmt.Errorf("%s: no \"db\" configured", path)
			}
			nosqlDB, closeDB, err := openCADatabase(up.DB,
				"it is locked by a running stepfort; stop the daemon first (bbolt allows one process) or use POST /api/v1/certificates/reindex")
			if err != nil {
				return err
			}
			defer closeDB()
			store, err := certindex.Open(nosqlDB, up.DB.Type)
			if err != nil {
				return err
			}
			res, err := certindex.Reindex(nosqlDB, store)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(res)
			}
			fmt.Printf("Indexed %d certificates and %d revocations of unknown certificates.\n", res.Certificates, res.Revocations)
			for _, e := range res.Errors {
				fmt.Fprintln(os.Stderr, e)
			}
			if len(res.Errors) > 0 {
				return fmt.Errorf("%d rows could not be indexed", len(res.Errors))
			}
			return nil
		},
	}
}
