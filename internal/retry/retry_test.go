package retry

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestBackoffDoublesUpToMaxAndResets(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: time.Second}.New()
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		if got := b.NextBackOff(); got != w*time.Millisecond {
			t.Fatalf("delay %d: %v, want %v", i+1, got, w*time.Millisecond)
		}
	}
	b.Reset()
	if got := b.NextBackOff(); got != 100*time.Millisecond {
		t.Errorf("after Reset: %v, want 100ms", got)
	}
}

func TestJitterStaysWithinMinAndMax(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: 2 * time.Second, Jitter: 0.5}.New()
	seen := map[time.Duration]bool{}
	for i := range 1000 {
		if i%8 == 0 {
			b.Reset()
		}
		d := b.NextBackOff()
		if d < 100*time.Millisecond || d > 2*time.Second {
			t.Fatalf("delay %v outside [100ms, 2s]", d)
		}
		seen[d] = true
	}
	if len(seen) < 100 {
		t.Errorf("%d distinct delays in 1000: jitter is off", len(seen))
	}
}

func TestUntilRetriesUntilSuccess(t *testing.T) {
	var notes []string
	calls := 0
	err := Until(context.Background(), Backoff{Min: time.Millisecond, Max: 2 * time.Millisecond}, func() error {
		calls++
		if calls < 4 {
			return fmt.Errorf("nsqd down (%d)", calls)
		}
		return nil
	}, func(attempt int, err error, next time.Duration) {
		notes = append(notes, fmt.Sprintf("%d %v %v", attempt, err, next))
	})
	if err != nil || calls != 4 {
		t.Fatalf("Until: %v after %d calls, want nil after 4", err, calls)
	}
	want := "[1 nsqd down (1) 1ms 2 nsqd down (2) 2ms 3 nsqd down (3) 2ms]"
	if got := fmt.Sprint(notes); got != want {
		t.Errorf("notified %s, want %s", got, want)
	}
}

func TestUntilReturnsTheLastErrorWhenCtxEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	calls := 0
	start := time.Now()
	err := Until(ctx, Backoff{Min: time.Millisecond, Max: time.Hour}, func() error {
		calls++
		return fmt.Errorf("attempt %d", calls)
	}, func(attempt int, err error, next time.Duration) {
		if attempt == 3 {
			cancel() // during the wait: Until must not sit out its 4 ms
		}
	})
	if err == nil || err.Error() != "attempt 3" || calls != 3 {
		t.Fatalf("Until: %v after %d calls, want the third attempt's error", err, calls)
	}
	if errors.Is(err, context.Canceled) {
		t.Errorf("%v: want op's error, not the context's", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("returned after %v", d)
	}
}

func TestUntilNeverGivesUpOnItsOwn(t *testing.T) {
	// backoff.Retry gives up once the elapsed time plus the next delay
	// passes 15 minutes: with a 16-minute delay it would return after the
	// first failure without waiting. Until must wait (and so notify).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var waited time.Duration
	err := Until(ctx, Backoff{Min: 16 * time.Minute, Max: 16 * time.Minute}, func() error {
		return errors.New("down")
	}, func(_ int, _ error, next time.Duration) {
		waited = next
		cancel()
	})
	if err == nil || waited != 16*time.Minute {
		t.Fatalf("Until: %v, next delay %v; want it to wait 16m for the next attempt", err, waited)
	}
}
