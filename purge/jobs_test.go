package purge_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/flashsync/flashsync/jobs"
	"github.com/flashsync/flashsync/purge"
)

// refusingVCL writes the shipped VCL with a purgers ACL that does not list
// us: PURGE answers 405.
func refusingVCL(t *testing.T) string {
	t.Helper()
	vcl, err := os.ReadFile(flashsyncVCL)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(vcl), "\"127.0.0.1\";") {
		t.Fatal("flashsync.vcl's purgers ACL has no \"127.0.0.1\"; entry")
	}
	dir, err := os.MkdirTemp("", "flashsync-vcl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	path := filepath.Join(dir, "refusing.vcl")
	if err := os.WriteFile(path, []byte(strings.Replace(string(vcl), "\"127.0.0.1\";", "\"192.0.2.1\";", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestPurgeJobs publishes batches through a publisher whose OnPublished
// feeds a job store, to a Redis group of 2 private replicas and HTTP groups
// of private Varnish instances (one refusing purges), and follows the jobs
// through the acks the purgers send.
func TestPurgeJobs(t *testing.T) {
	nsqd := stacktest.StartNSQD(t)
	backend := pageBackend(t)
	backendAddr := strings.TrimPrefix(backend.URL, "http://")
	good := stacktest.StartVarnish(t, flashsyncVCL, backendAddr)
	bad := stacktest.StartVarnish(t, refusingVCL(t), backendAddr)
	redisGroup := purge.RedisGroup{Name: "hot"}
	for i := 0; i < 2; i++ {
		redisGroup.Replicas = append(redisGroup.Replicas, stacktest.StartRedis(t).Addr())
	}
	httpGroups := []purge.HTTPGroup{{Name: "web", Instances: []string{good.Addr()}}, {Name: "bad", Instances: []string{bad.Addr()}}}
	tcp := []string{nsqd.TCPAddr()}

	reg := prometheus.NewRegistry()
	store, err := jobs.New(jobs.Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := invalidate.NewPublisher(invalidate.PublisherOptions{
		NSQDTCP: tcp, NSQDHTTP: []string{nsqd.HTTPAddr()},
		Groups: []invalidate.Group{{Name: "hot", Addrs: redisGroup.Replicas}},
		HTTPGroups: []invalidate.Group{
			{Name: "web", Addrs: httpGroups[0].Instances}, {Name: "bad", Addrs: httpGroups[1].Instances},
		},
		OnPublished: store.Expect, Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pub.Close)
	if err := pub.EnsureChannels(context.Background()); err != nil {
		t.Fatal(err)
	}
	redisPurger, err := purge.NewRedisPurger(purge.RedisPurgerOptions{
		ConsumerOptions: purge.ConsumerOptions{NSQDTCP: tcp, MaxAttempts: 2}, Groups: []purge.RedisGroup{redisGroup}, Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	httpPurger, err := purge.NewHTTPPurger(purge.HTTPPurgerOptions{
		ConsumerOptions: purge.ConsumerOptions{NSQDTCP: tcp, MaxAttempts: 2, Timeout: time.Second}, Groups: httpGroups, Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	stacktest.RunAndClose(t, "redis purger", redisPurger)
	stacktest.RunAndClose(t, "http purger", httpPurger)

	// A batch for the Redis group and the good instance.
	rdb := stacktest.Redis(t, redisGroup.Replicas[0])
	if err := rdb.Set(context.Background(), "item:1", "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	b := invalidate.NewBatch(1)
	b.Add(0, "item:1")
	b.AddURL(0, "/item/1.html")
	b.AddTag(0, "item-1")
	if err := pub.Publish(context.Background(), b, invalidate.Meta{Pos: "p1", Seen: time.Now()}); err != nil {
		t.Fatal(err)
	}
	recent := store.Recent(1)
	if len(recent) != 1 || len(recent[0].ID) != 16 {
		t.Fatalf("recent jobs %+v, want one with a 16-character ID", recent)
	}
	id := recent[0].ID
	// The acks wait in the jobs channel: nothing reads it yet.
	time.Sleep(200 * time.Millisecond)
	j, ok := store.Get(id)
	if !ok || j.State != jobs.StatePending || j.Pending != 3 || len(j.Targets) != 3 {
		t.Fatalf("job before its acks are read: %+v", j)
	}
	stacktest.Run(t, "acks consumer", func(ctx context.Context) error {
		return store.Consume(ctx, jobs.ConsumerOptions{NSQDTCP: tcp})
	})
	stacktest.Eventually(t, 10*time.Second, func() error {
		if j, _ := store.Get(id); j.State != jobs.StateDone {
			return fmt.Errorf("job %s: %s (%d pending)", id, j.State, j.Pending)
		}
		return nil
	})
	j, _ = store.Get(id)
	want := map[string]string{redisGroup.Replicas[0]: "redis/hot", redisGroup.Replicas[1]: "redis/hot", good.Addr(): "http/web"}
	for _, tg := range j.Targets {
		if want[tg.Target] != string(tg.Tier)+"/"+tg.Group || tg.State != jobs.StateDone || tg.LatencyMS <= 0 || tg.AckedAt == nil {
			t.Errorf("target %+v", tg)
		}
		delete(want, tg.Target)
	}
	if len(want) != 0 || j.Finished == nil || j.LatencyMS <= 0 || j.Done != 3 {
		t.Errorf("job %+v; targets missing: %v", j, want)
	}
	if n, _ := rdb.Exists(context.Background(), "item:1").Result(); n != 0 {
		t.Errorf("item:1 still in %s", redisGroup.Replicas[0])
	}

	// A batch the refusing instance dead-letters: the job fails.
	b = invalidate.NewBatch(0)
	b.AddURL(0, "/item/2.html")
	b.AddURL(1, "/item/2.html")
	if err := pub.Publish(context.Background(), b, invalidate.Meta{Pos: "p2", Seen: time.Now()}); err != nil {
		t.Fatal(err)
	}
	id2 := store.Recent(1)[0].ID
	if id2 == id {
		t.Fatal("second batch has the first one's job ID")
	}
	stacktest.Eventually(t, 20*time.Second, func() error {
		if j, _ := store.Get(id2); j.State != jobs.StateFailed {
			return fmt.Errorf("job %s: %s (%d pending)", id2, j.State, j.Pending)
		}
		return nil
	})
	j, _ = store.Get(id2)
	if j.Done != 1 || j.Failed != 1 || len(j.Targets) != 2 {
		t.Fatalf("failed job %+v", j)
	}
	for _, tg := range j.Targets {
		if tg.Target == bad.Addr() && (tg.State != jobs.StateFailed || !strings.Contains(tg.Error, "405")) {
			t.Errorf("refusing instance %+v", tg)
		}
		if tg.Target == good.Addr() && tg.State != jobs.StateDone {
			t.Errorf("good instance %+v", tg)
		}
	}
	for state, n := range map[string]float64{"done": 1, "failed": 1} {
		if got := stacktest.MetricValue(t, reg, "flashsync_jobs_total", map[string]string{"state": state}); got != n {
			t.Errorf("jobs_total{%s} = %v, want %v", state, got, n)
		}
	}
	if got := stacktest.MetricValue(t, reg, "flashsync_jobs_tracked", nil); got != 2 {
		t.Errorf("jobs_tracked = %v, want 2", got)
	}
	if got := stacktest.MetricValue(t, reg, "flashsync_purger_acks_dropped_total", nil); got != 0 {
		t.Errorf("acks_dropped_total = %v, want 0", got)
	}
}

// TestAckSenderDropsWhenNSQDIsDown checks an ack that cannot be published
// is counted, not retried or blocking.
func TestAckSenderDropsWhenNSQDIsDown(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, err := purge.NewAckSender(purge.AckSenderOptions{
		NSQDTCP: []string{"127.0.0.1:1"}, Tier: "redis", Timeout: 200 * time.Millisecond, Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	// A second sender on the same registry shares the metric.
	if _, err := purge.NewAckSender(purge.AckSenderOptions{Tier: "http", Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := 0; i < 3; i++ {
		s.Send(invalidate.Ack{Job: "j", Target: "t", OK: true})
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("Send took %v", d)
	}
	s.Close()
	if got := stacktest.MetricValue(t, reg, "flashsync_purger_acks_dropped_total", map[string]string{"tier": "redis"}); got != 3 {
		t.Errorf("acks_dropped_total = %v, want 3", got)
	}
}
