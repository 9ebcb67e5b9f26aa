// Package fips reports whether stepfort runs in FIPS 140-3 mode, and with
// which Go Cryptographic Module, for /health, the start-up log and
// --version; and it turns the Go module's refusals of non-approved
// algorithms into errors that name the algorithm. docs/fips.md states what
// the modes mean and what is and is not claimed.
package fips

import (
	"crypto/fips140"
	"fmt"
	"runtime/debug"
)

// Mode is the fips140 GODEBUG setting in effect.
type Mode string

// The three values of GODEBUG fips140 (go doc crypto/fips140).
const (
	// Off: no FIPS 140-3 mode (the default of a build without GOFIPS140).
	Off Mode = "off"
	// On: the Go Cryptographic Module runs its self-tests, crypto/rand is
	// its DRBG and crypto/tls negotiates approved parameters only. It is
	// the default of a build with GOFIPS140 and the production setting.
	On Mode = "on"
	// Only: like On, and non-approved algorithms return errors or panic.
	// Go documents it as a testing and assessment mode, not for production.
	Only Mode = "only"
)

// Status is what /health and the start-up log report.
type Status struct {
	// Mode is off, on or only.
	Mode Mode `json:"mode"`
	// Module is the frozen Go Cryptographic Module the binary was built
	// against (GOFIPS140, e.g. "v1.0.0-c2097c7c"), or "" for the module in
	// the toolchain's own tree (a build without GOFIPS140, or "latest").
	Module string `json:"module,omitempty"`
}

// Current reports the running process's mode and module.
func Current() Status {
	return status(fips140.Enabled(), fips140.Enforced(), buildSetting("GOFIPS140"))
}

// status is Current with its inputs explicit, for tests: the mode cannot
// change after start-up, so a test cannot switch it in process.
func status(enabled, enforced bool, gofips140 string) Status {
	s := Status{Mode: Off}
	switch {
	case enforced:
		s.Mode = Only
	case enabled:
		s.Mode = On
	}
	// "off" and "latest" build against the toolchain's tree, not a frozen
	// (validated or in-process) module: report no module version.
	if gofips140 != "" && gofips140 != "off" && gofips140 != "latest" {
		s.Module = gofips140
	}
	return s
}

// String is the one-line form for the start-up log and --version.
func (s Status) String() string {
	module := s.Module
	if module == "" {
		module = "none (built without GOFIPS140)"
	}
	return fmt.Sprintf("FIPS 140-3 mode %s, Go Cryptographic Module %s", s.Mode, module)
}

// LogAttrs are the start-up log fields.
func (s Status) LogAttrs() []any {
	return []any{"fipsMode", string(s.Mode), "fipsModule", s.Module}
}

// buildSetting returns a runtime/debug build setting of this binary.
func buildSetting(key string) string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, s := range bi.Settings {
		if s.Key == key {
			return s.Value
		}
	}
	return ""
}
