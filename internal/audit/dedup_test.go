package audit

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDedupMemoryBounded: the plugin remembers a bounded number of event
// IDs, before and after a restart, and a retry of a recent event is still
// written once.
func TestDedupMemoryBounded(t *testing.T) {
	defer func(n int) { dedupWindow = n }(dedupWindow)
	dedupWindow = 50
	path := filepath.Join(t.TempDir(), "certificates.jsonl")
	ctx := context.Background()
	o := observer(t, path)
	const events = 4 * 50
	for i := range events {
		if err := o.ObserveCertificate(ctx, issuedEvent(t, fmt.Sprintf("ev-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if n := remembered(o.(*Plugin)); n > 50 {
		t.Fatalf("%d event IDs in memory after %d events, want at most 50", n, events)
	}
	for _, id := range []string{"ev-199", "ev-160"} {
		if err := o.ObserveCertificate(ctx, issuedEvent(t, id)); err != nil {
			t.Fatal(err)
		}
	}
	restarted := observer(t, path)
	if n := remembered(restarted.(*Plugin)); n > 50 {
		t.Fatalf("%d event IDs read back at start, want at most 50", n)
	}
	if err := restarted.ObserveCertificate(ctx, issuedEvent(t, "ev-199")); err != nil {
		t.Fatal(err)
	}
	if n := len(readLines(t, path)); n != events {
		t.Fatalf("%d lines, want %d: a recent event was written twice", n, events)
	}
}

// TestDedupReadsTheTail: at start only the end of a long file is read, and
// the IDs there are remembered.
func TestDedupReadsTheTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "certificates.jsonl")
	var b strings.Builder
	b.WriteString(`{"id":"ev-first"}` + "\n")
	pad := `{"kind":"padding","x":"` + strings.Repeat("x", 1000) + `"}` + "\n"
	for b.Len() < tailBytes+(1<<20) {
		b.WriteString(pad)
	}
	b.WriteString(`{"id":"ev-last"}` + "\n")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := New(&Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	if !p.seen.has("ev-last") || p.seen.has("ev-first") {
		t.Fatalf("remembered ev-last %v, ev-first %v; want only the tail", p.seen.has("ev-last"), p.seen.has("ev-first"))
	}
}
