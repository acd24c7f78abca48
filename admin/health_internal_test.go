package admin

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flashsync/flashsync/invalidate"
)

// silentListener accepts connections and never answers: a target that
// hangs. Its connections are closed when the test ends.
func silentListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// closedPort is an address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// Targets that hang or refuse are down with their error, within the total
// deadline; with one check in flight at a time, those never started say
// so. Nothing is an error of the check as a whole.
func TestHealthCheckBounded(t *testing.T) {
	silent, closed := silentListener(t), closedPort(t)
	rules, err := invalidate.NewRulesWithGroups(nil,
		[]invalidate.Group{{Name: "ga", Addrs: []string{silent, closed}}},
		[]invalidate.Group{{Name: "web", Addrs: []string{silent}}})
	if err != nil {
		t.Fatal(err)
	}
	h, err := newHealth(HealthOptions{NSQDHTTP: []string{closed}, Timeout: 300 * time.Millisecond, CheckTimeout: 50 * time.Millisecond, Concurrency: 1,
		CDNConsoles: []CDNConsole{{Name: "edge1", URL: "http://" + silent}}})
	if err != nil {
		t.Fatal(err)
	}
	out := h.check(context.Background(), rules, "fs")
	want := []struct {
		tier   invalidate.Tier
		group  string
		target string
	}{
		{invalidate.TierRedis, "ga", silent}, {invalidate.TierRedis, "ga", closed},
		{invalidate.TierHTTP, "web", silent}, {invalidate.TierCDN, invalidate.CDNGroup, "edge1"},
	}
	if len(out.Targets) != len(want) {
		t.Fatalf("targets %+v", out.Targets)
	}
	for i, w := range want {
		got := out.Targets[i]
		if got.Tier != w.tier || got.Group != w.group || got.Target != w.target || got.Up || got.Error == "" {
			t.Errorf("target %d: %+v, want %s %s %s down with its error", i, got, w.tier, w.group, w.target)
		}
	}
	if len(out.NSQD) != 1 || out.NSQD[0].Up || !strings.Contains(out.NSQD[0].Error, "nsqd "+closed) {
		t.Errorf("nsqd %+v", out.NSQD)
	}
	for _, tg := range out.Targets {
		t.Logf("%s %s %s: %s", tg.Tier, tg.Group, tg.Target, tg.Error)
	}
	if out.Checked.IsZero() {
		t.Error("no check time")
	}
}

func TestHealthOptionsCAFile(t *testing.T) {
	if _, err := newHealth(HealthOptions{CDNConsoles: []CDNConsole{{Name: "edge1", URL: "https://x", CAFile: "/nonexistent/ca.pem"}}}); err == nil ||
		!strings.Contains(err.Error(), "cdn node edge1: ca_file") {
		t.Errorf("missing CA file: %v", err)
	}
}
