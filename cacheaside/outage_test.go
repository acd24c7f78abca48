package cacheaside_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/cacheaside"
	"github.com/flashsync/flashsync/internal/stacktest"
)

// timedRead is one Get as a test saw it.
type timedRead struct {
	start, end time.Time
	key        int
	value      string
	res        cacheaside.Result
}

func (r timedRead) latency() time.Duration { return r.end.Sub(r.start) }

// percentile of the reads' latencies (q in [0, 1]); 0 without reads.
func percentile(reads []timedRead, q float64) time.Duration {
	if len(reads) == 0 {
		return 0
	}
	l := make([]time.Duration, len(reads))
	for i, r := range reads {
		l[i] = r.latency()
	}
	slices.Sort(l)
	return l[min(len(l)-1, int(q*float64(len(l))))]
}

// TestFlushRefillsOnFirstMiss: after replica 1 of a warm group is flushed
// (and rejoins with a fresh watermark), reads refill it key by key on their
// first miss there: at most one MySQL load per key, every read a hit or
// that key's one fill, and the latency back to the hit band once the keys
// are refilled (logged: timed asserts would fail on a loaded machine).
func TestFlushRefillsOnFirstMiss(t *testing.T) {
	_, g := group(t, 2)
	ctx := context.Background()
	// Readers that find a refill's lease wait for it however slow this
	// machine is (LeaseWait would let them load themselves after 50 ms):
	// the test counts loads.
	r := newReader(t, cacheaside.Options{Groups: []cacheaside.Group{g}, LeaseWait: 10 * time.Second})
	const keys = 100
	var loads [keys]atomic.Int32
	loader := func(k int) func(context.Context) ([]byte, error) {
		return func(context.Context) ([]byte, error) {
			loads[k].Add(1)
			return []byte("value of " + strconv.Itoa(k)), nil
		}
	}
	key := func(k int) string { return "item:" + strconv.Itoa(k) }
	for k := range keys {
		if _, res, err := r.Get(ctx, key(k), "1", loader(k)); err != nil || res != cacheaside.Filled {
			t.Fatalf("warming %s: %v %v", key(k), res, err)
		}
	}
	for i, c := range g.Replicas {
		if n, _ := c.DBSize(ctx).Result(); n != keys+1 {
			t.Fatalf("replica %d holds %d keys after warming, want %d and its watermark", i, n, keys)
		}
	}
	read := func(d time.Duration) []timedRead {
		end := time.Now().Add(d)
		var mu sync.Mutex
		var all []timedRead
		var wg sync.WaitGroup
		var errs atomic.Value
		for w := range 4 {
			wg.Go(func() {
				var mine []timedRead
				for i := 0; time.Now().Before(end); i++ {
					k := (i*7 + w*31) % keys
					start := time.Now()
					v, res, err := r.Get(ctx, key(k), "1", loader(k))
					if err != nil {
						errs.Store(err)
						return
					}
					mine = append(mine, timedRead{start: start, end: time.Now(), key: k, value: string(v), res: res})
				}
				mu.Lock()
				all = append(all, mine...)
				mu.Unlock()
			})
		}
		wg.Wait()
		if err := errs.Load(); err != nil {
			t.Fatal(err)
		}
		return all
	}
	before := read(500 * time.Millisecond)
	for k := range keys {
		loads[k].Store(0)
	}
	if err := g.Replicas[1].FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	setWatermark(t, g.Replicas[1], time.Now().Add(time.Hour)) // its purger's rejoin
	flushed := time.Now()
	after := read(2 * time.Second)

	filled := map[int]bool{}
	slices.SortFunc(after, func(a, b timedRead) int { return a.start.Compare(b.start) })
	var first100ms, firstSecond, later []timedRead
	for _, rd := range after {
		if want := "value of " + strconv.Itoa(rd.key); rd.value != want {
			t.Fatalf("read of %s: %q", key(rd.key), rd.value)
		}
		switch rd.res {
		case cacheaside.Hit:
		case cacheaside.Filled:
			if filled[rd.key] {
				t.Errorf("%s filled twice", key(rd.key))
			}
			filled[rd.key] = true
		default:
			t.Errorf("read of %s after the flush: %v, want a hit or its one fill", key(rd.key), rd.res)
		}
		if rd.start.Sub(flushed) < 100*time.Millisecond {
			first100ms = append(first100ms, rd)
		}
		if rd.start.Sub(flushed) < time.Second {
			firstSecond = append(firstSecond, rd)
		} else {
			later = append(later, rd)
		}
	}
	total := 0
	for k := range keys {
		if n := loads[k].Load(); n > 1 {
			t.Errorf("%s loaded %d times after the flush, want at most once (replica 1's refill)", key(k), n)
		}
		total += int(loads[k].Load())
		if got := stored(t, g.Replicas[1], key(k)); got != "value of "+strconv.Itoa(k) && loads[k].Load() == 1 {
			t.Errorf("replica 1 holds %q for %s after its refill", got, key(k))
		}
	}
	t.Logf("before the flush: %d hits, p50 %v p99 %v", len(before), percentile(before, 0.5), percentile(before, 0.99))
	t.Logf("after: %d MySQL loads for %d keys in %d reads; first 100 ms %d reads, p50 %v p99 %v; first second %d reads, p50 %v p99 %v; later %d reads, p50 %v p99 %v",
		total, keys, len(after), len(first100ms), percentile(first100ms, 0.5), percentile(first100ms, 0.99),
		len(firstSecond), percentile(firstSecond, 0.5), percentile(firstSecond, 0.99),
		len(later), percentile(later, 0.5), percentile(later, 0.99))
}

// fakePurger plays flashsync's purger for a test's group: it applies the
// row's changes to every replica it can reach (DEL) and then writes that
// replica's watermark, caught up at the time of the write; a held replica
// (paused) gets nothing until released, and then its missed DELs first.
type fakePurger struct {
	key      string
	replicas []redis.UniversalClient
	version  atomic.Int64 // the row; a load reads it
	mu       sync.Mutex
	changes  []time.Time // when version became i+2
	// round is held during each tick's work: hold takes it, so that no
	// write to the replica is under way when the test pauses it.
	round  sync.Mutex
	held   []atomic.Bool
	missed []bool // a held replica missed a DEL
}

// hold stops writes to replica i, or (hold false) lets them go on.
func (p *fakePurger) hold(i int, hold bool) {
	p.round.Lock()
	p.held[i].Store(hold)
	p.round.Unlock()
}

func newFakePurger(key string, replicas []redis.UniversalClient) *fakePurger {
	p := &fakePurger{key: key, replicas: replicas, held: make([]atomic.Bool, len(replicas)), missed: make([]bool, len(replicas))}
	p.version.Store(1)
	return p
}

func (p *fakePurger) load(context.Context) ([]byte, error) {
	return []byte(strconv.FormatInt(p.version.Load(), 10)), nil
}

// versionAt is the row's version at t.
func (p *fakePurger) versionAt(t time.Time) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	n, _ := slices.BinarySearchFunc(p.changes, t, func(c, t time.Time) int { return c.Compare(t) })
	return int64(1 + n)
}

// run changes the row every other tick (100 ms) until ctx is done. One
// goroutine commits, deletes and writes watermarks, in that order, so a
// watermark never covers a change whose DEL is not applied.
func (p *fakePurger) run(ctx context.Context) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if err := p.tick(ctx, n%2 == 1); err != nil {
			return err
		}
	}
}

func (p *fakePurger) tick(ctx context.Context, changed bool) error {
	p.round.Lock()
	defer p.round.Unlock()
	if changed {
		p.mu.Lock()
		p.version.Add(1)
		p.changes = append(p.changes, time.Now())
		p.mu.Unlock()
	}
	for i, c := range p.replicas {
		if p.held[i].Load() {
			p.missed[i] = p.missed[i] || changed
			continue
		}
		if changed || p.missed[i] {
			if err := c.Del(ctx, p.key).Err(); err != nil {
				return fmt.Errorf("replica %d: %w", i, err)
			}
			p.missed[i] = false
		}
		if err := c.Set(ctx, "flashsync:watermark", watermarkNow(), 0).Err(); err != nil {
			return fmt.Errorf("replica %d: %w", i, err)
		}
	}
	return nil
}

func watermarkNow() string {
	now := time.Now()
	return "1:" + strconv.FormatInt(now.UnixNano(), 10) + ":" + strconv.FormatInt(now.UnixNano(), 10)
}

// mgetCalls is how many MGETs the server has run: the reads that tried it.
func mgetCalls(t *testing.T, c redis.UniversalClient) int {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(info, "\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_mget:calls="); ok {
			n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
			return n
		}
	}
	return 0
}

// TestPausedReplicaIsNotRead: replica 0 is SIGSTOPped for 5 s while its row
// changes. Readers keep getting values at most MaxStaleness behind the row
// (from replica 1 or MySQL), and never replica 0's: not while it hangs
// (each read bounded by ReplicaTimeout), not after SIGCONT while its
// watermark is old; once its purger has applied what it missed and
// advanced the watermark, it is read again.
func TestPausedReplicaIsNotRead(t *testing.T) {
	servers, g := bareGroup(t, 2)
	reg := prometheus.NewRegistry()
	r, err := cacheaside.New(cacheaside.Options{Groups: []cacheaside.Group{g}, Registerer: reg}) // the defaults: MaxStaleness 1 s, ReplicaTimeout 100 ms
	if err != nil {
		t.Fatal(err)
	}
	const maxStaleness = cacheaside.DefaultMaxStaleness
	p := newFakePurger("item:1", g.Replicas)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	purged := make(chan error, 1)
	go func() { purged <- p.run(ctx) }()

	var mu sync.Mutex
	var reads []timedRead
	var readers sync.WaitGroup
	readErr := make(chan error, 4)
	for range 4 {
		readers.Go(func() {
			var mine []timedRead
			defer func() { mu.Lock(); reads = append(reads, mine...); mu.Unlock() }()
			for ctx.Err() == nil {
				start := time.Now()
				v, res, err := r.Get(ctx, "item:1", "1", p.load)
				if err != nil {
					if ctx.Err() == nil {
						readErr <- err
					}
					return
				}
				mine = append(mine, timedRead{start: start, end: time.Now(), value: string(v), res: res})
			}
		})
	}
	stale := func() float64 {
		return counterValue(t, reg, "flashsync_cacheaside_replica_skips_total", "reason", "stale")
	}
	skips := func() float64 {
		n := 0.0
		for _, reason := range []string{"stale", "no_watermark", "error"} {
			n += counterValue(t, reg, "flashsync_cacheaside_replica_skips_total", "reason", reason)
		}
		return n
	}

	time.Sleep(time.Second) // the group serves normally
	p.hold(0, true)
	servers[0].Pause()
	paused := time.Now()
	time.Sleep(5 * time.Second)
	servers[0].Resume()
	resumed := time.Now()
	// Replica 0 answers again, with the data and the watermark of 5 s ago:
	// once its ErrorBackoff has passed, reads try it and skip it.
	staleBefore := stale()
	time.Sleep(2 * cacheaside.DefaultErrorBackoff)
	staleAfterResume := stale() - staleBefore
	p.hold(0, false) // its purger drains: the missed DEL, then the watermark
	stacktest.Eventually(t, 5*time.Second, func() error {
		select {
		case err := <-purged:
			t.Fatalf("purger stopped: %v", err)
		default:
		}
		if s, _ := g.Replicas[0].Get(context.Background(), "flashsync:watermark").Result(); s == "" || !strings.HasPrefix(s, "1:") {
			return fmt.Errorf("watermark %q", s)
		} else if ns, _ := strconv.ParseInt(s[strings.LastIndexByte(s, ':')+1:], 10, 64); time.Unix(0, ns).Before(resumed.Add(2 * cacheaside.DefaultErrorBackoff)) {
			return fmt.Errorf("watermark %q not advanced yet", s)
		}
		return nil
	})
	drained := time.Now()
	mgetBefore, skipsBefore := mgetCalls(t, g.Replicas[0]), skips()
	time.Sleep(time.Second)
	// Every MGET replica 0 ran is a read that tried it; at most as many as
	// the group's skips did not use it (the skips are not per replica, and
	// either replica's watermark may be late on a loaded machine).
	triedAfter, skippedAfter := mgetCalls(t, g.Replicas[0])-mgetBefore, skips()-skipsBefore
	servedAfter := float64(triedAfter) - skippedAfter
	stop()
	readers.Wait()
	if err := <-purged; err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-readErr:
		t.Fatal(err)
	default:
	}

	var during []timedRead
	var maxLatency time.Duration
	slowReads := 0
	for _, rd := range reads {
		v, _ := strconv.ParseInt(rd.value, 10, 64)
		if floor := p.versionAt(rd.start.Add(-maxStaleness)); v < floor {
			t.Errorf("read at %v (%v after the pause): version %d, older than %d, the row's version %v before the read (res %v)",
				rd.start.Format("15:04:05.000"), rd.start.Sub(paused), v, floor, maxStaleness, rd.res)
		}
		if rd.end.After(paused) && rd.start.Before(resumed) {
			during = append(during, rd)
			maxLatency = max(maxLatency, rd.latency())
			if rd.latency() >= cacheaside.DefaultReplicaTimeout {
				slowReads++
			}
		}
	}
	if len(during) == 0 {
		t.Error("no read completed while replica 0 was paused")
	}
	if staleAfterResume == 0 {
		t.Error("replica 0 was not tried (and skipped as stale) after SIGCONT, before its drain")
	}
	if servedAfter <= 0 {
		t.Errorf("after its drain, replica 0 ran %d reads and the group skipped a replica %v times: want it read again", triedAfter, skippedAfter)
	}
	t.Logf("%d reads in all; during the 5 s pause %d reads (%d paid ReplicaTimeout %v), p50 %v, p99 %v, max %v",
		len(reads), len(during), slowReads, cacheaside.DefaultReplicaTimeout, percentile(during, 0.5), percentile(during, 0.99), maxLatency)
	t.Logf("after SIGCONT, before the drain: %v reads skipped a stale replica in %v; after the drain (%v after SIGCONT): replica 0 ran %d reads in 1 s, at least %v of them served by it (%v skips in the group)",
		staleAfterResume, 2*cacheaside.DefaultErrorBackoff, drained.Sub(resumed).Round(time.Millisecond), triedAfter, servedAfter, skippedAfter)
}
