package stacktest

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// An nsqd process loses a channel's queued messages to Kill (SIGKILL: they
// were in memory) and keeps them across Stop (SIGTERM: it writes them to
// its data directory), coming back on the same ports and data either way.
func TestNSQDProcessKillLosesStopKeeps(t *testing.T) {
	n := StartNSQDProcess(t)
	const topic, channel, queued = "t", "c", 5
	post := func(path, body string) {
		t.Helper()
		resp, err := http.Post("http://"+n.HTTPAddr()+path, "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST %s: %s %s", path, resp.Status, b)
		}
	}
	depth := func() int {
		t.Helper()
		s, ok := NSQDChannel(t, n.HTTPAddr(), topic, channel)
		if !ok {
			t.Fatalf("no channel %s/%s", topic, channel)
		}
		return s.Depth
	}
	post("/topic/create?topic="+topic, "")
	post("/channel/create?topic="+topic+"&channel="+channel, "")
	publish := func() {
		t.Helper()
		for i := range queued {
			post("/pub?topic="+topic, fmt.Sprint(i))
		}
		Eventually(t, 5*time.Second, func() error {
			if d := depth(); d != queued {
				return fmt.Errorf("depth %d, want %d", d, queued)
			}
			return nil
		})
	}
	publish()
	pid := n.PID()
	n.Kill()
	n.Start()
	if n.PID() == pid || n.PID() == 0 {
		t.Fatalf("pid %d after the restart, was %d", n.PID(), pid)
	}
	if d := depth(); d != 0 {
		t.Fatalf("depth %d after SIGKILL and a restart, want 0: the messages were in memory", d)
	}
	publish()
	n.Stop()
	n.Start()
	if d := depth(); d != queued {
		t.Fatalf("depth %d after SIGTERM and a restart, want %d", d, queued)
	}
}
