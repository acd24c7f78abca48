package consistency

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/flashsync/flashsync/cacheaside"
	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/nsqio/go-nsq"
	"github.com/prometheus/client_golang/prometheus"
)

// rig is a checker on a group of two private Redis replicas (and
// optionally an unreachable third) fed by an in-process nsqd.
type rig struct {
	a, b    *stacktest.RedisServer
	nsqd    *stacktest.NSQD
	reg     *prometheus.Registry
	checker *Checker
	prod    *nsq.Producer
	topic   string
}

func newRig(t *testing.T, unreachable bool, configure func(*Options)) *rig {
	t.Helper()
	r := &rig{a: stacktest.StartRedis(t), b: stacktest.StartRedis(t), nsqd: stacktest.StartNSQD(t), reg: prometheus.NewRegistry()}
	g := Group{Name: "g", Replicas: []string{r.a.Addr(), r.b.Addr()}}
	if unreachable {
		g.Replicas = append(g.Replicas, net.JoinHostPort("127.0.0.1", strconv.Itoa(stacktest.FreePort(t))))
	}
	opts := Options{
		Groups: []Group{g}, NSQDTCP: []string{r.nsqd.TCPAddr()}, SampleRate: 1,
		Windows: []time.Duration{100 * time.Millisecond, 300 * time.Millisecond}, Timeout: 200 * time.Millisecond,
		Registerer: r.reg,
	}
	if configure != nil {
		configure(&opts)
	}
	var err error
	if r.checker, err = New(opts); err != nil {
		t.Fatal(err)
	}
	r.topic = invalidate.RedisTopic(invalidate.DefaultTopicPrefix, "g")
	if r.prod, err = nsq.NewProducer(r.nsqd.TCPAddr(), nsq.NewConfig()); err != nil {
		t.Fatal(err)
	}
	r.prod.SetLogger(nil, nsq.LogLevelError)
	t.Cleanup(r.prod.Stop)
	return r
}

// start runs the checker and waits until its channel is on the topic:
// an ephemeral channel gets only the messages published after it exists.
func (r *rig) start(t *testing.T) {
	t.Helper()
	if err := r.prod.Publish(r.topic, mustMarshal(t, &invalidate.Purge{V: invalidate.PurgeVersionHeartbeat, Group: "g", Heartbeat: true, From: 1, To: 1, Part: 1, Parts: 1})); err != nil {
		t.Fatal(err)
	}
	stacktest.RunAndClose(t, "checker", r.checker)
	stacktest.Eventually(t, 10*time.Second, func() error {
		for _, ch := range stacktest.NSQDChannels(t, r.nsqd.HTTPAddr())[r.topic] {
			if ch == Channel {
				return nil
			}
		}
		return fmt.Errorf("no channel %s on %s yet", Channel, r.topic)
	})
}

func mustMarshal(t *testing.T, p *invalidate.Purge) []byte {
	t.Helper()
	b, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// publish sends a covered canal message for keys, committed and seen now.
func (r *rig) publish(t *testing.T, seen time.Time, to uint64, keys ...string) {
	t.Helper()
	msg := &invalidate.Purge{
		V: invalidate.PurgeVersionBasic, Group: "g", Keys: keys, Pos: "bin.000001:" + strconv.FormatUint(to, 10),
		CommitUnix: seen.Unix(), SeenUnixNano: seen.UnixNano(), From: to - 1, To: to, Part: 1, Parts: 1,
	}
	if err := r.prod.Publish(r.topic, mustMarshal(t, msg)); err != nil {
		t.Fatal(err)
	}
}

func set(t *testing.T, srv *stacktest.RedisServer, key string, value []byte) {
	t.Helper()
	if err := stacktest.Redis(t, srv.Addr()).Set(context.Background(), key, value, 0).Err(); err != nil {
		t.Fatal(err)
	}
}

// waitCounts polls the metrics until every window has counted want.
func (r *rig) waitCounts(t *testing.T, want map[Result]float64) {
	t.Helper()
	stacktest.Eventually(t, 10*time.Second, func() error {
		for _, w := range r.checker.opts.Windows {
			for res, n := range want {
				if got := stacktest.MetricValue(t, r.reg, "flashsync_consistency_checks_total", map[string]string{"window": w.String(), "result": string(res)}); got != n {
					return fmt.Errorf("window %v %s: %v checks, want %v", w, res, got, n)
				}
			}
		}
		return nil
	})
}

func TestCheckerEndToEnd(t *testing.T) {
	r := newRig(t, true, nil)
	r.start(t)
	seen := time.Now()
	old := cacheaside.EncodeValue(seen.Add(-time.Hour), []byte("old"))
	fresh := cacheaside.EncodeValue(seen.Add(time.Millisecond), []byte("new"))
	for _, srv := range []*stacktest.RedisServer{r.a, r.b} {
		set(t, srv, "k:stale", old)
		set(t, srv, "k:fresh", fresh)
		set(t, srv, "k:foreign", []byte(`{"id":7}`))
		if err := stacktest.Redis(t, srv.Addr()).HSet(context.Background(), "k:hash", "f", "v").Err(); err != nil {
			t.Fatal(err)
		}
		set(t, srv, invalidate.WatermarkKey, []byte(invalidate.Watermark{To: 41, CaughtUp: seen}.String()))
	}
	// Replica A got the purge; B did not.
	if err := stacktest.Redis(t, r.a.Addr()).Del(context.Background(), "k:stale").Err(); err != nil {
		t.Fatal(err)
	}
	r.publish(t, seen, 42, "k:stale", "k:fresh", "k:foreign", "k:hash")

	// Per window: k:stale consistent on A, inconsistent on B; k:fresh
	// consistent on A and B; k:foreign (no envelope) and k:hash
	// (WRONGTYPE) unknown on A and B; all four unknown on the unreachable
	// replica.
	r.waitCounts(t, map[Result]float64{Consistent: 3, Inconsistent: 1, Unknown: 8})
	rep := r.checker.Report()
	if len(rep.Recent) != 2 {
		t.Fatalf("recent = %+v, want the two windows' inconsistencies", rep.Recent)
	}
	if rep.Recent[0].Checked.Before(rep.Recent[1].Checked) || rep.Recent[0].Window == rep.Recent[1].Window {
		t.Errorf("recent %+v: want one per window, newest first", rep.Recent)
	}
	for _, inc := range rep.Recent {
		if inc.Key != "k:stale" || inc.Replica != r.b.Addr() || inc.Group != "g" || inc.Pos != "bin.000001:42" || inc.CommitUnix != seen.Unix() {
			t.Errorf("inconsistency %+v: want k:stale on %s at bin.000001:42", inc, r.b.Addr())
		}
		if inc.ValueAgeSeconds < 3600 || !inc.FillStart.Equal(time.Unix(0, seen.Add(-time.Hour).UnixNano())) {
			t.Errorf("inconsistency %+v: want the value an hour old", inc)
		}
		if inc.PurgeApplied {
			t.Errorf("inconsistency %+v: watermark 41 has not passed 42", inc)
		}
	}
	for _, w := range []string{"100ms", "300ms"} {
		wc := rep.Windows[w]
		if wc.Consistent != 3 || wc.Inconsistent != 1 || wc.Unknown != 8 || wc.Nines == nil || *wc.Nines < 0.60 || *wc.Nines > 0.61 {
			t.Errorf("window %s = %+v, want 3/1/8 and nines -log10(1/4)", w, wc)
		}
		if got := stacktest.MetricValue(t, r.reg, "flashsync_consistency_nines", map[string]string{"window": w}); got < 0.60 || got > 0.61 {
			t.Errorf("nines gauge %s = %v", w, got)
		}
	}
}

func TestCheckerConfirmsBeforeReporting(t *testing.T) {
	r := newRig(t, false, func(o *Options) { o.Windows = []time.Duration{100 * time.Millisecond} })
	seen := time.Now()
	for _, srv := range []*stacktest.RedisServer{r.a, r.b} {
		set(t, srv, "k", cacheaside.EncodeValue(seen.Add(-time.Hour), []byte("old")))
	}
	// A later write's purge lands between the stale read and the confirm.
	r.checker.beforeConfirm = func(key, addr string) {
		if addr == r.b.Addr() {
			if err := stacktest.Redis(t, addr).Del(context.Background(), key).Err(); err != nil {
				t.Error(err)
			}
		}
	}
	r.start(t)
	r.publish(t, seen, 42, "k")
	r.waitCounts(t, map[Result]float64{Consistent: 1, Inconsistent: 1, Unknown: 0})
	rep := r.checker.Report()
	if len(rep.Recent) != 1 || rep.Recent[0].Replica != r.a.Addr() {
		t.Errorf("recent = %+v, want only replica A (B's value was purged before the confirm)", rep.Recent)
	}
}

func TestCheckerMaxPending(t *testing.T) {
	r := newRig(t, false, func(o *Options) {
		o.Windows = []time.Duration{time.Hour, 2 * time.Hour}
		o.MaxPending = 5
	})
	g := r.checker.groups[0]
	msg := &invalidate.Purge{V: 1, Group: "g", Keys: []string{"k"}, From: 1, To: 2, Part: 1, Parts: 1}
	for range 4 {
		r.checker.sample(g, msg, time.Now())
	}
	if n := len(r.checker.pending); n != 4 {
		t.Errorf("pending = %d, want 4 (two samples of two windows)", n)
	}
	if got := stacktest.MetricValue(t, r.reg, "flashsync_consistency_samples_dropped_total", nil); got != 2 {
		t.Errorf("dropped = %v, want 2", got)
	}
	// Not samples: an admin message (no coverage), a heartbeat.
	r.checker.sample(g, &invalidate.Purge{V: 1, Group: "g", Keys: []string{"k"}}, time.Now())
	r.checker.sample(g, &invalidate.Purge{V: 3, Group: "g", Heartbeat: true, From: 1, To: 2, Part: 1, Parts: 1}, time.Now())
	if got := stacktest.MetricValue(t, r.reg, "flashsync_consistency_samples_dropped_total", nil); got != 2 {
		t.Errorf("dropped = %v after messages that are no samples, want 2", got)
	}
}

func TestCheckerSampleRate(t *testing.T) {
	r := newRig(t, false, func(o *Options) {
		o.SampleRate = 0.5
		o.Windows = []time.Duration{time.Hour}
	})
	g := r.checker.groups[0]
	msg := &invalidate.Purge{V: 1, Group: "g", Keys: []string{"k"}, From: 1, To: 2, Part: 1, Parts: 1}
	for range 1000 {
		r.checker.sample(g, msg, time.Now())
	}
	// Binomial(1000, 0.5): 350..650 is over nine standard deviations wide.
	if n := len(r.checker.pending); n < 350 || n > 650 {
		t.Errorf("sampled %d of 1000 at rate 0.5", n)
	}
}

func TestOptionsValidation(t *testing.T) {
	base := func() Options {
		return Options{Groups: []Group{{Name: "g", Replicas: []string{"127.0.0.1:1"}}}, NSQDTCP: []string{"127.0.0.1:2"}}
	}
	for _, tc := range []struct {
		name   string
		modify func(*Options)
	}{
		{"no nsq", func(o *Options) { o.NSQDTCP = nil }},
		{"no group", func(o *Options) { o.Groups = nil }},
		{"no replica", func(o *Options) { o.Groups[0].Replicas = nil }},
		{"rate above 1", func(o *Options) { o.SampleRate = 1.5 }},
		{"negative rate", func(o *Options) { o.SampleRate = -0.1 }},
		{"zero window", func(o *Options) { o.Windows = []time.Duration{0} }},
		{"negative max pending", func(o *Options) { o.MaxPending = -1 }},
	} {
		o := base()
		tc.modify(&o)
		if _, err := New(o); err == nil {
			t.Errorf("%s: New accepted %+v", tc.name, o)
		}
	}
	c, err := New(base())
	if err != nil {
		t.Fatal(err)
	}
	if c.opts.SampleRate != DefaultSampleRate || len(c.opts.Windows) != 3 || c.opts.MaxPending != DefaultMaxPending || c.opts.Recent != DefaultRecent || c.opts.Timeout != DefaultTimeout {
		t.Errorf("defaults = %+v", c.opts)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
}

// Synced keys are judged by version: a replica at the sampled write's
// version or later is consistent, one at an older version (a lost or late
// sync write) inconsistent once confirmed, one without a version by its
// value as a purged key (a miss: consistent).
func TestCheckerJudgesSyncedKeysByVersion(t *testing.T) {
	r := newRig(t, false, func(o *Options) { o.Windows = []time.Duration{100 * time.Millisecond} })
	v := func(off uint64) invalidate.SyncVersion { return invalidate.SyncVersion{Epoch: 7, Offset: off} }
	ctx := context.Background()
	for _, kv := range []struct {
		srv     *stacktest.RedisServer
		key     string
		version invalidate.SyncVersion
	}{
		{r.a, "s:newer", v(50)}, {r.b, "s:newer", v(42)}, // at or past the write: consistent
		{r.a, "s:older", v(41)}, {r.b, "s:older", v(43)}, // A missed it
	} {
		c := stacktest.Redis(t, kv.srv.Addr())
		if err := c.Set(ctx, invalidate.SyncVersionPrefix+kv.key, kv.version.String(), 0).Err(); err != nil {
			t.Fatal(err)
		}
		if err := c.Set(ctx, kv.key, "{}", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	r.start(t)
	seen := time.Now()
	msg := &invalidate.Purge{
		V: invalidate.PurgeVersionSync, Group: "g", Pos: "bin.000001:42", CommitUnix: seen.Unix(), SeenUnixNano: seen.UnixNano(),
		From: 41, To: 42, Part: 1, Parts: 1, Sync: []invalidate.SyncWrite{
			{Key: "s:newer", Op: invalidate.SyncSet, Version: v(42), Value: []byte("{}")},
			{Key: "s:older", Op: invalidate.SyncSet, Version: v(42), Value: []byte("{}")},
			{Key: "s:absent", Op: invalidate.SyncDel, Version: v(42)},
		},
	}
	if err := r.prod.Publish(r.topic, mustMarshal(t, msg)); err != nil {
		t.Fatal(err)
	}
	// newer on A and B, older on B, absent on A and B: 5; older on A: 1.
	r.waitCounts(t, map[Result]float64{Consistent: 5, Inconsistent: 1, Unknown: 0})
	rep := r.checker.Report()
	if len(rep.Recent) != 1 {
		t.Fatalf("recent = %+v, want one inconsistency", rep.Recent)
	}
	if inc := rep.Recent[0]; inc.Key != "s:older" || inc.Replica != r.a.Addr() || inc.StoredVersion != v(41).String() || inc.WantVersion != v(42).String() {
		t.Errorf("inconsistency %+v: want s:older on A, stored %s, want %s", inc, v(41), v(42))
	}
}
