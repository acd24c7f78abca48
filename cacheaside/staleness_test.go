package cacheaside_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/cacheaside"
	"github.com/flashsync/flashsync/invalidate"
)

// TestStaleness: a replica is read only with a watermark at most
// MaxStaleness old; otherwise the group's other replica, and with neither
// MySQL, caching nothing. Each case reads 64 times, so both replicas are
// picked first (a miss of one is 2^-64).
func TestStaleness(t *testing.T) {
	type replicaState struct {
		watermark string // "fresh", "stale", "none" or a raw value
		value     string // stored as another writer would (no envelope); "": missing
	}
	for _, tt := range []struct {
		name     string
		replicas [2]replicaState
		// want is every read's value; wantRes every read's result after
		// the first (which may fill).
		want, firstRes, wantRes string
		// wantStored is what each replica holds after the reads.
		wantStored [2]string
		skips      map[string]bool // skip reasons counted
	}{
		{name: "both fresh", replicas: [2]replicaState{{"fresh", "same"}, {"fresh", "same"}},
			want: "same", firstRes: "hit", wantRes: "hit", wantStored: [2]string{"same", "same"}},
		{name: "stale replica skipped", replicas: [2]replicaState{{"fresh", "r0"}, {"stale", "r1"}},
			want: "r0", firstRes: "hit", wantRes: "hit", wantStored: [2]string{"r0", "r1"}, skips: map[string]bool{"stale": true}},
		{name: "no watermark skipped", replicas: [2]replicaState{{"none", "r0"}, {"fresh", "r1"}},
			want: "r1", firstRes: "hit", wantRes: "hit", wantStored: [2]string{"r0", "r1"}, skips: map[string]bool{"no_watermark": true}},
		{name: "garbage watermark skipped", replicas: [2]replicaState{{"fresh", "r0"}, {"2:x:y", "r1"}},
			want: "r0", firstRes: "hit", wantRes: "hit", wantStored: [2]string{"r0", "r1"}, skips: map[string]bool{"no_watermark": true}},
		{name: "watermark without caught-up time", replicas: [2]replicaState{{"1:5:0", "r0"}, {"fresh", "r1"}},
			want: "r1", firstRes: "hit", wantRes: "hit", wantStored: [2]string{"r0", "r1"}, skips: map[string]bool{"stale": true}},
		{name: "both stale: MySQL, nothing filled", replicas: [2]replicaState{{"stale", ""}, {"stale", ""}},
			want: "db", firstRes: "bypassed", wantRes: "bypassed", wantStored: [2]string{"", ""}, skips: map[string]bool{"stale": true}},
		{name: "both stale: their values are not served", replicas: [2]replicaState{{"stale", "old"}, {"none", "old"}},
			want: "db", firstRes: "bypassed", wantRes: "bypassed", wantStored: [2]string{"old", "old"}, skips: map[string]bool{"stale": true, "no_watermark": true}},
		{name: "fill only the fresh replica", replicas: [2]replicaState{{"fresh", ""}, {"stale", ""}},
			want: "db", firstRes: "filled", wantRes: "hit", wantStored: [2]string{"db", ""}, skips: map[string]bool{"stale": true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, g := bareGroup(t, 2)
			ctx := context.Background()
			for i, st := range tt.replicas {
				c := g.Replicas[i]
				switch st.watermark {
				case "fresh":
					setWatermark(t, c, time.Now().Add(time.Hour))
				case "stale":
					setWatermark(t, c, time.Now().Add(-5*time.Second))
				case "none":
				default:
					c.Set(ctx, invalidate.WatermarkKey, st.watermark, 0)
				}
				if st.value != "" {
					c.Set(ctx, "item:1", st.value, 0)
				}
			}
			reg := prometheus.NewRegistry()
			r := newReader(t, cacheaside.Options{Groups: []cacheaside.Group{g}, Registerer: reg})
			var loads atomic.Int32
			load := func(context.Context) ([]byte, error) { loads.Add(1); return []byte("db"), nil }
			for i := range 64 {
				v, res, err := r.Get(ctx, "item:1", "1", load)
				want := tt.wantRes
				if i == 0 {
					want = tt.firstRes
				}
				if err != nil || string(v) != tt.want || res.String() != want {
					t.Fatalf("read %d: %q %v %v, want %q %s", i, v, res, err, tt.want, want)
				}
			}
			for i, c := range g.Replicas {
				if got := stored(t, c, "item:1"); got != tt.wantStored[i] {
					t.Errorf("replica %d holds %q, want %q", i, got, tt.wantStored[i])
				}
			}
			for _, reason := range []string{"stale", "no_watermark", "error"} {
				n := counterValue(t, reg, "flashsync_cacheaside_replica_skips_total", "reason", reason)
				if tt.skips[reason] != (n > 0) {
					t.Errorf("skips{reason=%q} = %v, want counted: %v", reason, n, tt.skips[reason])
				}
			}
		})
	}
}

// counterValue is the value of the counter name{group="g",label=value} in
// reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["group"] == "g" && labels[label] == value {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("%s{%s=%q} not registered", name, label, value)
	return 0
}

// TestRefillReplicaMissingKey is issue 11's problem 4: with item:1 on
// replica 0 only (a restart, a flush or an eviction of replica 1), 200
// concurrent reads fill replica 1 on its first miss: one MySQL load in
// all, and every other read a hit.
func TestRefillReplicaMissingKey(t *testing.T) {
	_, g := group(t, 2)
	ctx := context.Background()
	g.Replicas[0].Set(ctx, "item:1", cacheaside.EncodeValue(time.Now(), []byte("v1")), 0)
	reg := prometheus.NewRegistry()
	// Readers that find the refill's lease wait for it however slow this
	// machine is (LeaseWait would let them load themselves after 50 ms):
	// the test counts loads.
	r := newReader(t, cacheaside.Options{Groups: []cacheaside.Group{g}, Registerer: reg, LeaseWait: 10 * time.Second})
	var loads atomic.Int32
	load := func(context.Context) ([]byte, error) {
		loads.Add(1)
		time.Sleep(5 * time.Millisecond) // a MySQL read: readers arrive meanwhile
		return []byte("v1"), nil
	}
	var wg sync.WaitGroup
	var bad atomic.Value
	for range 20 {
		wg.Go(func() {
			for range 10 {
				if v, _, err := r.Get(ctx, "item:1", "1", load); err != nil || string(v) != "v1" {
					bad.Store(fmt.Sprintf("%q %v", v, err))
				}
			}
		})
	}
	wg.Wait()
	if b := bad.Load(); b != nil {
		t.Fatalf("a read returned %s", b)
	}
	if n := loads.Load(); n != 1 {
		t.Errorf("%d MySQL loads for 200 reads, replica 0 holding the key: want 1 (replica 1's first miss)", n)
	}
	if got := stored(t, g.Replicas[1], "item:1"); got != "v1" {
		t.Errorf("replica 1 holds %q, want it refilled", got)
	}
	for res, want := range map[string]float64{"filled": 1, "loaded": 0, "bypassed": 0, "hit": 199} {
		if got := counterValue(t, reg, "flashsync_cacheaside_reads_total", "result", res); got != want {
			t.Errorf("reads{result=%s} = %v, want %v", res, got, want)
		}
	}
}

// TestRefillRacingDelIsDropped: the key's invalidation lands while a reader
// refills replica 1 (replica 0 still holds the old value): the DEL removes
// the lease on replica 1, the fill is dropped, and nothing old comes back.
func TestRefillRacingDelIsDropped(t *testing.T) {
	_, g := group(t, 2)
	ctx := context.Background()
	g.Replicas[0].Set(ctx, "item:1", cacheaside.EncodeValue(time.Now(), []byte("old")), 0)
	r := newReader(t, cacheaside.Options{Groups: []cacheaside.Group{g}})
	var loads atomic.Int32
	load := func(ctx context.Context) ([]byte, error) {
		loads.Add(1)
		// The row changes while it is read; the purger deletes the key on
		// every replica before the fill.
		for _, c := range g.Replicas {
			if err := c.Del(ctx, "item:1").Err(); err != nil {
				return nil, err
			}
		}
		return []byte("old"), nil
	}
	// Reads that pick replica 0 hit its value; the first that picks
	// replica 1 refills it (at most 2^-64 that none does).
	var res cacheaside.Result
	for i := 0; i < 64 && loads.Load() == 0; i++ {
		var err error
		if _, res, err = r.Get(ctx, "item:1", "1", load); err != nil {
			t.Fatal(err)
		}
	}
	if loads.Load() != 1 || res != cacheaside.Loaded {
		t.Fatalf("%d loads, last result %v: want the refill's load, not cached (loaded)", loads.Load(), res)
	}
	for i, c := range g.Replicas {
		if got := stored(t, c, "item:1"); got != "" {
			t.Errorf("replica %d holds %q after the invalidation that raced the refill", i, got)
		}
	}
}

// TestEnvelopeInRedis: a fill stores the value in the envelope, with a fill
// start taken before the load began; reads return the bare value, and a
// value another writer stored without the envelope is served as it is.
func TestEnvelopeInRedis(t *testing.T) {
	_, g := group(t, 1)
	ctx := context.Background()
	r := newReader(t, cacheaside.Options{Groups: []cacheaside.Group{g}})
	before := time.Now()
	var loadStart time.Time
	if _, res, err := r.Get(ctx, "item:1", "1", func(context.Context) ([]byte, error) {
		loadStart = time.Now()
		return []byte(`{"id":1}`), nil
	}); err != nil || res != cacheaside.Filled {
		t.Fatalf("Get: %v %v", res, err)
	}
	raw, _ := g.Replicas[0].Get(ctx, "item:1").Bytes()
	v, fillStart, ok := cacheaside.DecodeValue(raw)
	if !ok || string(v) != `{"id":1}` || fillStart.Before(before) || fillStart.After(loadStart) || !strings.HasPrefix(string(raw), "\x00fs1:") {
		t.Errorf("stored %q: decoded %q %v %v, want the value with a fill start in [%v, %v]", raw, v, fillStart, ok, before, loadStart)
	}
	if v, res, _ := r.Get(ctx, "item:1", "1", nil); res != cacheaside.Hit || string(v) != `{"id":1}` {
		t.Errorf("read back %q %v, want the bare value", v, res)
	}
	g.Replicas[0].Set(ctx, "item:2", `{"id":2}`, 0)
	if v, res, _ := r.Get(ctx, "item:2", "1", nil); res != cacheaside.Hit || string(v) != `{"id":2}` {
		t.Errorf("foreign value read as %q %v, want it as stored", v, res)
	}
}

// TestNewRefusesClientsWithoutContextDeadlines: a client that ignores the
// context's deadline would let a hung replica hold reads for its
// ReadTimeout.
func TestNewRefusesClientsWithoutContextDeadlines(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	_, err := cacheaside.New(cacheaside.Options{Groups: []cacheaside.Group{{Name: "g", Replicas: []redis.UniversalClient{c}}}})
	if err == nil || !strings.Contains(err.Error(), "ContextTimeoutEnabled") {
		t.Errorf("New: %v, want ContextTimeoutEnabled asked for", err)
	}
}

// TestNoStalenessCheck: with the check off, replicas without watermarks
// (no flashsync purger) are read and filled as they are.
func TestNoStalenessCheck(t *testing.T) {
	_, g := bareGroup(t, 2)
	r := newReader(t, cacheaside.Options{Groups: []cacheaside.Group{g}, MaxStaleness: cacheaside.NoStalenessCheck})
	ctx := context.Background()
	load := func(context.Context) ([]byte, error) { return []byte("v"), nil }
	if v, res, err := r.Get(ctx, "k", "1", load); err != nil || res != cacheaside.Filled || string(v) != "v" {
		t.Fatalf("first Get: %q %v %v, want filled", v, res, err)
	}
	for range 20 {
		if _, res, _ := r.Get(ctx, "k", "1", load); res != cacheaside.Hit {
			t.Fatalf("Get: %v, want hits without watermarks", res)
		}
	}
	for i, c := range g.Replicas {
		if got := stored(t, c, "k"); got != "v" {
			t.Errorf("replica %d holds %q, want filled", i, got)
		}
	}
}
