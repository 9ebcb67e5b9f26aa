//go:build cgo && !nopkcs11

package main

// The HSM build (CGO_ENABLED=1, `make build-hsm`, bin/stepfort-hsm):
// stepfort's "pkcs11" KMS replaces upstream's registration with one that
// names module, token, PIN and key problems, bounds every signature in
// time and reopens a lost token (docs/hsm.md). The module is loaded with
// dlopen at run time, so the binary links only glibc.
import _ "github.com/stepfort/stepfort/internal/hsm"
