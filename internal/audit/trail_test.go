package audit

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

func TestMain(m *testing.M) { testenv.RunMain(m) }

func newTestTrail(t *testing.T, h *plugintest.Host, every int64) *Trail {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	tr, err := NewTrail(h.DB(), TrailOptions{Key: key, Replica: h.Replica(), Now: h.Now, CheckpointEvery: every, FailClosed: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tr.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return tr
}

func rec(i int) plugins.AuditRecord {
	return plugins.AuditRecord{Action: "test.event", Outcome: plugins.AuditSuccess,
		Actor: plugins.AuditActor{Kind: "system", Name: fmt.Sprintf("n%d", i)}, Object: plugins.AuditObject{Serial: fmt.Sprint(1000 + i)}}
}

func exportAll(t *testing.T, tr *Trail) []string {
	t.Helper()
	var buf bytes.Buffer
	if err := tr.Export(&buf, 0, 0); err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
}

func verifyLines(lines []string, pub crypto.PublicKey) error {
	_, err := Verify(strings.NewReader(strings.Join(lines, "\n")+"\n"), pub)
	return err
}

// TestVerifyDetectsTampering: a clean export verifies; an edited byte, a
// deleted record, two swapped records and a truncated tail each fail,
// naming the first bad sequence number.
func TestVerifyDetectsTampering(t *testing.T) {
	h := plugintest.NewHost(t)
	tr := newTestTrail(t, h, 7)
	for i := range 40 {
		if err := tr.Record(context.Background(), rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	lines := exportAll(t, tr)
	if len(lines) != 41 {
		t.Fatalf("export has %d lines, want header + 40", len(lines))
	}
	pub := tr.PublicKey()
	if err := verifyLines(lines, pub); err != nil {
		t.Fatalf("clean export: %v", err)
	}
	// line i+1 holds seq i.
	tamper := map[string]struct {
		edit func([]string) []string
		seq  int64
	}{
		"edited byte": {func(l []string) []string {
			l[11] = strings.Replace(l[11], `"n10"`, `"n1O"`, 1)
			return l
		}, 10},
		"deleted record": {func(l []string) []string { return append(l[:21:21], l[22:]...) }, 20},
		"swapped records": {func(l []string) []string {
			l[6], l[7] = l[7], l[6]
			return l
		}, 5},
		"truncated tail": {func(l []string) []string { return l[:38] }, 37},
		"edited hash": {func(l []string) []string {
			l[3] = strings.Replace(l[3], `"hash":"`, `"hash":"0`, 1)
			return l
		}, 2},
	}
	for name, tc := range tamper {
		t.Run(name, func(t *testing.T) {
			err := verifyLines(tc.edit(append([]string(nil), lines...)), pub)
			var ve *VerifyError
			if !errors.As(err, &ve) || ve.Seq != tc.seq {
				t.Fatalf("want a VerifyError at seq %d, got %v", tc.seq, err)
			}
		})
	}
	t.Run("wrong key", func(t *testing.T) {
		other, _, _ := ed25519.GenerateKey(rand.Reader)
		if err := verifyLines(lines, other); err == nil {
			t.Fatal("verified with another key")
		}
	})
	t.Run("partial range", func(t *testing.T) {
		var buf bytes.Buffer
		if err := tr.Export(&buf, 13, 29); err != nil {
			t.Fatal(err)
		}
		s, err := Verify(&buf, pub)
		if err != nil || s.From != 13 || s.To != 29 {
			t.Fatalf("partial export: %+v %v", s, err)
		}
	})
}

// TestConcurrentAppendersOneChain: two trails on one database (two
// replicas) append concurrently, on bbolt and PostgreSQL; the chain is
// whole and verifies.
func TestConcurrentAppendersOneChain(t *testing.T) {
	for _, backend := range []string{"bbolt", "postgresql"} {
		t.Run(backend, func(t *testing.T) {
			concurrentAppenders(t, plugintest.NewHostWithDB(t, testenv.OpenStore(t, backend), backend))
		})
	}
}

func concurrentAppenders(t *testing.T, h *plugintest.Host) {
	a, b := newTestTrail(t, h, 50), newTestTrail(t, h, 50)
	b.o.Key = a.o.Key
	var wg sync.WaitGroup
	for w := range 8 {
		tr := a
		if w%2 == 1 {
			tr = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				if err := tr.Record(context.Background(), rec(w*100+i)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	lines := exportAll(t, a)
	if len(lines) != 401 {
		t.Fatalf("%d lines, want 401", len(lines))
	}
	if err := verifyLines(lines, a.PublicKey()); err != nil {
		t.Fatal(err)
	}
}

// TestEventRecordedOnce: a redelivered certificate event is one record.
func TestEventRecordedOnce(t *testing.T) {
	h := plugintest.NewHost(t)
	tr := newTestTrail(t, h, 100)
	for range 3 {
		if err := tr.recordEvent(context.Background(), "ev1", rec(1)); err != nil {
			t.Fatal(err)
		}
	}
	if _, size, _ := tr.Bounds(); size != 1 {
		t.Fatalf("size %d, want 1", size)
	}
}

// TestQueryFilters: filters and paging without duplicates or gaps.
func TestQueryFilters(t *testing.T) {
	h := plugintest.NewHost(t)
	tr := newTestTrail(t, h, 100)
	for i := range 30 {
		r := rec(i)
		if i%3 == 0 {
			r.Outcome, r.Reason = plugins.AuditDenied, "no"
		}
		_ = tr.Record(context.Background(), r)
	}
	f, _, _, err := ParseFilter(map[string][]string{"outcome": {"denied"}})
	if err != nil {
		t.Fatal(err)
	}
	var got int
	after := int64(-1)
	for {
		p, err := tr.Query(f, after, 4)
		if err != nil {
			t.Fatal(err)
		}
		got += len(p.Records)
		if p.Next == nil {
			break
		}
		after = *p.Next
	}
	if got != 10 {
		t.Fatalf("%d denied records, want 10", got)
	}
	f, _, _, _ = ParseFilter(map[string][]string{"serial": {"0x3f2"}}) // 1010
	p, _ := tr.Query(f, -1, 100)
	if len(p.Records) != 1 || !strings.Contains(string(p.Records[0]), `"serial":"1010"`) {
		t.Fatalf("serial filter: %s", p.Records)
	}
	if _, _, _, err := ParseFilter(map[string][]string{"since": {"yesterday"}}); err == nil || !strings.Contains(err.Error(), "since") {
		t.Fatalf("bad since: %v", err)
	}
}

// TestPruneKeepsVerification: pruning up to a checkpoint leaves a trail
// whose export still verifies.
func TestPruneKeepsVerification(t *testing.T) {
	h := plugintest.NewHost(t)
	tr := newTestTrail(t, h, 10)
	for i := range 25 {
		_ = tr.Record(context.Background(), rec(i))
	}
	h.Advance(3 * 365 * 24 * time.Hour)
	for i := range 5 {
		_ = tr.Record(context.Background(), rec(100+i))
	}
	n, err := tr.Prune(h.Now().Add(-MinRetention))
	if err != nil || n != 20 {
		t.Fatalf("pruned %d, %v; want 20 (up to the checkpoint at 20)", n, err)
	}
	lines := exportAll(t, tr)
	if len(lines) != 11 {
		t.Fatalf("%d lines after pruning, want header + 10", len(lines))
	}
	if err := verifyLines(lines, tr.PublicKey()); err != nil {
		t.Fatal(err)
	}
}

func TestSyntheticExportVerifies(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	var buf bytes.Buffer
	if err := WriteSyntheticExport(&buf, 1000, key, time.Now()); err != nil {
		t.Fatal(err)
	}
	if s, err := Verify(&buf, key.Public().(ed25519.PublicKey)); err != nil || s.To != 1000 {
		t.Fatalf("%+v %v", s, err)
	}
}

// TestQueryWhileAppending: a query reads the records table and then, for
// what it did not find there, the head's pending batch. An append that
// moves that batch into the table between the two reads must not make the
// query fail ("missing from the database"): the dashboard showed a 503.
func TestQueryWhileAppending(t *testing.T) {
	h := plugintest.NewHost(t)
	tr := newTestTrail(t, h, 1000)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 3000 {
			if err := tr.Record(context.Background(), rec(i)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for queries := 0; ; queries++ {
		select {
		case <-done:
			if queries == 0 {
				t.Fatal("no query ran while records were appended")
			}
			return
		default:
		}
		if _, err := tr.Query(Filter{}, -1, 50); err != nil {
			t.Fatalf("query %d while appending: %v", queries, err)
		}
		_, size, err := tr.Bounds()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tr.Query(Filter{}, max(-1, size-60), 50); err != nil {
			t.Fatalf("query %d of the newest records while appending: %v", queries, err)
		}
	}
}
