package main

import (
	"context"
	"crypto/x509"

	"github.com/stepfort/stepfort/bench/internal/benchproc"
)

// serverKind says how to run one of the compared servers on a ca.json.
type serverKind struct {
	stepfort    bool // run the stepfort binary (else upstream step-ca)
	idlePlugins bool // disable every stepfort plugin in ca.json
}

// serverKinds are the servers -servers can name. "stepfort" follows
// -plugins; "stepfort-plugins" always keeps the plugins stepfort init
// configured (an informative extra row, not the target).
var serverKinds = map[string]serverKind{
	"upstream":         {},
	"stepfort":         {stepfort: true, idlePlugins: true},
	"stepfort-plugins": {stepfort: true},
}

// server is a running CA process.
type server = benchproc.Server

// startServer starts bin on cfgFile, with env added to its environment, and
// waits until /health answers over TLS verified against roots.
func startServer(ctx context.Context, name, bin string, stepfort bool, cfgFile, passwordFile, dir string, port int, roots *x509.CertPool, env []string) (*server, error) {
	args := []string{cfgFile, "--password-file", passwordFile}
	if stepfort {
		args = append([]string{"serve"}, args...)
	}
	return benchproc.Start(ctx, name, bin, args, env, dir, port, roots)
}
