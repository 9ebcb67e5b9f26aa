package events

import (
	"context"
	"encoding/json"
	"testing"
)

func mustUnmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

// deliver is attempt followed by the delete; it reports whether the event
// is gone.
func (o *Outbox) deliver(ctx context.Context, key, raw []byte) bool {
	if !o.attempt(ctx, key, raw) {
		return false
	}
	return o.remove([][]byte{key})
}
