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

// Every batch's URLs and tags, of every HTTP group, go to the CDN topic once
// each, on a channel per CDN node created before the first publish.
func TestPublishCopiesEveryURLAndTagToTheCDNTopic(t *testing.T) {
	nsqd := stacktest.StartNSQD(t)
	pub, err := invalidate.NewPublisher(invalidate.PublisherOptions{
		NSQDTCP: []string{nsqd.TCPAddr()}, NSQDHTTP: []string{nsqd.HTTPAddr()},
		HTTPGroups: []invalidate.Group{
			{Name: "h0", Addrs: []string{"127.0.0.1:1"}},
			{Name: "h1", Addrs: []string{"127.0.0.1:2"}},
		},
		CDNNodes: []string{"edge-1", "edge-2"}, MaxKeysPerMessage: 3, Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if err := pub.EnsureChannels(context.Background()); err != nil {
		t.Fatal(err)
	}
	b := invalidate.NewBatch(0)
	b.AddURL(0, "/a")
	b.AddURL(1, "/b")
	b.AddURL(1, "/a") // in both groups: once on the CDN topic
	b.AddTag(0, "t1")
	b.AddTag(1, "t2")
	if err := pub.Publish(context.Background(), b, invalidate.Meta{Pos: "p", Seen: time.Now()}); err != nil {
		t.Fatal(err)
	}
	for _, node := range []string{"edge-1", "edge-2"} {
		// Connecting after the publish: the channel must already have held it.
		got := stacktest.Consume(t, nsqd.TCPAddr(), invalidate.CDNTopic("flashsync"), invalidate.CDNChannel(node), invalidate.DecodePurge)
		var urls, tags []string
		for len(urls)+len(tags) < 4 {
			select {
			case p := <-got:
				if p.Group != invalidate.CDNGroup || p.Pos != "p" {
					t.Errorf("message %+v", p)
				}
				urls, tags = append(urls, p.URLs...), append(tags, p.Tags...)
			case <-time.After(5 * time.Second):
				t.Fatalf("%s: got urls %v tags %v only", node, urls, tags)
			}
		}
		slices.Sort(urls)
		slices.Sort(tags)
		if !slices.Equal(urls, []string{"/a", "/b"}) || !slices.Equal(tags, []string{"t1", "t2"}) {
			t.Errorf("%s: urls %v tags %v", node, urls, tags)
		}
	}
}
