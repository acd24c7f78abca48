package purge_test

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/nsqio/nsq/nsqd"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
)

// BenchmarkNSQDDurability measures what nsqd's durable settings cost the
// canal's publishes (docs/operations.md): one publisher waits for each
// acknowledgement, as the canal does, of a covered purge of ten keys, to a
// topic with two channels (two replicas), on an nsqd whose data is on this
// machine's disk. default keeps up to --mem-queue-size (10000) messages per
// topic and channel in memory; mem-queue-size=0 writes every message to
// the disk queue (the page cache; the files are fsynced every
// --sync-every 2500 writes or --sync-timeout 2 s), sync-timeout=100ms
// every 100 ms, sync-every=1 at each write. batch=1 is one PUB per round
// trip, batch=10 one MPUB of ten.
func BenchmarkNSQDDurability(b *testing.B) {
	for _, s := range []struct {
		name      string
		configure func(*nsqd.Options)
	}{
		{"default", func(*nsqd.Options) {}},
		{"mem-queue-size=0", func(o *nsqd.Options) { o.MemQueueSize = 0 }},
		{"mem-queue-size=0,sync-timeout=100ms", func(o *nsqd.Options) { o.MemQueueSize, o.SyncTimeout = 0, 100*time.Millisecond }},
		{"mem-queue-size=0,sync-every=1", func(o *nsqd.Options) { o.MemQueueSize, o.SyncEvery = 0, 1 }},
	} {
		for _, per := range []int{1, 10} {
			b.Run(fmt.Sprintf("%s/batch=%d", s.name, per), func(b *testing.B) {
				benchNSQDPublish(b, s.configure, per)
			})
		}
	}
}

func benchNSQDPublish(b *testing.B, configure func(*nsqd.Options), per int) {
	n := stacktest.StartNSQDWith(b, configure)
	topic := invalidate.RedisTopic(invalidate.DefaultTopicPrefix, "g")
	for _, ch := range []string{"r1", "r2"} {
		resp, err := http.Post("http://"+n.HTTPAddr()+"/channel/create?topic="+topic+"&channel="+ch, "", nil)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
	}
	prod, err := nsq.NewProducer(n.TCPAddr(), nsq.NewConfig())
	if err != nil {
		b.Fatal(err)
	}
	defer prod.Stop()
	prod.SetLogger(log.New(io.Discard, "", 0), nsq.LogLevelError)
	m := invalidate.Purge{V: 1, Group: "g", Pos: "mysql-bin.000001:4", Job: "0123456789abcdef", Part: 1, Parts: 1,
		SeenUnixNano: time.Now().UnixNano(), CaughtUpUnixNano: time.Now().UnixNano()}
	for k := 0; k < 10; k++ {
		m.Keys = append(m.Keys, fmt.Sprintf("item:%d:detail", 100000+k))
	}
	body, err := m.Marshal()
	if err != nil {
		b.Fatal(err)
	}
	batch := make([][]byte, per)
	for i := range batch {
		batch[i] = body
	}
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i += per {
		if per == 1 {
			err = prod.Publish(topic, body)
		} else {
			err = prod.MultiPublish(topic, batch)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
}
