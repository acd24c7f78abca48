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
	"sync/atomic"
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

// rrRow is a row whose history the readers are checked against: its
// version goes up by one at each write, and versionAt tells which version
// MySQL would have returned at a time.
type rrRow struct {
	mu      sync.Mutex
	version int64
	at      []time.Time // at[v-1]: when version v was written
}

func (r *rrRow) write() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.version++
	r.at = append(r.at, time.Now())
	return r.version
}

func (r *rrRow) load(context.Context) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return []byte(strconv.FormatInt(r.version, 10)), nil
}

// versionAt is the version current at t (0 before the first write).
func (r *rrRow) versionAt(t time.Time) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	v := int64(0)
	for i, at := range r.at {
		if at.After(t) {
			break
		}
		v = int64(i + 1)
	}
	return v
}

// A replica restarted from a snapshot, RDB or AOF, while cache-aside
// readers read it without pause: no read returns a value staler than
// max_staleness (1 s), and the snapshot's stale value is gone from the
// replica within 1 s of the restart. The group's other replica stays up;
// a writer changes a hot row every 10 ms and publishes its purge, covered,
// with the time it was caught up to, as the canal does; a cold row changes
// once, after the snapshot, so only the rejoin can rid the replica of the
// snapshot's value of it.
func TestWatermarkRestartUnderReaders(t *testing.T) {
	for _, tt := range snapshotKinds {
		t.Run(tt.name, func(t *testing.T) { testRestartUnderReaders(t, tt.start(t), tt) })
	}
}

func testRestartUnderReaders(t *testing.T, a *stacktest.RedisServer, kind snapshotKind) {
	b := stacktest.StartRedis(t)
	nsqd := stacktest.StartNSQD(t)
	const key, cold = "item:1", "item:2"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	pub, err := invalidate.NewPublisher(invalidate.PublisherOptions{
		NSQDTCP: []string{nsqd.TCPAddr()}, NSQDHTTP: []string{nsqd.HTTPAddr()},
		Groups: []invalidate.Group{{Name: "g", Addrs: []string{a.Addr(), b.Addr()}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.EnsureChannels(ctx); err != nil {
		t.Fatal(err)
	}
	pub.Close()
	prod, err := nsq.NewProducer(nsqd.TCPAddr(), nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	prod.SetLogger(log.New(io.Discard, "", 0), nsq.LogLevelError)
	defer prod.Stop()
	var offset atomic.Uint64
	// publish sends a covered purge of keys (a heartbeat without), the next
	// range, caught up now.
	publish := func(keys ...string) error {
		to := offset.Add(10)
		m := invalidate.Purge{V: invalidate.PurgeVersionBasic, Group: "g", Keys: keys, From: to - 10, To: to, Part: 1, Parts: 1,
			CaughtUpUnixNano: time.Now().UnixNano(), SeenUnixNano: time.Now().UnixNano()}
		if len(keys) == 0 {
			m.V, m.Heartbeat = invalidate.PurgeVersionHeartbeat, true
		}
		body, err := m.Marshal()
		if err != nil {
			return err
		}
		return prod.Publish(wmTopic, body)
	}

	reg := prometheus.NewRegistry()
	logs := new(syncBuffer)
	p, err := purge.NewRedisPurger(purge.RedisPurgerOptions{
		ConsumerOptions: purge.ConsumerOptions{NSQDTCP: []string{nsqd.TCPAddr()}, MaxAttempts: 100,
			Logger: slog.New(slog.NewJSONHandler(io.MultiWriter(logs, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelWarn}))},
		Groups:        []purge.RedisGroup{{Name: "g", Replicas: []string{a.Addr(), b.Addr()}}},
		CheckInterval: 50 * time.Millisecond,
		Registerer:    reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	stacktest.RunAndClose(t, "purger", p)

	var clients []redis.UniversalClient
	for _, s := range []*stacktest.RedisServer{a, b} {
		c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1, ContextTimeoutEnabled: true})
		t.Cleanup(func() { c.Close() })
		clients = append(clients, c)
	}
	ca := clients[0].(*redis.Client)
	reader, err := cacheaside.New(cacheaside.Options{Groups: []cacheaside.Group{{Name: "g", Replicas: clients}},
		Registerer: prometheus.NewRegistry(), ReplicaTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	const maxStaleness = cacheaside.DefaultMaxStaleness

	row, coldRow := &rrRow{}, &rrRow{}
	rowOf := func(k string) *rrRow {
		if k == cold {
			return coldRow
		}
		return row
	}
	if err := publish(); err != nil { // the replicas start their watermarks
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	// The writer: a change every 10 ms, then its purge; a heartbeat between.
	wg.Go(func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ctx.Err() == nil && i < 4000; i++ {
			var err error
			if i%2 == 0 {
				row.write()
				err = publish(key)
			} else {
				err = publish()
			}
			if err != nil {
				errc <- err
				return
			}
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
		}
	})
	type read struct {
		key     string
		start   time.Time
		version int64
		res     cacheaside.Result
	}
	var mu sync.Mutex
	var reads []read
	for range 2 {
		wg.Go(func() {
			var mine []read
			defer func() { mu.Lock(); reads = append(reads, mine...); mu.Unlock() }()
			for i := 0; ctx.Err() == nil && i < 1_000_000; i++ {
				k := key
				if i%4 == 0 {
					k = cold
				}
				start := time.Now()
				v, res, err := reader.Get(ctx, k, "1", rowOf(k).load)
				if err != nil {
					if ctx.Err() == nil {
						errc <- err
					}
					return
				}
				n, err := strconv.ParseInt(string(v), 10, 64)
				if err != nil {
					errc <- err
					return
				}
				mine = append(mine, read{k, start, n, res})
			}
		})
	}
	defer wg.Wait()
	defer cancel()

	// A holds the cold key, filled by the readers, when it is snapshotted.
	stacktest.Eventually(t, 5*time.Second, func() error {
		if v, err := ca.Get(ctx, cold).Bytes(); err != nil || cacheaside.IsLease(v) {
			return fmt.Errorf("A holds %q (%v)", v, err)
		}
		return nil
	})
	kind.take(t, a, ca)
	snapAt := time.Now()
	coldRow.write()
	if err := publish(cold); err != nil {
		t.Fatal(err)
	}
	// Applied once A holds no value of it or the new one (readers refill).
	stacktest.Eventually(t, 5*time.Second, func() error {
		if v, err := ca.Get(ctx, cold).Bytes(); err == nil && !cacheaside.IsLease(v) {
			if payload, _, _ := cacheaside.DecodeValue(v); string(payload) == "0" {
				return errors.New("the cold key's purge is not applied yet")
			}
		}
		return nil
	})
	// Let the snapshot's value go stale: later versions purge it from A.
	stacktest.Eventually(t, 10*time.Second, func() error {
		if row.versionAt(time.Now().Add(-2*maxStaleness)) <= row.versionAt(snapAt) {
			return errors.New("the snapshot is not 2 s old yet")
		}
		return nil
	})
	a.Kill()
	kind.restore(t, a)
	a.Start()
	restarted := time.Now()
	// The snapshot holds the cold key at version 0: A is rid of it once it
	// holds no value of the key or a newer one, and the new server's run_id
	// marks its watermark (the rejoin ran).
	var gone time.Duration
	stacktest.Eventually(t, 5*time.Second, func() error {
		for _, k := range []string{cold, key} {
			v, err := ca.Get(ctx, k).Bytes()
			if err != nil || cacheaside.IsLease(v) {
				continue
			}
			payload, _, _ := cacheaside.DecodeValue(v)
			if n, _ := strconv.ParseInt(string(payload), 10, 64); n <= rowOf(k).versionAt(snapAt) {
				return fmt.Errorf("A holds %s at version %d, the snapshot's", k, n)
			}
		}
		info, err := ca.Info(ctx, "server").Result()
		if err != nil {
			return err
		}
		if marker, _ := ca.Get(ctx, invalidate.WatermarkKey+":run_id").Result(); !strings.Contains(info, "run_id:"+marker+"\r\n") || marker == "" {
			return errors.New("A has not rejoined: its watermark is the snapshot's")
		}
		gone = time.Since(restarted)
		return nil
	})
	// Readers keep reading the rejoined replica for a second.
	stacktest.Eventually(t, 5*time.Second, func() error {
		if time.Since(restarted) < time.Second+gone {
			return errors.New("reading on")
		}
		return nil
	})
	cancel()
	wg.Wait()
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}
	after := 0
	byRes := map[cacheaside.Result]int{}
	for _, rd := range reads {
		if floor := rowOf(rd.key).versionAt(rd.start.Add(-maxStaleness)); rd.version < floor {
			t.Errorf("read of %s at %v: version %d, older than %d, the row's version %v before it (%v)", rd.key, rd.start.Format("15:04:05.000"), rd.version, floor, maxStaleness, rd.res)
		}
		if rd.start.After(restarted) {
			after++
		}
		byRes[rd.res]++
	}
	t.Logf("%d reads (%d after the restart) %v; %d versions; the snapshot's value gone from A %v after its restart",
		len(reads), after, byRes, row.versionAt(time.Now()), gone)
	if gone >= time.Second {
		t.Errorf("the snapshot's value outlived the restart by %v, want under 1 s", gone)
	}
	if after == 0 {
		t.Error("no read after the restart")
	}
	if n := stacktest.MetricValue(t, reg, "flashsync_purger_replica_rejoins_total", map[string]string{"group": "g", "replica": a.Addr(), "reason": "restarted"}); n != 1 {
		t.Errorf("%v restarted rejoins of A, want 1", n)
	}
}
