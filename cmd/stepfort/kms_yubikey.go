//go:build !cgo || yubikey

package main

// The yubikey KMS driver. Without cgo it registers a stub that refuses
// with a clear error, like upstream's step-ca built without cgo. With cgo
// it links the PC/SC library (Debian libpcsclite-dev), which most build
// hosts lack, so a plain `go build ./...` with cgo on leaves it out unless
// the build asks for it with `-tags yubikey`.
import _ "go.step.sm/crypto/kms/yubikey"
