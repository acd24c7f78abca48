package purge

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
)

func ver(offset uint64) invalidate.SyncVersion { return invalidate.SyncVersion{Offset: offset} }

// syncState is a key as an application and the fence see it.
type syncState struct {
	str     string            // the string value, "" for none
	hash    map[string]string // the hash value, nil for none
	version string            // the stored version, "" for none
}

func readSync(t *testing.T, c *redis.Client, key string) syncState {
	t.Helper()
	ctx := context.Background()
	var s syncState
	switch typ := c.Type(ctx, key).Val(); typ {
	case "string":
		s.str = c.Get(ctx, key).Val()
	case "hash":
		s.hash = c.HGetAll(ctx, key).Val()
	case "none":
	default:
		t.Fatalf("%s is a %s", key, typ)
	}
	s.version = c.Get(ctx, invalidate.SyncVersionPrefix+key).Val()
	return s
}

func TestSyncScript(t *testing.T) {
	srv := stacktest.StartRedis(t)
	c := stacktest.Redis(t, srv.Addr())
	ctx := context.Background()
	s := newSyncScript(time.Minute)
	apply := func(w ...invalidate.SyncWrite) []bool {
		t.Helper()
		got, err := s.apply(ctx, c, w)
		if err != nil {
			t.Fatal(err)
		}
		applied := make([]bool, len(got))
		for i, r := range got {
			applied[i] = r == syncApplied
		}
		return applied
	}
	set := func(key string, v uint64, value string) invalidate.SyncWrite {
		return invalidate.SyncWrite{Key: key, Op: invalidate.SyncSet, Version: ver(v), Value: []byte(value)}
	}
	del := func(key string, v uint64) invalidate.SyncWrite {
		return invalidate.SyncWrite{Key: key, Op: invalidate.SyncDel, Version: ver(v)}
	}

	// Newer applies, older and equal are dropped, in one round trip.
	if got := apply(set("k", 10, "v10"), set("k", 5, "v5"), set("k", 10, "again"), set("k", 11, "v11")); !slices.Equal(got, []bool{true, false, false, true}) {
		t.Fatalf("applied %v", got)
	}
	if st := readSync(t, c, "k"); st.str != "v11" || st.version != ver(11).String() {
		t.Fatalf("k: %+v", st)
	}
	// A delete leaves a tombstone: the application sees a miss, a late
	// older write is refused, a newer one applies.
	if got := apply(del("k", 20), set("k", 15, "late")); !slices.Equal(got, []bool{true, false}) {
		t.Fatalf("delete, late write: %v", got)
	}
	if st := readSync(t, c, "k"); st.str != "" || st.version != ver(20).String() {
		t.Fatalf("tombstoned k: %+v", st)
	}
	if ttl := c.PTTL(ctx, invalidate.SyncVersionPrefix+"k").Val(); ttl <= 0 || ttl > time.Minute {
		t.Errorf("tombstone TTL %v, want up to 1m", ttl)
	}
	if got := apply(set("k", 21, "back")); !got[0] {
		t.Fatal("a newer write after the delete was refused")
	}
	if ttl := c.PTTL(ctx, invalidate.SyncVersionPrefix+"k").Val(); ttl != -1 {
		t.Errorf("version TTL %v after a write without TTL, want none", ttl)
	}
	// A hash is replaced whole: fields the new image lacks are gone.
	apply(invalidate.SyncWrite{Key: "h", Op: invalidate.SyncHash, Version: ver(1), Fields: []string{"a", "1", "b", "2"}})
	apply(invalidate.SyncWrite{Key: "h", Op: invalidate.SyncHash, Version: ver(2), Fields: []string{"a", "3"}})
	if st := readSync(t, c, "h"); len(st.hash) != 1 || st.hash["a"] != "3" {
		t.Fatalf("h: %+v", st)
	}
	// A value's TTL; its version outlives it by the tombstone's time.
	apply(invalidate.SyncWrite{Key: "t", Op: invalidate.SyncSet, Version: ver(1), Value: []byte("x"), TTL: 10 * time.Second})
	vt, kt := c.PTTL(ctx, "t").Val(), c.PTTL(ctx, invalidate.SyncVersionPrefix+"t").Val()
	if vt <= 0 || vt > 10*time.Second || kt <= 10*time.Second || kt > 10*time.Second+time.Minute {
		t.Errorf("TTLs: value %v, version %v; want up to 10s and 10s-1m10s", vt, kt)
	}
	// Bad input is refused before anything runs.
	if _, err := s.apply(ctx, c, []invalidate.SyncWrite{{Key: "x", Op: invalidate.SyncHash, Version: ver(1), Fields: []string{"odd"}}}); err == nil {
		t.Error("an odd hash argument list was accepted")
	}
}

// Whatever order and batching the writes of a key arrive in (NSQ
// reorders and redelivers), the key ends at the newest write's result and
// its version never goes back. Checked after every step.
func TestSyncScriptAnyOrder(t *testing.T) {
	srv := stacktest.StartRedis(t)
	c := stacktest.Redis(t, srv.Addr())
	ctx := context.Background()
	s := newSyncScript(time.Minute)
	rng := rand.New(rand.NewPCG(11, 12))
	for trial := range 200 {
		key := "row:" + strconv.Itoa(trial)
		var writes []invalidate.SyncWrite
		for v := uint64(1); v <= 12; v++ {
			w := invalidate.SyncWrite{Key: key, Op: invalidate.SyncSet, Version: ver(v), Value: []byte("v" + strconv.FormatUint(v, 10))}
			switch rng.IntN(4) {
			case 0:
				w.Op, w.Value = invalidate.SyncDel, nil
			case 1:
				w.Op, w.Value, w.Fields = invalidate.SyncHash, nil, []string{"version", strconv.FormatUint(v, 10)}
			}
			writes = append(writes, w)
			if rng.IntN(3) == 0 {
				writes = append(writes, w) // a redelivery
			}
		}
		newest := writes[len(writes)-1]
		rng.Shuffle(len(writes), func(i, j int) { writes[i], writes[j] = writes[j], writes[i] })
		last := ""
		for len(writes) > 0 {
			n := min(len(writes), 1+rng.IntN(4))
			if _, err := s.apply(ctx, c, writes[:n]); err != nil {
				t.Fatal(err)
			}
			writes = writes[n:]
			st := readSync(t, c, key)
			if st.version < last {
				t.Fatalf("%s: version went back from %s to %s", key, last, st.version)
			}
			last = st.version
		}
		st := readSync(t, c, key)
		if st.version != newest.Version.String() {
			t.Fatalf("%s ends at version %s, want %s", key, st.version, newest.Version)
		}
		switch newest.Op {
		case invalidate.SyncDel:
			if st.str != "" || st.hash != nil {
				t.Fatalf("%s: deleted last, holds %+v", key, st)
			}
		case invalidate.SyncSet:
			if st.str != string(newest.Value) {
				t.Fatalf("%s: %q, want %q", key, st.str, newest.Value)
			}
		case invalidate.SyncHash:
			if st.hash["version"] != newest.Fields[1] || len(st.hash) != 1 {
				t.Fatalf("%s: %v, want version %s", key, st.hash, newest.Fields[1])
			}
		}
	}
}

// BenchmarkSyncScript is the replica's cost of sync writes: 256 new rows'
// JSON per script call (as a purger sends them), against a DEL of as many
// keys in one call, on a private Redis.
func BenchmarkSyncScript(b *testing.B) {
	srv := stacktest.StartRedis(b)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer c.Close()
	ctx := context.Background()
	s := newSyncScript(time.Hour)
	const n = 256
	value := []byte(`{"id":12345,"name":"item 12345","price":"9.99","stock":10,"view_count":3,"updated_at":"2026-12-03 10:00:00.123456"}`)
	writes := make([]invalidate.SyncWrite, n)
	keys := make([]string, n)
	for i := range writes {
		keys[i] = fmt.Sprintf("item:json:%d", i)
		writes[i] = invalidate.SyncWrite{Key: keys[i], Op: invalidate.SyncSet, Value: value, JSON: true}
	}
	b.Run("sync", func(b *testing.B) {
		off := uint64(1)
		for b.Loop() {
			for i := range writes {
				writes[i].Version = ver(off)
			}
			off++
			if _, err := s.apply(ctx, c, writes); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/write")
	})
	b.Run("del", func(b *testing.B) {
		for b.Loop() {
			if err := c.Del(ctx, keys...).Err(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/key")
	})
}

// BenchmarkSyncFloor is what the same values cost without a fence: one
// pipelined MSET of the values and their versions.
func BenchmarkSyncFloor(b *testing.B) {
	srv := stacktest.StartRedis(b)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer c.Close()
	ctx := context.Background()
	const n = 256
	value := []byte(`{"id":12345,"name":"item 12345","price":"9.99","stock":10,"view_count":3,"updated_at":"2026-12-03 10:00:00.123456"}`)
	var args []any
	for i := range n {
		args = append(args, fmt.Sprintf("item:json:%d", i), value, invalidate.SyncVersionPrefix+fmt.Sprintf("item:json:%d", i), ver(uint64(i)).String())
	}
	for b.Loop() {
		if err := c.MSet(ctx, args...).Err(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/write")
}

// refresh_hot writes only where the key is held: a held key (a value or a
// filler's lease) is refreshed, a missing one left alone, version and all;
// an older write is still dropped first, and a delete deletes as always.
func TestSyncScriptRefreshHot(t *testing.T) {
	srv := stacktest.StartRedis(t)
	c := stacktest.Redis(t, srv.Addr())
	ctx := context.Background()
	s := newSyncScript(time.Minute)
	hot := func(key string, v uint64, value string) invalidate.SyncWrite {
		return invalidate.SyncWrite{Key: key, Op: invalidate.SyncSet, Version: ver(v), Value: []byte(value), HotOnly: true}
	}
	for k, v := range map[string]string{"held": "old", "leased": "\x00lease:ab"} {
		if err := c.Set(ctx, k, v, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.apply(ctx, c, []invalidate.SyncWrite{
		hot("held", 5, "new"), hot("leased", 5, "new"), hot("cold", 5, "new"),
		{Key: "hheld", Op: invalidate.SyncHash, Version: ver(5), Fields: []string{"a", "1"}, HotOnly: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []syncResult{syncApplied, syncApplied, syncCold, syncCold}; !slices.Equal(got, want) {
		t.Fatalf("results %v, want %v", got, want)
	}
	for key, want := range map[string]syncState{
		"held":   {str: "new", version: ver(5).String()},
		"leased": {str: "new", version: ver(5).String()},
		"cold":   {},
		"hheld":  {},
	} {
		if st := readSync(t, c, key); st.str != want.str || st.version != want.version || st.hash != nil {
			t.Errorf("%s: %+v, want %+v", key, st, want)
		}
	}
	got, err = s.apply(ctx, c, []invalidate.SyncWrite{hot("held", 4, "older"), {Key: "held", Op: invalidate.SyncDel, Version: ver(6)}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []syncResult{syncOlder, syncApplied}; !slices.Equal(got, want) {
		t.Fatalf("older, delete: %v, want %v", got, want)
	}
	if st := readSync(t, c, "held"); st.str != "" || st.version != ver(6).String() {
		t.Errorf("held after the delete: %+v", st)
	}
}
