package main

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli"

	"github.com/stepfort/stepfort/internal/admin/client"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// devicesCommand is `stepfort devices`: the inventory plugin's admin API
// from the command line.
func devicesCommand() cli.Command {
	return cli.Command{
		Name:  "devices",
		Usage: "manage the device inventory",
		Subcommands: []cli.Command{
			deviceAddCommand(),
			deviceImportCommand(),
			deviceListCommand(),
			deviceByRefCommand("show", "show a device by ID or permanent identifier", "GET"),
			deviceByRefCommand("remove", "remove a device", "DELETE"),
			deviceUpdateCommand(),
		},
	}
}

func deviceAddCommand() cli.Command {
	return cli.Command{
		Name:      "add",
		Usage:     "register a device",
		UsageText: "stepfort devices add [--ek-pub FILE | --ek-cert FILE] [--identifier ID ...] [--name N] [--collection C] ...",
		Flags:     adminFlags(deviceFieldFlags()...),
		Action:    addDevice,
	}
}

func deviceImportCommand() cli.Command {
	return cli.Command{
		Name:      "import",
		Usage:     "import devices from CSV or JSON (idempotent upsert keyed by permanent identifier)",
		UsageText: "stepfort devices import FILE [--map 'serial:Serial Number,name:Device Name,...'] [--source jamf]",
		Flags: adminFlags(
			cli.StringFlag{Name: "map", Usage: "CSV column mapping field:Column,... (fields: identifier, ekPublic, ekCertificate, name, type, os, serial, collection, owner, status, metadata.<key>)"},
			cli.StringFlag{Name: "source", Usage: "where the file comes from, e.g. jamf, intune"},
			cli.StringFlag{Name: "format", Usage: "csv or json (default: from the file extension)"},
		),
		Action: importDevices,
	}
}

func deviceListCommand() cli.Command {
	return cli.Command{
		Name:      "list",
		Usage:     "list devices",
		UsageText: "stepfort devices list [--collection C] [--status S] [--owner O] [--q TEXT] [--limit N] [--cursor C] [--all]",
		Flags: adminFlags(
			cli.StringFlag{Name: "collection"}, cli.StringFlag{Name: "status"}, cli.StringFlag{Name: "owner"},
			cli.StringFlag{Name: "type"}, cli.StringFlag{Name: "source"}, cli.StringFlag{Name: "q", Usage: "substring of name, serial or identifier"},
			cli.IntFlag{Name: "limit", Value: 100}, cli.StringFlag{Name: "cursor"}, cli.BoolFlag{Name: "all", Usage: "follow every page"},
		),
		Action: listDevices,
	}
}

func deviceUpdateCommand() cli.Command {
	return cli.Command{
		Name:      "update",
		Usage:     "change a device",
		UsageText: "stepfort devices update <id|identifier> [--status disabled] [--name N] [--add-identifier X] [--remove-identifier X] ...",
		Flags: adminFlags(
			cli.StringFlag{Name: "name"}, cli.StringFlag{Name: "type"}, cli.StringFlag{Name: "os"}, cli.StringFlag{Name: "serial"},
			cli.StringFlag{Name: "collection"}, cli.StringFlag{Name: "owner"}, cli.StringFlag{Name: "status", Usage: "active or disabled"},
			cli.StringSliceFlag{Name: "add-identifier"}, cli.StringSliceFlag{Name: "remove-identifier"},
			cli.StringSliceFlag{Name: "metadata", Usage: "key=value (repeatable; replaces all metadata)"},
		),
		Action: updateDevice,
	}
}

// deviceByRefCommand is a command that sends method to one device and
// prints it: show (GET) and remove (DELETE).
func deviceByRefCommand(name, usage, method string) cli.Command {
	return cli.Command{
		Name:      name,
		Usage:     usage,
		UsageText: "stepfort devices " + name + " <id|identifier>",
		Flags:     adminFlags(),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return errors.New("expected one argument, the device ID or identifier")
			}
			cl, err := adminClient(c)
			if err != nil {
				return err
			}
			var d inventory.Device
			if err := cl.Do(method, deviceRef(c.Args().First()), nil, &d); err != nil {
				return err
			}
			if c.Bool("json") || method == "GET" {
				return printJSON(d)
			}
			fmt.Printf("Removed device %s (%s)\n", d.ID, strings.Join(d.Identifiers, ", "))
			return nil
		},
	}
}

func deviceFieldFlags() []cli.Flag {
	return []cli.Flag{
		cli.StringSliceFlag{Name: "identifier", Usage: "permanent identifier (serial number, UDID, ...; repeatable)"},
		cli.StringFlag{Name: "ek-pub", Usage: "FILE with the TPM endorsement key public key (PEM or DER)"},
		cli.StringFlag{Name: "ek-cert", Usage: "FILE with the TPM endorsement key certificate (PEM or DER)"},
		cli.StringFlag{Name: "name", Usage: "device name"},
		cli.StringFlag{Name: "type", Usage: "device type, e.g. laptop"},
		cli.StringFlag{Name: "os", Usage: "operating system"},
		cli.StringFlag{Name: "serial", Usage: "serial number"},
		cli.StringFlag{Name: "collection", Usage: "device collection"},
		cli.StringFlag{Name: "owner", Usage: "owner"},
		cli.StringFlag{Name: "status", Usage: "active or disabled"},
		cli.StringSliceFlag{Name: "metadata", Usage: "key=value (repeatable)"},
	}
}

// addDevice is `stepfort devices add`.
func addDevice(c *cli.Context) error {
	in, err := deviceInput(c)
	if err != nil {
		return err
	}
	cl, err := adminClient(c)
	if err != nil {
		return err
	}
	var d inventory.Device
	if err := cl.Do("POST", "/devices", in, &d); err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(d)
	}
	fmt.Printf("Added device %s (%s)\n", d.ID, strings.Join(d.Identifiers, ", "))
	return nil
}

// deviceInput reads the device field flags; a device needs at least one
// way to be recognised.
func deviceInput(c *cli.Context) (inventory.DeviceInput, error) {
	ekPub, err := readKeyFile("ek-pub", c.String("ek-pub"))
	if err != nil {
		return inventory.DeviceInput{}, err
	}
	ekCert, err := readKeyFile("ek-cert", c.String("ek-cert"))
	if err != nil {
		return inventory.DeviceInput{}, err
	}
	md, err := metadataFlag(c)
	if err != nil {
		return inventory.DeviceInput{}, err
	}
	in := inventory.DeviceInput{
		Identifiers: splitList(c.StringSlice("identifier")), EKPublic: ekPub, EKCert: ekCert,
		Name: c.String("name"), Type: c.String("type"), OS: c.String("os"), Serial: c.String("serial"),
		Collection: c.String("collection"), Owner: c.String("owner"), Status: inventory.Status(c.String("status")), Metadata: md,
	}
	if len(in.Identifiers) == 0 && in.EKPublic == "" && in.EKCert == "" && in.Serial == "" {
		return inventory.DeviceInput{}, errors.New("give --ek-pub, --ek-cert, --identifier or --serial")
	}
	return in, nil
}

// importDevices is `stepfort devices import FILE`. Rejected rows make the
// exit code 2, so scripts notice a partial import.
func importDevices(c *cli.Context) error {
	if c.NArg() != 1 {
		return errors.New("expected one argument, the file to import")
	}
	file := c.Args().First()
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	ct, err := importContentType(c.String("format"), file)
	if err != nil {
		return err
	}
	cl, err := adminClient(c)
	if err != nil {
		return err
	}
	var rep inventory.ImportReport
	if err := cl.DoRaw("POST", importPath(c), ct, f, &rep); err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(rep)
	}
	printImportReport(rep)
	if rep.Rejected > 0 {
		return &exitError{code: 2, err: fmt.Errorf("%d rows rejected", rep.Rejected)}
	}
	return nil
}

// importContentType maps --format (default: the file's extension, CSV
// unless it is .json) to the content type the API expects.
func importContentType(format, file string) (string, error) {
	if format == "" {
		format = "csv"
		if strings.EqualFold(filepath.Ext(file), ".json") {
			format = "json"
		}
	}
	ct := map[string]string{"csv": "text/csv", "json": "application/json"}[format]
	if ct == "" {
		return "", fmt.Errorf("--format: must be csv or json, got %q", format)
	}
	return ct, nil
}

// importPath is the import endpoint with --map and --source as query
// parameters.
func importPath(c *cli.Context) string {
	q := url.Values{}
	if m := c.String("map"); m != "" {
		q.Set("map", m)
	}
	if s := c.String("source"); s != "" {
		q.Set("source", s)
	}
	path := "/devices/import"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	return path
}

func printImportReport(rep inventory.ImportReport) {
	fmt.Printf("%d rows: %d accepted, %d updated, %d unchanged, %d rejected\n", rep.Total, rep.Accepted, rep.Updated, rep.Unchanged, rep.Rejected)
	if len(rep.IgnoredColumns) > 0 {
		fmt.Printf("ignored columns: %s\n", strings.Join(rep.IgnoredColumns, ", "))
	}
	for _, r := range rep.Rows {
		if r.Status == inventory.RowRejected {
			fmt.Printf("line %d: rejected: %s\n", r.Line, r.Reason)
		}
	}
}

// listDevices is `stepfort devices list`; with --all it follows every
// page, otherwise it prints the cursor of the next one.
func listDevices(c *cli.Context) error {
	cl, err := adminClient(c)
	if err != nil {
		return err
	}
	q := url.Values{}
	for _, k := range []string{"collection", "status", "owner", "type", "source", "q", "cursor"} {
		if v := c.String(k); v != "" {
			q.Set(k, v)
		}
	}
	q.Set("limit", fmt.Sprint(c.Int("limit")))
	all, err := fetchDevices(cl, q, c.Bool("all"))
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(all)
	}
	if err := printDevices(all.Devices); err != nil {
		return err
	}
	if all.NextCursor != "" {
		fmt.Fprintf(os.Stderr, "more: --cursor %s\n", all.NextCursor)
	}
	return nil
}

// fetchDevices gets one page of devices matching q, or every page with
// allPages. Devices is never nil, so --json prints [] rather than null.
func fetchDevices(cl *client.Client, q url.Values, allPages bool) (inventory.DeviceList, error) {
	var all inventory.DeviceList
	for {
		var page inventory.DeviceList
		if err := cl.Do("GET", "/devices?"+q.Encode(), nil, &page); err != nil {
			return all, err
		}
		all.Devices = append(all.Devices, page.Devices...)
		all.NextCursor = page.NextCursor
		if !allPages || page.NextCursor == "" {
			break
		}
		q.Set("cursor", page.NextCursor)
	}
	if all.Devices == nil {
		all.Devices = []*inventory.Device{}
	}
	return all, nil
}

func printDevices(devs []*inventory.Device) error {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tNAME\tSTATUS\tCOLLECTION\tOWNER\tIDENTIFIERS\tLAST SEEN")
	for _, d := range devs {
		seen := "-"
		if d.LastSeenAt != nil {
			seen = d.LastSeenAt.Format("2006-01-02T15:04:05Z")
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.Name, d.Status, d.Collection, d.Owner, strings.Join(d.Identifiers, ","), seen)
	}
	return w.Flush()
}

// updateDevice is `stepfort devices update`.
func updateDevice(c *cli.Context) error {
	if c.NArg() != 1 {
		return errors.New("expected one argument, the device ID or identifier")
	}
	p, err := devicePatch(c)
	if err != nil {
		return err
	}
	cl, err := adminClient(c)
	if err != nil {
		return err
	}
	var d inventory.Device
	if err := cl.Do("PATCH", deviceRef(c.Args().First()), p, &d); err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(d)
	}
	fmt.Printf("Updated device %s\n", d.ID)
	return nil
}

// devicePatch turns the flags that are set into a patch; a flag that is
// not given leaves its field alone, one set to "" clears it.
func devicePatch(c *cli.Context) (inventory.DevicePatch, error) {
	var p inventory.DevicePatch
	p.Name, p.Type, p.OS = optionalFlag(c, "name"), optionalFlag(c, "type"), optionalFlag(c, "os")
	p.Serial, p.Collection, p.Owner = optionalFlag(c, "serial"), optionalFlag(c, "collection"), optionalFlag(c, "owner")
	if s := optionalFlag(c, "status"); s != nil {
		st := inventory.Status(*s)
		p.Status = &st
	}
	p.AddIdentifiers = splitList(c.StringSlice("add-identifier"))
	p.RemoveIdentifiers = splitList(c.StringSlice("remove-identifier"))
	if c.IsSet("metadata") {
		md, err := metadataFlag(c)
		if err != nil {
			return p, err
		}
		p.Metadata = &md
	}
	return p, nil
}

// optionalFlag returns the flag's value, or nil if it was not given.
func optionalFlag(c *cli.Context, name string) *string {
	if !c.IsSet(name) {
		return nil
	}
	v := c.String(name)
	return &v
}

// readKeyFile returns a PEM or DER file as a string the API accepts: PEM
// unchanged, DER as base64.
func readKeyFile(flag, path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--%s: %w", flag, err)
	}
	if bytes.Contains(b, []byte("-----BEGIN")) {
		return string(b), nil
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

func metadataFlag(c *cli.Context) (map[string]string, error) {
	vals := c.StringSlice("metadata")
	if len(vals) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, kv := range vals {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--metadata: %q is not key=value", kv)
		}
		m[k] = v
	}
	return m, nil
}

// deviceRef turns an ID or permanent identifier into an API path.
func deviceRef(arg string) string {
	return "/devices/" + url.PathEscape(arg)
}
