package purge

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/flashsync/flashsync/invalidate"
)

// reply is a script reply with the watermark at to (caught up at to
// seconds) and pending ranges beyond it starting at lowest.
func reply(status, reason string, to uint64, pending int, lowest uint64) watermarkReply {
	wm := invalidate.Watermark{To: to, CaughtUp: time.Unix(int64(to), 0)}
	return watermarkReply{status: status, reason: reason, now: wm.String(), wm: wm, pending: pending, lowest: lowest, runID: "run-1"}
}

// What the purger makes of the script's replies, failures and dead letters:
// when the gap clock runs, when a rejoin is due, and what Health says. Each
// step happens at the given second.
func TestReplicaWatermarkStates(t *testing.T) {
	const gapTimeout = 5 * time.Second
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	covered := func(from, to uint64) *invalidate.Purge {
		return &invalidate.Purge{V: 1, Keys: []string{"k"}, From: from, To: to, Part: 1, Parts: 1}
	}
	type step struct {
		at float64
		do func(w *replicaWatermark, now time.Time)
		// The rejoin due after the step ("" none), and the state.
		due, state string
	}
	obs := func(r watermarkReply) func(*replicaWatermark, time.Time) {
		return func(w *replicaWatermark, now time.Time) { w.observe(r, now) }
	}
	for _, tt := range []struct {
		name  string
		steps []step
	}{
		{"not read yet", []step{
			{0, func(*replicaWatermark, time.Time) {}, "", "starting"},
		}},
		{"in step", []step{
			{0, obs(reply("ok", "", 10, 0, 0)), "", "ok"},
			{9, obs(reply("ok", "", 20, 0, 0)), "", "ok"},
		}},
		{"a gap that fills", []step{
			{0, obs(reply("ok", "", 10, 1, 20)), "", "ok"},
			{0.9, obs(reply("ok", "", 10, 2, 20)), "", "ok"},
			{1, obs(reply("ok", "", 10, 2, 20)), "", "gap"},
			{4, obs(reply("ok", "", 30, 0, 0)), "", "ok"},
			{20, obs(reply("ok", "", 30, 0, 0)), "", "ok"},
		}},
		{"a gap that does not fill", []step{
			{0, obs(reply("ok", "", 10, 1, 20)), "", "ok"},
			{4.9, obs(reply("ok", "", 10, 3, 20)), "", "gap"},
			{5, obs(reply("ok", "", 10, 3, 20)), reasonGap, "rejoin_pending"},
			{5.1, obs(reply("rejoined", reasonGap, 40, 0, 0)), "", "ok"},
		}},
		{"the watermark moving restarts the gap clock", []step{
			{0, obs(reply("ok", "", 10, 1, 30)), "", "ok"},
			{4, obs(reply("ok", "", 20, 1, 30)), "", "ok"},
			{8.9, obs(reply("ok", "", 20, 1, 30)), "", "gap"},
			{9, obs(reply("ok", "", 20, 1, 30)), reasonGap, "rejoin_pending"},
		}},
		{"no gap rejoin while unreachable; the backlog gets its time", []step{
			{0, obs(reply("ok", "", 10, 1, 20)), "", "ok"},
			{1, func(w *replicaWatermark, _ time.Time) { w.failedCheck(io.EOF) }, "", "unreachable"},
			{30, func(*replicaWatermark, time.Time) {}, "", "unreachable"},
			{31, obs(reply("ok", "", 10, 1, 20)), "", "ok"},
			{35.9, obs(reply("ok", "", 10, 1, 20)), "", "gap"},
			{36, obs(reply("ok", "", 10, 1, 20)), reasonGap, "rejoin_pending"},
		}},
		{"a state read refused", []step{
			{0, obs(reply("ok", "", 10, 0, 0)), "", "ok"},
			{1, func(w *replicaWatermark, _ time.Time) { w.failedCheck(errors.New("NOPERM no permissions")) }, "", "error"},
		}},
		{"a requeued purge that may fill the gap holds it until due back", []step{
			{0, obs(reply("ok", "", 10, 1, 20)), "", "ok"},
			{4, func(w *replicaWatermark, now time.Time) { w.failed(covered(10, 20), 3, errors.New("NOPERM"), now) }, "", "requeued"},
			{13.9, obs(reply("ok", "", 10, 1, 20)), "", "requeued"},
			{14, obs(reply("ok", "", 10, 1, 20)), reasonGap, "rejoin_pending"},
		}},
		{"a requeued purge failing again holds longer", []step{
			{0, obs(reply("ok", "", 10, 1, 20)), "", "ok"},
			{4, func(w *replicaWatermark, now time.Time) { w.failed(covered(10, 20), 3, errors.New("NOPERM"), now) }, "", "requeued"},
			{9, func(w *replicaWatermark, now time.Time) { w.failed(covered(10, 20), 4, errors.New("NOPERM"), now) }, "", "requeued"},
			{18.9, obs(reply("ok", "", 10, 1, 20)), "", "requeued"},
		}},
		{"a requeued purge applied without filling the gap", []step{
			{0, obs(reply("ok", "", 10, 1, 20)), "", "ok"},
			{4, func(w *replicaWatermark, now time.Time) { w.failed(covered(10, 20), 3, errors.New("NOPERM"), now) }, "", "requeued"},
			{6, func(w *replicaWatermark, _ time.Time) { w.applied(covered(10, 20)) }, reasonGap, "rejoin_pending"},
		}},
		{"a requeued purge the watermark passes", []step{
			{0, obs(reply("ok", "", 10, 1, 20)), "", "ok"},
			{1, func(w *replicaWatermark, now time.Time) { w.failed(covered(10, 20), 1, errors.New("NOPERM"), now) }, "", "requeued"},
			{2, obs(reply("ok", "", 30, 0, 0)), "", "ok"},
		}},
		{"a requeued purge past a gap does not hold it", []step{
			{0, obs(reply("ok", "", 10, 1, 30)), "", "ok"},
			{4, func(w *replicaWatermark, now time.Time) { w.failed(covered(20, 30), 1, errors.New("NOPERM"), now) }, "", "requeued"},
			{5, obs(reply("ok", "", 10, 1, 30)), reasonGap, "rejoin_pending"},
		}},
		{"a dead letter", []step{
			{0, obs(reply("ok", "", 10, 0, 0)), "", "ok"},
			{1, func(w *replicaWatermark, _ time.Time) { w.deadLettered(covered(10, 20)) }, reasonDeadLetter, "rejoin_pending"},
			{1.1, obs(reply("rejoined", reasonDeadLetter, 20, 0, 0)), "", "ok"},
		}},
		{"a dead letter the watermark already passed", []step{
			{0, obs(reply("ok", "", 30, 0, 0)), "", "ok"},
			{1, func(w *replicaWatermark, _ time.Time) { w.deadLettered(covered(10, 20)) }, "", "ok"},
		}},
		{"a skipped rejoin is no longer due", []step{
			{0, obs(reply("ok", "", 10, 0, 0)), "", "ok"},
			{1, func(w *replicaWatermark, _ time.Time) { w.deadLettered(covered(10, 20)) }, reasonDeadLetter, "rejoin_pending"},
			{1.1, obs(reply("skipped", "", 20, 0, 0)), "", "ok"},
		}},
		{"unmarked until the first purge", []step{
			{0, obs(watermarkReply{status: "unmarked", runID: "run-1"}), "", "unmarked"},
			{1, obs(reply("started", "unmarked", 10, 0, 0)), "", "ok"},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var w replicaWatermark
			for i, s := range tt.steps {
				now := at(s.at)
				s.do(&w, now)
				reason, _, ok := w.rejoinDue(now, gapTimeout)
				if !ok {
					reason = ""
				}
				st := w.status("g", "r", now, gapTimeout)
				if reason != s.due || st.State != s.state {
					t.Fatalf("step %d (%.1f s): rejoin due %q, state %q (%s); want %q, %q", i, s.at, reason, st.State, st.Reason, s.due, s.state)
				}
				if st.healthy() != (s.state == "ok" || s.state == "starting" || s.state == "unmarked") || !st.healthy() && st.Reason == "" {
					t.Fatalf("step %d: %+v: healthy %v, reason %q", i, st, st.healthy(), st.Reason)
				}
			}
		})
	}
}

// The rejoin's condition is what the purger saw: the watermark stuck (gap),
// the dead purge's To (dead letter).
func TestReplicaWatermarkRejoinCondition(t *testing.T) {
	var w replicaWatermark
	t0 := time.Unix(1000, 0)
	w.observe(reply("ok", "", 10, 1, 20), t0)
	if reason, cond, ok := w.rejoinDue(t0.Add(DefaultGapTimeout), DefaultGapTimeout); !ok || reason != reasonGap || cond != reply("", "", 10, 0, 0).now {
		t.Errorf("gap: %q %q %v", reason, cond, ok)
	}
	w.observe(reply("rejoined", reasonGap, 20, 0, 0), t0.Add(DefaultGapTimeout))
	w.deadLettered(&invalidate.Purge{From: 20, To: 35, Part: 1, Parts: 1})
	if reason, cond, ok := w.rejoinDue(t0, DefaultGapTimeout); !ok || reason != reasonDeadLetter || cond != "00000000000000000035" {
		t.Errorf("dead letter: %q %q %v", reason, cond, ok)
	}
}

// A replica that comes back empty with another run_id restarted, though
// nothing needed a flush; the first empty start of a replica is not one.
func TestReplicaWatermarkEmptyRestart(t *testing.T) {
	var w replicaWatermark
	now := time.Unix(1000, 0)
	started := reply("started", "empty", 10, 0, 0)
	if ev := w.observe(started, now); ev.rejoined != "" {
		t.Errorf("first start counted as a rejoin: %+v", ev)
	}
	started.runID = "run-2"
	if ev := w.observe(started, now); ev.rejoined != reasonRestarted {
		t.Errorf("empty again under another run_id: %+v, want restarted", ev)
	}
	if ev := w.observe(reply("rejoined", reasonFlush, 10, 0, 0), now); ev.rejoined != "" {
		t.Errorf("an admin flush counted as a rejoin: %+v", ev)
	}
}

// Staleness is unknown (+Inf) without a caught-up time, and JSON null.
func TestReplicaWatermarkStaleness(t *testing.T) {
	var w replicaWatermark
	now := time.Unix(1000, 0)
	if s := w.staleness(now); s < 1e300 {
		t.Errorf("before any read: %v, want +Inf", s)
	}
	w.observe(reply("ok", "", 990, 0, 0), now)
	if s := w.staleness(now); s != 10 {
		t.Errorf("caught up at 990 s, now 1000 s: %v, want 10", s)
	}
	if st := w.status("g", "r", now, DefaultGapTimeout); st.StalenessSeconds == nil || *st.StalenessSeconds != 10 {
		t.Errorf("status %+v", st)
	}
	w.observe(watermarkReply{status: "ok", now: "1:5:0", wm: invalidate.Watermark{To: 5}, runID: "run-1"}, now)
	if st := w.status("g", "r", now, DefaultGapTimeout); st.StalenessSeconds != nil || st.CaughtUp != nil {
		t.Errorf("no caught-up time: %+v", st)
	}
}

func TestInfoField(t *testing.T) {
	info := "# Server\r\nredis_version:7.0.15\r\nrun_id:0b66971fbfe89881290f1a82da3fbd99cc4b1079\r\ntcp_port:6379\r\n"
	if got := infoField(info, "run_id"); got != "0b66971fbfe89881290f1a82da3fbd99cc4b1079" {
		t.Errorf("run_id %q", got)
	}
	if got := infoField(info, "nope"); got != "" {
		t.Errorf("missing field: %q", got)
	}
}

func TestReservedKey(t *testing.T) {
	for k, want := range map[string]bool{
		invalidate.WatermarkKey: true, watermarkMarkerKey: true, watermarkDoneKey: true, watermarkPartsKey: true,
		"flashsync:watermarks": false, "item:1": false, strings.TrimSuffix(invalidate.WatermarkKey, "k"): false,
	} {
		if reservedKey(k) != want {
			t.Errorf("reservedKey(%q) = %v", k, !want)
		}
	}
}
