package admin_test

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/flashsync/flashsync/cdn"
	"github.com/flashsync/flashsync/internal/stacktest"
)

// health reads GET /api/v1/health and returns its targets by
// "tier group target".
func (f *fixture) health(t *testing.T) (map[string]map[string]any, map[string]any) {
	t.Helper()
	status, out := f.call(t, "GET", "/api/v1/health", viewerToken, "")
	if status != http.StatusOK {
		t.Fatalf("health: %d %v", status, out)
	}
	targets := map[string]map[string]any{}
	for _, tg := range out["targets"].([]any) {
		tg := tg.(map[string]any)
		targets[fmt.Sprintf("%s %s %s", tg["tier"], tg["group"], tg["target"])] = tg
	}
	return targets, out
}

func TestHealth(t *testing.T) {
	console, err := cdn.NewConsole(cdn.ConsoleOptions{Key: []byte("0123456789abcdef"), Machines: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	up := httptest.NewServer(console.Handler())
	t.Cleanup(up.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := ln.Addr().String()
	ln.Close()
	nodes := fmt.Sprintf(`
[[cdn_node]]
name = "edge-up"
console_url = %q
key = "0123456789abcdef"

[[cdn_node]]
name = "edge-down"
console_url = "http://%s"
key = "0123456789abcdef"
`, up.URL, down)
	f := newFixtureWith(t, fixtureOptions{admin: nodes})
	ga0, ga1, gb, v := "redis ga "+f.ga[0].Addr(), "redis ga "+f.ga[1].Addr(), "redis gb "+f.gb.Addr(), "http varnish "+f.varnish.Addr()

	t.Run("every target", func(t *testing.T) {
		targets, out := f.health(t)
		if len(targets) != 6 {
			t.Errorf("%d targets, want 6: %v", len(targets), out)
		}
		for _, k := range []string{ga0, ga1, gb, v, "cdn cdn edge-up"} {
			if tg := targets[k]; tg == nil || tg["up"] != true || tg["error"] != nil || tg["backlog"] != 0.0 || tg["in_flight"] != 0.0 {
				t.Errorf("%s: %v, want up with no backlog", k, tg)
			}
		}
		if tg := targets["cdn cdn edge-down"]; tg == nil || tg["up"] != false || !strings.Contains(fmt.Sprint(tg["error"]), down) {
			t.Errorf("edge-down: %v, want down with its error", tg)
		}
		nsqd := out["nsqd"].([]any)
		if len(nsqd) != 1 || nsqd[0].(map[string]any)["up"] != true || nsqd[0].(map[string]any)["addr"] != f.nsqd.HTTPAddr() {
			t.Errorf("nsqd %v", nsqd)
		}
		if _, err := time.Parse(time.RFC3339Nano, fmt.Sprint(out["checked"])); err != nil {
			t.Errorf("checked %v: %v", out["checked"], err)
		}
	})

	t.Run("a stopped replica is down and its backlog grows", func(t *testing.T) {
		f.ga[1].Stop()
		targets, _ := f.health(t)
		if tg := targets[ga1]; tg["up"] != false || !strings.Contains(fmt.Sprint(tg["error"]), f.ga[1].Addr()) {
			t.Errorf("stopped replica: %v, want down with its error", tg)
		}
		if tg := targets[ga0]; tg["up"] != true {
			t.Errorf("running replica: %v", tg)
		}
		var ids []string
		for i := range 3 {
			status, out := f.call(t, "POST", "/api/v1/purges", operatorToken, fmt.Sprintf(`{"reason":"r%d","keys":["k%d"],"groups":["ga"]}`, i, i))
			if status != http.StatusAccepted {
				t.Fatalf("purge: %d %v", status, out)
			}
			ids = append(ids, out["job"].(string))
		}
		// One message per purge on each replica's channel: the running
		// replica's drain, the stopped one's wait.
		stacktest.Eventually(t, 20*time.Second, func() error {
			targets, _ := f.health(t)
			if b := targets[ga1]["backlog"]; b != 3.0 {
				return fmt.Errorf("stopped replica's backlog %v, want 3", b)
			}
			if b := targets[ga0]["backlog"]; b != 0.0 {
				return fmt.Errorf("running replica's backlog %v, want 0", b)
			}
			return nil
		})
		targets, _ = f.health(t)
		if n := targets[ga1]["in_flight"].(float64); n < 1 || n > 3 {
			t.Errorf("stopped replica: %v in flight, want 1 to 3 (the purger holds what it got)", n)
		}
		if b := targets[gb]["backlog"]; b != 0.0 {
			t.Errorf("gb's backlog %v: nothing was sent to it", b)
		}
		f.ga[1].Start()
		stacktest.Eventually(t, 20*time.Second, func() error {
			targets, _ := f.health(t)
			if tg := targets[ga1]; tg["up"] != true || tg["backlog"] != 0.0 {
				return fmt.Errorf("restarted replica: %v", tg)
			}
			return nil
		})
		for _, id := range ids {
			f.waitJob(t, id)
		}
	})

	t.Run("auth", func(t *testing.T) {
		if status, out := f.call(t, "GET", "/api/v1/health", "", ""); status != http.StatusUnauthorized {
			t.Errorf("without a token: %d %v", status, out)
		}
	})
}
