package invalidate_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
)

// HTTP groups get a topic each with one pre-created channel per instance,
// and URL and tag purges are published there (split like keys), while keys
// go to the Redis topics, all in one Publish.
func TestPublishHTTPGroupsToTheirTopics(t *testing.T) {
	nsqd := stacktest.StartNSQD(t)
	reg := prometheus.NewRegistry()
	pub, err := invalidate.NewPublisher(invalidate.PublisherOptions{
		NSQDTCP: []string{nsqd.TCPAddr()}, NSQDHTTP: []string{nsqd.HTTPAddr()}, TopicPrefix: "t",
		Groups:            []invalidate.Group{{Name: "hot-a", Addrs: []string{stacktest.DefaultRedisA1}}},
		HTTPGroups:        []invalidate.Group{{Name: "varnish-a", Addrs: []string{stacktest.DefaultVarnish1, "127.0.0.1:16083"}}, {Name: "varnish-b", Addrs: []string{stacktest.DefaultVarnish2}}},
		MaxKeysPerMessage: 2, Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	ctx := context.Background()
	if err := pub.EnsureChannels(ctx); err != nil {
		t.Fatal(err)
	}
	got := stacktest.NSQDChannels(t, nsqd.HTTPAddr())
	want := map[string][]string{
		"t.dead":           {},
		"t.redis.hot-a":    {"127.0.0.1_16379"},
		"t.http.varnish-a": {"127.0.0.1_16081", "127.0.0.1_16083"},
		"t.http.varnish-b": {"127.0.0.1_16082"},
	}
	for topic, chans := range want {
		if !slices.Equal(got[topic], chans) {
			t.Errorf("topic %s channels %v, want %v (all: %v)", topic, got[topic], chans, got)
		}
	}

	rules, err := invalidate.NewRulesWithGroups([]invalidate.Rule{{Table: "shop.item", RouteBy: "id",
		Keys: []string{"item:{id}"}, URLs: []string{"/item/{id}.html", "/item/{id}/reviews"}, Tags: []string{"item-{id}"}}},
		[]invalidate.Group{{Name: "hot-a"}}, []invalidate.Group{{Name: "varnish-a"}, {Name: "varnish-b"}})
	if err != nil {
		t.Fatal(err)
	}
	bound, err := rules.Bind("shop.item", []string{"id"})
	if err != nil {
		t.Fatal(err)
	}
	batch := rules.NewBatch()
	bound.ApplyRow(invalidate.Insert, nil, []any{int64(2)}, batch) // "2" is group 1 of 2: varnish-b
	if err := pub.Publish(ctx, batch, invalidate.Meta{Pos: "test:1", Seen: time.Now()}); err != nil {
		t.Fatal(err)
	}

	purges := stacktest.Consume(t, nsqd.TCPAddr(), "t.http.varnish-b", invalidate.ReplicaChannel(stacktest.DefaultVarnish2), invalidate.DecodePurge)
	var msgs []*invalidate.Purge
	timeout := time.After(5 * time.Second)
receive:
	for len(msgs) < 2 {
		select {
		case p := <-purges:
			msgs = append(msgs, p)
		case <-timeout:
			break receive
		}
	}
	select {
	case p := <-purges: // one too many
		msgs = append(msgs, p)
	default:
	}
	// Three targets, two per message: [urls a, b] then [tag].
	if len(msgs) != 2 || !slices.Equal(msgs[0].URLs, []string{"/item/2.html", "/item/2/reviews"}) || msgs[0].Tags != nil ||
		msgs[1].URLs != nil || !slices.Equal(msgs[1].Tags, []string{"item-2"}) || msgs[0].Group != "varnish-b" || msgs[0].Keys != nil || msgs[0].Pos != "test:1" {
		for _, m := range msgs {
			t.Logf("message %+v", *m)
		}
		t.Fatal("unexpected HTTP purge messages")
	}
	if n := stacktest.MetricValue(t, reg, "flashsync_invalidate_http_targets_published_total", map[string]string{"group": "varnish-b", "kind": "url"}); n != 2 {
		t.Errorf("http urls published = %v, want 2", n)
	}
	if n := stacktest.MetricValue(t, reg, "flashsync_invalidate_keys_published_total", map[string]string{"group": "hot-a"}); n != 1 {
		t.Errorf("keys published = %v, want 1", n)
	}
	if n := stacktest.MetricValue(t, reg, "flashsync_invalidate_publishes_total", map[string]string{"result": "ok"}); n != 1 {
		t.Errorf("publishes ok = %v, want 1 (both tiers in one round)", n)
	}
}

func TestPublisherRefusesABatchWithMoreGroups(t *testing.T) {
	pub, err := invalidate.NewPublisher(invalidate.PublisherOptions{
		NSQDTCP: []string{"127.0.0.1:1"}, NSQDHTTP: []string{"127.0.0.1:2"},
		Groups: []invalidate.Group{{Name: "hot-a", Addrs: []string{"r"}}}, Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	b := invalidate.NewBatch(1)
	b.AddURL(0, "/x")
	if err := pub.Publish(context.Background(), b, invalidate.Meta{}); err == nil {
		t.Fatal("published URLs for an HTTP group the publisher does not have")
	}
}

// With a stream, a batch's Redis messages are the parts of one range of the
// binlog per group, from the group's last message; a heartbeat covers every
// group up to its offset, with no targets and no job.
func TestPublishStreamCoverage(t *testing.T) {
	nsqd := stacktest.StartNSQD(t)
	pub, err := invalidate.NewPublisher(invalidate.PublisherOptions{
		NSQDTCP: []string{nsqd.TCPAddr()}, NSQDHTTP: []string{nsqd.HTTPAddr()}, TopicPrefix: "t",
		Groups:            []invalidate.Group{{Name: "ga", Addrs: []string{"a1"}}, {Name: "gb", Addrs: []string{"b1"}}},
		MaxKeysPerMessage: 2, Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	ctx := context.Background()
	if err := pub.EnsureChannels(ctx); err != nil {
		t.Fatal(err)
	}
	ga := stacktest.Consume(t, nsqd.TCPAddr(), "t.redis.ga", invalidate.ReplicaChannel("a1"), invalidate.DecodePurge)
	gb := stacktest.Consume(t, nsqd.TCPAddr(), "t.redis.gb", invalidate.ReplicaChannel("b1"), invalidate.DecodePurge)
	receive := func(ch <-chan *invalidate.Purge, n int) []*invalidate.Purge {
		t.Helper()
		var got []*invalidate.Purge
		timeout := time.After(5 * time.Second)
		for len(got) < n {
			select {
			case p := <-ch:
				got = append(got, p)
			case <-timeout:
				t.Fatalf("received %d messages, want %d", len(got), n)
			}
		}
		slices.SortFunc(got, func(a, b *invalidate.Purge) int { return a.Part - b.Part })
		return got
	}
	stream := invalidate.NewStream(2, 100)
	caught := time.Unix(1700000000, 5)
	b := invalidate.NewBatch(2)
	for _, k := range []string{"k1", "k2", "k3"} {
		b.Add(0, k)
	}
	if err := pub.Publish(ctx, b, invalidate.Meta{Pos: "f.1:200", Seen: time.Now(), Stream: stream, To: 200, CaughtUp: caught}); err != nil {
		t.Fatal(err)
	}
	for i, m := range receive(ga, 2) {
		if m.From != 100 || m.To != 200 || m.Part != i+1 || m.Parts != 2 || m.CaughtUpUnixNano != caught.UnixNano() || m.Heartbeat || m.Job == "" {
			t.Errorf("ga message %d: %+v; want part %d of 2 from 100 to 200 with a job", i, *m, i+1)
		}
	}
	if stream.From(0) != 200 || stream.From(1) != 100 {
		t.Errorf("stream at %d, %d; want 200 (ga published) and 100 (gb had no targets)", stream.From(0), stream.From(1))
	}
	if err := pub.Publish(ctx, invalidate.NewBatch(2), invalidate.Meta{Pos: "f.1:250", Seen: time.Now(), Stream: stream, To: 250}); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(ctx, invalidate.NewBatch(2), invalidate.Meta{Pos: "f.1:250", Seen: time.Now(), Stream: stream, To: 250, Heartbeat: true}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]struct {
		ch   <-chan *invalidate.Purge
		from uint64
	}{"ga": {ga, 200}, "gb": {gb, 100}} {
		m := receive(want.ch, 1)[0]
		if !m.Heartbeat || m.V != invalidate.PurgeVersionHeartbeat || m.From != want.from || m.To != 250 || m.Parts != 1 || m.Job != "" || len(m.Keys) > 0 {
			t.Errorf("%s heartbeat %+v; want v3 from %d to 250, no job, no keys", name, *m, want.from)
		}
	}
	if stream.From(0) != 250 || stream.From(1) != 250 {
		t.Errorf("stream at %d, %d after the heartbeat; want 250", stream.From(0), stream.From(1))
	}
	// A batch with a heartbeat: its groups' messages cover the range, and
	// the other groups get a heartbeat for it.
	b = invalidate.NewBatch(2)
	b.Add(1, "k4")
	if err := pub.Publish(ctx, b, invalidate.Meta{Pos: "f.1:300", Stream: stream, To: 300, Heartbeat: true}); err != nil {
		t.Fatal(err)
	}
	if m := receive(ga, 1)[0]; !m.Heartbeat || m.From != 250 || m.To != 300 {
		t.Errorf("ga heartbeat %+v; want from 250 to 300", *m)
	}
	if m := receive(gb, 1)[0]; m.Heartbeat || m.From != 250 || m.To != 300 || m.Parts != 1 || !slices.Equal(m.Keys, []string{"k4"}) {
		t.Errorf("gb message %+v; want k4 from 250 to 300", *m)
	}
	// Without a stream an empty batch publishes nothing, and messages carry
	// no coverage.
	if err := pub.Publish(ctx, invalidate.NewBatch(2), invalidate.Meta{Pos: "admin"}); err != nil {
		t.Fatal(err)
	}
	b = invalidate.NewBatch(2)
	b.Add(1, "k")
	if err := pub.Publish(ctx, b, invalidate.Meta{Pos: "admin"}); err != nil {
		t.Fatal(err)
	}
	if m := receive(gb, 1)[0]; m.Covers() || m.Heartbeat || !slices.Equal(m.Keys, []string{"k"}) {
		t.Errorf("admin message %+v; want keys without coverage", *m)
	}
}

func TestBinlogOffset(t *testing.T) {
	for _, tt := range []struct {
		file string
		pos  uint32
		want uint64
		ok   bool
	}{
		{"mariadb-bin.000001", 4, 1<<32 | 4, true},
		{"mysql-bin.123456", 0xffffffff, 123456<<32 | 0xffffffff, true},
		{"a.b.000002", 7, 2<<32 | 7, true},
		{"nodot", 4, 0, false},
		{"bin.", 4, 0, false},
		{"bin.x1", 4, 0, false},
		{"bin.99999999999", 4, 0, false},
	} {
		got, ok := invalidate.BinlogOffset(tt.file, tt.pos)
		if got != tt.want || ok != tt.ok {
			t.Errorf("BinlogOffset(%q, %d) = %d, %v; want %d, %v", tt.file, tt.pos, got, ok, tt.want, tt.ok)
		}
	}
	// Offsets order positions across files.
	a, _ := invalidate.BinlogOffset("bin.000001", 0xfffffff0)
	b, _ := invalidate.BinlogOffset("bin.000002", 4)
	if a >= b {
		t.Errorf("offset of the end of file 1 (%d) is not before the start of file 2 (%d)", a, b)
	}
}
