package config

import (
	"encoding/json"
	"testing"
)

// FuzzParseStepfort feeds arbitrary bytes to the strict decoder: it must
// return a value or an error, never panic.
func FuzzParseStepfort(f *testing.F) {
	for _, seed := range []string{
		`{}`, `{"admin":{"enabled":false}}`, `{"events":{"retryInterval":"1s"}}`,
		`{"plugins":{"configTest":{"names":["a"],"nested":{"limit":3}}}}`, `[`, `null`, `{"log":{"level":1}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _, _ = ParseStepfort(json.RawMessage(data))
	})
}
