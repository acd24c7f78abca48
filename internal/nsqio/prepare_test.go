package nsqio_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flashsync/flashsync/internal/nsqio"
	"github.com/flashsync/flashsync/internal/stacktest"
)

var client = &http.Client{Timeout: 2 * time.Second}

// lookupTCP returns the TCP addresses nsqlookupd lists for topic.
func lookupTCP(t *testing.T, lookupdHTTP, topic string) []string {
	t.Helper()
	nsqds, err := nsqio.LookupdTopic(context.Background(), client, lookupdHTTP, topic)
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, n := range nsqds {
		addrs = append(addrs, n.TCPAddr)
	}
	slices.Sort(addrs)
	return addrs
}

// On return, every nsqd nsqlookupd knows has every topic and channel, and
// nsqlookupd lists them all for every topic: a consumer's first query finds
// them.
func TestPrepareLookupdTopics(t *testing.T) {
	t.Parallel()
	lookupd := stacktest.StartNSQLookupd(t)
	nsqds := []*stacktest.NSQD{stacktest.StartNSQDWithLookupd(t, lookupd.TCPAddr()), stacktest.StartNSQDWithLookupd(t, lookupd.TCPAddr())}
	waitListed(t, lookupd.HTTPAddr(), nsqds...)
	topics := map[string][]string{"fs.redis.a": {"r1", "r2"}, "fs.redis.b": {"r3"}}
	for topic := range topics {
		if got := lookupTCP(t, lookupd.HTTPAddr(), topic); len(got) != 0 {
			t.Fatalf("before: nsqlookupd lists %v for %s, want none", got, topic)
		}
	}

	if err := nsqio.PrepareLookupdTopics(context.Background(), client, []string{lookupd.HTTPAddr()}, topics, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, n := range nsqds {
		want = append(want, n.TCPAddr())
	}
	slices.Sort(want)
	for topic, chans := range topics {
		if got := lookupTCP(t, lookupd.HTTPAddr(), topic); !slices.Equal(got, want) {
			t.Errorf("nsqlookupd lists %v for %s, want %v", got, topic, want)
		}
		for _, n := range nsqds {
			if got := stacktest.NSQDChannels(t, n.HTTPAddr())[topic]; !slices.Equal(got, chans) {
				t.Errorf("nsqd %s: %s has channels %v, want %v", n.HTTPAddr(), topic, got, chans)
			}
		}
	}
	// Again: nothing changes, nothing fails.
	if err := nsqio.PrepareLookupdTopics(context.Background(), client, []string{lookupd.HTTPAddr()}, topics, 5*time.Second); err != nil {
		t.Fatalf("second time: %v", err)
	}
}

// Whatever is missing is reported, not waited for: the consumers still
// connect, and find the rest at a later poll.
func TestPrepareLookupdTopicsReportsWhatIsMissing(t *testing.T) {
	t.Parallel()
	topics := map[string][]string{"fs.redis.a": {"r1"}}
	prepare := func(t *testing.T, ctx context.Context, lookupds ...string) error {
		t.Helper()
		start := time.Now()
		err := nsqio.PrepareLookupdTopics(ctx, client, lookupds, topics, 5*time.Second)
		if d := time.Since(start); d > time.Second {
			t.Errorf("took %v, want it to give up at once", d)
		}
		if err == nil {
			t.Fatal("no error")
		}
		t.Logf("error: %v", err)
		return err
	}

	t.Run("nsqlookupd down", func(t *testing.T) {
		t.Parallel()
		down := fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t))
		if err := prepare(t, context.Background(), down); errors.Is(err, nsqio.ErrNoNSQD) || !strings.Contains(err.Error(), down) {
			t.Errorf("error %q does not name nsqlookupd %s as unreachable", err, down)
		}
	})
	t.Run("no nsqd registered", func(t *testing.T) {
		t.Parallel()
		lookupd := stacktest.StartNSQLookupd(t)
		if err := prepare(t, context.Background(), lookupd.HTTPAddr()); !errors.Is(err, nsqio.ErrNoNSQD) {
			t.Errorf("error %q, want %q", err, nsqio.ErrNoNSQD)
		}
	})
	t.Run("one nsqlookupd down", func(t *testing.T) {
		t.Parallel()
		// The other is used as if alone.
		down := fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t))
		lookupd := stacktest.StartNSQLookupd(t)
		n := stacktest.StartNSQDWithLookupd(t, lookupd.TCPAddr())
		waitListed(t, lookupd.HTTPAddr(), n)
		if err := prepare(t, context.Background(), down, lookupd.HTTPAddr()); !strings.Contains(err.Error(), down) {
			t.Errorf("error %q does not name nsqlookupd %s", err, down)
		}
		if got := lookupTCP(t, lookupd.HTTPAddr(), "fs.redis.a"); !slices.Equal(got, []string{n.TCPAddr()}) {
			t.Errorf("nsqlookupd lists %v, want [%s]", got, n.TCPAddr())
		}
	})
	t.Run("listed nsqd gone", func(t *testing.T) {
		t.Parallel()
		lookupd := stacktest.StartNSQLookupd(t)
		gone := stacktest.StartNSQDWithLookupd(t, lookupd.TCPAddr())
		live := stacktest.StartNSQDWithLookupd(t, lookupd.TCPAddr())
		waitListed(t, lookupd.HTTPAddr(), gone, live)
		// A stopped in-process nsqd stays listed, as a crashed host does.
		gone.Stop()
		if err := prepare(t, context.Background(), lookupd.HTTPAddr()); !strings.Contains(err.Error(), gone.HTTPAddr()) {
			t.Errorf("error %q does not name nsqd %s", err, gone.HTTPAddr())
		}
		// The live one is ready all the same.
		if got := lookupTCP(t, lookupd.HTTPAddr(), "fs.redis.a"); !slices.Equal(got, []string{live.TCPAddr()}) {
			t.Errorf("nsqlookupd lists %v, want [%s]", got, live.TCPAddr())
		}
		if got := stacktest.NSQDChannels(t, live.HTTPAddr())["fs.redis.a"]; !slices.Equal(got, []string{"r1"}) {
			t.Errorf("live nsqd has channels %v, want [r1]", got)
		}
	})
	t.Run("context ended", func(t *testing.T) {
		t.Parallel()
		lookupd := stacktest.StartNSQLookupd(t)
		n := stacktest.StartNSQDWithLookupd(t, lookupd.TCPAddr())
		waitListed(t, lookupd.HTTPAddr(), n)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := prepare(t, ctx, lookupd.HTTPAddr()); !errors.Is(err, context.Canceled) {
			t.Errorf("error %q, want %q", err, context.Canceled)
		}
	})
}

// waitListed waits until nsqlookupd lists every nsqd of nsqds in /nodes.
func waitListed(t *testing.T, lookupdHTTP string, nsqds ...*stacktest.NSQD) {
	t.Helper()
	stacktest.Eventually(t, 10*time.Second, func() error {
		nodes, err := nsqio.LookupdNSQDs(context.Background(), client, lookupdHTTP)
		if err != nil {
			return err
		}
		for _, n := range nsqds {
			if !slices.Contains(nodes, nsqio.NSQD{TCPAddr: n.TCPAddr(), HTTPAddr: n.HTTPAddr()}) {
				return fmt.Errorf("nsqlookupd lists %v, not %s", nodes, n.TCPAddr())
			}
		}
		return nil
	})
}
