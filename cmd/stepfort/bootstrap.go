package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/internal/admin"
	"github.com/stepfort/stepfort/internal/setup"
)

// bootstrapTokenCommand writes a token straight into the database named by
// ca.json. It is how a CA not made by `stepfort init` (for example one made
// by `step ca init`) gets its first admin token, and how an operator who lost
// every token recovers. Embedded databases (bbolt, badger) are locked by a
// running daemon, so stop it first; PostgreSQL works while replicas run.
func bootstrapTokenCommand() cli.Command {
	return cli.Command{
		Name:      "bootstrap",
		Usage:     "create an admin token directly in the database of ca.json (no running CA needed)",
		UsageText: "stepfort tokens bootstrap <ca.json> [--name admin] [--scope '*'] [--ttl 720h] [--out FILE]",
		Flags: []cli.Flag{
			cli.StringFlag{Name: "name", Value: "bootstrap", Usage: "token name"},
			cli.StringSliceFlag{Name: "scope", Usage: `scope to grant (repeatable; default "*")`},
			cli.StringFlag{Name: "ttl", Usage: "lifetime, e.g. 720h (default: no expiry)"},
			cli.StringFlag{Name: "out", Usage: "write the secret to this file instead of standard output (replaced, mode 0600; a symlink is refused)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return errors.New("expected one argument, the path of ca.json")
			}
			f, err := config.Load(c.Args().First())
			if err != nil {
				return err
			}
			if f.CA.DB == nil {
				return fmt.Errorf("%s: no \"db\" configured; admin tokens need a database", f.Path)
			}
			scopes := splitList(c.StringSlice("scope"))
			if len(scopes) == 0 {
				scopes = []string{admin.ScopeAll}
			}
			out := c.String("out")
			if out != "" {
				// Refuse a bad --out before making a token whose secret
				// could not be stored.
				if err := setup.CheckSecretPath(out); err != nil {
					return fmt.Errorf("--out: %w", err)
				}
			}
			var ttl time.Duration
			if s := c.String("ttl"); s != "" {
				if ttl, err = time.ParseDuration(s); err != nil || ttl <= 0 {
					return fmt.Errorf("--ttl: invalid duration %q", s)
				}
			}
			nosqlDB, closeDB, err := openCADatabase(f.CA.DB, "it is locked, probably by a running stepfort; stop it or create the token through the admin API")
			if err != nil {
				return err
			}
			defer closeDB()
			store, err := admin.NewTokenStore(nosqlDB, nil)
			if err != nil {
				return err
			}
			t, secret, err := store.Create(c.String("name"), scopes, ttl)
			if err != nil {
				return err
			}
			if out != "" {
				if err := setup.WriteSecretFile(out, []byte(secret+"\n")); err != nil {
					return discardToken(store, t, fmt.Errorf("--out: %w", err))
				}
			}
			fmt.Fprintf(os.Stderr, "Created token %s (%s) with scopes %s%s.\n", t.ID, t.Name, strings.Join(t.Scopes, ","), expiry(t))
			if out == "" {
				fmt.Println(secret)
			}
			return nil
		},
	}
}

// discardToken revokes a token whose secret could not be stored, so no
// unreachable "*" token is left behind, and returns cause.
func discardToken(store *admin.TokenStore, t *admin.Token, cause error) error {
	if _, err := store.Revoke(t.ID); err != nil {
		return fmt.Errorf("%w; and revoking the unsaved token %s failed: %v", cause, t.ID, err)
	}
	return fmt.Errorf("%w (token %s was revoked again)", cause, t.ID)
}

// expiry describes when a token expires, for confirmation lines.
func expiry(t *admin.Token) string {
	if t.ExpiresAt == nil {
		return ", never expiring"
	}
	return ", expiring " + t.ExpiresAt.Format(time.RFC3339)
}
