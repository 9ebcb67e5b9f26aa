package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"unicode"

	"github.com/smallstep/certificates/acme"
	"github.com/smallstep/certificates/commands"
	"github.com/smallstep/cli-utils/step"
	"github.com/urfave/cli"

	"github.com/stepfort/stepfort/authority"
	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/internal/fips"
)

// serveFlags are upstream step-ca's flags (commands.AppCommand), so scripts
// and unit files written for step-ca keep working.
func serveFlags() []cli.Flag {
	return append([]cli.Flag{}, commands.AppCommand.Flags...)
}

func serveCommand() cli.Command {
	return cli.Command{
		Name:      "serve",
		Usage:     "run the CA (drop-in for step-ca)",
		UsageText: "stepfort serve <ca.json> [--password-file=<file>] [--ssh-host-password-file=<file>] [--ssh-user-password-file=<file>] [--issuer-password-file=<file>] [--pidfile=<file>] [--resolver=<addr>] [--quiet]",
		Flags:     serveFlags(),
		Action:    serveAction,
	}
}

func serveAction(c *cli.Context) error {
	if c.NArg() > 1 {
		return fmt.Errorf("too many arguments: expected one ca.json, got %v", c.Args())
	}
	if c.String("token") != "" {
		return errors.New("--token: linked CA mode (Certificate Manager) is not supported by stepfort")
	}
	if p := c.Int("acme-http-port"); p != 0 {
		if !c.Bool("insecure") {
			return errors.New("flag '--acme-http-port' requires the '--insecure' flag")
		}
		acme.InsecurePortHTTP01 = p
	}
	if p := c.Int("acme-tls-port"); p != 0 {
		if !c.Bool("insecure") {
			return errors.New("flag '--acme-tls-port' requires the '--insecure' flag")
		}
		acme.InsecurePortTLSALPN01 = p
	}
	acme.StrictFQDN = c.Bool("acme-strict-fqdn")

	configFile := c.Args().First()
	if configFile == "" {
		// Like step-ca: fall back to the step context / $STEPPATH.
		if err := step.Init(); err != nil {
			return err
		}
		if name := c.String("context"); name != "" {
			if err := step.Contexts().SetCurrent(name); err != nil {
				return fmt.Errorf("--context: %w", err)
			}
		}
		configFile = step.CaConfigFile()
	}
	opts := authority.Options{Quiet: c.Bool("quiet")}
	for _, pf := range []struct {
		flag string
		dst  *[]byte
	}{
		{"password-file", &opts.Password},
		{"ssh-host-password-file", &opts.SSHHostPassword},
		{"ssh-user-password-file", &opts.SSHUserPassword},
		{"issuer-password-file", &opts.IssuerPassword},
	} {
		if name := c.String(pf.flag); name != "" {
			b, err := os.ReadFile(name)
			if err != nil {
				return fmt.Errorf("--%s: %w", pf.flag, err)
			}
			*pf.dst = bytes.TrimRightFunc(b, unicode.IsSpace)
		}
	}
	if resolver := c.String("resolver"); resolver != "" {
		net.DefaultResolver.PreferGo = true
		net.DefaultResolver.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, resolver)
		}
	}

	return serve(configFile, opts, c.String("pidfile"))
}

// runServe serves a configuration with a password file (quickstart).
func runServe(configFile, passwordFile string) error {
	pw, err := os.ReadFile(passwordFile)
	if err != nil {
		return err
	}
	return serve(configFile, authority.Options{Password: bytes.TrimRightFunc(pw, unicode.IsSpace)}, "")
}

func serve(configFile string, opts authority.Options, pidfile string) error {
	file, err := config.Load(configFile)
	if err != nil {
		return err
	}
	logger := newLogger(file.Stepfort.Log)
	slog.SetDefault(logger)
	opts.Logger = logger
	if opts.Quiet {
		log.SetOutput(discard{})
	}

	// Which FIPS 140-3 mode is active, before anything uses a key.
	st := fips.Current()
	logger.Info(st.String(), st.LogAttrs()...)

	d, err := newDaemon(file, opts)
	if err != nil {
		return err
	}
	if err := d.Listen(); err != nil {
		_ = d.Stop()
		return err
	}
	if pidfile != "" {
		if err := os.WriteFile(pidfile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			_ = d.Stop()
			return fmt.Errorf("--pidfile: %w", err)
		}
		defer os.Remove(pidfile)
	}

	go handleSignals(d, logger)
	return d.Run()
}

// newDaemon is authority.New, where a non-approved algorithm refused by
// the Go module under GODEBUG=fips140=only (a panic in crypto/sha1,
// crypto/md5, ...) becomes a one-line error naming it, not a stack trace.
func newDaemon(file *config.File, opts authority.Options) (d *authority.Daemon, err error) {
	defer fips.Refuse(&err, "start the CA")
	return authority.New(file, opts)
}

// handleSignals mirrors upstream's ca.StopReloaderHandler: SIGHUP reloads,
// SIGINT and SIGTERM stop gracefully.
func handleSignals(d *authority.Daemon, log *slog.Logger) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	for sig := range sigs {
		switch sig {
		case syscall.SIGHUP:
			if err := d.Reload(); err != nil {
				log.Error("reload failed; still running with the previous configuration", "error", err)
			}
		default:
			signal.Stop(sigs)
			if err := d.Stop(); err != nil {
				log.Error("stop", "error", err)
			}
			return
		}
	}
}

func newLogger(cfg config.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Level))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "text" {
		return slog.New(slog.NewTextHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, opts))
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
