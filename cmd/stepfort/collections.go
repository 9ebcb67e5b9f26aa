package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"text/tabwriter"

	"github.com/urfave/cli"

	"github.com/stepfort/stepfort/provisioners/inventory"
)

// collectionsCommand is `stepfort collections`: the inventory's device
// collections.
func collectionsCommand() cli.Command {
	fields := []cli.Flag{cli.StringFlag{Name: "description"}, cli.StringFlag{Name: "device-type"}}
	return cli.Command{
		Name:  "collections",
		Usage: "manage device collections",
		Subcommands: []cli.Command{
			{
				Name: "create", Usage: "create a collection", UsageText: "stepfort collections create <name> [--description D] [--device-type T]",
				Flags: adminFlags(fields...), Action: createCollection,
			},
			{
				Name: "update", Usage: "change a collection", UsageText: "stepfort collections update <name> [--description D] [--device-type T]",
				Flags: adminFlags(fields...), Action: updateCollection,
			},
			{
				Name: "show", Usage: "show a collection", UsageText: "stepfort collections show <name>", Flags: adminFlags(),
				Action: showCollection,
			},
			{
				Name: "remove", Usage: "remove an empty collection", UsageText: "stepfort collections remove <name>", Flags: adminFlags(),
				Action: removeCollection,
			},
			{
				Name: "list", Usage: "list collections", UsageText: "stepfort collections list", Flags: adminFlags(),
				Action: listCollections,
			},
		},
	}
}

// collectionName is the one argument of the commands on one collection.
func collectionName(c *cli.Context) (string, error) {
	if c.NArg() != 1 {
		return "", errors.New("expected one argument, the collection name")
	}
	return c.Args().First(), nil
}

func collectionPath(name string) string {
	return "/collections/" + url.PathEscape(name)
}

func createCollection(c *cli.Context) error {
	name, err := collectionName(c)
	if err != nil {
		return err
	}
	return collectionCall(c, "POST", "/collections", inventory.Collection{Name: name, Description: c.String("description"), DeviceType: c.String("device-type")}, "Created")
}

// updateCollection changes only the fields whose flags are given.
func updateCollection(c *cli.Context) error {
	name, err := collectionName(c)
	if err != nil {
		return err
	}
	p := inventory.CollectionPatch{Description: optionalFlag(c, "description"), DeviceType: optionalFlag(c, "device-type")}
	return collectionCall(c, "PATCH", collectionPath(name), p, "Updated")
}

func showCollection(c *cli.Context) error {
	name, err := collectionName(c)
	if err != nil {
		return err
	}
	return collectionCall(c, "GET", collectionPath(name), nil, "")
}

func removeCollection(c *cli.Context) error {
	name, err := collectionName(c)
	if err != nil {
		return err
	}
	cl, err := adminClient(c)
	if err != nil {
		return err
	}
	var out map[string]string
	if err := cl.Do("DELETE", collectionPath(name), nil, &out); err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(out)
	}
	fmt.Printf("Removed collection %s\n", name)
	return nil
}

func listCollections(c *cli.Context) error {
	cl, err := adminClient(c)
	if err != nil {
		return err
	}
	var out struct {
		Collections []*inventory.Collection `json:"collections"`
	}
	if err := cl.Do("GET", "/collections", nil, &out); err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(out)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tDEVICE TYPE\tDESCRIPTION")
	for _, col := range out.Collections {
		fmt.Fprintf(w, "%s\t%s\t%s\n", col.Name, col.DeviceType, col.Description)
	}
	return w.Flush()
}

// collectionCall sends one request about a collection and prints the
// collection it answers: as JSON with --json or for show (verb ""),
// otherwise as "<verb> collection <name>".
func collectionCall(c *cli.Context, method, path string, in any, verb string) error {
	cl, err := adminClient(c)
	if err != nil {
		return err
	}
	var out inventory.Collection
	if err := cl.Do(method, path, in, &out); err != nil {
		return err
	}
	if c.Bool("json") || verb == "" {
		return printJSON(out)
	}
	fmt.Printf("%s collection %s\n", verb, out.Name)
	return nil
}
