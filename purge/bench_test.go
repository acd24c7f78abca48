package purge_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/flashsync/flashsync/purge"
)

// BenchmarkRedisPurgeThroughput measures how fast one replica drains a
// backlog of covered purges (the canal's messages: coverage chained from
// one to the next): b.N messages of keys keys each are published to a
// private nsqd before the purger starts, and the clock runs from its start
// until every message is applied. It reports messages and keys per second.
func BenchmarkRedisPurgeThroughput(b *testing.B) {
	for _, keys := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("keys=%d", keys), func(b *testing.B) {
			benchPurgeThroughput(b, keys, purge.RejoinFlush)
		})
	}
}

// BenchmarkRedisPurgeRejoinLog is the same drain with rejoin = "replay",
// which appends every message applied to the replica's rejoin log, against
// rejoin = "flush" in the same run.
func BenchmarkRedisPurgeRejoinLog(b *testing.B) {
	for _, keys := range []int{1, 100} {
		for _, rejoin := range []string{purge.RejoinFlush, purge.RejoinReplay} {
			b.Run(fmt.Sprintf("keys=%d/rejoin=%s", keys, rejoin), func(b *testing.B) {
				benchPurgeThroughput(b, keys, rejoin)
			})
		}
	}
}

func benchPurgeThroughput(b *testing.B, keys int, rejoin string) {
	nsqd := stacktest.StartNSQD(b)
	srv := stacktest.StartRedis(b)
	ctx := context.Background()
	group := purge.RedisGroup{Name: "g", Replicas: []string{srv.Addr()}}
	pub, err := invalidate.NewPublisher(invalidate.PublisherOptions{
		NSQDTCP: []string{nsqd.TCPAddr()}, NSQDHTTP: []string{nsqd.HTTPAddr()},
		Groups: []invalidate.Group{{Name: "g", Addrs: group.Replicas}},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	if err := pub.EnsureChannels(ctx); err != nil {
		b.Fatal(err)
	}
	prod, err := nsq.NewProducer(nsqd.TCPAddr(), nsq.NewConfig())
	if err != nil {
		b.Fatal(err)
	}
	defer prod.Stop()
	prod.SetLogger(log.New(io.Discard, "", 0), nsq.LogLevelError)
	topic := invalidate.RedisTopic(invalidate.DefaultTopicPrefix, "g")
	var bodies [][]byte
	now := time.Now().UnixNano()
	for i := 0; i < b.N; i++ {
		m := invalidate.Purge{V: invalidate.PurgeVersionBasic, Group: "g", From: uint64(i) * 10, To: uint64(i+1) * 10,
			Part: 1, Parts: 1, CaughtUpUnixNano: now}
		for k := 0; k < keys; k++ {
			m.Keys = append(m.Keys, "item:"+strconv.Itoa(i)+":"+strconv.Itoa(k))
		}
		body, err := m.Marshal()
		if err != nil {
			b.Fatal(err)
		}
		bodies = append(bodies, body)
		if len(bodies) == 1000 || i == b.N-1 {
			if err := prod.MultiPublish(topic, bodies); err != nil {
				b.Fatal(err)
			}
			bodies = nil
		}
	}
	reg := prometheus.NewRegistry()
	purger, err := purge.NewRedisPurger(purge.RedisPurgerOptions{
		ConsumerOptions: purge.ConsumerOptions{NSQDTCP: []string{nsqd.TCPAddr()}, Logger: slog.New(slog.DiscardHandler)},
		Groups:          []purge.RedisGroup{group}, Registerer: reg,
		Rejoin: rejoin, RejoinLogDir: b.TempDir(),
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	stop := stacktest.RunAndClose(b, "purger", purger)
	labels := map[string]string{"group": "g", "replica": srv.Addr(), "result": "ok"}
	stacktest.Eventually(b, 10*time.Minute, func() error {
		if n := stacktest.MetricValue(b, reg, "flashsync_purger_messages_total", labels); int(n) < b.N {
			return fmt.Errorf("%v of %d messages applied", n, b.N)
		}
		return nil
	})
	elapsed := time.Since(start)
	b.StopTimer()
	stop()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(b.N*keys)/elapsed.Seconds(), "keys/s")
}
