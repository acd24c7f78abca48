package purge_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/cacheaside"
	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/flashsync/flashsync/purge"
)

// An nsqd SIGKILLed while it holds the backlog of a replica its purger
// cannot reach (issue 11), for real: nsqd runs as a process of the test
// with its defaults (a channel's messages in memory), the purger keeps
// running and is cut off the replica by a proxy (readers still reach it,
// as in a partition between the purger's host and the replica's), rows
// change and their covered purges queue in nsqd, which is killed and
// restarted empty. Later purges and heartbeats follow. Throughout, the
// replica's watermark never claims a range whose purge it has not applied
// while the value that purge deletes is there; the gap is seen and the
// replica flushed gap_timeout after it is reachable again; and cache-aside
// readers (max_staleness 1 s), reading the replica directly from before the
// cut until after the rejoin, never get a value staler than that.
func TestWatermarkNSQDKilled(t *testing.T) {
	const (
		gapTimeout   = time.Second
		maxStaleness = time.Second
		// maxInFlight bounds what the purger holds of the backlog (and
		// applies once the replica is back); the rest is nsqd's alone.
		maxInFlight = 4
		nKeys       = 8
		// flushBound is what the flush may take past gap_timeout after the
		// replica is reachable again: the held purges' retry back-off (at
		// most 1 s), go-nsq's reconnection to the restarted nsqd
		// (LookupdPollInterval), a check interval, and a loaded machine.
		flushBound = 3 * time.Second
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := stacktest.StartRedis(t)
	proxy := stacktest.StartProxy(t, srv.Addr())
	nsqd := stacktest.StartNSQDProcess(t)
	// The purger's address of the replica names its channel and labels.
	replica := proxy.Addr()
	channel := invalidate.ReplicaChannel(replica)
	direct := stacktest.Redis(t, srv.Addr())

	pub, err := invalidate.NewPublisher(invalidate.PublisherOptions{
		NSQDTCP: []string{nsqd.TCPAddr()}, NSQDHTTP: []string{nsqd.HTTPAddr()},
		Groups: []invalidate.Group{{Name: "g", Addrs: []string{replica}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.EnsureChannels(ctx); err != nil {
		t.Fatal(err)
	}
	pub.Close()
	canal := newKillCanal(t, nsqd.TCPAddr())

	keys := make([]string, nKeys)
	rows := make([]*rrRow, nKeys)
	mset := []any{}
	for i := range keys {
		keys[i], rows[i] = "item:"+strconv.Itoa(i), &rrRow{}
		rows[i].write() // version 1, cached as the readers would have
		mset = append(mset, keys[i], cacheaside.EncodeValue(time.Now(), []byte("1")))
	}
	if err := direct.MSet(ctx, mset...).Err(); err != nil {
		t.Fatal(err)
	}
	markReplica(t, direct, 0)

	reg := prometheus.NewRegistry()
	logs := new(syncBuffer)
	purger, err := purge.NewRedisPurger(purge.RedisPurgerOptions{
		ConsumerOptions: purge.ConsumerOptions{
			NSQDTCP: []string{nsqd.TCPAddr()}, MaxAttempts: 100, MaxInFlight: maxInFlight,
			// go-nsq reconnects to a lost nsqd after this (default 5 s).
			LookupdPollInterval: 100 * time.Millisecond,
			Logger:              slog.New(slog.NewJSONHandler(io.MultiWriter(logs, testWriter{t}), nil)),
		},
		Groups:        []purge.RedisGroup{{Name: "g", Replicas: []string{replica}}},
		GapTimeout:    gapTimeout,
		CheckInterval: 50 * time.Millisecond,
		Registerer:    reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	stacktest.RunAndClose(t, "purger", purger)
	metric := func(name string, labels map[string]string) float64 {
		all := map[string]string{"group": "g", "replica": replica}
		for k, v := range labels {
			all[k] = v
		}
		return stacktest.MetricValue(t, reg, name, all)
	}

	var wg sync.WaitGroup
	readers := startKillReaders(ctx, t, &wg, srv.Addr(), keys, rows, maxStaleness)
	mon := startWatermarkMonitor(ctx, t, &wg, direct, keys, canal)
	// When the steps below happened, for the readers' check.
	var cutAt, trustedUntil, lastStale, goneAt time.Time
	// What the readers and the monitor saw is checked however the test
	// ends: a watermark that claimed the lost ranges also leaves the
	// replica unflushed, and that is the lesser news.
	defer func() {
		cancel()
		wg.Wait()
		mon.report(t)
		readers.check(t, cutAt, trustedUntil, lastStale, goneAt)
	}()

	// 1. The replica follows: its watermark advances, fresh.
	stopBeats := canal.heartbeats()
	stacktest.Eventually(t, 10*time.Second, func() error {
		w, err := readWatermark(ctx, direct)
		if err != nil {
			return err
		}
		if w.To < 100 || w.Staleness(time.Now()) > maxStaleness/2 {
			return fmt.Errorf("watermark %+v", w)
		}
		return nil
	})
	stopBeats()
	applied := canal.lastTo()
	stacktest.Eventually(t, 5*time.Second, func() error {
		if w, err := readWatermark(ctx, direct); err != nil || w.To != applied {
			return fmt.Errorf("watermark %+v (%v), want at %d: everything published applied", w, err, applied)
		}
		return nil
	})

	// 2. Cut off: each row changes and its purge queues, with a heartbeat
	// after it. The purger holds the first maxInFlight; nsqd holds the
	// rest in memory.
	proxy.Cut()
	cutAt = time.Now()
	for i := range keys {
		canal.purge(keys[i], rows[i])
		canal.publish()
	}
	// No watermark the replica can reach before its flush is caught up
	// later than this: readers must skip it from max_staleness on.
	trustedUntil = time.Now().Add(maxStaleness)
	const queued = 2 * nKeys
	lostTo := canal.lastTo()
	var backlog stacktest.NSQDChannelStats
	stacktest.Eventually(t, 5*time.Second, func() error {
		s, ok := stacktest.NSQDChannel(t, nsqd.HTTPAddr(), wmTopic, channel)
		if !ok || s.Depth+s.InFlight != queued || s.InFlight != maxInFlight || s.Deferred != 0 {
			return fmt.Errorf("channel %+v (present %v), want %d queued, %d of them in flight", s, ok, queued, maxInFlight)
		}
		backlog = s
		return nil
	})
	stacktest.Eventually(t, 5*time.Second, func() error {
		if up := metric("flashsync_purger_replica_up", nil); up != 0 {
			return fmt.Errorf("replica_up %v: the purger has not found the replica unreachable", up)
		}
		return nil
	})
	// The outage outlasts max_staleness: readers skip the replica when
	// nsqd dies.
	stacktest.Eventually(t, 10*time.Second, func() error {
		if n := readers.bypassedSince(trustedUntil); n < 20 {
			return fmt.Errorf("%d reads skipped the replica since its watermark got older than max_staleness", n)
		}
		return nil
	})
	if w, err := readWatermark(ctx, direct); err != nil || w.To != applied {
		t.Fatalf("watermark %+v (%v) while cut off, want still %d", w, err, applied)
	}

	// 3. nsqd is killed with the backlog and comes back without it.
	canal.stop()
	killedAt := time.Now()
	nsqd.Kill()
	nsqd.Start()
	restarted := time.Since(killedAt)
	s, ok := stacktest.NSQDChannel(t, nsqd.HTTPAddr(), wmTopic, channel)
	if !ok {
		t.Fatalf("nsqd restarted without the channel %s: its metadata was not persisted", channel)
	}
	if s.Depth != 0 || s.InFlight != 0 || s.Deferred != 0 {
		t.Fatalf("the restarted nsqd holds %+v of the backlog: it kept it on disk, so this test loses nothing", s)
	}
	t.Logf("cut off for %v; nsqd killed with the backlog (%d queued, %d in flight to the purger) and restarted in %v, empty",
		killedAt.Sub(cutAt).Round(time.Millisecond), backlog.Depth, backlog.InFlight, restarted.Round(time.Millisecond))

	// 4. Later purges and heartbeats; the replica is reachable again.
	canal.connect(nsqd.TCPAddr())
	canal.purge(keys[0], rows[0])
	canal.publish()
	stopBeats = canal.heartbeats()
	proxy.Restore()
	restoredAt := time.Now()

	// 5. The lost purges' values go with the flush, gap_timeout after the
	// replica is back, once. lastStale is when the last look that found
	// them began: the flush came after it.
	var waited purge.ReplicaStatus
	stacktest.Eventually(t, gapTimeout+flushBound+5*time.Second, func() error {
		if st := purger.Replicas()[0]; st.WaitingFor != nil {
			waited = st
		}
		start := time.Now()
		if stale := mon.staleKeys(ctx, t); len(stale) > 0 {
			lastStale = start
			return fmt.Errorf("stale values of %v in the replica", stale)
		}
		goneAt = time.Now()
		return nil
	})
	gone := goneAt.Sub(restoredAt)
	stacktest.Eventually(t, 2*time.Second, func() error { // counted once the script returned
		if r := metric("flashsync_purger_replica_rejoins_total", map[string]string{"reason": "gap"}); r != 1 {
			return fmt.Errorf("%v gap rejoins, want 1", r)
		}
		return nil
	})
	if waited.WaitingFor == nil || waited.Since == nil {
		t.Error("the purger never reported the missing range it waited on")
	} else {
		t.Logf("stale values gone %v after the replica was reachable again, %v after the purger began to wait for (%d, %d]",
			gone.Round(time.Millisecond), goneAt.Sub(*waited.Since).Round(time.Millisecond), waited.WaitingFor[0], waited.WaitingFor[1])
	}
	if recs := logs.records("redis replica rejoined"); len(recs) != 1 || recs[0]["reason"] != "gap" {
		t.Errorf("rejoin logs %v, want one, reason gap", recs)
	}
	if gone < gapTimeout {
		t.Errorf("flushed %v after the replica was back, before gap_timeout %v: the backlog had no time to drain", gone, gapTimeout)
	}
	if gone > gapTimeout+flushBound {
		t.Errorf("flushed %v after the replica was back, want within gap_timeout %v + %v", gone, gapTimeout, flushBound)
	}

	// The replica follows again and is read again.
	stacktest.Eventually(t, 10*time.Second, func() error {
		if n := readers.hitsSince(goneAt); time.Since(goneAt) < maxStaleness || n < 20 {
			return fmt.Errorf("%d hits since the flush", n)
		}
		return nil
	})
	stopBeats()

	if r := metric("flashsync_purger_replica_rejoins_total", nil); r != 1 {
		t.Errorf("%v rejoins in all, want the one gap flush", r)
	}
	if w, err := readWatermark(context.Background(), direct); err != nil || w.To <= lostTo {
		t.Errorf("watermark %+v (%v) at the end, want past the lost ranges (to %d)", w, err, lostTo)
	}
}

// markReplica starts the replica's watermark at to, as if a purger had
// applied everything up to it: its data is trusted.
func markReplica(t *testing.T, c *redis.Client, to uint64) {
	t.Helper()
	ctx := context.Background()
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		t.Fatal(err)
	}
	var runID string
	for _, l := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(l, "run_id:"); ok {
			runID = v
		}
	}
	if err := c.MSet(ctx, invalidate.WatermarkKey, invalidate.Watermark{To: to}.String(), invalidate.WatermarkKey+":run_id", runID).Err(); err != nil {
		t.Fatal(err)
	}
}

func readWatermark(ctx context.Context, c *redis.Client) (invalidate.Watermark, error) {
	v, err := c.Get(ctx, invalidate.WatermarkKey).Result()
	if err != nil {
		return invalidate.Watermark{}, err
	}
	return invalidate.ParseWatermark(v)
}

// killCanal plays the canal: covered ranges of 10 offsets in order, each
// caught up when it is published, through one producer.
type killCanal struct {
	t    *testing.T
	mu   sync.Mutex
	prod *nsq.Producer
	to   uint64
	// purged[key] lists the purges of key published: a value of key older
	// than one of them must not be in the replica once the watermark
	// covers it.
	purged map[string][]keyPurge
}

type keyPurge struct {
	version int64  // the row's version the purge follows
	to      uint64 // the end of its range
}

func newKillCanal(t *testing.T, nsqdTCP string) *killCanal {
	c := &killCanal{t: t, purged: map[string][]keyPurge{}}
	c.connect(nsqdTCP)
	t.Cleanup(c.stop)
	return c
}

// connect publishes through a new producer to nsqdTCP from now on.
func (c *killCanal) connect(nsqdTCP string) {
	prod, err := nsq.NewProducer(nsqdTCP, nsq.NewConfig())
	if err != nil {
		c.t.Fatal(err)
	}
	prod.SetLogger(log.New(io.Discard, "", 0), nsq.LogLevelError)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.prod = prod
}

// stop stops the producer (its nsqd is about to die).
func (c *killCanal) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.prod != nil {
		c.prod.Stop()
		c.prod = nil
	}
}

// publish publishes the next range, a covered purge of keys (a heartbeat
// without), and returns its end.
func (c *killCanal) publish(keys ...string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.publishLocked(keys...)
}

func (c *killCanal) publishLocked(keys ...string) uint64 {
	c.to += 10
	now := time.Now().UnixNano()
	m := invalidate.Purge{V: invalidate.PurgeVersionBasic, Group: "g", Keys: keys, From: c.to - 10, To: c.to, Part: 1, Parts: 1,
		CaughtUpUnixNano: now, SeenUnixNano: now}
	if len(keys) == 0 {
		m.V, m.Heartbeat = invalidate.PurgeVersionHeartbeat, true
	}
	body, err := m.Marshal()
	if err != nil {
		c.t.Error(err)
		return c.to
	}
	if c.prod == nil {
		c.t.Errorf("publish (%d, %d]: no producer", m.From, m.To)
		return c.to
	}
	if err := c.prod.Publish(wmTopic, body); err != nil {
		c.t.Errorf("publish (%d, %d]: %v", m.From, m.To, err)
	}
	return c.to
}

// purge changes row, the row of key, and publishes its purge.
func (c *killCanal) purge(key string, row *rrRow) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := row.write()
	c.purged[key] = append(c.purged[key], keyPurge{version: v, to: c.to + 10})
	c.publishLocked(key)
}

// heartbeats publishes a heartbeat every 20 ms, as the canal does while
// no row changes, until the returned function is called.
func (c *killCanal) heartbeats() (stop func()) {
	return stacktest.Run(c.t, "heartbeats", func(ctx context.Context) error {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < 3000; i++ {
			c.publish()
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
		}
		return errors.New("3000 heartbeats: the test ran too long")
	})
}

func (c *killCanal) lastTo() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.to
}

// covering is the end of the first purge of key that followed version,
// 0 if none.
func (c *killCanal) covering(key string, version int64) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.purged[key] {
		if p.version > version {
			return p.to
		}
	}
	return 0
}

// watermarkMonitor reads the watermark and every key in one MGET every
// 5 ms and checks that the watermark covers no purge whose key still holds
// a value older than it.
type watermarkMonitor struct {
	c     *redis.Client
	keys  []string
	canal *killCanal

	mu         sync.Mutex
	reads      int
	violations []string
}

func startWatermarkMonitor(ctx context.Context, t *testing.T, wg *sync.WaitGroup, c *redis.Client, keys []string, canal *killCanal) *watermarkMonitor {
	m := &watermarkMonitor{c: c, keys: keys, canal: canal}
	wg.Go(func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < 20_000; i++ {
			if bad, err := m.check(ctx); err == nil {
				m.mu.Lock()
				m.reads++
				m.violations = append(m.violations, bad...)
				m.mu.Unlock()
			} else if ctx.Err() == nil {
				t.Errorf("monitor: %v", err)
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
	return m
}

// snapshot is the watermark and, per key, the version of the value it holds
// (-1: none or a lease), read in one command.
func (m *watermarkMonitor) snapshot(ctx context.Context) (invalidate.Watermark, []int64, error) {
	vals, err := m.c.MGet(ctx, append([]string{invalidate.WatermarkKey}, m.keys...)...).Result()
	if err != nil {
		return invalidate.Watermark{}, nil, err
	}
	raw, _ := vals[0].(string)
	w, err := invalidate.ParseWatermark(raw)
	if err != nil {
		return w, nil, err
	}
	versions := make([]int64, len(m.keys))
	for i, v := range vals[1:] {
		versions[i] = -1
		s, ok := v.(string)
		if !ok || cacheaside.IsLease([]byte(s)) {
			continue
		}
		payload, _, _ := cacheaside.DecodeValue([]byte(s))
		n, err := strconv.ParseInt(string(payload), 10, 64)
		if err != nil {
			return w, nil, fmt.Errorf("%s holds %q", m.keys[i], s)
		}
		versions[i] = n
	}
	return w, versions, nil
}

// check returns what one snapshot violates.
func (m *watermarkMonitor) check(ctx context.Context) ([]string, error) {
	w, versions, err := m.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	var bad []string
	for i, v := range versions {
		if v < 0 {
			continue
		}
		if to := m.canal.covering(m.keys[i], v); to > 0 && w.To >= to {
			bad = append(bad, fmt.Sprintf("watermark at %d while %s holds version %d, which the purge ending at %d deletes", w.To, m.keys[i], v, to))
		}
	}
	return bad, nil
}

// staleKeys are the keys whose value in the replica a published purge
// deletes.
func (m *watermarkMonitor) staleKeys(ctx context.Context, t *testing.T) []string {
	_, versions, err := m.snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var stale []string
	for i, v := range versions {
		if v >= 0 && m.canal.covering(m.keys[i], v) > 0 {
			stale = append(stale, m.keys[i])
		}
	}
	return stale
}

func (m *watermarkMonitor) report(t *testing.T) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, v := range m.violations {
		if i == 10 {
			t.Errorf("... and %d more", len(m.violations)-i)
			break
		}
		t.Error(v)
	}
	t.Logf("monitor: %d snapshots of the watermark and the keys", m.reads)
	if m.reads < 100 {
		t.Errorf("monitor took %d snapshots, too few to watch the kill", m.reads)
	}
}

// killReaders are two cache-aside readers of the keys, reading the replica
// directly, each about once a millisecond.
type killReaders struct {
	rows         []*rrRow
	keys         []string
	maxStaleness time.Duration

	mu    sync.Mutex
	reads []killRead
}

type killRead struct {
	key        int
	start, end time.Time
	version    int64
	res        cacheaside.Result
}

func startKillReaders(ctx context.Context, t *testing.T, wg *sync.WaitGroup, addr string, keys []string, rows []*rrRow, maxStaleness time.Duration) *killReaders {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, ContextTimeoutEnabled: true})
	t.Cleanup(func() { c.Close() })
	reader, err := cacheaside.New(cacheaside.Options{Groups: []cacheaside.Group{{Name: "g", Replicas: []redis.UniversalClient{c}}},
		MaxStaleness: maxStaleness, ReplicaTimeout: time.Second, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	r := &killReaders{rows: rows, keys: keys, maxStaleness: maxStaleness}
	for w := range 2 {
		wg.Go(func() {
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			for i := 0; i < 100_000; i++ {
				k := (i + w*len(keys)/2) % len(keys)
				start := time.Now()
				v, res, err := reader.Get(ctx, keys[k], "1", rows[k].load)
				if err != nil {
					if ctx.Err() == nil {
						t.Errorf("read %s: %v", keys[k], err)
					}
					return
				}
				n, err := strconv.ParseInt(string(v), 10, 64)
				if err != nil {
					t.Errorf("read %s: %q", keys[k], v)
					return
				}
				r.mu.Lock()
				r.reads = append(r.reads, killRead{k, start, time.Now(), n, res})
				r.mu.Unlock()
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	return r
}

// hitsSince counts the reads served by the replica that started after t.
func (r *killReaders) hitsSince(t time.Time) int { return r.countSince(t, cacheaside.Hit) }

// bypassedSince counts the reads that skipped the replica and started
// after t.
func (r *killReaders) bypassedSince(t time.Time) int { return r.countSince(t, cacheaside.Bypassed) }

func (r *killReaders) countSince(t time.Time, res cacheaside.Result) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rd := range r.reads {
		if rd.res == res && rd.start.After(t) {
			n++
		}
	}
	return n
}

// check fails the test for each read of a value older than max_staleness
// (below the version its row had max_staleness before the read began), and
// for each read served by the replica, or filling it, from trustedUntil to
// stale (begun and done then): the replica held stale values and no
// watermark newer than max_staleness. A zero time is a step the test did
// not reach.
func (r *killReaders) check(t *testing.T, cutAt, trustedUntil, stale, goneAt time.Time) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	window := !trustedUntil.IsZero() && !stale.IsZero()
	phases := []string{"before the cut", "from the cut until the flush was seen", "after"}
	byPhase := make([]map[cacheaside.Result]int, len(phases))
	for i := range byPhase {
		byPhase[i] = map[cacheaside.Result]int{}
	}
	skipped, bad := 0, 0
	for _, rd := range r.reads {
		phase := 0
		if !goneAt.IsZero() && rd.start.After(goneAt) {
			phase = 2
		} else if !cutAt.IsZero() && rd.start.After(cutAt) {
			phase = 1
		}
		byPhase[phase][rd.res]++
		if floor := r.rows[rd.key].versionAt(rd.start.Add(-r.maxStaleness)); rd.version < floor {
			bad++
			if bad <= 10 {
				t.Errorf("read of %s at %s: version %d (%v), older than %d, its row's version %v before", r.keys[rd.key], rd.start.Format("15:04:05.000"), rd.version, rd.res, floor, r.maxStaleness)
			}
		}
		if window && rd.start.After(trustedUntil) && rd.end.Before(stale) {
			if rd.res != cacheaside.Bypassed {
				bad++
				if bad <= 10 {
					t.Errorf("read of %s at %s: %v while the replica's watermark was older than %v and it held stale values", r.keys[rd.key], rd.start.Format("15:04:05.000"), rd.res, r.maxStaleness)
				}
			}
			skipped++
		}
	}
	for i, p := range phases {
		t.Logf("reads %s: %v", p, byPhase[i])
	}
	if bad > 10 {
		t.Errorf("... %d bad reads in all", bad)
	}
	if !window {
		return
	}
	t.Logf("%d reads in the %v from max_staleness after the cut to the last stale value seen, which had to skip the replica",
		skipped, stale.Sub(trustedUntil).Round(time.Millisecond))
	if skipped < 50 {
		t.Errorf("only %d reads while the replica was too stale to read: the readers did not test it", skipped)
	}
}
