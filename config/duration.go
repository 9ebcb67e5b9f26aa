package config

import (
	"encoding/json"
	"fmt"
	"time"
)

// Duration is a time.Duration written in ca.json as a Go duration string
// ("90s", "24h"), the same notation upstream uses for claims.
type Duration struct {
	time.Duration
}

// UnmarshalJSON accepts a duration string; numbers are refused because their
// unit would be ambiguous.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("must be a duration string such as \"30s\" or \"24h\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q: use a number with a unit such as \"30s\" or \"24h\"", s)
	}
	d.Duration = v
	return nil
}

// MarshalJSON writes the duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(d.Duration.String())
}
