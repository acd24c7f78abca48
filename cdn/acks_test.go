package cdn_test

import (
	"testing"
	"time"

	"github.com/flashsync/flashsync/cdn"
	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
)

// TestDispatcherAcksJobs checks every node acknowledges the job of a batch:
// ok once its console purged, not ok once the message is dead-lettered.
func TestDispatcherAcksJobs(t *testing.T) {
	good, bad := startConsoleNode(t, "a"), startConsoleNode(t, "b")
	var job string
	c := startCascade(t, []cdn.Node{
		{Name: "a", ConsoleURL: "http://" + good.addr, Key: good.key},
		{Name: "b", ConsoleURL: "http://" + bad.addr, Key: []byte("not-the-console-key-at-all")},
	}, 2)
	acks := stacktest.Consume(t, c.nsqd.TCPAddr(), invalidate.AckTopic("flashsync"), invalidate.AckChannel("test"), invalidate.DecodeAck)

	c.publish(t, "/p/1")
	got := map[string]*invalidate.Ack{}
	for len(got) < 2 {
		select {
		case a := <-acks:
			if a.Tier != invalidate.TierCDN {
				continue // the http group's instance is not running here
			}
			got[a.Target] = a
			if job == "" {
				job = a.Job
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("acks received: %v", got)
		}
	}
	if a := got["a"]; !a.OK || a.Group != invalidate.CDNGroup || a.LatencyMS <= 0 || a.At.IsZero() {
		t.Errorf("node a ack %+v", a)
	}
	if b := got["b"]; b.OK || b.Error == "" || b.Job != job || len(job) != 16 {
		t.Errorf("node b ack %+v (job %q)", b, job)
	}
}
