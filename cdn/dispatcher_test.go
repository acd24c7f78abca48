package cdn_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/cdn"
	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/flashsync/flashsync/purge"
)

// consoleNode is one CDN node: a console on a real listener in front of one
// cache machine.
type consoleNode struct {
	name    string
	key     []byte
	addr    string
	machine *machine
	console *cdn.Console
	stop    func()
}

func startConsoleNode(t *testing.T, name string) *consoleNode {
	t.Helper()
	n := &consoleNode{name: name, key: []byte("key-of-" + name + "-0123456789"), machine: startMachine(t)}
	n.console = newConsole(t, cdn.ConsoleOptions{Key: n.key, Machines: []string{n.machine.addr()}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.addr = ln.Addr().String()
	n.serve(t, ln)
	return n
}

func (n *consoleNode) serve(t *testing.T, ln net.Listener) {
	n.stop = stacktest.Run(t, "console "+n.name, func(ctx context.Context) error {
		return n.console.Serve(ctx, ln, "", "")
	})
}

// restart listens on the node's old address again.
func (n *consoleNode) restart(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", n.addr)
	if err != nil {
		t.Fatal(err)
	}
	n.serve(t, ln)
}

func (n *consoleNode) hasPurged(target string) error {
	if !slices.Contains(n.machine.got(), "PURGE "+n.machine.addr()+target) {
		return fmt.Errorf("node %s has not purged %s (purged: %v)", n.name, target, n.machine.got())
	}
	return nil
}

type cascade struct {
	nsqd      *stacktest.NSQD
	publisher *invalidate.Publisher
	reg       *prometheus.Registry
	dispatch  *cdn.Dispatcher
}

func startCascade(t *testing.T, nodes []cdn.Node, maxAttempts uint16) *cascade {
	t.Helper()
	c := &cascade{nsqd: stacktest.StartNSQD(t), reg: prometheus.NewRegistry()}
	var names []string
	for _, n := range nodes {
		names = append(names, n.Name)
	}
	var err error
	c.publisher, err = invalidate.NewPublisher(invalidate.PublisherOptions{
		NSQDTCP: []string{c.nsqd.TCPAddr()}, NSQDHTTP: []string{c.nsqd.HTTPAddr()},
		HTTPGroups: []invalidate.Group{{Name: "web", Addrs: []string{"127.0.0.1:1"}}},
		CDNNodes:   names, Registerer: c.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.publisher.Close)
	if err := c.publisher.EnsureChannels(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.dispatch, err = cdn.NewDispatcher(cdn.DispatcherOptions{
		ConsumerOptions: purge.ConsumerOptions{NSQDTCP: []string{c.nsqd.TCPAddr()}, MaxAttempts: maxAttempts, Timeout: 2 * time.Second}, Nodes: nodes, Registerer: c.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	stacktest.RunAndClose(t, "dispatcher", c.dispatch)
	return c
}

func (c *cascade) publish(t *testing.T, urls ...string) {
	t.Helper()
	b := invalidate.NewBatch(0)
	for _, u := range urls {
		b.AddURL(0, u)
	}
	b.AddTag(0, "tag-"+urls[0][1:])
	if err := c.publisher.Publish(context.Background(), b, invalidate.Meta{Pos: "test:1", Seen: time.Now()}); err != nil {
		t.Fatal(err)
	}
}

func TestDispatcherReachesEveryNodeAndBuffersForADeadOne(t *testing.T) {
	var nodes []*consoleNode
	var cfg []cdn.Node
	for _, name := range []string{"a", "b", "c"} {
		n := startConsoleNode(t, name)
		nodes = append(nodes, n)
		cfg = append(cfg, cdn.Node{Name: name, ConsoleURL: "http://" + n.addr, Key: n.key})
	}
	c := startCascade(t, cfg, 5)

	start := time.Now()
	c.publish(t, "/p/1")
	for _, n := range nodes {
		// The console sends the URL and the tag purge concurrently: wait for both.
		stacktest.Eventually(t, 5*time.Second, func() error {
			if err := n.hasPurged("/p/1"); err != nil {
				return err
			}
			if !slices.Contains(n.machine.got(), "XKEY tag-p/1") {
				return fmt.Errorf("node %s: tag not purged: %v", n.name, n.machine.got())
			}
			return nil
		})
	}
	t.Logf("purge reached all three nodes in %v", time.Since(start))

	// Node c's console goes down: a and b are not delayed.
	down := nodes[2]
	down.stop()
	start = time.Now()
	c.publish(t, "/p/2")
	c.publish(t, "/p/3")
	for _, n := range nodes[:2] {
		for _, u := range []string{"/p/2", "/p/3"} {
			stacktest.Eventually(t, 2*time.Second, func() error { return n.hasPurged(u) })
		}
	}
	t.Logf("with node c down, a and b purged in %v", time.Since(start))
	stacktest.Eventually(t, 2*time.Second, func() error {
		if err := c.dispatch.Health(); err == nil {
			return fmt.Errorf("health ok while node c is down")
		}
		return nil
	})
	if err := down.hasPurged("/p/2"); err == nil {
		t.Fatal("node c purged /p/2 while its console was down")
	}

	// It comes back: its backlog is delivered.
	down.restart(t)
	start = time.Now()
	for _, u := range []string{"/p/2", "/p/3"} {
		stacktest.Eventually(t, 5*time.Second, func() error { return down.hasPurged(u) })
	}
	t.Logf("node c's backlog delivered %v after its restart", time.Since(start))
	stacktest.Eventually(t, 2*time.Second, func() error { return c.dispatch.Health() })
	if got := stacktest.MetricValue(t, c.reg, "flashsync_dispatcher_messages_total", map[string]string{"node": "c", "result": "unreachable"}); got == 0 {
		t.Error("no unreachable count for node c")
	}
	if got := stacktest.MetricValue(t, c.reg, "flashsync_dispatcher_dead_letters_total", nil); got != 0 {
		t.Errorf("dead letters %v, want 0: an unreachable console burns no attempts", got)
	}
}

func TestDispatcherDeadLettersAKeyMismatch(t *testing.T) {
	n := startConsoleNode(t, "a")
	const maxAttempts = 3
	c := startCascade(t, []cdn.Node{{Name: "a", ConsoleURL: "http://" + n.addr, Key: []byte("not-the-console-key-at-all")}}, maxAttempts)

	got := stacktest.ConsumeJSON[map[string]any](t, c.nsqd.TCPAddr(), invalidate.DeadLetterTopic("flashsync"))

	c.publish(t, "/p/1")
	select {
	case d := <-got:
		if d["node"] != "a" || d["attempts"] != float64(maxAttempts) || d["error"] == "" {
			t.Fatalf("dead letter %v", d)
		}
		t.Logf("dead letter: %v", d["error"])
	case <-time.After(30 * time.Second):
		t.Fatal("no dead letter")
	}
	if len(n.machine.got()) != 0 {
		t.Errorf("machine purged %v on requests signed with the wrong key", n.machine.got())
	}
}
