package purge_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/flashsync/flashsync/purge"
)

// wmFixture is one replica (a private redis-server), a private nsqd with
// the replica's channel, and purgers of it started on demand; messages are
// hand-built bodies published in the test's order.
type wmFixture struct {
	t    *testing.T
	nsqd *stacktest.NSQD
	srv  *stacktest.RedisServer
	c    *redis.Client
	prod *nsq.Producer
	opts purge.RedisPurgerOptions
	logs *syncBuffer
	// reg and purger are the last purger started.
	reg    *prometheus.Registry
	purger *purge.RedisPurger
}

const wmTopic = "flashsync.redis.g"

func newWMFixture(t *testing.T, srv *stacktest.RedisServer) *wmFixture {
	t.Helper()
	f := &wmFixture{t: t, nsqd: stacktest.StartNSQD(t), srv: srv, c: stacktest.Redis(t, srv.Addr()), logs: new(syncBuffer)}
	f.opts = purge.RedisPurgerOptions{
		ConsumerOptions: purge.ConsumerOptions{NSQDTCP: []string{f.nsqd.TCPAddr()}, MaxAttempts: 100,
			Logger: slog.New(slog.NewJSONHandler(io.MultiWriter(f.logs, testWriter{t}), nil))},
		Groups: []purge.RedisGroup{{Name: "g", Replicas: []string{srv.Addr()}}},
	}
	pub, err := invalidate.NewPublisher(invalidate.PublisherOptions{
		NSQDTCP: []string{f.nsqd.TCPAddr()}, NSQDHTTP: []string{f.nsqd.HTTPAddr()},
		Groups: []invalidate.Group{{Name: "g", Addrs: []string{srv.Addr()}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if err := pub.EnsureChannels(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.prod, err = nsq.NewProducer(f.nsqd.TCPAddr(), nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	f.prod.SetLogger(log.New(io.Discard, "", 0), nsq.LogLevelError)
	t.Cleanup(f.prod.Stop)
	return f
}

// start starts a purger of the replica with f.opts; the returned function
// stops it (cleanup does too).
func (f *wmFixture) start() (stop func()) {
	f.t.Helper()
	f.reg = prometheus.NewRegistry()
	opts := f.opts
	opts.Registerer = f.reg
	p, err := purge.NewRedisPurger(opts)
	if err != nil {
		f.t.Fatal(err)
	}
	f.purger = p
	return stacktest.RunAndClose(f.t, "purger", p)
}

// mark starts the replica's watermark at to, as if a purger had applied
// everything up to it.
func (f *wmFixture) mark(to uint64) {
	f.t.Helper()
	ctx := context.Background()
	info, err := f.c.Info(ctx, "server").Result()
	if err != nil {
		f.t.Fatal(err)
	}
	var runID string
	for _, l := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(l, "run_id:"); ok {
			runID = v
		}
	}
	if err := f.c.MSet(ctx, invalidate.WatermarkKey, invalidate.Watermark{To: to}.String(), invalidate.WatermarkKey+":run_id", runID).Err(); err != nil {
		f.t.Fatal(err)
	}
}

// caughtUp is the caught-up time the tests give offset to.
func caughtUp(to uint64) int64 {
	return time.Unix(1_700_000_000, 0).Add(time.Duration(to) * time.Millisecond).UnixNano()
}

// publish publishes a covered purge of keys, (from, to], part of parts
// (a heartbeat without keys).
func (f *wmFixture) publish(from, to uint64, part, parts int, keys ...string) {
	f.t.Helper()
	m := invalidate.Purge{V: invalidate.PurgeVersionBasic, Group: "g", Keys: keys, From: from, To: to, Part: part, Parts: parts,
		CaughtUpUnixNano: caughtUp(to), SeenUnixNano: time.Now().UnixNano()}
	if len(keys) == 0 {
		m.V, m.Heartbeat = invalidate.PurgeVersionHeartbeat, true
	}
	body, err := m.Marshal()
	if err != nil {
		f.t.Fatal(err)
	}
	if err := f.prod.Publish(wmTopic, body); err != nil {
		f.t.Fatal(err)
	}
}

// watermark is the replica's stored watermark (zero To when absent).
func (f *wmFixture) watermark() invalidate.Watermark {
	f.t.Helper()
	v, err := f.c.Get(context.Background(), invalidate.WatermarkKey).Result()
	if errors.Is(err, redis.Nil) {
		return invalidate.Watermark{}
	}
	if err != nil {
		f.t.Fatal(err)
	}
	w, err := invalidate.ParseWatermark(v)
	if err != nil {
		f.t.Fatal(err)
	}
	return w
}

// watermarkAndExists reads the watermark and whether any of keys exists in
// one transaction: the script flushes and restarts the watermark at once,
// so one read sees both before or both after.
func (f *wmFixture) watermarkAndExists(keys ...string) (invalidate.Watermark, bool) {
	f.t.Helper()
	ctx := context.Background()
	var wm *redis.StringCmd
	var n *redis.IntCmd
	if _, err := f.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		wm = p.Get(ctx, invalidate.WatermarkKey)
		n = p.Exists(ctx, keys...)
		return nil
	}); err != nil {
		f.t.Fatal(err)
	}
	w, err := invalidate.ParseWatermark(wm.Val())
	if err != nil {
		f.t.Fatal(err)
	}
	return w, n.Val() > 0
}

// metric is a purger metric of the replica.
func (f *wmFixture) metric(name string, labels map[string]string) float64 {
	f.t.Helper()
	all := map[string]string{"group": "g", "replica": f.srv.Addr()}
	for k, v := range labels {
		all[k] = v
	}
	return stacktest.MetricValue(f.t, f.reg, name, all)
}

// applied waits until the purger has applied n messages.
func (f *wmFixture) applied(n int) {
	f.t.Helper()
	stacktest.Eventually(f.t, 10*time.Second, func() error {
		if got := f.metric("flashsync_purger_messages_total", map[string]string{"result": "ok"}); int(got) < n {
			return fmt.Errorf("%v of %d messages applied", got, n)
		}
		return nil
	})
}

// rejoins is flashsync_purger_replica_rejoins_total{reason} ("": all).
func (f *wmFixture) rejoins(reason string) float64 {
	labels := map[string]string{}
	if reason != "" {
		labels["reason"] = reason
	}
	return f.metric("flashsync_purger_replica_rejoins_total", labels)
}

// status is the replica's ReplicaStatus.
func (f *wmFixture) status() purge.ReplicaStatus { return f.purger.Replicas()[0] }

// restrictKeys lets the default user (the purger's and the test's) touch
// only keys matching patterns, so that purges of other keys fail (NOPERM):
// a real failure that is neither unreachability nor permanent.
func (f *wmFixture) restrictKeys(patterns ...string) {
	f.t.Helper()
	args := []any{"ACL", "SETUSER", "default", "resetkeys"}
	for _, p := range patterns {
		args = append(args, "~"+p)
	}
	if len(patterns) == 0 {
		args = append(args, "allkeys")
	}
	if err := f.c.Do(context.Background(), args...).Err(); err != nil {
		f.t.Fatal(err)
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// records are the JSON log records whose msg starts with prefix.
func (b *syncBuffer) records(prefix string) []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(b.buf.String(), "\n") {
		var r map[string]any
		if json.Unmarshal([]byte(line), &r) == nil && strings.HasPrefix(fmt.Sprint(r["msg"]), prefix) {
			out = append(out, r)
		}
	}
	return out
}

// testWriter logs the purger's records in the test's output (shown on
// failure or with -v).
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// Out-of-order delivery: (20,30], then (0,10] in two parts around (10,20].
// The watermark moves only when the run of complete ranges from 0 grows,
// and never past a missing range; each message's keys are deleted on
// arrival all the same.
func TestWatermarkOutOfOrder(t *testing.T) {
	f := newWMFixture(t, stacktest.StartRedis(t))
	f.mark(0)
	ctx := context.Background()
	if err := f.c.MSet(ctx, "k3", "v", "k1a", "v", "k1b", "v", "k2", "v").Err(); err != nil {
		t.Fatal(err)
	}
	f.start()
	for i, s := range []struct {
		from, to    uint64
		part, parts int
		key         string
		want        uint64
	}{
		{20, 30, 1, 1, "k3", 0},
		{0, 10, 1, 2, "k1a", 0},
		{10, 20, 1, 1, "k2", 0},
		{0, 10, 2, 2, "k1b", 30},
	} {
		f.publish(s.from, s.to, s.part, s.parts, s.key)
		f.applied(i + 1)
		if n := f.c.Exists(ctx, s.key).Val(); n != 0 {
			t.Errorf("step %d: %s not deleted", i, s.key)
		}
		if got := f.watermark(); got.To != s.want {
			t.Fatalf("step %d, (%d,%d] part %d/%d applied: watermark at %d, want %d", i, s.from, s.to, s.part, s.parts, got.To, s.want)
		}
		t.Logf("step %d: (%d,%d] part %d/%d applied, watermark at %d", i, s.from, s.to, s.part, s.parts, s.want)
	}
	if got, want := f.watermark().CaughtUp.UnixNano(), caughtUp(30); got != want {
		t.Errorf("caught up at %d, want %d", got, want)
	}
	if r := f.rejoins(""); r != 0 {
		t.Errorf("%v rejoins", r)
	}
}

// A purge that fails (its key is refused, NOPERM) is requeued: the
// watermark holds below it while later ranges apply, Health says why, and
// once the failure is lifted the purge applies and the watermark passes.
func TestWatermarkRequeuedPurge(t *testing.T) {
	f := newWMFixture(t, stacktest.StartRedis(t))
	f.mark(0)
	ctx := context.Background()
	if err := f.c.Set(ctx, "blocked:1", "stale", 0).Err(); err != nil {
		t.Fatal(err)
	}
	f.restrictKeys("k:*", invalidate.WatermarkKey+"*")
	f.start()
	f.publish(0, 10, 1, 1, "k:1")
	f.applied(1)
	f.publish(10, 20, 1, 1, "blocked:1")
	f.publish(20, 30, 1, 1, "k:2")
	f.applied(2)
	var reason string
	// A fresh nsqd redelivers a requeued message only once its channel is in
	// its queue scan, refreshed every 5 s: the first retry takes that long.
	stacktest.Eventually(t, 30*time.Second, func() error {
		if got := f.watermark(); got.To != 10 {
			t.Fatalf("watermark at %d while (10,20] fails, want 10", got.To)
		}
		retries := f.metric("flashsync_purger_messages_total", map[string]string{"result": "retry"})
		s := f.status()
		if retries < 3 || s.State != "requeued" {
			return fmt.Errorf("%v retries, state %q", retries, s.State)
		}
		reason = s.Reason
		return nil
	})
	t.Logf("while failing: %s", reason)
	if err := f.purger.Health(); err == nil || !strings.Contains(err.Error(), "(10, 20]") {
		t.Errorf("Health() = %v, want the failing purge named", err)
	}
	if got := f.watermark(); got.To != 10 {
		t.Fatalf("watermark at %d, want 10", got.To)
	}
	f.restrictKeys()
	stacktest.Eventually(t, 10*time.Second, func() error {
		if got := f.watermark(); got.To != 30 {
			return fmt.Errorf("watermark at %d, want 30", got.To)
		}
		return nil
	})
	if n := f.c.Exists(ctx, "blocked:1").Val(); n != 0 {
		t.Error("blocked:1 not deleted")
	}
	stacktest.Eventually(t, 5*time.Second, func() error { return f.purger.Health() })
	if r := f.rejoins(""); r != 0 {
		t.Errorf("%v rejoins, want none: a requeued purge only waits", r)
	}
}

// A covered purge dead-lettered leaves a gap that nothing fills: the
// replica is flushed at once and its watermark restarted past it; until
// then Health reports it.
func TestWatermarkDeadLetter(t *testing.T) {
	f := newWMFixture(t, stacktest.StartRedis(t))
	f.opts.MaxAttempts = 3
	f.mark(0)
	ctx := context.Background()
	if err := f.c.MSet(ctx, "blocked:1", "stale", "k:other", "v").Err(); err != nil {
		t.Fatal(err)
	}
	f.restrictKeys("k:*", invalidate.WatermarkKey+"*")
	f.start()
	f.publish(0, 10, 1, 1, "k:1")
	f.applied(1)
	f.publish(10, 20, 1, 1, "blocked:1")
	reported := false
	stacktest.Eventually(t, 30*time.Second, func() error {
		if err := f.purger.Health(); err != nil && strings.Contains(err.Error(), "(10, 20]") {
			reported = true
		}
		if wm, kept := f.watermarkAndExists("k:other"); wm.To != 10 && kept {
			t.Fatalf("watermark at %d before the flush, want 10", wm.To)
		}
		if r := f.rejoins("dead_letter"); r != 1 {
			return fmt.Errorf("%v dead_letter rejoins", r)
		}
		return nil
	})
	if !reported {
		t.Error("Health never named the failing purge before the dead letter")
	}
	if got := f.watermark(); got.To != 20 || got.CaughtUp.UnixNano() != caughtUp(20) {
		t.Errorf("watermark after the rejoin %+v, want to 20 (the dead purge's end), caught up %d", got, caughtUp(20))
	}
	f.restrictKeys()
	if n := f.c.Exists(ctx, "blocked:1", "k:other").Val(); n != 0 {
		t.Errorf("%d keys survived the flush", n)
	}
	if d := f.metric("flashsync_purger_dead_letters_total", nil); d != 1 {
		t.Errorf("%v dead letters", d)
	}
	stacktest.Eventually(t, 5*time.Second, func() error { return f.purger.Health() })
	// The replica follows again.
	f.publish(20, 30, 1, 1, "k:3")
	stacktest.Eventually(t, 5*time.Second, func() error {
		if got := f.watermark(); got.To != 30 {
			return fmt.Errorf("watermark at %d, want 30", got.To)
		}
		return nil
	})
}

// A replica restarted from its files (an RDB snapshot; an append-only file
// from before the last purges, as a restored backup or a lost fsync gives)
// comes back with the stale key and the snapshot's watermark. The running
// purger sees the new run_id on its own (no message arrives: the canal is
// down) and flushes it: the stale key is gone within 1 s of the restart.
func TestWatermarkRestartFromSnapshot(t *testing.T) {
	for _, tt := range snapshotKinds {
		t.Run(tt.name, func(t *testing.T) {
			f := newWMFixture(t, tt.start(t))
			ctx := context.Background()
			if err := f.c.Set(ctx, "item:1", "old", 0).Err(); err != nil {
				t.Fatal(err)
			}
			f.start()
			f.publish(0, 5, 1, 1) // a heartbeat: the replica's data is trusted once
			f.applied(1)
			snapWM := f.watermark()
			tt.take(t, f.srv, f.c)
			f.publish(5, 10, 1, 1, "item:1")
			f.publish(10, 15, 1, 1)
			f.publish(15, 20, 1, 1)
			f.applied(4)
			if got := f.watermark(); got.To != 20 || f.c.Exists(ctx, "item:1").Val() != 0 {
				t.Fatalf("before the restart: watermark %d, item:1 present %d; want 20 and gone", got.To, f.c.Exists(ctx, "item:1").Val())
			}
			f.srv.Kill()
			tt.restore(t, f.srv)
			f.srv.Start()
			restarted := time.Now()
			back := f.c.Get(ctx, "item:1").Val()
			stacktest.Eventually(t, 5*time.Second, func() error {
				if n := f.c.Exists(ctx, "item:1").Val(); n != 0 {
					return errors.New("item:1 is back from the snapshot")
				}
				return nil
			})
			gone := time.Since(restarted)
			t.Logf("%s: item:1 read %q right after the restart, gone %v after it", tt.name, back, gone)
			if gone >= time.Second {
				t.Errorf("the stale key outlived the restart by %v, want under 1 s", gone)
			}
			stacktest.Eventually(t, 2*time.Second, func() error {
				if r := f.rejoins("restarted"); r != 1 {
					return fmt.Errorf("%v restarted rejoins", r)
				}
				return nil
			})
			if got := f.watermark(); got.To != 20 || got.CaughtUp.UnixNano() != caughtUp(20) {
				t.Errorf("watermark after the rejoin %+v, want to 20 (the newest range seen)", got)
			}
			// The snapshot came back, and the rejoin found its watermark.
			recs := f.logs.records("redis replica rejoined")
			if len(recs) != 1 || recs[0]["found"] != snapWM.String() || recs[0]["reason"] != "restarted" {
				t.Errorf("rejoin logs %v, want one (restarted) that found the snapshot's watermark %q", recs, snapWM.String())
			}
		})
	}
}

// snapshotKind is a way a Redis replica comes back from its files with
// stale data: start starts such a server, take saves what a restart will
// load, restore puts it in place once the server is killed.
type snapshotKind struct {
	name    string
	start   func(testing.TB) *stacktest.RedisServer
	take    func(t *testing.T, srv *stacktest.RedisServer, c *redis.Client)
	restore func(t *testing.T, srv *stacktest.RedisServer)
}

// snapshotKinds: an RDB snapshot (SAVE), and append-only files from
// before the last purges (a restored backup, or an appendfsync everysec
// that lost its last second).
var snapshotKinds = []snapshotKind{
	{"rdb", stacktest.StartRedis,
		func(t *testing.T, _ *stacktest.RedisServer, c *redis.Client) {
			if err := c.Save(context.Background()).Err(); err != nil {
				t.Fatal(err)
			}
		},
		func(*testing.T, *stacktest.RedisServer) {}},
	{"aof", stacktest.StartRedisPersistent,
		func(t *testing.T, srv *stacktest.RedisServer, _ *redis.Client) {
			copyDir(t, srv.Dir(), "appendonlydir", "aof-copy")
		},
		func(t *testing.T, srv *stacktest.RedisServer) {
			dir := srv.Dir()
			if err := os.RemoveAll(filepath.Join(dir, "appendonlydir")); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(filepath.Join(dir, "aof-copy"), filepath.Join(dir, "appendonlydir")); err != nil {
				t.Fatal(err)
			}
		}},
}

// copyDir copies dir/name to dir/to.
func copyDir(t *testing.T, dir, name, to string) {
	t.Helper()
	src, dst := filepath.Join(dir, name), filepath.Join(dir, to)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// A gap that does not fill ((10,20] never comes) flushes the replica after
// gap_timeout, not before; Health reports the gap meanwhile.
func TestWatermarkGap(t *testing.T) {
	const gapTimeout = 500 * time.Millisecond
	f := newWMFixture(t, stacktest.StartRedis(t))
	f.opts.GapTimeout, f.opts.CheckInterval = gapTimeout, 50*time.Millisecond
	f.mark(0)
	ctx := context.Background()
	if err := f.c.Set(ctx, "user", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	f.start()
	f.publish(0, 10, 1, 1, "k:1")
	f.applied(1)
	published := time.Now()
	f.publish(20, 30, 1, 1, "k:3")
	f.applied(2)
	var gap purge.ReplicaStatus
	stacktest.Eventually(t, 10*time.Second, func() error {
		if s := f.status(); s.State == "gap" {
			gap = s
		}
		if r := f.rejoins("gap"); r != 1 {
			return fmt.Errorf("%v gap rejoins", r)
		}
		return nil
	})
	elapsed := time.Since(published)
	t.Logf("flushed %v after the gap opened; Health said: %s", elapsed, gap.Reason)
	if elapsed < gapTimeout {
		t.Errorf("flushed after %v, before gap_timeout %v", elapsed, gapTimeout)
	}
	if gap.WaitingFor == nil || *gap.WaitingFor != [2]uint64{10, 20} {
		t.Errorf("gap status %+v, want waiting for (10, 20]", gap)
	}
	if got := f.watermark(); got.To != 30 {
		t.Errorf("watermark after the rejoin at %d, want 30", got.To)
	}
	if n := f.c.Exists(ctx, "user").Val(); n != 0 {
		t.Error("user survived the flush")
	}
}

// An nsqd that dies with a backlog for an unreachable replica loses it. The
// loss is emulated on a private nsqd: the replica's channel is emptied of
// (0,10] and (10,20] before its purger ever runs, then (20,30] and a
// heartbeat follow. The purger sees the gap and flushes the replica; its
// watermark never claims the lost ranges while the stale data is there.
func TestWatermarkLostBacklog(t *testing.T) {
	f := newWMFixture(t, stacktest.StartRedis(t))
	f.opts.GapTimeout, f.opts.CheckInterval = 500*time.Millisecond, 50*time.Millisecond
	f.mark(0)
	ctx := context.Background()
	if err := f.c.MSet(ctx, "k:1", "stale", "k:2", "stale").Err(); err != nil {
		t.Fatal(err)
	}
	f.publish(0, 10, 1, 1, "k:1")
	f.publish(10, 20, 1, 1, "k:2")
	channel := invalidate.ReplicaChannel(f.srv.Addr())
	// nsqd copies a topic's messages to its channels in the background.
	stacktest.Eventually(t, 5*time.Second, func() error {
		if d := channelDepth(t, f.nsqd.HTTPAddr(), wmTopic, channel); d != 2 {
			return fmt.Errorf("channel depth %d, want 2", d)
		}
		return nil
	})
	emptyChannel(t, f.nsqd.HTTPAddr(), wmTopic, channel)
	if d := channelDepth(t, f.nsqd.HTTPAddr(), wmTopic, channel); d != 0 {
		t.Fatalf("channel depth %d after /channel/empty", d)
	}
	f.publish(20, 30, 1, 1, "k:3")
	f.publish(30, 35, 1, 1)
	f.start()
	stacktest.Eventually(t, 10*time.Second, func() error {
		w, stale := f.watermarkAndExists("k:1", "k:2")
		if w.To > 0 && stale {
			t.Fatalf("watermark at %d while the lost purges' keys are still there", w.To)
		}
		if w.To != 35 {
			return fmt.Errorf("watermark at %d", w.To)
		}
		return nil
	})
	stacktest.Eventually(t, 2*time.Second, func() error { // counted once the script returned
		if r := f.rejoins("gap"); r != 1 {
			return fmt.Errorf("%v gap rejoins, want 1", r)
		}
		return nil
	})
}

// channelDepth is the number of messages an nsqd channel holds.
func channelDepth(t *testing.T, httpAddr, topic, channel string) int {
	t.Helper()
	st, ok := stacktest.NSQDChannel(t, httpAddr, topic, channel)
	if !ok {
		t.Fatalf("no channel %s on topic %s", channel, topic)
	}
	return st.Depth
}

// emptyChannel drops every message of an nsqd channel (nsqd's HTTP
// /channel/empty).
func emptyChannel(t *testing.T, httpAddr, topic, channel string) {
	t.Helper()
	resp, err := http.Post("http://"+httpAddr+"/channel/empty?topic="+url.QueryEscape(topic)+"&channel="+url.QueryEscape(channel), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/channel/empty: %s", resp.Status)
	}
}

// A purger restart resumes from the watermark in the replica: ranges
// redelivered or repeated below it move nothing backwards, and nothing is
// flushed.
func TestWatermarkPurgerRestart(t *testing.T) {
	f := newWMFixture(t, stacktest.StartRedis(t))
	f.mark(0)
	ctx := context.Background()
	stop := f.start()
	f.publish(0, 10, 1, 1, "k:1")
	f.publish(10, 20, 1, 1, "k:2")
	f.applied(2)
	if got := f.watermark(); got.To != 20 {
		t.Fatalf("watermark at %d, want 20", got.To)
	}
	stop()
	if err := f.c.Set(ctx, "user", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	f.publish(5, 15, 1, 1, "k:1") // a restarted canal's overlap
	f.publish(0, 10, 1, 1, "k:1") // a redelivery
	f.publish(20, 30, 1, 1, "k:3")
	f.start()
	last := uint64(20)
	stacktest.Eventually(t, 10*time.Second, func() error {
		got := f.watermark().To
		if got < last {
			t.Fatalf("watermark went back from %d to %d", last, got)
		}
		last = got
		if got != 30 {
			return fmt.Errorf("watermark at %d", got)
		}
		return nil
	})
	f.applied(3)
	if n := f.c.Exists(ctx, "user").Val(); n != 1 || f.rejoins("") != 0 {
		t.Errorf("user present %d, %v rejoins; want kept, none", n, f.rejoins(""))
	}
}

// Purger processes that share a replica's channel each get some of its
// messages, none all: the watermark, kept in the replica, still follows
// every range, with no gap flush.
func TestWatermarkSharedChannel(t *testing.T) {
	f := newWMFixture(t, stacktest.StartRedis(t))
	f.opts.GapTimeout = time.Second
	f.mark(0)
	f.start()
	first := f.reg
	f.start()
	const n = 200
	for i := uint64(0); i < n; i++ {
		f.publish(i*10, (i+1)*10, 1, 1, fmt.Sprintf("k:%d", i))
	}
	stacktest.Eventually(t, 20*time.Second, func() error {
		if got := f.watermark(); got.To != n*10 {
			return fmt.Errorf("watermark at %d, want %d", got.To, n*10)
		}
		return nil
	})
	labels := map[string]string{"result": "ok"}
	a := stacktest.MetricValue(t, first, "flashsync_purger_messages_total", labels)
	b := f.metric("flashsync_purger_messages_total", labels)
	t.Logf("the two purgers applied %v and %v of the %d messages", a, b, n)
	if a == 0 || b == 0 || a+b < n {
		t.Errorf("purgers applied %v and %v messages, want both some and %d in all", a, b, n)
	}
	for _, reg := range []*prometheus.Registry{first, f.reg} {
		if r := stacktest.MetricValue(t, reg, "flashsync_purger_replica_rejoins_total", nil); r != 0 {
			t.Errorf("%v rejoins", r)
		}
	}
}
