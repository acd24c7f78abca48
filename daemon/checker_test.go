package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/flashsync/flashsync/cacheaside"
	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/consistency"
	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/nsqio/go-nsq"
)

func TestConsistencyWithoutTheChecker(t *testing.T) {
	_, srv := testNode(t, RoleRedisPurger)
	status, body := get(t, srv.URL+"/consistency")
	if status != http.StatusNotFound || body["error"] == nil {
		t.Errorf("GET /consistency without the checker: %d %v, want 404 with an error", status, body)
	}
}

// The checker role of a daemon finds a stale value on its replica and
// lists it on GET /consistency.
func TestCheckerRoleReportsStaleValue(t *testing.T) {
	nsqd, cache := stacktest.StartNSQD(t), stacktest.StartRedis(t)
	cfg, err := configs.Parse(fmt.Appendf(nil, `
[nsq]
nsqd_tcp = [%q]
nsqd_http = [%q]

[http]
addr = "127.0.0.1:0"

[[redis_group]]
name = "hot"
replicas = [%q]

[checker]
sample_rate = 1.0
windows = ["100ms"]
`, nsqd.TCPAddr(), nsqd.HTTPAddr(), cache.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	// Only the checker: no purger deletes the stale value.
	n, err := New(Options{Config: cfg, Roles: []string{RoleChecker}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	stacktest.Run(t, "daemon", n.Run)

	topic := invalidate.RedisTopic(invalidate.DefaultTopicPrefix, "hot")
	stacktest.Eventually(t, 10*time.Second, func() error {
		for _, ch := range stacktest.NSQDChannels(t, nsqd.HTTPAddr())[topic] {
			if ch == consistency.Channel {
				return nil
			}
		}
		return fmt.Errorf("no checker channel on %s yet", topic)
	})
	seen := time.Now()
	if err := stacktest.Redis(t, cache.Addr()).Set(context.Background(), "item:1", cacheaside.EncodeValue(seen.Add(-time.Hour), []byte("old")), 0).Err(); err != nil {
		t.Fatal(err)
	}
	prod, err := nsq.NewProducer(nsqd.TCPAddr(), nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Stop()
	msg := &invalidate.Purge{V: 1, Group: "hot", Keys: []string{"item:1"}, Pos: "bin.000003:900", CommitUnix: seen.Unix(),
		SeenUnixNano: seen.UnixNano(), From: 3<<32 | 800, To: 3<<32 | 900, Part: 1, Parts: 1}
	body, err := msg.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := prod.Publish(topic, body); err != nil {
		t.Fatal(err)
	}
	addr := "http://" + n.HTTPAddr() + "/consistency"
	stacktest.Eventually(t, 10*time.Second, func() error {
		status, rep := get(t, addr)
		recent, _ := rep["recent"].([]any)
		if status != http.StatusOK || len(recent) != 1 {
			return fmt.Errorf("GET /consistency: %d %v", status, rep)
		}
		return nil
	})
	status, rep := get(t, addr)
	w, _ := rep["windows"].(map[string]any)["100ms"].(map[string]any)
	inc, _ := rep["recent"].([]any)[0].(map[string]any)
	if status != http.StatusOK || w["inconsistent"] != 1.0 || w["consistent"] != 0.0 || w["unknown"] != 0.0 || w["nines"] != 0.0 {
		t.Errorf("window 100ms: %v", w)
	}
	if inc["key"] != "item:1" || inc["group"] != "hot" || inc["replica"] != cache.Addr() || inc["window"] != "100ms" ||
		inc["pos"] != "bin.000003:900" || inc["commit_unix"] != float64(seen.Unix()) || inc["purge_applied"] != false {
		t.Errorf("inconsistency %v", inc)
	}
	if age, _ := inc["value_age_seconds"].(float64); age < 3600 {
		t.Errorf("value_age_seconds %v, want over an hour", inc["value_age_seconds"])
	}
}
