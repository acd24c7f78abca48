// Package retry is the one backoff of flashsync's retry loops (waiting for
// nsqd, reconnecting to the binlog, republishing a batch), on
// github.com/cenkalti/backoff/v5 with the shape they share: delays that
// start at Min and double up to Max, and retries that go on until the
// context ends (backoff's 15-minute default would silently give up on a
// canal that must never do so).
package retry

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Backoff is the schedule of delays between failed attempts: Min first, each
// next twice the last, up to Max. Min and Max bound every delay.
type Backoff struct {
	Min, Max time.Duration
	// Jitter, from 0 to 1, spreads each delay at random over ±Jitter of
	// itself (kept within Min and Max), so that processes failing together
	// do not retry together; 0 keeps the delays exact.
	Jitter float64
}

// New returns a fresh schedule: NextBackOff gives the next delay, Reset
// starts over from Min.
func (b Backoff) New() backoff.BackOff {
	return &bounded{
		ExponentialBackOff: backoff.ExponentialBackOff{
			InitialInterval:     b.Min,
			RandomizationFactor: b.Jitter,
			Multiplier:          2,
			MaxInterval:         b.Max,
		},
		min: b.Min, max: b.Max,
	}
}

// bounded keeps a jittered delay within [min, max]: backoff's MaxInterval
// caps the interval, not the randomized delay.
type bounded struct {
	backoff.ExponentialBackOff
	min, max time.Duration
}

func (b *bounded) NextBackOff() time.Duration {
	return min(max(b.ExponentialBackOff.NextBackOff(), b.min), b.max)
}

// Until calls op until it returns nil or ctx ends. After each failure but
// the last it calls notify, if set, with the attempt's number (1 for the
// first), its error and the delay before the next attempt, then waits that
// long. It returns nil once op succeeded; when ctx ended, the last error of
// op (ctx.Err() says why it stopped).
func Until(ctx context.Context, b Backoff, op func() error, notify func(attempt int, err error, next time.Duration)) error {
	var last error
	attempt := 0
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		attempt++
		last = op()
		return struct{}{}, last
	},
		backoff.WithBackOff(b.New()),
		backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(func(err error, next time.Duration) {
			if notify != nil {
				notify(attempt, err, next)
			}
		}))
	if err == nil {
		return nil
	}
	return last // op ran and failed at least once: Retry always tries first
}
