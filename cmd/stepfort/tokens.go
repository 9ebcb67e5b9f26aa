package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli"

	"github.com/stepfort/stepfort/internal/admin"
	"github.com/stepfort/stepfort/internal/admin/client"
)

// adminFlags are shared by every command that calls the admin API.
func adminFlags(extra ...cli.Flag) []cli.Flag {
	return append([]cli.Flag{
		cli.StringFlag{Name: "ca-url", Usage: "URL of the CA, e.g. https://ca.example.com:9000", EnvVar: "STEPFORT_CA_URL"},
		cli.StringFlag{Name: "root", Usage: "PEM file of the CA root to trust", EnvVar: "STEPFORT_ROOT"},
		cli.StringFlag{Name: "token", Usage: "admin API token", EnvVar: "STEPFORT_TOKEN"},
		cli.StringFlag{Name: "token-file", Usage: "file holding the admin API token", EnvVar: "STEPFORT_TOKEN_FILE"},
		cli.BoolFlag{Name: "json", Usage: "print JSON"},
	}, extra...)
}

// adminClient builds an API client from the admin flags.
func adminClient(c *cli.Context) (*client.Client, error) {
	token := c.String("token")
	if token == "" && c.String("token-file") != "" {
		b, err := os.ReadFile(c.String("token-file"))
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	return client.New(c.String("ca-url"), c.String("root"), token)
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func tokensCommand() cli.Command {
	return cli.Command{
		Name:  "tokens",
		Usage: "manage admin API tokens",
		Subcommands: []cli.Command{
			bootstrapTokenCommand(),
			{
				Name:      "create",
				Usage:     "create a token; its secret is printed once",
				UsageText: "stepfort tokens create <name> --scope <scope> [--scope ...] [--ttl 720h]",
				Flags: adminFlags(
					cli.StringSliceFlag{Name: "scope", Usage: `scope to grant: "*", "<area>", "<area>:read" or "<area>:write" (repeatable)`},
					cli.StringFlag{Name: "ttl", Usage: "lifetime, e.g. 720h (default: the CA's stepfort.admin.maxTokenTTL, 90 days unless configured; never beyond the calling token's expiry)"},
				),
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return errors.New("expected one argument, the token name")
					}
					if err := admin.ValidName(c.Args().First()); err != nil {
						return err
					}
					scopes := splitList(c.StringSlice("scope"))
					if len(scopes) == 0 {
						return errors.New("--scope: at least one is required")
					}
					for _, s := range scopes {
						if !admin.ValidScope(s) {
							return fmt.Errorf("--scope: invalid scope %q", s)
						}
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
					var out admin.CreateTokenResponse
					if err := cl.Do("POST", "/tokens", admin.CreateTokenRequest{Name: c.Args().First(), Scopes: scopes, TTL: c.String("ttl")}, &out); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(out)
					}
					fmt.Fprintf(os.Stderr, "Created token %s (%s) with scopes %s%s. Store the secret now; it is not shown again.\n", out.Token.ID, out.Token.Name, strings.Join(out.Token.Scopes, ","), expiry(out.Token))
					fmt.Println(out.Secret)
					return nil
				},
			},
			{
				Name:      "list",
				Usage:     "list tokens (never their secrets)",
				UsageText: "stepfort tokens list [--status active|expired|revoked]",
				Flags: adminFlags(
					cli.StringFlag{Name: "status", Usage: "only tokens of this status: active, expired or revoked"},
				),
				Action: func(c *cli.Context) error {
					status := c.String("status")
					if err := (admin.TokenQuery{Status: status}).Validate(); err != nil {
						return fmt.Errorf("--%w", err)
					}
					cl, err := adminClient(c)
					if err != nil {
						return err
					}
					// Every page, newest first: the output of the unpaged API.
					tokens, err := cl.ListTokens(status)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(struct {
							Tokens []*admin.Token `json:"tokens"`
						}{tokens})
					}
					return printTokens(os.Stdout, tokens, time.Now())
				},
			},
			{
				Name:      "revoke",
				Usage:     "revoke a token by ID",
				UsageText: "stepfort tokens revoke <id>",
				Flags:     adminFlags(),
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return errors.New("expected one argument, the token ID")
					}
					cl, err := adminClient(c)
					if err != nil {
						return err
					}
					var t admin.Token
					if err := cl.Do("DELETE", "/tokens/"+c.Args().First(), nil, &t); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(t)
					}
					fmt.Printf("Revoked token %s (%s)\n", t.ID, t.Name)
					return nil
				},
			},
		},
	}
}

// printTokens writes the table of stepfort tokens list.
func printTokens(out io.Writer, tokens []*admin.Token, now time.Time) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tNAME\tSCOPES\tCREATED\tEXPIRES\tSTATUS")
	for _, t := range tokens {
		exp := "never"
		if t.ExpiresAt != nil {
			exp = t.ExpiresAt.Format(time.RFC3339)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, strings.Join(t.Scopes, ","), t.CreatedAt.Format(time.RFC3339), exp, t.Status(now))
	}
	return w.Flush()
}
