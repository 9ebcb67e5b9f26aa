package kmskey

import (
	"strings"
	"testing"
)

// A URI of no known KMS, and a KMS that cannot be opened, are errors that
// say which step failed; nothing is left open.
func TestOpenErrors(t *testing.T) {
	if s, closeKMS, err := Open("nosuchkms:key=1"); err == nil || s != nil || closeKMS != nil {
		t.Fatalf("unknown KMS: %v, %v", s, err)
	}
	_, _, err := Open("pkcs11:module-path=/nonexistent/libnothing.so;token=x;object=y?pin-value=1")
	if err == nil || !strings.Contains(err.Error(), "open KMS") {
		t.Fatalf("unopenable KMS: %v", err)
	}
}
