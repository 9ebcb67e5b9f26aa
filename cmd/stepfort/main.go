// Command stepfort is an on-prem certificate authority for device identity:
// upstream step-ca plus a TPM Attestation CA, device inventory, dynamic SCEP,
// endpoint billing and HA revocation. `stepfort <ca.json>` is a drop-in for
// `step-ca <ca.json>`.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli"

	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/cli-utils/ui"
	"go.step.sm/crypto/pemutil"

	// KMS drivers registered by upstream's cmd/step-ca. pkcs11 needs cgo;
	// in the static CGO_ENABLED=0 build its package registers a stub that
	// answers with a clear "not supported without cgo" error, exactly as an
	// upstream step-ca built without cgo. The cgo build (stepfort-hsm)
	// replaces it with internal/hsm (kms_pkcs11.go). yubikey is in
	// kms_yubikey.go.
	_ "go.step.sm/crypto/kms/awskms"
	_ "go.step.sm/crypto/kms/azurekms"
	_ "go.step.sm/crypto/kms/cloudkms"
	_ "go.step.sm/crypto/kms/pkcs11"
	_ "go.step.sm/crypto/kms/softkms"
	_ "go.step.sm/crypto/kms/sshagentkms"
	_ "go.step.sm/crypto/kms/tpmkms"

	// CAS drivers registered by upstream's cmd/step-ca.
	_ "github.com/smallstep/certificates/cas/cloudcas"
	_ "github.com/smallstep/certificates/cas/softcas"
	_ "github.com/smallstep/certificates/cas/stepcas"
	_ "github.com/smallstep/certificates/cas/vaultcas"

	"github.com/stepfort/stepfort/internal/fips"

	// Plugins available to ca.json.
	_ "github.com/stepfort/stepfort/plugins/builtin"
)

// Version and BuildTime are set by the Makefile with -ldflags.
var (
	Version   = "dev"
	BuildTime = "N/A"
)

func init() {
	authority.GlobalVersion.Version = Version
	pemutil.PromptPassword = func(msg string) ([]byte, error) { return ui.PromptPassword(msg) }
}

func main() {
	startPprof()
	app := cli.NewApp()
	app.Name = "stepfort"
	app.HelpName = "stepfort"
	app.Usage = "on-prem certificate authority for device identity, built on step-ca"
	app.UsageText = "stepfort <ca.json> [step-ca flags]   (same as: stepfort serve <ca.json>)\n   stepfort <command> [arguments]"
	app.Version = fmt.Sprintf("%s (built %s)", Version, BuildTime)
	if st := fips.Current(); st != (fips.Status{Mode: fips.Off}) {
		// A FIPS build, or FIPS mode asked for: say which (docs/fips.md).
		app.Version = fmt.Sprintf("%s (built %s; %s)", Version, BuildTime, st)
	}
	app.Writer = os.Stdout
	app.ErrWriter = os.Stderr
	app.Flags = serveFlags()
	app.Commands = []cli.Command{
		serveCommand(),
		initCommand(),
		quickstartCommand(),
		configCommand(),
		tokensCommand(),
		devicesCommand(),
		collectionsCommand(),
		endpointsCommand(),
		billingCommand(),
		certificatesCommand(),
		scepCommand(),
		migrateCommand(),
		auditCommand(),
	}
	// `stepfort ca.json --password-file F` must behave like step-ca: urfave
	// stops parsing app flags at the first argument, so run the serve
	// command on the whole argument list (it reorders flags after args).
	app.Action = func(c *cli.Context) error {
		if c.NArg() == 0 && c.NumFlags() == 0 {
			return cli.ShowAppHelp(c)
		}
		set := flag.NewFlagSet(app.Name, flag.ContinueOnError)
		_ = set.Parse(os.Args)
		return serveCommand().Run(cli.NewContext(app, set, nil))
	}
	if err := run(app); err != nil {
		var exit *exitError
		if errors.As(err, &exit) {
			fmt.Fprintln(os.Stderr, "stepfort: "+oneLine(exit.err.Error()))
			os.Exit(exit.code)
		}
		fmt.Fprintln(os.Stderr, "stepfort: "+oneLine(err.Error()))
		os.Exit(1)
	}
}

// run runs the command line. Under GODEBUG=fips140=only the Go module
// panics on some non-approved algorithms (MD5, SHA-1, GCM with an IV from
// outside the module): that ends the command with one line naming the
// algorithm, like any other error (docs/fips.md).
func run(app *cli.App) (err error) {
	doing := "serve"
	if len(os.Args) > 1 && !strings.HasPrefix(os.Args[1], "-") && !strings.HasSuffix(os.Args[1], ".json") {
		doing = os.Args[1]
	}
	defer fips.Refuse(&err, doing)
	return app.Run(os.Args)
}

// exitError carries an exit code other than 1.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

// oneLine folds upstream's multi-line errors so every failure is one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}
