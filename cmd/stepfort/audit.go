package main

import (
	"crypto"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"

	"github.com/urfave/cli"

	"github.com/stepfort/stepfort/internal/audit"
)

func auditCommand() cli.Command {
	return cli.Command{
		Name:  "audit",
		Usage: "query, export and verify the audit trail (scope audit:read)",
		Subcommands: []cli.Command{
			{
				Name:      "verify",
				Usage:     "verify an export file offline, or the live trail through the admin API",
				UsageText: "stepfort audit verify [FILE] --key audit_key.pub [--ca-url URL --root ROOT --token-file F]",
				Flags:     adminFlags(cli.StringFlag{Name: "key", Usage: "the CA's audit public key (PEM PUBLIC KEY: secrets/audit_key.pub, or the HSM key's); required for a file"}),
				Action:    auditVerify,
			},
			{
				Name:      "export",
				Usage:     "write records [from, to) as JSON lines with the signed checkpoint that covers them",
				UsageText: "stepfort audit export [--from SEQ|TIME] [--to SEQ|TIME] [--output FILE]",
				Flags: adminFlags(
					cli.StringFlag{Name: "from", Usage: "first sequence number or RFC 3339 time (default: the first retained record)"},
					cli.StringFlag{Name: "to", Usage: "end, exclusive: sequence number or RFC 3339 time (default: everything)"},
					cli.StringFlag{Name: "output, o", Usage: "file to write (default: standard output)"},
				),
				Action: auditExport,
			},
			{
				Name:      "list",
				Usage:     "list records matching filters, as JSON",
				UsageText: "stepfort audit list [--since T] [--until T] [--action A] [--outcome O] [--actor X] [--serial S] [--device D] [--after SEQ] [--limit N]",
				Flags: adminFlags(
					cli.StringFlag{Name: "since"}, cli.StringFlag{Name: "until"}, cli.StringFlag{Name: "action"},
					cli.StringFlag{Name: "outcome"}, cli.StringFlag{Name: "actor"}, cli.StringFlag{Name: "serial"},
					cli.StringFlag{Name: "device"}, cli.StringFlag{Name: "after"}, cli.StringFlag{Name: "limit"},
				),
				Action: auditList,
			},
		},
	}
}

func auditVerify(c *cli.Context) error {
	if c.NArg() > 1 {
		return errors.New("expected at most one argument, the export file")
	}
	var pub crypto.PublicKey
	if k := c.String("key"); k != "" {
		b, err := os.ReadFile(k)
		if err != nil {
			return fmt.Errorf("--key: %w", err)
		}
		if pub, err = audit.ParsePublicPEM(b); err != nil {
			return fmt.Errorf("--key %s: %w", k, err)
		}
	}
	var in io.Reader
	if c.NArg() == 1 {
		if pub == nil {
			return errors.New("--key: required to verify a file")
		}
		f, err := os.Open(c.Args().First())
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	} else {
		cl, err := adminClient(c)
		if err != nil {
			return err
		}
		if pub == nil {
			var pemKey pemWriter
			if err := cl.Stream("/audit/key", &pemKey); err != nil {
				return err
			}
			if pub, err = audit.ParsePublicPEM(pemKey); err != nil {
				return fmt.Errorf("audit key from the CA: %w", err)
			}
			fmt.Fprintf(os.Stderr, "warning: verifying with the key the CA serves (id %s); pass --key to check against a key you hold\n", audit.KeyID(pub))
		}
		tmp, err := os.CreateTemp("", "stepfort-audit-*.jsonl")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name())
		defer tmp.Close()
		if err := cl.Stream("/audit/export", tmp); err != nil {
			return err
		}
		if _, err := tmp.Seek(0, io.SeekStart); err != nil {
			return err
		}
		in = tmp
	}
	s, err := audit.Verify(in, pub)
	if err != nil {
		return fmt.Errorf("audit trail does NOT verify: %w", err)
	}
	if c.Bool("json") {
		return printJSON(s)
	}
	fmt.Printf("OK: records %d to %d verify against checkpoint %d of %s (key %s)\n", s.From, s.To-1, s.CheckpointSize, s.CheckpointTime, s.KeyID)
	return nil
}

// pemWriter collects a small answer.
type pemWriter []byte

func (p *pemWriter) Write(b []byte) (int, error) {
	if len(*p)+len(b) > 64<<10 {
		return 0, errors.New("answer too large")
	}
	*p = append(*p, b...)
	return len(b), nil
}

func auditExport(c *cli.Context) error {
	cl, err := adminClient(c)
	if err != nil {
		return err
	}
	q := url.Values{}
	for _, k := range []string{"from", "to"} {
		if v := c.String(k); v != "" {
			q.Set(k, v)
		}
	}
	var out io.Writer = os.Stdout
	if o := c.String("output"); o != "" {
		f, err := os.OpenFile(o, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return fmt.Errorf("--output: %w", err)
		}
		defer f.Close()
		out = f
	}
	return cl.Stream("/audit/export?"+q.Encode(), out)
}

func auditList(c *cli.Context) error {
	cl, err := adminClient(c)
	if err != nil {
		return err
	}
	q := url.Values{}
	for _, k := range []string{"since", "until", "action", "outcome", "actor", "serial", "device", "after", "limit"} {
		if v := c.String(k); v != "" {
			q.Set(k, v)
		}
	}
	var page map[string]any
	if err := cl.Do("GET", "/audit?"+q.Encode(), nil, &page); err != nil {
		return err
	}
	return printJSON(page)
}
