package spinwire

// Reconnect and resubscribe delays: exponential growth with full jitter, so that many
// clients dropped at once by a restarting server do not come back in lockstep.

import (
	"math/rand/v2"
	"time"
)

const (
	defaultMinReconnectDelay = 200 * time.Millisecond
	defaultMaxReconnectDelay = 20 * time.Second
)

// backoff is not safe for concurrent use; each owner guards its own.
type backoff struct {
	min, max time.Duration
	attempt  int
}

// next returns the delay before the next attempt: uniform in [min, cap] where cap
// doubles per attempt from min up to max.
func (b *backoff) next() time.Duration {
	limit := b.max
	if b.attempt < 32 { // beyond this the shift overflows; the cap is max anyway
		if grown := b.min << b.attempt; grown > 0 && grown < limit {
			limit = grown
		}
	}
	b.attempt++
	if limit <= b.min {
		return b.min
	}
	return b.min + rand.N(limit-b.min+1)
}

// reset starts over after a success.
func (b *backoff) reset() { b.attempt = 0 }
