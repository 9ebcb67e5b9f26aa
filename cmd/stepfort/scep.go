package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli"
)

// scepChallenge is a one-time SCEP challenge as the dynamicScep plugin's
// admin API shows it. Secret is set only in the answer to its creation.
type scepChallenge struct {
	ID             string     `json:"id"`
	Secret         string     `json:"challenge,omitempty"`
	Provisioner    string     `json:"provisioner"`
	Source         string     `json:"source,omitempty"`
	State          string     `json:"state,omitempty"`
	Device         string     `json:"device,omitempty"`
	CommonName     string     `json:"commonName,omitempty"`
	DNSNames       []string   `json:"dnsNames,omitempty"`
	IPAddresses    []string   `json:"ipAddresses,omitempty"`
	EmailAddresses []string   `json:"emailAddresses,omitempty"`
	URIs           []string   `json:"uris,omitempty"`
	CreatedAt      time.Time  `json:"createdAt"`
	ExpiresAt      time.Time  `json:"expiresAt"`
	ConsumedAt     *time.Time `json:"consumedAt,omitempty"`
}

// scepChallengeRequest is the body of POST /api/v1/scep/challenges.
type scepChallengeRequest struct {
	Provisioner    string   `json:"provisioner,omitempty"`
	TTL            string   `json:"ttl,omitempty"`
	Device         string   `json:"device,omitempty"`
	CommonName     string   `json:"commonName,omitempty"`
	DNSNames       []string `json:"dnsNames,omitempty"`
	IPAddresses    []string `json:"ipAddresses,omitempty"`
	EmailAddresses []string `json:"emailAddresses,omitempty"`
	URIs           []string `json:"uris,omitempty"`
}

// scepCommand is `stepfort scep`: the dynamicScep plugin's admin API from
// the command line.
func scepCommand() cli.Command {
	return cli.Command{
		Name:  "scep",
		Usage: "manage one-time SCEP challenges (dynamicScep plugin)",
		Subcommands: []cli.Command{{
			Name:  "challenge",
			Usage: "create, list and withdraw one-time SCEP challenges",
			Subcommands: []cli.Command{
				scepChallengeCreateCommand(),
				scepChallengeListCommand(),
				scepChallengeDeleteCommand(),
			},
		}},
	}
}

func scepChallengeCreateCommand() cli.Command {
	return cli.Command{
		Name:      "create",
		Usage:     "create a challenge; it is printed once",
		UsageText: "stepfort scep challenge create [--provisioner scep] [--ttl 30m] [--device ID] [--cn NAME] [--dns NAME ...] [--ip IP ...] [--email ADDR ...] [--uri URI ...]",
		Flags: adminFlags(
			cli.StringFlag{Name: "provisioner", Usage: "SCEP provisioner the challenge is for (optional when the plugin serves one)"},
			cli.StringFlag{Name: "ttl", Usage: "lifetime, e.g. 30m (default: the plugin's challengeTTL, 60m unless configured)"},
			cli.StringFlag{Name: "device", Usage: "inventory device ID the certificate is linked to; disabling or removing the device revokes it"},
			cli.StringFlag{Name: "cn", Usage: "subject common name the CSR must carry"},
			cli.StringSliceFlag{Name: "dns", Usage: "DNS SAN the CSR must carry (repeatable)"},
			cli.StringSliceFlag{Name: "ip", Usage: "IP SAN the CSR must carry (repeatable)"},
			cli.StringSliceFlag{Name: "email", Usage: "email SAN the CSR must carry (repeatable)"},
			cli.StringSliceFlag{Name: "uri", Usage: "URI SAN the CSR must carry (repeatable)"},
		),
		Action: createSCEPChallenge,
	}
}

func createSCEPChallenge(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (flags go before arguments; see --help)", c.Args().First())
	}
	if ttl := c.String("ttl"); ttl != "" {
		if d, err := time.ParseDuration(ttl); err != nil || d <= 0 {
			return fmt.Errorf("--ttl: invalid duration %q", ttl)
		}
	}
	cl, err := adminClient(c)
	if err != nil {
		return err
	}
	req := scepChallengeRequest{
		Provisioner:    c.String("provisioner"),
		TTL:            c.String("ttl"),
		Device:         c.String("device"),
		CommonName:     c.String("cn"),
		DNSNames:       splitList(c.StringSlice("dns")),
		IPAddresses:    splitList(c.StringSlice("ip")),
		EmailAddresses: splitList(c.StringSlice("email")),
		URIs:           c.StringSlice("uri"), // a URI may hold a comma
	}
	var out scepChallenge
	if err := cl.Do("POST", "/scep/challenges", req, &out); err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(out)
	}
	fmt.Fprintf(os.Stderr, "Created SCEP challenge %s for provisioner %s, valid once until %s. It is not shown again.\n",
		out.ID, out.Provisioner, out.ExpiresAt.Format(time.RFC3339))
	fmt.Println(out.Secret)
	return nil
}

func scepChallengeListCommand() cli.Command {
	return cli.Command{
		Name:      "list",
		Usage:     "list outstanding challenges (never the challenges themselves)",
		UsageText: "stepfort scep challenge list [--provisioner scep] [--all]",
		Flags: adminFlags(
			cli.StringFlag{Name: "provisioner", Usage: "only this SCEP provisioner's challenges"},
			cli.BoolFlag{Name: "all", Usage: "also consumed, withdrawn and expired ones the plugin still keeps"},
		),
		Action: listSCEPChallenges,
	}
}

func listSCEPChallenges(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", c.Args().First())
	}
	cl, err := adminClient(c)
	if err != nil {
		return err
	}
	q := url.Values{}
	if p := c.String("provisioner"); p != "" {
		q.Set("provisioner", p)
	}
	if c.Bool("all") {
		q.Set("all", "true")
	}
	path := "/scep/challenges"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out struct {
		Challenges []scepChallenge `json:"challenges"`
	}
	if err := cl.Do("GET", path, nil, &out); err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(out)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tPROVISIONER\tSOURCE\tSTATE\tDEVICE\tBOUND TO\tEXPIRES")
	for _, ch := range out.Challenges {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ch.ID, ch.Provisioner, dash(ch.Source), dash(ch.State),
			dash(ch.Device), dash(ch.bindings()), ch.ExpiresAt.Format(time.RFC3339))
	}
	return w.Flush()
}

// bindings summarises what a challenge is bound to: the CN and the SANs.
func (ch scepChallenge) bindings() string {
	var parts []string
	if ch.CommonName != "" {
		parts = append(parts, "CN="+ch.CommonName)
	}
	for _, group := range [][]string{ch.DNSNames, ch.IPAddresses, ch.EmailAddresses, ch.URIs} {
		parts = append(parts, group...)
	}
	return strings.Join(parts, ",")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func scepChallengeDeleteCommand() cli.Command {
	return cli.Command{
		Name:      "delete",
		Usage:     "withdraw a challenge that was not used yet",
		UsageText: "stepfort scep challenge delete <id>",
		Flags:     adminFlags(),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return errors.New("expected one argument, the challenge ID")
			}
			cl, err := adminClient(c)
			if err != nil {
				return err
			}
			id := c.Args().First()
			if err := cl.Do("DELETE", "/scep/challenges/"+url.PathEscape(id), nil, nil); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(map[string]any{"id": id, "withdrawn": true})
			}
			fmt.Printf("Withdrew SCEP challenge %s\n", id)
			return nil
		},
	}
}
