package purge_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/flashsync/flashsync/purge"
)

type purgeFixture struct {
	nsqd      *stacktest.NSQD
	groups    []purge.RedisGroup
	clients   map[string]*redis.Client
	publisher *invalidate.Publisher
	reg       *prometheus.Registry
}

// startPurge starts an nsqd, groups x replicas private Redis servers, a
// publisher with its channels created, and a purger running until cleanup.
func startPurge(t *testing.T, groups, replicas int, maxAttempts uint16) *purgeFixture {
	t.Helper()
	f := &purgeFixture{nsqd: stacktest.StartNSQD(t), clients: map[string]*redis.Client{}, reg: prometheus.NewRegistry()}
	var gr []invalidate.Group
	for g := 0; g < groups; g++ {
		grp := purge.RedisGroup{Name: fmt.Sprintf("g%d", g)}
		for r := 0; r < replicas; r++ {
			srv := stacktest.StartRedis(t)
			grp.Replicas = append(grp.Replicas, srv.Addr())
			f.clients[srv.Addr()] = stacktest.Redis(t, srv.Addr())
		}
		f.groups = append(f.groups, grp)
		gr = append(gr, invalidate.Group{Name: grp.Name, Addrs: grp.Replicas})
	}
	var err error
	f.publisher, err = invalidate.NewPublisher(invalidate.PublisherOptions{
		NSQDTCP: []string{f.nsqd.TCPAddr()}, NSQDHTTP: []string{f.nsqd.HTTPAddr()},
		Groups: gr, Registerer: f.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.publisher.Close)
	if err := f.publisher.EnsureChannels(context.Background()); err != nil {
		t.Fatal(err)
	}
	purger, err := purge.NewRedisPurger(purge.RedisPurgerOptions{
		ConsumerOptions: purge.ConsumerOptions{NSQDTCP: []string{f.nsqd.TCPAddr()}, MaxAttempts: maxAttempts}, Groups: f.groups, Registerer: f.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	stacktest.RunAndClose(t, "purger", purger)
	return f
}

func TestPublishPurgesEveryReplicaOfItsGroupOnly(t *testing.T) {
	f := startPurge(t, 2, 2, 5)
	ctx := context.Background()
	for _, c := range f.clients {
		c.Set(ctx, "k1", "v", 0)
		c.Set(ctx, "k2", "v", 0)
	}
	b := invalidate.NewBatch(2)
	b.Add(0, "k1")
	b.Add(1, "k2")
	if err := f.publisher.Publish(ctx, b, invalidate.Meta{Pos: "test:1", Seen: time.Now()}); err != nil {
		t.Fatal(err)
	}
	want := map[int]string{0: "k1", 1: "k2"}
	for g, grp := range f.groups {
		for _, addr := range grp.Replicas {
			stacktest.Eventually(t, 2*time.Second, func() error {
				if n := f.clients[addr].Exists(ctx, want[g]).Val(); n != 0 {
					return fmt.Errorf("%s still has %s", addr, want[g])
				}
				return nil
			})
		}
	}
	// The other group's key was not part of its batch and must survive.
	for g, grp := range f.groups {
		other := want[1-g]
		for _, addr := range grp.Replicas {
			if n := f.clients[addr].Exists(ctx, other).Val(); n != 1 {
				t.Errorf("%s (group %s) lost %s, which was routed to the other group", addr, grp.Name, other)
			}
		}
	}
	if got := stacktest.MetricValue(t, f.reg, "flashsync_invalidate_publishes_total", map[string]string{"result": "ok"}); got != 1 {
		t.Errorf("publishes_total{ok} = %v, want 1", got)
	}
}

func TestPoisonMessageIsDeadLetteredAfterMaxAttempts(t *testing.T) {
	const maxAttempts = 3
	f := startPurge(t, 1, 2, maxAttempts)
	prod, err := nsq.NewProducer(f.nsqd.TCPAddr(), nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Stop()

	type dead struct {
		Replica  string `json:"replica"`
		Attempts uint16 `json:"attempts"`
		Error    string `json:"error"`
		Body     []byte `json:"body"`
	}
	got := stacktest.ConsumeJSON[dead](t, f.nsqd.TCPAddr(), invalidate.DeadLetterTopic("flashsync"))

	poison := []byte(`{"v":99,"keys":["x"]}`)
	if err := prod.Publish(invalidate.RedisTopic("flashsync", "g0"), poison); err != nil {
		t.Fatal(err)
	}
	// One dead letter per replica channel: each replica gave up on its copy.
	seen := map[string]bool{}
	deadline := time.After(30 * time.Second)
	for len(seen) < 2 {
		select {
		case d := <-got:
			if d.Attempts != maxAttempts || string(d.Body) != string(poison) || d.Error == "" {
				t.Fatalf("dead letter %+v, want attempts %d, the original body and the error", d, maxAttempts)
			}
			seen[d.Replica] = true
		case <-deadline:
			t.Fatalf("dead letters from %v only, want both replicas", seen)
		}
	}
	for _, addr := range f.groups[0].Replicas {
		if !seen[addr] {
			t.Errorf("no dead letter from replica %s", addr)
		}
	}
	stacktest.Eventually(t, 2*time.Second, func() error {
		if n := stacktest.MetricValue(t, f.reg, "flashsync_purger_dead_letters_total", nil); n != 2 {
			return fmt.Errorf("dead_letters_total = %v, want 2", n)
		}
		return nil
	})
}
