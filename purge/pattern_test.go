package purge_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/flashsync/flashsync/purge"
)

// A pattern purge that runs several times nsqd's message timeout touches
// its message: nsqd never times it out, so it is applied once, and every
// matching key, only those, is gone.
func TestPatternPurgeOutlivesMsgTimeout(t *testing.T) {
	// nsqd scans for timed-out messages only on the channels it listed at
	// its last refresh, every 5 s (QueueScanRefreshInterval): the purge must
	// outlast that by a few message timeouts.
	const keysPerSecond, matching, others = 2000, 16000, 500
	msgTimeout := time.Second
	nsqd := stacktest.StartNSQD(t)
	srv := stacktest.StartRedis(t)
	c := stacktest.Redis(t, srv.Addr())
	ctx := context.Background()
	for i := 0; i < matching+others; i += 500 {
		pipe := c.Pipeline()
		for j := i; j < i+500; j++ {
			k := "m:" + strconv.Itoa(j)
			if j >= matching {
				k = "o:" + strconv.Itoa(j)
			}
			pipe.Set(ctx, k, "v", 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	group := purge.RedisGroup{Name: "g", Replicas: []string{srv.Addr()}}
	pub, err := invalidate.NewPublisher(invalidate.PublisherOptions{
		NSQDTCP: []string{nsqd.TCPAddr()}, NSQDHTTP: []string{nsqd.HTTPAddr()},
		Groups: []invalidate.Group{{Name: "g", Addrs: group.Replicas}}, Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pub.Close)
	if err := pub.EnsureChannels(ctx); err != nil {
		t.Fatal(err)
	}
	purger, err := purge.NewRedisPurger(purge.RedisPurgerOptions{
		ConsumerOptions: purge.ConsumerOptions{NSQDTCP: []string{nsqd.TCPAddr()}, MsgTimeout: msgTimeout},
		Groups:          []purge.RedisGroup{group}, PatternKeysPerSecond: keysPerSecond, Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	stacktest.RunAndClose(t, "purger", purger)
	b := invalidate.NewBatch(1)
	b.AddPattern(0, "m:*")
	start := time.Now()
	if err := pub.Publish(ctx, b, invalidate.Meta{Pos: "test", Seen: time.Now()}); err != nil {
		t.Fatal(err)
	}
	ok := func() float64 {
		return stacktest.MetricValue(t, reg, "flashsync_purger_messages_total", map[string]string{"group": "g", "replica": srv.Addr(), "result": "ok"})
	}
	scanned := func() float64 {
		return stacktest.MetricValue(t, reg, "flashsync_purger_pattern_scan_ratio", map[string]string{"group": "g", "replica": srv.Addr()})
	}
	var midway []float64 // the progress gauge's values seen while the purge ran
	stacktest.Eventually(t, 30*time.Second, func() error {
		if r := scanned(); r > 0 && r < 1 && (len(midway) == 0 || midway[len(midway)-1] != r) {
			midway = append(midway, r)
		}
		if n := ok(); n < 1 {
			return errors.New("pattern purge not applied yet")
		}
		return nil
	})
	elapsed := time.Since(start)
	if len(midway) < 2 || scanned() != 1 {
		t.Errorf("flashsync_purger_pattern_scan_ratio: saw %v while the purge ran and %v after it; want several values between 0 and 1, then 1", midway, scanned())
	} else {
		t.Logf("scan progress: %d distinct values between 0 and 1 while the purge ran, from %.3f to %.3f", len(midway), midway[0], midway[len(midway)-1])
	}
	// The limiter's first burst is min(1000, rate) keys; the rest at the rate.
	if bound := time.Duration(float64(matching-1000) / keysPerSecond * float64(time.Second)); elapsed < bound || bound < 5*time.Second+2*msgTimeout {
		t.Fatalf("purge took %v, want at least %v (and that past nsqd's first timeout scan)", elapsed, bound)
	}
	if n, err := c.DBSize(ctx).Result(); err != nil || n != others {
		t.Errorf("redis holds %d keys (%v), want the %d others", n, err, others)
	}
	if n, _ := c.Exists(ctx, "m:0", "m:"+strconv.Itoa(matching-1)).Result(); n != 0 {
		t.Errorf("%d matching keys left", n)
	}
	// nsqd never timed the message out, and it was applied once.
	resp, err := http.Get("http://" + nsqd.HTTPAddr() + "/stats?format=json&topic=" + invalidate.RedisTopic(invalidate.DefaultTopicPrefix, "g"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var stats struct {
		Topics []struct {
			Channels []struct {
				Name     string `json:"channel_name"`
				Timeouts int    `json:"timeout_count"`
				Requeues int    `json:"requeue_count"`
			} `json:"channels"`
		} `json:"topics"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&stats); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, tp := range stats.Topics {
		for _, ch := range tp.Channels {
			if ch.Name == invalidate.ReplicaChannel(srv.Addr()) {
				found = true
				if ch.Timeouts != 0 || ch.Requeues != 0 {
					t.Errorf("channel %s: %d timeouts, %d requeues; want none", ch.Name, ch.Timeouts, ch.Requeues)
				}
			}
		}
	}
	if !found {
		t.Errorf("no channel stats: %+v", stats)
	}
	if n := ok(); n != 1 {
		t.Errorf("applied %v times, want once", n)
	}
}
