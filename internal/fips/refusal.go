package fips

import (
	"errors"
	"fmt"
	"strings"
)

// onlyMarker ends every refusal of the Go Cryptographic Module under
// GODEBUG=fips140=only, whether returned as an error or panicked, e.g.
// "crypto/sha1: use of SHA-1 is not allowed in FIPS 140-only mode".
const onlyMarker = "in FIPS 140-only mode"

// NotApprovedError is a refusal of a non-approved algorithm. Its message
// names the algorithm, so an operator knows what to change.
type NotApprovedError struct {
	// Reason is Go's own sentence ("crypto/md5: use of MD5 is not allowed
	// in FIPS 140-only mode") or stepfort's ("3DES-CBC is not FIPS 140-3
	// approved").
	Reason string
}

func (e *NotApprovedError) Error() string {
	return "FIPS 140-3: non-approved algorithm refused: " + e.Reason
}

// IsNotApproved reports whether err is, or wraps, a refusal of a
// non-approved algorithm: a NotApprovedError or one of Go's own errors
// under GODEBUG=fips140=only.
func IsNotApproved(err error) bool {
	var na *NotApprovedError
	return errors.As(err, &na) || (err != nil && strings.Contains(err.Error(), onlyMarker))
}

// FromPanic turns a value recovered from a panic into a NotApprovedError
// when it is the Go module refusing a non-approved algorithm (crypto/sha1,
// crypto/md5, crypto/hmac and crypto/cipher panic rather than return an
// error under fips140=only). ok is false for any other panic, which the
// caller must re-panic: only this refusal is an expected outcome.
func FromPanic(v any) (err error, ok bool) {
	var msg string
	switch x := v.(type) {
	case string:
		msg = x
	case error:
		msg = x.Error()
	default:
		return nil, false
	}
	if !strings.Contains(msg, onlyMarker) {
		return nil, false
	}
	return &NotApprovedError{Reason: msg}, true
}

// Refuse is deferred by a function that may hit a non-approved algorithm
// under fips140=only: a panic from the Go module becomes *errp (a
// NotApprovedError naming the algorithm, with what was being done);
// any other panic continues.
//
//	func load() (err error) {
//		defer fips.Refuse(&err, "load the CA keys")
//		...
//	}
func Refuse(errp *error, doing string) {
	v := recover()
	if v == nil {
		return
	}
	err, ok := FromPanic(v)
	if !ok {
		panic(v)
	}
	*errp = fmt.Errorf("%s: %w", doing, err)
}
