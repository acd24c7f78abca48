package purge_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/flashsync/flashsync/internal/stacktest"
)

// A replica that stays down for a while, long enough for every dial of
// the purger's client to fail, is flushed within 1 s of coming back from
// its snapshot all the same: the purger redials it at its next check, not
// after a client-side dial back-off (go-redis stops dialing a pool whose
// last PoolSize dials failed and probes it once a second).
func TestWatermarkRestartAfterOutage(t *testing.T) {
	f := newWMFixture(t, stacktest.StartRedis(t))
	f.opts.CheckInterval = 50 * time.Millisecond
	ctx := context.Background()
	if err := f.c.Set(ctx, "item:1", "old", 0).Err(); err != nil {
		t.Fatal(err)
	}
	f.start()
	f.publish(0, 5, 1, 1)
	f.applied(1)
	if err := f.c.Save(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	f.publish(5, 10, 1, 1, "item:1")
	f.applied(2)
	f.srv.Kill()
	// The outage: checks and purges fail until the client gives up dialing.
	outage := time.Now()
	stacktest.Eventually(t, 10*time.Second, func() error {
		if s := f.status(); s.State != "error" && s.State != "unreachable" {
			return fmt.Errorf("replica state %q while it is down", s.State)
		}
		if time.Since(outage) < 3*time.Second {
			return errors.New("down for under 3 s")
		}
		return nil
	})
	f.srv.Start()
	restarted := time.Now()
	stacktest.Eventually(t, 5*time.Second, func() error {
		if n := f.c.Exists(ctx, "item:1").Val(); n != 0 {
			return errors.New("item:1 is back from the snapshot")
		}
		return nil
	})
	gone := time.Since(restarted)
	t.Logf("item:1 gone %v after the restart", gone)
	if gone >= time.Second {
		t.Errorf("the stale key outlived the restart by %v, want under 1 s", gone)
	}
	// The outage was long enough for the client to stop dialing.
	if n := f.metric("flashsync_purger_replica_redials_total", nil); n < 1 {
		t.Errorf("%v redials, want at least 1", n)
	}
}

// `flashsync canal --reset-to-current --flush-all` empties every replica
// (FLUSHDB, not through NSQ) and starts the canal at the server's current
// position: the next range starts far past the watermark the purger knew.
// An empty replica is consistent with every change before it, so its
// watermark starts there, with no gap to wait on and no second flush.
func TestWatermarkAfterResetFlush(t *testing.T) {
	f := newWMFixture(t, stacktest.StartRedis(t))
	f.opts.GapTimeout, f.opts.CheckInterval = 500*time.Millisecond, 50*time.Millisecond
	f.mark(0)
	ctx := context.Background()
	f.start()
	f.publish(0, 10, 1, 1, "k:1")
	f.publish(10, 20, 1, 1)
	f.applied(2)
	if err := f.c.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	f.publish(1000, 1010, 1, 1, "k:2")
	f.publish(1010, 1020, 1, 1)
	f.applied(4)
	stacktest.Eventually(t, 5*time.Second, func() error {
		if w := f.watermark(); w.To != 1020 {
			return fmt.Errorf("watermark at %d, want 1020", w.To)
		}
		return nil
	})
	// Past the gap timeout: still no rejoin.
	deadline := time.Now().Add(3 * f.opts.GapTimeout)
	stacktest.Eventually(t, 5*time.Second, func() error {
		if r := f.rejoins(""); r != 0 {
			t.Fatalf("%v rejoins after the reset's flush, want none", r)
		}
		if time.Now().Before(deadline) {
			return errors.New("waiting out 3 gap timeouts")
		}
		return nil
	})
}
