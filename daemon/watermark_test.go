package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"

	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/daemon"
	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
)

// /healthz shows each Redis replica's watermark and staleness, and a
// watermark stuck on a missing range makes it 503, naming the range, until
// the replica is flushed and follows again.
func TestHealthzReplicaWatermarks(t *testing.T) {
	nsqd := stacktest.StartNSQD(t)
	srv := stacktest.StartRedis(t)
	c := stacktest.Redis(t, srv.Addr())
	ctx := context.Background()
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		t.Fatal(err)
	}
	runID := ""
	for _, l := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(l, "run_id:"); ok {
			runID = v
		}
	}
	// The replica had everything up to offset 0 applied.
	if err := c.MSet(ctx, invalidate.WatermarkKey, "1:0:0", invalidate.WatermarkKey+":run_id", runID).Err(); err != nil {
		t.Fatal(err)
	}
	cfg, err := configs.Parse([]byte(fmt.Sprintf(`
[nsq]
nsqd_tcp = [%q]
nsqd_http = [%q]

[http]
addr = "127.0.0.1:0"

[purger]
gap_timeout = "3s"
check_interval = "50ms"

[[redis_group]]
name = "g"
replicas = [%q]
`, nsqd.TCPAddr(), nsqd.HTTPAddr(), srv.Addr())))
	if err != nil {
		t.Fatal(err)
	}
	n, err := daemon.New(daemon.Options{Config: cfg, Roles: []string{daemon.RoleRedisPurger}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	stacktest.RunAndClose(t, "daemon", n)
	prod, err := nsq.NewProducer(nsqd.TCPAddr(), nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(prod.Stop)
	caughtUp := time.Now().Add(-time.Second)
	publish := func(from, to uint64) {
		t.Helper()
		body := fmt.Sprintf(`{"v":3,"group":"g","heartbeat":true,"from":%d,"to":%d,"part":1,"parts":1,"caught_up_unix_nano":%d}`, from, to, caughtUp.UnixNano())
		if err := prod.Publish(invalidate.RedisTopic("flashsync", "g"), []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	type replica struct {
		Group            string     `json:"group"`
		Replica          string     `json:"replica"`
		State            string     `json:"state"`
		Reason           string     `json:"reason"`
		To               uint64     `json:"to"`
		CaughtUp         *time.Time `json:"caught_up"`
		StalenessSeconds *float64   `json:"staleness_seconds"`
		WaitingFor       *[2]uint64 `json:"waiting_for"`
		Since            *time.Time `json:"since"`
	}
	healthz := func() (int, string, replica) {
		t.Helper()
		resp, err := http.Get("http://" + n.HTTPAddr() + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var h struct {
			Roles    map[string]string `json:"roles"`
			Replicas []replica         `json:"replicas"`
		}
		if err := json.Unmarshal(b, &h); err != nil || len(h.Replicas) != 1 {
			t.Fatalf("healthz %s: %v", b, err)
		}
		return resp.StatusCode, h.Roles[daemon.RoleRedisPurger], h.Replicas[0]
	}

	publish(0, 10)
	stacktest.Eventually(t, 10*time.Second, func() error {
		if code, _, r := healthz(); code != http.StatusOK || r.State != "ok" || r.To != 10 || r.StalenessSeconds == nil || *r.StalenessSeconds < 1 {
			return fmt.Errorf("healthz %d %+v", code, r)
		}
		return nil
	})
	publish(20, 30) // (10, 20] never comes
	var stuck replica
	var role string
	stacktest.Eventually(t, 10*time.Second, func() error {
		code, rl, r := healthz()
		if code != http.StatusServiceUnavailable || r.State != "gap" {
			return fmt.Errorf("healthz %d %+v", code, r)
		}
		stuck, role = r, rl
		return nil
	})
	t.Logf("stuck: purger role %q, replica %+v", role, stuck)
	if stuck.WaitingFor == nil || *stuck.WaitingFor != [2]uint64{10, 20} || stuck.Since == nil || stuck.To != 10 ||
		!strings.Contains(role, srv.Addr()) || !strings.Contains(role, "(10, 20]") {
		t.Errorf("stuck replica %+v, role %q: want waiting for (10, 20] since a time, named in the role", stuck, role)
	}
	stacktest.Eventually(t, 10*time.Second, func() error {
		if code, _, r := healthz(); code != http.StatusOK || r.State != "ok" || r.To != 30 {
			return fmt.Errorf("healthz %d %+v", code, r)
		}
		return nil
	})
}
