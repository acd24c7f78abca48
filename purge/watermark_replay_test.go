package purge_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/purge"
)

// rejoin = "replay": a replica restarted from its snapshot (RDB, or AOF
// files from before the last purges) is not flushed. The purges applied
// since the snapshot are applied again from the purger's rejoin log: the
// keys they purged are gone within 1 s of the restart, the key nobody
// purged is still there, and the watermark is back where the replica was.
// Then the same restart with the log emptied, or bounded below what the
// replay needs, falls back to a flush.
func TestWatermarkReplayRejoin(t *testing.T) {
	for _, tt := range snapshotKinds {
		for _, fallback := range []string{"", "log emptied", "log bounded", "gap flush since"} {
			name := tt.name
			if fallback != "" {
				name += ", " + fallback
			}
			t.Run(name, func(t *testing.T) {
				f := newWMFixture(t, tt.start(t))
				f.opts.Rejoin, f.opts.RejoinLogDir = purge.RejoinReplay, t.TempDir()
				f.opts.CheckInterval = 50 * time.Millisecond
				f.opts.GapTimeout = 500 * time.Millisecond
				if fallback == "log bounded" {
					f.opts.RejoinLogMaxBytes = 1 << 10 // a few dozen records
				}
				ctx := context.Background()
				if err := f.c.MSet(ctx, "item:1", "old", "item:2", "old", "keep", "v").Err(); err != nil {
					t.Fatal(err)
				}
				stop := f.start()
				f.publish(0, 5, 1, 1) // a heartbeat: the replica's data is trusted once
				f.applied(1)
				tt.take(t, f.srv, f.c)
				f.publish(5, 10, 1, 1, "item:1")
				f.publish(10, 15, 1, 1, "item:2")
				n := 3
				if fallback == "log bounded" {
					for i := uint64(0); i < 100; i++ { // heartbeats push the purges out of the log
						f.publish(15+i*5, 20+i*5, 1, 1)
					}
					n += 100
				}
				f.applied(n)
				if fallback == "gap flush since" {
					// (15, 20] never comes: the replica is flushed for the gap,
					// a flush no replay of the older snapshot may pass.
					f.publish(20, 25, 1, 1)
					stacktest.Eventually(t, 5*time.Second, func() error {
						if r := f.rejoins("gap"); r != 1 {
							return fmt.Errorf("%v gap rejoins", r)
						}
						return nil
					})
					if err := f.c.Set(ctx, "keep", "v", 0).Err(); err != nil { // (the flush took it)
						t.Fatal(err)
					}
				}
				want := f.watermark()
				if ex := f.c.Exists(ctx, "item:1", "item:2").Val(); ex != 0 {
					t.Fatalf("%d purged keys present before the restart", ex)
				}
				// The purger is restarted too, between the snapshot and the
				// replica's restart: its log is on disk.
				stop()
				if fallback == "log emptied" {
					if err := os.RemoveAll(f.opts.RejoinLogDir); err != nil {
						t.Fatal(err)
					}
				}
				f.start()
				// The new purger follows the replica (it reads the replica's
				// applied sequence: until then a restart would be flushed).
				f.publish(want.To, want.To+5, 1, 1)
				stacktest.Eventually(t, 5*time.Second, func() error {
					if got := f.watermark(); got.To != want.To+5 {
						return fmt.Errorf("watermark %d, want %d", got.To, want.To+5)
					}
					return nil
				})
				want = f.watermark()
				f.srv.Kill()
				tt.restore(t, f.srv)
				f.srv.Start()
				restarted := time.Now()
				back := f.c.Exists(ctx, "item:1", "item:2").Val()
				stacktest.Eventually(t, 5*time.Second, func() error {
					if n := f.c.Exists(ctx, "item:1", "item:2").Val(); n != 0 {
						return fmt.Errorf("%d purged keys are back from the snapshot", n)
					}
					if s := f.status(); s.State != "ok" {
						return fmt.Errorf("replica %s: %s", s.State, s.Reason)
					}
					return nil
				})
				gone := time.Since(restarted)
				t.Logf("%d of the purged keys read right after the restart; gone and the replica ok %v after it", back, gone)
				if gone >= time.Second {
					t.Errorf("the stale keys outlived the restart by %v, want under 1 s", gone)
				}
				replayed := f.metric("flashsync_purger_replica_replays_total", map[string]string{"result": "replayed"})
				fellBack := f.metric("flashsync_purger_replica_replays_total", map[string]string{"result": "fell_back"})
				kept := f.c.Exists(ctx, "keep").Val()
				switch fallback {
				case "":
					if replayed != 1 || fellBack != 0 || f.rejoins("") != 0 {
						t.Errorf("replays %v, fallbacks %v, flushes %v; want 1, 0, 0", replayed, fellBack, f.rejoins(""))
					}
					if kept != 1 {
						t.Error("the key nobody purged is gone: the replica was flushed")
					}
					if got := f.watermark(); got.To != want.To || !got.CaughtUp.Equal(want.CaughtUp) {
						t.Errorf("watermark after the replay %v, want %v (where it was before the restart)", got, want)
					}
					if k := f.metric("flashsync_purger_replica_replay_keys_total", nil); k != 2 {
						t.Errorf("%v keys replayed, want 2", k)
					}
					if recs := f.logs.records("redis replica restarted from a snapshot: rejoined by replay"); len(recs) != 1 {
						t.Errorf("replay logs %v, want one", recs)
					}
				default:
					if replayed != 0 || fellBack != 1 || f.rejoins("restarted") != 1 || kept != 0 {
						t.Errorf("replays %v, fallbacks %v, restarted flushes %v, keep present %d; want 0, 1, 1, 0", replayed, fellBack, f.rejoins("restarted"), kept)
					}
					if recs := f.logs.records("redis replica restarted from a snapshot: cannot replay"); len(recs) != 1 {
						t.Errorf("fallback logs %v, want one", recs)
					}
				}
				// And it follows on.
				f.publish(want.To, want.To+5, 1, 1, "item:1")
				stacktest.Eventually(t, 5*time.Second, func() error {
					if got := f.watermark(); got.To != want.To+5 {
						return errors.New("not following")
					}
					return nil
				})
			})
		}
	}
}
