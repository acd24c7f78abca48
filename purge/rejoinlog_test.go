package purge

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/flashsync/flashsync/invalidate"
)

func testRecord(seq uint64, keys ...string) logRecord {
	return logRecord{seq: seq, at: time.Unix(1_700_000_000, 0).Add(time.Duration(seq) * time.Millisecond).UnixNano(),
		wm: invalidate.Watermark{To: seq * 10, CaughtUp: time.Unix(0, int64(seq)*1000)}, keys: keys}
}

func openTestLog(t *testing.T, dir string, maxBytes int64, maxAge time.Duration) *rejoinLog {
	t.Helper()
	l, err := openRejoinLog(dir, maxBytes, maxAge)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestRejoinLogAppendAndSince(t *testing.T) {
	dir := t.TempDir()
	l := openTestLog(t, dir, 1<<20, time.Hour)
	for seq := uint64(1); seq <= 10; seq++ {
		rec := testRecord(seq, "k:"+string(rune('a'+seq)), "shared")
		if seq == 7 {
			rec.patterns = []string{"p:*"}
		}
		if err := l.append(rec); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		name        string
		from, upto  uint64
		keys        int
		missing     uint64
		wmTo        uint64
		hasPatterns bool
	}{
		{"all", 1, 10, 11, 0, 100, true},
		{"after the snapshot", 5, 10, 7, 0, 100, true},
		{"a middle stretch", 3, 6, 5, 0, 60, false},
		{"nothing after the snapshot", 11, 10, 0, 0, 0, false},
		{"beyond what is logged", 9, 12, 3, 11, 100, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			set, err := l.since(tt.from, tt.upto)
			if err != nil {
				t.Fatal(err)
			}
			if set.missing != tt.missing {
				t.Errorf("missing %d, want %d", set.missing, tt.missing)
			}
			if tt.missing == 0 {
				if len(set.keys) != tt.keys || set.wm.To != tt.wmTo || (len(set.patterns) > 0) != tt.hasPatterns {
					t.Errorf("keys %v, watermark %d, patterns %v; want %d keys, %d, patterns %v", set.keys, set.wm.To, set.patterns, tt.keys, tt.wmTo, tt.hasPatterns)
				}
			}
		})
	}
	if l.floor() != 10 {
		t.Errorf("floor %d, want 10", l.floor())
	}
	// Reopened, it continues where it was.
	l.Close()
	l2 := openTestLog(t, dir, 1<<20, time.Hour)
	if l2.floor() != 10 {
		t.Fatalf("reopened floor %d, want 10", l2.floor())
	}
	if err := l2.append(testRecord(11, "k:new")); err != nil {
		t.Fatal(err)
	}
	if set, err := l2.since(1, 11); err != nil || set.missing != 0 || !slices.Contains(set.keys, "k:new") {
		t.Fatalf("after reopening: %+v, %v", set, err)
	}
}

// A record cut short (a crash mid-write) is cut when the log is opened;
// the sequences after it are missing, so a replay that needs them falls
// back.
func TestRejoinLogTornTail(t *testing.T) {
	dir := t.TempDir()
	l := openTestLog(t, dir, 1<<20, time.Hour)
	for seq := uint64(1); seq <= 5; seq++ {
		if err := l.append(testRecord(seq, "k")); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	segs, _ := filepath.Glob(filepath.Join(dir, "*"+segmentSuffix))
	if len(segs) != 1 {
		t.Fatalf("segments %v", segs)
	}
	info, _ := os.Stat(segs[0])
	for _, cut := range []int64{1, 5, 9} { // inside the last record's payload, header, both
		if err := os.Truncate(segs[0], info.Size()-cut); err != nil {
			t.Fatal(err)
		}
		l2, err := openRejoinLog(dir, 1<<20, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if f := l2.floor(); f != 4 {
			t.Errorf("cut %d bytes: floor %d, want 4", cut, f)
		}
		if set, _ := l2.since(1, 5); set.missing != 5 {
			t.Errorf("cut %d bytes: missing %d, want 5", cut, set.missing)
		}
		if err := l2.append(testRecord(5, "k")); err != nil { // appends after the cut
			t.Fatal(err)
		}
		if set, _ := l2.since(1, 5); set.missing != 0 {
			t.Errorf("cut %d bytes, appended again: missing %d", cut, set.missing)
		}
		l2.Close()
		info, _ = os.Stat(segs[0])
	}
	// A damaged byte in the middle: what follows is not trusted.
	b, _ := os.ReadFile(segs[0])
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(segs[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
	l3 := openTestLog(t, dir, 1<<20, time.Hour)
	if set, _ := l3.since(1, 5); set.missing == 0 {
		t.Error("a damaged record went unnoticed")
	}
}

// The log keeps about max bytes and max age, by whole segments; what it
// dropped is missing.
func TestRejoinLogBounds(t *testing.T) {
	t.Run("bytes", func(t *testing.T) {
		dir := t.TempDir()
		l := openTestLog(t, dir, 4<<10, time.Hour)
		for seq := uint64(1); seq <= 2000; seq++ {
			if err := l.append(testRecord(seq, "key:with:some:length")); err != nil {
				t.Fatal(err)
			}
		}
		if l.total > 4<<10+(4<<10)/8+64 {
			t.Errorf("log holds %d bytes, bound 4 KiB", l.total)
		}
		oldest, _ := l.reach()
		if oldest <= 1 || oldest > 2000 {
			t.Fatalf("oldest %d", oldest)
		}
		if set, _ := l.since(oldest, 2000); set.missing != 0 {
			t.Errorf("from the oldest it holds (%d): missing %d", oldest, set.missing)
		}
		if set, _ := l.since(oldest-1, 2000); set.missing != oldest-1 {
			t.Errorf("from before it: missing %d, want %d", set.missing, oldest-1)
		}
	})
	t.Run("age", func(t *testing.T) {
		dir := t.TempDir()
		l := openTestLog(t, dir, 1<<30, 80*time.Millisecond)
		for seq := uint64(1); seq <= 200; seq++ { // 1 ms apart: 200 ms of records
			if err := l.append(testRecord(seq, "k")); err != nil {
				t.Fatal(err)
			}
		}
		// It keeps at least max age, trimming a segment (an eighth of it)
		// when it starts the next: at most a quarter more.
		oldest, at := l.reach()
		newest := time.Unix(0, testRecord(200).at)
		if age := newest.Sub(at); age < 80*time.Millisecond || age > 100*time.Millisecond+time.Millisecond || oldest == 1 {
			t.Errorf("log reaches back %v to %d, want 80-100 ms", age, oldest)
		}
	})
}

func FuzzRejoinLogRecord(f *testing.F) {
	for _, rec := range []logRecord{testRecord(1), testRecord(7, "a", "b"), {seq: 1 << 60, flush: true, patterns: []string{"x*"}}} {
		f.Add(encodeRecord(nil, rec)[8:])
	}
	f.Add([]byte{})
	f.Add([]byte{0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, payload []byte) {
		rec, err := decodeRecord(payload)
		if err != nil {
			return
		}
		// What decodes encodes back to the same bytes.
		if got := encodeRecord(nil, rec)[8:]; string(got) != string(payload) {
			// Varints have one shortest form; a longer one decodes too.
			again, err := decodeRecord(got)
			if err != nil || again.seq != rec.seq || !slices.Equal(again.keys, rec.keys) || !slices.Equal(again.patterns, rec.patterns) || again.flush != rec.flush {
				t.Fatalf("%x decodes to %+v, which encodes to %x (%+v, %v)", payload, rec, got, again, err)
			}
		}
	})
}

// The script's replay modes: a restart seen with replay on quarantines the
// replica (caught-up 0, the replay recorded, the sequence continued above
// the floor); "replayed" ends it at the watermark reached before; a replay
// that cannot be done flushes.
func TestWatermarkScriptReplay(t *testing.T) {
	h := newScriptHarness(t)
	ctx := context.Background()
	h.r.log = openTestLog(t, t.TempDir(), 1<<20, time.Hour)
	h.reset(0)
	h.run(modeState) // the purger reads the replica's sequence: replays are allowed
	var seqs []uint64
	for i, c := range []cov{{0, 10, 1, 1, 100}, {10, 20, 1, 1, 200}, {20, 30, 1, 1, 300}} {
		rep := h.apply(c.purge("k:" + string(rune('1'+i))))
		seqs = append(seqs, rep.seq)
		if err := h.r.log.append(logRecord{seq: rep.seq, wm: rep.wm, keys: []string{"k"}}); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(seqs, []uint64{1, 2, 3}) {
		t.Fatalf("sequences %v, want 1 2 3", seqs)
	}
	// The replica "restarted from a snapshot" taken after the first
	// message: its marker names another server, its sequence is 1.
	if err := h.c.MSet(ctx, watermarkMarkerKey, "0000000000000000000000000000000000000000", watermarkSeqKey, "1",
		invalidate.WatermarkKey, wmString(10, 100)).Err(); err != nil {
		t.Fatal(err)
	}
	h.r.wm = replicaWatermark{}
	rep := h.run(modeState)
	if rep.status != "replaying" || rep.replay != "1:3:00000000000000000100" {
		t.Fatalf("after the restart: %+v, want replaying 1:3:...100", rep)
	}
	if got := h.stored(); got != "1:10:0" {
		t.Errorf("watermark while replaying %q, want caught-up 0 (readers skip it)", got)
	}
	// A message meanwhile applies, with the next sequence, and keeps the
	// replica quarantined.
	rep = h.apply(cov{30, 40, 1, 1, 400}.purge("k:4"))
	if rep.status != "replaying" || rep.seq != 4 || h.stored() != "1:10:0" {
		t.Fatalf("a message while replaying: %+v, stored %q; want replaying, seq 4, caught-up 0", rep, h.stored())
	}
	// The end of another replay does nothing.
	if rep := h.run(modeReplayed, "0:3:00000000000000000100", digits20(uint64(30)), digits20(int64(300))); rep.status != "skipped" {
		t.Fatalf("another replay's end: %+v", rep)
	}
	rep = h.run(modeReplayed, "1:3:00000000000000000100", digits20(uint64(30)), digits20(int64(300)))
	if rep.status != "replayed" || rep.replay != "" {
		t.Fatalf("replayed: %+v", rep)
	}
	// Up to 30 from before the restart, then (30,40] applied meanwhile.
	if got := h.stored(); got != wmString(40, 400) {
		t.Errorf("after the replay: %q, want %q", got, wmString(40, 400))
	}
	if n := h.c.Exists(ctx, watermarkReplayKey).Val(); n != 0 {
		t.Error("the replay key outlived the replay")
	}

	// A replay that cannot be done flushes, keeping the sequence.
	if err := h.c.MSet(ctx, watermarkMarkerKey, "0000000000000000000000000000000000000000", watermarkSeqKey, "2", "user", "v").Err(); err != nil {
		t.Fatal(err)
	}
	rep = h.run(modeState)
	if rep.status != "replaying" {
		t.Fatalf("second restart: %+v", rep)
	}
	rep = h.run(modeRejoin, reasonRestarted, rep.replay)
	if rep.status != "rejoined" || rep.reason != reasonRestarted {
		t.Fatalf("fallback: %+v", rep)
	}
	if n := h.c.Exists(ctx, "user", watermarkReplayKey).Val(); n != 0 {
		t.Error("the fallback did not flush")
	}
	if s, _ := h.c.Get(ctx, watermarkSeqKey).Result(); s != "5" || rep.seq != 5 {
		t.Errorf("sequence after the flush %q (reply %d), want 5: the flush's own, above the 4 the purger saw", s, rep.seq)
	}

	// A snapshot numbered above the purger's floor holds messages the
	// purger never saw applied: flushed, not replayed.
	if err := h.c.MSet(ctx, watermarkMarkerKey, "0000000000000000000000000000000000000000", watermarkSeqKey, "99").Err(); err != nil {
		t.Fatal(err)
	}
	if rep := h.run(modeState); rep.status != "rejoined" || rep.reason != reasonRestarted {
		t.Fatalf("a snapshot above the floor: %+v, want flushed", rep)
	}
}

// A flush among the records a replay needs makes it fall back: what the
// flush removed may be what no log holds (a purge lost, the reason of a
// gap flush).
func TestRejoinLogFlushBlocksReplay(t *testing.T) {
	l := openTestLog(t, t.TempDir(), 1<<20, time.Hour)
	for seq := uint64(1); seq <= 5; seq++ {
		rec := testRecord(seq, "k")
		rec.flush = seq == 4
		if err := l.append(rec); err != nil {
			t.Fatal(err)
		}
	}
	if set, _ := l.since(2, 5); !set.flush || set.missing != 0 {
		t.Errorf("across the flush: %+v, want flush", set)
	}
	if set, _ := l.since(5, 5); set.flush {
		t.Errorf("after the flush: %+v, want none", set)
	}
}
