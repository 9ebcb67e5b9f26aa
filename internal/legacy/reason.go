package legacy

import (
	"fmt"
	"strconv"
	"strings"
)

// reasonNames are the RFC 5280 CRLReason names, lower-cased, with the
// words ADCS shows (certutil -revoke, the MMC) as aliases.
var reasonNames = map[string]int{
	"unspecified": 0, "keycompromise": 1, "cacompromise": 2, "affiliationchanged": 3,
	"superseded": 4, "cessationofoperation": 5, "certificatehold": 6, "hold": 6,
	"removefromcrl": 8, "release": 8, "unrevoke": 8, "privilegewithdrawn": 9, "aacompromise": 10,
}

// ParseReason reads a revocation reason: a number (0-6, 8-10) or a name
// ("keyCompromise", "key compromise", "certificateHold", "hold";
// "removeFromCRL", "release" or "unrevoke" release a hold), any case.
func ParseReason(s string) (int, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.Atoi(s); err == nil {
		if !ValidReason(n) && n != ReasonRemoveFromCRL {
			return 0, fmt.Errorf("reason %d: %w", n, ErrBadReason)
		}
		return n, nil
	}
	key := strings.ToLower(strings.NewReplacer(" ", "", "_", "", "-", "").Replace(s))
	if n, ok := reasonNames[key]; ok {
		return n, nil
	}
	return 0, fmt.Errorf("reason %q: not a CRL reason (a number 0-6, 8-10, or a name such as keyCompromise, superseded, cessationOfOperation, certificateHold, removeFromCRL)", s)
}

// ReasonName is the RFC 5280 name of a CRLReason.
func ReasonName(r int) string {
	names := []string{"unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
		"cessationOfOperation", "certificateHold", "7", "removeFromCRL", "privilegeWithdrawn", "aACompromise"}
	if r >= 0 && r < len(names) {
		return names[r]
	}
	return strconv.Itoa(r)
}
