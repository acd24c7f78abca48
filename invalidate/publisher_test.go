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
