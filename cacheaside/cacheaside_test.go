package cacheaside_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/cacheaside"
	"github.com/flashsync/flashsync/internal/route"
	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
)

// group starts n private Redis servers as one group whose replicas all
// have a watermark that stays fresh for the test (caught up an hour ahead):
// what the tests of leases and fills need, whatever their duration.
func group(t testing.TB, n int) ([]*stacktest.RedisServer, cacheaside.Group) {
	t.Helper()
	servers, g := bareGroup(t, n)
	for _, c := range g.Replicas {
		setWatermark(t, c, time.Now().Add(time.Hour))
	}
	return servers, g
}

// bareGroup starts n private Redis servers as one group, without
// watermarks.
func bareGroup(t testing.TB, n int) ([]*stacktest.RedisServer, cacheaside.Group) {
	t.Helper()
	var servers []*stacktest.RedisServer
	g := cacheaside.Group{Name: "g"}
	for range n {
		s := stacktest.StartRedis(t)
		c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1, ContextTimeoutEnabled: true})
		t.Cleanup(func() { c.Close() })
		servers = append(servers, s)
		g.Replicas = append(g.Replicas, c)
	}
	return servers, g
}

// newReader is New with a ReplicaTimeout of 5 s unless opts has one: the
// tests of leases, fills and staleness are of the protocol, and on a loaded
// test machine a read that waits 100 ms for a CPU would go to the other
// replica (what TestPausedReplicaIsNotRead tests, with the defaults).
func newReader(t testing.TB, opts cacheaside.Options) *cacheaside.Reader {
	t.Helper()
	if opts.ReplicaTimeout == 0 {
		opts.ReplicaTimeout = 5 * time.Second
	}
	r, err := cacheaside.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// setWatermark writes the replica's applied watermark as the purger does.
func setWatermark(t testing.TB, c redis.UniversalClient, caughtUp time.Time) {
	t.Helper()
	w := invalidate.Watermark{To: uint64(caughtUp.UnixNano()), CaughtUp: caughtUp}
	if err := c.Set(context.Background(), invalidate.WatermarkKey, w.String(), 0).Err(); err != nil {
		t.Fatal(err)
	}
}

// stored is the value a replica holds for key, unwrapped ("" when missing).
func stored(t testing.TB, c redis.UniversalClient, key string) string {
	t.Helper()
	b, err := c.Get(context.Background(), key).Bytes()
	if errors.Is(err, redis.Nil) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	v, _, _ := cacheaside.DecodeValue(b)
	return string(v)
}

// TestFillHitAndEveryReplica: a miss loads once and fills every replica of
// the group; the next reads hit whichever replica they pick.
func TestFillHitAndEveryReplica(t *testing.T) {
	_, g := group(t, 2)
	r := newReader(t, cacheaside.Options{Groups: []cacheaside.Group{g}})
	ctx := context.Background()
	var loads atomic.Int32
	load := func(context.Context) ([]byte, error) { loads.Add(1); return []byte(`{"v":1}`), nil }
	v, res, err := r.Get(ctx, "item:1", "1", load)
	if err != nil || res != cacheaside.Filled || string(v) != `{"v":1}` {
		t.Fatalf("first Get: %q %v %v, want the loaded value, Filled", v, res, err)
	}
	for i, c := range g.Replicas {
		if got := stored(t, c, "item:1"); got != `{"v":1}` {
			t.Errorf("replica %d: %q, want the value", i, got)
		}
	}
	for range 20 {
		if v, res, err := r.Get(ctx, "item:1", "1", load); err != nil || res != cacheaside.Hit || string(v) != `{"v":1}` {
			t.Fatalf("Get after fill: %q %v %v, want a hit", v, res, err)
		}
	}
	if loads.Load() != 1 {
		t.Errorf("%d loads, want 1", loads.Load())
	}
}

// TestInvalidationDuringLoadWins: the purger's DEL lands while a reader is
// loading the old row: that fill must not put the old value back.
func TestInvalidationDuringLoadWins(t *testing.T) {
	_, g := group(t, 2)
	r := newReader(t, cacheaside.Options{Groups: []cacheaside.Group{g}})
	ctx := context.Background()
	v, res, err := r.Get(ctx, "item:1", "1", func(ctx context.Context) ([]byte, error) {
		// The row changes and its invalidation is applied meanwhile.
		for _, c := range g.Replicas {
			c.Del(ctx, "item:1")
		}
		return []byte("old"), nil
	})
	if err != nil || res != cacheaside.Loaded || string(v) != "old" {
		t.Fatalf("Get: %q %v %v, want the load's value, not cached (Loaded)", v, res, err)
	}
	for i, c := range g.Replicas {
		if n, _ := c.Exists(ctx, "item:1").Result(); n != 0 {
			t.Errorf("replica %d holds item:1 after an invalidation during the load", i)
		}
	}
	v, res, _ = r.Get(ctx, "item:1", "1", func(context.Context) ([]byte, error) { return []byte("new"), nil })
	if res != cacheaside.Filled || string(v) != "new" {
		t.Errorf("next Get: %q %v, want the new value filled", v, res)
	}
}

// TestLeaseIsNeverServed: a reader that finds another reader's lease loads
// for itself; it never returns the lease.
func TestLeaseIsNeverServed(t *testing.T) {
	_, g := group(t, 1)
	r := newReader(t, cacheaside.Options{Groups: []cacheaside.Group{g}})
	ctx := context.Background()
	inner := make(chan string, 1)
	v, _, err := r.Get(ctx, "k", "1", func(ctx context.Context) ([]byte, error) {
		// A second reader arrives while the first holds the lease.
		v2, res2, err := r.Get(ctx, "k", "1", func(context.Context) ([]byte, error) { return []byte("v"), nil })
		if err != nil || res2 == cacheaside.Hit || string(v2) != "v" {
			inner <- "second reader got " + string(v2) + " " + res2String(res2)
		} else {
			inner <- ""
		}
		return []byte("v"), nil
	})
	if err != nil || string(v) != "v" {
		t.Fatalf("Get: %q %v", v, err)
	}
	if msg := <-inner; msg != "" {
		t.Error(msg)
	}
	if got := stored(t, g.Replicas[0], "k"); strings.Contains(got, "lease") || got != "v" {
		t.Errorf("cached %q, want the value", got)
	}
}

func res2String(r cacheaside.Result) string { return r.String() }

// TestCacheDownServesFromTheDatabase: with the group's Redis stopped the
// read still answers, from the loader; a loader error is returned.
func TestCacheDownServesFromTheDatabase(t *testing.T) {
	servers, g := group(t, 1)
	r := newReader(t, cacheaside.Options{Groups: []cacheaside.Group{g}})
	servers[0].Stop()
	v, res, err := r.Get(context.Background(), "k", "1", func(context.Context) ([]byte, error) { return []byte("db"), nil })
	if err != nil || res != cacheaside.Bypassed || string(v) != "db" {
		t.Fatalf("Get with Redis down: %q %v %v, want the loaded value", v, res, err)
	}
	boom := errors.New("db down too")
	if _, _, err := r.Get(context.Background(), "k", "1", func(context.Context) ([]byte, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Errorf("Get: %v, want the loader's error", err)
	}
}

// TestRoutesLikeTheRules: a key is read from the group GroupFor picks, the
// one the rules purge.
func TestRoutesLikeTheRules(t *testing.T) {
	_, g0 := group(t, 1)
	_, g1 := group(t, 1)
	r := newReader(t, cacheaside.Options{Groups: []cacheaside.Group{g0, g1}})
	ctx := context.Background()
	for id := range 40 {
		key := "item:" + string(rune('a'+id))
		route := key
		if _, _, err := r.Get(ctx, key, route, func(context.Context) ([]byte, error) { return []byte("v"), nil }); err != nil {
			t.Fatal(err)
		}
		want := groupFor(route, 2)
		for gi, g := range []cacheaside.Group{g0, g1} {
			n, _ := g.Replicas[0].Exists(ctx, key).Result()
			if (gi == want) != (n == 1) {
				t.Fatalf("%s (group %d) found in group %d: %d", key, want, gi, n)
			}
		}
	}
}

func groupFor(v string, n int) int { return route.GroupFor([]byte(v), n) }

// TestConcurrentMissLoadsOnce: 50 readers miss one key at once; they wait
// for the first filler's value instead of all loading.
func TestConcurrentMissLoadsOnce(t *testing.T) {
	_, g := group(t, 2)
	r := newReader(t, cacheaside.Options{Groups: []cacheaside.Group{g}})
	var loads atomic.Int32
	release := make(chan struct{})
	load := func(context.Context) ([]byte, error) {
		loads.Add(1)
		<-release // the database is slow: every other reader arrives meanwhile
		return []byte("v"), nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, _, err := r.Get(context.Background(), "hot", "1", load)
			if err == nil && string(v) != "v" {
				err = fmt.Errorf("got %q", v)
			}
			errs <- err
		}()
	}
	stacktest.Eventually(t, 5*time.Second, func() error {
		if loads.Load() == 0 {
			return errors.New("no load yet")
		}
		return nil
	})
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := loads.Load(); n != 1 {
		t.Errorf("%d loads for 50 concurrent readers, want 1", n)
	}
}
