package seckill

import (
	"context"
	"errors"
	"time"
)

// reserveBatcher merges the Redis steps of concurrent buy requests: while
// one batch is in Redis the next gathers, and each batch is one Lua call
// per activity (ReserveMany), so Redis and this process pay one round trip
// and one script run for many requests. Alone, a request goes at once.
type reserveBatcher struct {
	r  *Reserver
	in chan reserveCall
}

type reserveCall struct {
	res   Reservation
	quota int
	done  chan reserveAnswer
}

type reserveAnswer struct {
	out ReserveOutcome
	err error
}

// maxReserveBatch bounds the requests of one Lua call: a script blocks
// Redis while it runs.
const maxReserveBatch = 256

// reserveLoops is the number of batches in Redis at once.
const reserveLoops = 2

func newReserveBatcher(r *Reserver) *reserveBatcher {
	return &reserveBatcher{r: r, in: make(chan reserveCall, 4*maxReserveBatch)}
}

var errShuttingDown = errors.New("shutting down")

// reserve runs one request's Redis step in the next batch.
func (b *reserveBatcher) reserve(ctx context.Context, res Reservation, quota int) (ReserveOutcome, error) {
	c := reserveCall{res: res, quota: quota, done: make(chan reserveAnswer, 1)}
	select {
	case b.in <- c:
	case <-ctx.Done():
		return ReserveOutcome{}, ctx.Err()
	}
	// Once queued the call is always answered (run drains at shutdown);
	// waiting for it keeps a reservation from being taken unseen.
	a := <-c.done
	return a.out, a.err
}

// run serves batches until ctx ends, then refuses what is still queued.
func (b *reserveBatcher) run(ctx context.Context) {
	done := make(chan struct{}, reserveLoops)
	for range reserveLoops {
		go func() {
			defer func() { done <- struct{}{} }()
			b.loop(ctx)
		}()
	}
	for range reserveLoops {
		<-done
	}
	for {
		select {
		case c := <-b.in:
			c.done <- reserveAnswer{err: errShuttingDown}
		default:
			return
		}
	}
}

func (b *reserveBatcher) loop(ctx context.Context) {
	batch := make([]reserveCall, 0, maxReserveBatch)
	busy := false
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-b.in:
			batch = append(batch[:0], c)
		}
		batch = gather(b.in, batch, maxReserveBatch, gatherLinger, busy)
		busy = len(batch) > 1
		b.apply(batch)
	}
}

// apply runs one Lua call per activity (and quota) of the batch, in the
// order the requests came.
func (b *reserveBatcher) apply(batch []reserveCall) {
	type key struct {
		activity int64
		quota    int
	}
	groups := map[key][]int{}
	var order []key
	for i, c := range batch {
		k := key{c.res.Activity, c.quota}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], i)
	}
	for _, k := range order {
		idx := groups[k]
		rs := make([]Reservation, len(idx))
		for j, i := range idx {
			rs[j] = batch[i].res
		}
		// Not the requests' contexts: the batch is shared, and a request
		// that gave up must still learn what Redis did with it.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		outs, err := b.r.ReserveMany(ctx, k.activity, k.quota, rs)
		cancel()
		for j, i := range idx {
			if err != nil {
				batch[i].done <- reserveAnswer{err: err}
			} else {
				batch[i].done <- reserveAnswer{out: outs[j]}
			}
		}
	}
}

// gatherLinger is how long a batch waits for more requests under load.
const gatherLinger = time.Millisecond

// gather adds to batch (which holds the first item) what in holds, up to
// max. Under load (busy: the last batch had company) it also waits up to
// linger for more: a request then waits up to a millisecond, and Redis, nsqd
// and this process handle one batch instead of many. Idle, a lone request
// goes at once.
func gather[T any](in <-chan T, batch []T, max int, linger time.Duration, busy bool) []T {
	for len(batch) < max {
		select {
		case x := <-in:
			batch = append(batch, x)
			continue
		default:
		}
		break
	}
	if !busy || len(batch) >= max {
		return batch
	}
	t := time.NewTimer(linger)
	defer t.Stop()
	for len(batch) < max {
		select {
		case x := <-in:
			batch = append(batch, x)
		case <-t.C:
			return batch
		}
	}
	return batch
}
