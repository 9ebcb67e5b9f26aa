package authority

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"
)

func TestGroupStartsPendingAndJoinsAtStop(t *testing.T) {
	g := newGroup(slog.Default())
	var ran, ended atomic.Int32
	loop := func(ctx context.Context) {
		ran.Add(1)
		<-ctx.Done()
		time.Sleep(20 * time.Millisecond) // Stop must wait for this
		ended.Add(1)
	}
	g.Go("before-start", loop)
	time.Sleep(10 * time.Millisecond)
	if ran.Load() != 0 {
		t.Fatal("a job added before Start ran before it")
	}
	g.Start()
	g.Go("after-start", loop)
	g.Go("panics", func(context.Context) { panic("boom") })
	deadline := time.Now().Add(2 * time.Second)
	for ran.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if ran.Load() != 2 {
		t.Fatalf("ran %d jobs, want 2", ran.Load())
	}
	g.Stop()
	if ended.Load() != 2 {
		t.Fatalf("Stop returned with %d of 2 jobs still running", 2-ended.Load())
	}
	g.Go("after-stop", loop)
	time.Sleep(10 * time.Millisecond)
	if ran.Load() != 2 {
		t.Fatal("a job added after Stop ran")
	}
}
