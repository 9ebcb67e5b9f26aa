package main

import (
	"fmt"

	"github.com/urfave/cli"

	"github.com/stepfort/stepfort/config"
)

func configCommand() cli.Command {
	return cli.Command{
		Name:  "config",
		Usage: "work with ca.json",
		Subcommands: []cli.Command{{
			Name:      "check",
			Usage:     "validate ca.json (upstream keys and the stepfort block) without serving",
			UsageText: "stepfort config check <ca.json>",
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return fmt.Errorf("expected one argument, the path of ca.json")
				}
				f, err := config.Load(c.Args().First())
				if err != nil {
					return err
				}
				if err := f.Check(); err != nil {
					return fmt.Errorf("%s: %w", f.Path, err)
				}
				names := make([]string, 0, len(f.Plugins))
				for _, p := range f.Plugins {
					names = append(names, p.Name)
				}
				fmt.Printf("%s: OK (%d provisioners, plugins: %v)\n", f.Path, len(f.CA.AuthorityConfig.Provisioners), names)
				return nil
			},
		}},
	}
}
