//go:build cgo && !nopkcs11

package hsm

import (
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"
)

// ErrUnavailable is returned (wrapped) while the token cannot sign: it was
// lost and has not come back yet, or a signature took longer than the
// timeout.
var ErrUnavailable = errors.New("PKCS#11 token unavailable")

// p11Code returns the PKCS#11 return value inside err, if any.
func p11Code(err error) (pkcs11.Error, bool) {
	var e pkcs11.Error
	if errors.As(err, &e) {
		return e, true
	}
	return 0, false
}

// requestError reports errors caused by the request itself (the digest,
// the mechanism, the key's type): reopening the token would not help.
func requestError(err error) bool {
	code, ok := p11Code(err)
	if !ok {
		return false
	}
	switch code {
	case pkcs11.CKR_DATA_LEN_RANGE, pkcs11.CKR_DATA_INVALID, pkcs11.CKR_MECHANISM_INVALID,
		pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_KEY_TYPE_INCONSISTENT,
		pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, pkcs11.CKR_ARGUMENTS_BAD:
		return true
	}
	return false
}

// openError turns what crypto11 and the module say when the token cannot
// be opened into a sentence naming the problem.
func openError(t target, err error) error {
	if code, ok := p11Code(err); ok {
		switch code {
		case pkcs11.CKR_PIN_INCORRECT:
			return fmt.Errorf("pkcs11: wrong PIN for token %s (CKR_PIN_INCORRECT)", t)
		case pkcs11.CKR_PIN_LOCKED:
			return fmt.Errorf("pkcs11: the PIN of token %s is locked (CKR_PIN_LOCKED)", t)
		case pkcs11.CKR_PIN_LEN_RANGE, pkcs11.CKR_PIN_INVALID:
			return fmt.Errorf("pkcs11: the PIN for token %s is not valid for this token (%v)", t, err)
		case pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_DEVICE_REMOVED:
			return fmt.Errorf("pkcs11: token %s is not present (%v)", t, err)
		}
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "could not find PKCS#11 token"):
		return fmt.Errorf("pkcs11: no token %s in module %s", t, t.module)
	case strings.Contains(msg, "could not open PKCS#11"):
		return fmt.Errorf("pkcs11: module %s does not load (not a PKCS#11 library, or a library it needs is missing)", t.module)
	}
	return fmt.Errorf("pkcs11: open token %s in module %s: %w", t, t.module, err)
}

// keyError names the key that could not be used.
func keyError(t target, name string, err error) error {
	if strings.Contains(err.Error(), "not found") {
		return fmt.Errorf("pkcs11: no key %s in token %s", objectName(name), t)
	}
	return fmt.Errorf("pkcs11: key %s in token %s: %w", objectName(name), t, err)
}
