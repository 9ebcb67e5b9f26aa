//go:build !cgo

// Command hsm is the HSM-vs-disk signing benchmark (main.go); PKCS#11
// needs cgo, so without it the command only says so.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "bench/hsm: PKCS#11 needs cgo: build with CGO_ENABLED=1")
	os.Exit(1)
}
