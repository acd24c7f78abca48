package purge

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
)

// scriptHarness runs watermark.lua on a private Redis through a purger that
// is never started (New dials nothing).
type scriptHarness struct {
	t   testing.TB
	srv *stacktest.RedisServer
	p   *RedisPurger
	r   *redisReplica
	c   *redis.Client
}

func newScriptHarness(t testing.TB) *scriptHarness {
	t.Helper()
	srv := stacktest.StartRedis(t)
	p, err := NewRedisPurger(RedisPurgerOptions{
		ConsumerOptions: ConsumerOptions{NSQDTCP: []string{"127.0.0.1:1"}},
		Groups:          []RedisGroup{{Name: "g", Replicas: []string{srv.Addr()}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return &scriptHarness{t: t, srv: srv, p: p, r: p.replicas[0], c: stacktest.Redis(t, srv.Addr())}
}

// reset empties the replica and starts its watermark at to, marked with
// the server's run_id, as a purger that has seen nothing.
func (h *scriptHarness) reset(to uint64) {
	h.t.Helper()
	ctx := context.Background()
	if err := h.c.FlushDB(ctx).Err(); err != nil {
		h.t.Fatal(err)
	}
	h.r.wm = replicaWatermark{}
	info, err := h.c.Info(ctx, "server").Result()
	if err != nil {
		h.t.Fatal(err)
	}
	h.set(invalidate.Watermark{To: to}.String(), infoField(info, "run_id"))
}

// set writes the watermark and the marker ("" deletes them).
func (h *scriptHarness) set(wm, marker string) {
	h.t.Helper()
	ctx := context.Background()
	for k, v := range map[string]string{invalidate.WatermarkKey: wm, watermarkMarkerKey: marker} {
		var err error
		if v == "" {
			err = h.c.Del(ctx, k).Err()
		} else {
			err = h.c.Set(ctx, k, v, 0).Err()
		}
		if err != nil {
			h.t.Fatal(err)
		}
	}
}

// cov is one covered message: (from, to], part of parts, caught up at cu
// (Unix ns).
type cov struct {
	from, to    uint64
	part, parts int
	cu          int64
}

func (c cov) purge(keys ...string) *invalidate.Purge {
	return &invalidate.Purge{V: 1, Group: "g", Keys: keys, From: c.from, To: c.to, Part: c.part, Parts: c.parts, CaughtUpUnixNano: c.cu}
}

func (h *scriptHarness) apply(msg *invalidate.Purge) watermarkReply {
	h.t.Helper()
	h.r.wm.saw(msg)
	rep, err := h.p.applyCoverage(context.Background(), h.r, msg, msg.Keys)
	if err != nil {
		h.t.Fatalf("apply %+v: %v", msg, err)
	}
	return rep
}

func (h *scriptHarness) run(mode string, args ...any) watermarkReply {
	h.t.Helper()
	rep, err := h.p.runScript(context.Background(), h.r, mode, nil, args...)
	if err != nil {
		h.t.Fatalf("%s: %v", mode, err)
	}
	return rep
}

// stored is the watermark in the replica ("" for none).
func (h *scriptHarness) stored() string {
	h.t.Helper()
	v, err := h.c.Get(context.Background(), invalidate.WatermarkKey).Result()
	if err == redis.Nil {
		return ""
	}
	if err != nil {
		h.t.Fatal(err)
	}
	return v
}

func wmString(to uint64, cu int64) string {
	return invalidate.Watermark{To: to, CaughtUp: time.Unix(0, cu)}.String()
}

// The watermark follows the unbroken run of complete ranges, whatever the
// order, duplicates, parts and overlaps; after every step the stored
// watermark and the ranges waiting beyond it are checked.
func TestWatermarkScriptCoverage(t *testing.T) {
	h := newScriptHarness(t)
	type step struct {
		c       cov
		to      uint64
		cu      int64
		pending int
	}
	for _, tt := range []struct {
		name  string
		start uint64
		steps []step
	}{
		{"in order", 0, []step{
			{cov{0, 10, 1, 1, 100}, 10, 100, 0},
			{cov{10, 20, 1, 1, 200}, 20, 200, 0},
		}},
		{"out of order 3, 1, 2", 0, []step{
			{cov{20, 30, 1, 1, 300}, 0, 0, 1},
			{cov{0, 10, 1, 1, 100}, 10, 100, 1},
			{cov{10, 20, 1, 1, 200}, 30, 300, 0},
		}},
		{"parts split and reordered", 0, []step{
			{cov{0, 10, 2, 2, 100}, 0, 0, 0},
			{cov{10, 20, 1, 1, 200}, 0, 0, 1},
			{cov{0, 10, 2, 2, 100}, 0, 0, 1}, // a redelivered part counts once
			{cov{0, 10, 1, 2, 100}, 20, 200, 0},
		}},
		{"a restarted canal overlaps and repeats", 0, []step{
			{cov{0, 10, 1, 1, 100}, 10, 100, 0},
			{cov{10, 20, 1, 1, 200}, 20, 200, 0},
			{cov{5, 15, 1, 2, 150}, 20, 200, 0}, // old: nothing moves back
			{cov{25, 30, 1, 1, 300}, 20, 200, 1},
			{cov{15, 25, 1, 1, 250}, 30, 300, 0}, // straddles the watermark
		}},
		{"heartbeats, empty and not", 0, []step{
			{cov{0, 10, 1, 1, 100}, 10, 100, 0},
			{cov{10, 10, 1, 1, 150}, 10, 150, 0}, // nothing read since: only time moves
			{cov{20, 20, 1, 1, 250}, 10, 150, 1}, // beyond a gap (10, 20]
			{cov{10, 20, 1, 1, 200}, 20, 250, 0},
		}},
		{"an old range still carries its caught-up time", 0, []step{
			{cov{0, 20, 1, 1, 100}, 20, 100, 0},
			{cov{0, 10, 1, 1, 180}, 20, 180, 0},
		}},
		{"resumes from the watermark found", 100, []step{
			{cov{50, 80, 1, 1, 80}, 100, 80, 0},
			{cov{90, 110, 1, 1, 110}, 110, 110, 0},
			{cov{120, 130, 1, 1, 130}, 110, 110, 1},
		}},
		{"a range of several parts beyond a gap", 0, []step{
			{cov{10, 20, 1, 3, 200}, 0, 0, 0},
			{cov{10, 20, 3, 3, 200}, 0, 0, 0},
			{cov{10, 20, 2, 3, 200}, 0, 0, 1},
			{cov{0, 10, 1, 1, 100}, 20, 200, 0},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			h.reset(tt.start)
			for i, s := range tt.steps {
				rep := h.apply(s.c.purge("k"))
				want := wmString(s.to, s.cu)
				if s.cu == 0 {
					want = invalidate.Watermark{To: s.to}.String()
				}
				if got := h.stored(); got != want || rep.now != want || rep.pending != s.pending || rep.status != "ok" {
					t.Fatalf("step %d %+v: stored %q, reply %+v; want %q with %d ranges beyond", i, s.c, got, rep, want, s.pending)
				}
			}
		})
	}
}

// What the script does with a replica that restarted, lost its watermark,
// never had one, or is flushed, and the conditions of the purger's rejoins.
func TestWatermarkScriptRejoin(t *testing.T) {
	h := newScriptHarness(t)
	ctx := context.Background()
	userKey := func() {
		h.t.Helper()
		if err := h.c.Set(ctx, "user", "v", 0).Err(); err != nil {
			h.t.Fatal(err)
		}
	}
	flushed := func(rep watermarkReply, reason, want string) {
		t := h.t
		t.Helper()
		if rep.status != "rejoined" || rep.reason != reason || rep.now != want || h.stored() != want {
			t.Fatalf("reply %+v, stored %q; want rejoined (%s) at %q", rep, h.stored(), reason, want)
		}
		if n := h.c.Exists(ctx, "user").Val(); n != 0 {
			t.Fatal("the user key survived the flush")
		}
	}

	t.Run("restarted from a snapshot", func(t *testing.T) {
		h.t = t
		h.reset(0)
		h.apply(cov{0, 10, 1, 1, 100}.purge("k"))
		h.apply(cov{20, 30, 1, 1, 300}.purge("k")) // beyond a gap: recorded
		h.r.wm.saw(cov{30, 40, 1, 1, 400}.purge()) // received, not applied
		userKey()
		// The snapshot's marker names another server.
		if err := h.c.Set(ctx, watermarkMarkerKey, "0123456789abcdef0123456789abcdef01234567", 0).Err(); err != nil {
			t.Fatal(err)
		}
		rep := h.run(modeState)
		flushed(rep, reasonRestarted, wmString(40, 400))
		if rep.found != wmString(10, 100) {
			t.Errorf("found %q, want the snapshot's %q", rep.found, wmString(10, 100))
		}
		// Marked again with the server's run_id: the next read is plain.
		if rep := h.run(modeState); rep.status != "ok" {
			t.Errorf("after the rejoin: %+v", rep)
		}
	})
	t.Run("watermark deleted", func(t *testing.T) {
		h.t = t
		h.reset(0)
		h.apply(cov{0, 10, 1, 1, 100}.purge("k"))
		userKey()
		if err := h.c.Del(ctx, invalidate.WatermarkKey).Err(); err != nil {
			t.Fatal(err)
		}
		flushed(h.run(modeState), reasonLost, wmString(10, 100))
	})
	t.Run("marker deleted", func(t *testing.T) {
		h.t = t
		h.reset(0)
		h.apply(cov{0, 10, 1, 1, 100}.purge("k"))
		userKey()
		if err := h.c.Del(ctx, watermarkMarkerKey).Err(); err != nil {
			t.Fatal(err)
		}
		flushed(h.run(modeState), reasonLost, wmString(10, 100))
	})
	t.Run("empty and unmarked: starts at what it was sent", func(t *testing.T) {
		h.t = t
		h.reset(0)
		h.set("", "")
		if rep := h.run(modeState); rep.status != "unmarked" || h.stored() != "" {
			t.Fatalf("nothing seen yet: %+v, stored %q; want unmarked, nothing written", rep, h.stored())
		}
		rep := h.apply(cov{20, 30, 1, 1, 300}.purge("k"))
		if rep.status != "started" || rep.reason != "empty" || h.stored() != wmString(30, 300) {
			t.Fatalf("%+v, stored %q; want started (empty) at %q", rep, h.stored(), wmString(30, 300))
		}
		if rep := h.apply(cov{0, 20, 1, 1, 200}.purge("k")); rep.now != wmString(30, 300) {
			t.Fatalf("an older range moved the watermark: %+v", rep)
		}
	})
	t.Run("data without a watermark: trusted once, from the first range", func(t *testing.T) {
		h.t = t
		h.reset(0)
		h.set("", "")
		userKey()
		if rep := h.run(modeState); rep.status != "unmarked" || h.stored() != "" {
			t.Fatalf("%+v, stored %q; want unmarked, nothing written", rep, h.stored())
		}
		rep := h.apply(cov{20, 30, 1, 1, 300}.purge("k"))
		if rep.status != "started" || rep.reason != "unmarked" || h.stored() != wmString(30, 300) {
			t.Fatalf("%+v, stored %q; want started (unmarked) at %q", rep, h.stored(), wmString(30, 300))
		}
		if n := h.c.Exists(ctx, "user").Val(); n != 1 {
			t.Fatal("the data was flushed")
		}
	})
	t.Run("gap: flushed only if the watermark is still the one seen", func(t *testing.T) {
		h.t = t
		h.reset(0)
		h.apply(cov{0, 10, 1, 1, 100}.purge("k"))
		h.apply(cov{20, 30, 1, 1, 300}.purge("k"))
		userKey()
		if rep := h.run(modeRejoin, reasonGap, wmString(5, 50)); rep.status != "skipped" || rep.now != wmString(10, 100) {
			t.Fatalf("stale condition: %+v; want skipped", rep)
		}
		flushed(h.run(modeRejoin, reasonGap, wmString(10, 100)), reasonGap, wmString(30, 300))
		if rep := h.run(modeState); rep.pending != 0 {
			t.Errorf("ranges beyond after the rejoin: %+v", rep)
		}
	})
	t.Run("dead letter: flushed unless the watermark passed it", func(t *testing.T) {
		h.t = t
		h.reset(0)
		h.apply(cov{0, 10, 1, 1, 100}.purge("k"))
		userKey()
		if rep := h.run(modeRejoin, reasonDeadLetter, digits20(uint64(10))); rep.status != "skipped" {
			t.Fatalf("a dead range the watermark covers: %+v; want skipped", rep)
		}
		h.r.wm.saw(cov{10, 20, 1, 1, 200}.purge())
		flushed(h.run(modeRejoin, reasonDeadLetter, digits20(uint64(20))), reasonDeadLetter, wmString(20, 200))
	})
	t.Run("admin flush restarts the watermark", func(t *testing.T) {
		h.t = t
		h.reset(0)
		h.apply(cov{0, 10, 1, 1, 100}.purge("k"))
		h.apply(cov{20, 30, 1, 1, 300}.purge("k"))
		userKey()
		flushed(h.apply(&invalidate.Purge{V: 2, Group: "g", Flush: true}), reasonFlush, wmString(30, 300))
	})
	t.Run("an uncovered purge deletes and moves nothing", func(t *testing.T) {
		h.t = t
		h.reset(0)
		h.apply(cov{0, 10, 1, 1, 100}.purge("k"))
		userKey()
		rep := h.apply(&invalidate.Purge{V: 1, Group: "g", Keys: []string{"user"}})
		if rep.status != "ok" || rep.now != wmString(10, 100) || h.c.Exists(ctx, "user").Val() != 0 {
			t.Fatalf("%+v; want the key gone and the watermark unchanged", rep)
		}
	})
}

// FuzzWatermarkScript applies random covered messages — any ranges, parts,
// duplicates and overlaps, in any order — and checks after each that the
// watermark is exactly where the applied ranges take it: the end of the
// unbroken run of complete ranges from the start, so it never passes an
// offset that no complete range covers; its caught-up time comes from a
// range at or before it; and the ranges waiting beyond it are the complete
// ones starting past it.
func FuzzWatermarkScript(f *testing.F) {
	f.Add([]byte{0, 10, 0, 10, 10, 0, 20, 10, 0})
	f.Add([]byte{20, 10, 0, 0, 10, 0, 10, 10, 0})
	f.Add([]byte{0, 10, 1, 0, 10, 1, 0, 18, 1, 10, 5, 2, 10, 13, 2, 10, 21, 2})
	f.Add([]byte{5, 0, 0, 0, 5, 0, 5, 3, 0, 3, 4, 1, 3, 12, 1})
	h := newScriptHarness(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		h.t = t
		h.reset(0)
		type key struct {
			from, to uint64
			parts    int
		}
		cuOf := func(from, to uint64) int64 { return int64(to*7+from)%251 + 1 }
		applied := map[key][]int{}
		var sent []key // every message applied, in order
		for i := 0; i+2 < len(data) && i < 3*64; i += 3 {
			// (from, from+len], parts 1 to 3, the part from the length byte.
			from, length, p := uint64(data[i]%32), uint64(data[i+1]%8), int(data[i+2]%3)+1
			k := key{from, from + length, p}
			part := int(data[i+1]/8)%p + 1
			rep := h.apply(cov{k.from, k.to, part, p, cuOf(k.from, k.to)}.purge("k" + strconv.Itoa(i)))
			if !slices.Contains(applied[k], part) {
				applied[k] = append(applied[k], part)
			}
			sent = append(sent, k)

			// The oracle: complete ranges, their union's prefix from 0.
			var complete []key
			for k, parts := range applied {
				if len(parts) == k.parts {
					complete = append(complete, k)
				}
			}
			to := uint64(0)
			for moved := true; moved; {
				moved = false
				for _, c := range complete {
					if c.from <= to && c.to > to {
						to, moved = c.to, true
					}
				}
			}
			var cuMin, cuMax int64 // from the complete ranges, from any message
			beyond := map[[2]uint64]bool{}
			for _, c := range complete {
				if c.to <= to {
					cuMin = max(cuMin, cuOf(c.from, c.to))
				}
				if c.from > to {
					beyond[[2]uint64{c.from, c.to}] = true
				}
			}
			for _, s := range sent {
				if s.to <= to {
					cuMax = max(cuMax, cuOf(s.from, s.to))
				}
			}
			if rep.wm.To != to {
				t.Fatalf("after %d messages %v: watermark %q, want to %d (complete: %v)", len(sent), sent, rep.now, to, complete)
			}
			if cu := rep.wm.CaughtUp.UnixNano(); rep.wm.CaughtUp.IsZero() && cuMin > 0 || !rep.wm.CaughtUp.IsZero() && (cu < cuMin || cu > cuMax) {
				t.Fatalf("after %v: caught-up %v (%q), want %d to %d", sent, rep.wm.CaughtUp, rep.now, cuMin, cuMax)
			}
			if rep.pending != len(beyond) {
				t.Fatalf("after %v: %d ranges beyond %d, want %v", sent, rep.pending, to, beyond)
			}
			if stored := h.stored(); stored != rep.now {
				t.Fatalf("stored %q, reply %q", stored, rep.now)
			}
		}
	})
}

// The script's numbers are exact over uint64 and int64, where Lua's doubles
// are not (beyond 2^53).
func TestWatermarkScriptLargeOffsets(t *testing.T) {
	h := newScriptHarness(t)
	base := uint64(1)<<63 + 1
	h.reset(base)
	const cu = int64(1<<62 + 3)
	rep := h.apply(cov{base, base + 1, 1, 1, cu}.purge("k"))
	if want := wmString(base+1, cu); rep.now != want {
		t.Fatalf("watermark %q, want %q", rep.now, want)
	}
}
