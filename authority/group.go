package authority

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
)

// group runs the daemon's background goroutines: plugin loops
// (plugins.Host.Go), event delivery, compaction and the close of a replaced
// generation. Functions added before Start wait for it; Stop cancels their
// context and waits for every one to return, so nothing runs against a
// closed database.
type group struct {
	log *slog.Logger

	mu      sync.Mutex
	ctx     context.Context
	cancel  context.CancelFunc
	pending []groupFunc
	stopped bool
	wg      sync.WaitGroup
}

type groupFunc struct {
	name string
	fn   func(ctx context.Context)
}

func newGroup(log *slog.Logger) *group { return &group{log: log} }

// Go runs fn now if the group has started, at Start otherwise, and never
// once it has stopped.
func (g *group) Go(name string, fn func(ctx context.Context)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.stopped:
		g.log.Warn("background job not started: the daemon is stopping", "job", name)
	case g.ctx == nil:
		g.pending = append(g.pending, groupFunc{name, fn})
	default:
		g.run(groupFunc{name, fn})
	}
}

// Start runs the pending functions.
func (g *group) Start() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ctx != nil || g.stopped {
		return
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	for _, f := range g.pending {
		g.run(f)
	}
	g.pending = nil
}

// run starts f; g.mu is held. A panic in a background job is logged and
// ends that job only: the daemon keeps serving.
func (g *group) run(f groupFunc) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		defer func() {
			if r := recover(); r != nil {
				g.log.Error("background job panicked", "job", f.name, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			}
		}()
		f.fn(g.ctx)
	}()
}

// Stop cancels every function's context and waits for them to return.
func (g *group) Stop() {
	g.mu.Lock()
	g.stopped = true
	g.pending = nil
	if g.cancel != nil {
		g.cancel()
	}
	g.mu.Unlock()
	g.wg.Wait()
}
