package attestationca

import (
	"sync"
	"time"
)

// gcra is the generic cell rate algorithm: a request at now is allowed if,
// after it, no more than burst requests are "ahead" of a steady rate of one
// per interval. tat is the stored theoretical arrival time (zero: none
// yet). It returns the new tat to store, or how long to wait when denied.
// The state is one timestamp, which is what lets the per-EK limit live in
// the EK's session row and be enforced by compare-and-swap on every
// replica.
func gcra(tat, now time.Time, interval time.Duration, burst int) (time.Time, time.Duration) {
	if tat.Before(now) {
		tat = now
	}
	next := tat.Add(interval)
	if over := next.Sub(now) - time.Duration(burst)*interval; over > 0 {
		return tat, over
	}
	return next, 0
}

// globalLimiter bounds the /attest requests of registered devices one
// replica serves, whichever EK they name (in process: it protects this
// replica's CPU and the database's write rate, not an invariant).
type globalLimiter struct {
	mu       sync.Mutex
	interval time.Duration
	burst    int
	tat      time.Time
}

func newGlobalLimiter(perSecond, burst int) *globalLimiter {
	return &globalLimiter{interval: time.Second / time.Duration(perSecond), burst: burst}
}

// allow takes one request at now; it returns how long to wait when denied.
func (l *globalLimiter) allow(now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	next, wait := gcra(l.tat, now, l.interval, l.burst)
	if wait == 0 {
		l.tat = next
	}
	return wait
}

// retryAfterSeconds is the Retry-After value for a wait: whole seconds,
// rounded up, at least 1.
func retryAfterSeconds(wait time.Duration) int64 {
	s := int64((wait + time.Second - 1) / time.Second)
	return max(s, 1)
}
