package purge_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/flashsync/flashsync/purge"
)

// Several nsqd behind one nsqlookupd: publishers write to any nsqd, purgers
// find every nsqd through nsqlookupd. A message is only in the channels of
// the nsqd it was published to, so this works only if every nsqd has every
// replica's channel (EnsureChannels) and every purger reads every nsqd.

// lookupdAndTwoNSQD starts a private nsqlookupd and two private nsqd that
// register with it.
func lookupdAndTwoNSQD(t *testing.T) (*stacktest.NSQLookupd, *stacktest.NSQD, *stacktest.NSQD) {
	t.Helper()
	lookupd := stacktest.StartNSQLookupd(t)
	return lookupd, stacktest.StartNSQDWithLookupd(t, lookupd.TCPAddr()), stacktest.StartNSQDWithLookupd(t, lookupd.TCPAddr())
}

// redisGroups starts groups x replicas private Redis servers.
func redisGroups(t *testing.T, groups, replicas int) ([]purge.RedisGroup, []invalidate.Group, map[string]*redis.Client) {
	t.Helper()
	var cg []purge.RedisGroup
	var gr []invalidate.Group
	clients := map[string]*redis.Client{}
	for g := 0; g < groups; g++ {
		grp := purge.RedisGroup{Name: fmt.Sprintf("g%d", g)}
		for r := 0; r < replicas; r++ {
			srv := stacktest.StartRedis(t)
			grp.Replicas = append(grp.Replicas, srv.Addr())
			clients[srv.Addr()] = stacktest.Redis(t, srv.Addr())
		}
		cg = append(cg, grp)
		gr = append(gr, invalidate.Group{Name: grp.Name, Addrs: grp.Replicas})
	}
	return cg, gr, clients
}

// newPublisher returns a publisher over the given nsqd, closed at cleanup.
func newPublisher(t *testing.T, prefix string, gr []invalidate.Group, reg prometheus.Registerer, nsqds ...[2]string) *invalidate.Publisher {
	t.Helper()
	opts := invalidate.PublisherOptions{TopicPrefix: prefix, Groups: gr, Registerer: reg, Timeout: 2 * time.Second}
	for _, n := range nsqds {
		opts.NSQDTCP = append(opts.NSQDTCP, n[0])
		opts.NSQDHTTP = append(opts.NSQDHTTP, n[1])
	}
	p, err := invalidate.NewPublisher(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func addrs(n *stacktest.NSQD) [2]string { return [2]string{n.TCPAddr(), n.HTTPAddr()} }

// runPurger runs a purger until cleanup and returns its metrics.
func runPurger(t *testing.T, opts purge.RedisPurgerOptions) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts.Registerer = reg
	purger, err := purge.NewRedisPurger(opts)
	if err != nil {
		t.Fatal(err)
	}
	stacktest.RunAndClose(t, "purger", purger)
	return reg
}

// getJSON decodes the JSON answer of an nsqd or nsqlookupd HTTP GET.
func getJSON(rawURL string, v any) error {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(rawURL)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", rawURL, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// waitRegistered waits until the nsqlookupd at lookupdHTTP lists every nsqd
// of nsqdTCP for every topic, so a purger's first query finds them all.
func waitRegistered(t *testing.T, lookupdHTTP string, topics []string, nsqdTCP ...string) {
	t.Helper()
	stacktest.Eventually(t, 10*time.Second, func() error {
		for _, topic := range topics {
			var got struct {
				Producers []struct {
					BroadcastAddress string `json:"broadcast_address"`
					TCPPort          int    `json:"tcp_port"`
				} `json:"producers"`
			}
			if err := getJSON("http://"+lookupdHTTP+"/lookup?topic="+url.QueryEscape(topic), &got); err != nil {
				return err
			}
			var have []string
			for _, p := range got.Producers {
				have = append(have, net.JoinHostPort(p.BroadcastAddress, strconv.Itoa(p.TCPPort)))
			}
			for _, want := range nsqdTCP {
				if !slices.Contains(have, want) {
					return fmt.Errorf("nsqlookupd lists %v for %s, not %s", have, topic, want)
				}
			}
		}
		return nil
	})
}

type nsqdTopicStats struct {
	TopicName    string `json:"topic_name"`
	MessageCount uint64 `json:"message_count"`
	Channels     []struct {
		ChannelName string `json:"channel_name"`
		Clients     []struct {
			ReadyCount int64 `json:"ready_count"`
		} `json:"clients"`
	} `json:"channels"`
}

func nsqdStats(t *testing.T, nsqdHTTP string) []nsqdTopicStats {
	t.Helper()
	var s struct {
		Topics []nsqdTopicStats `json:"topics"`
	}
	if err := getJSON("http://"+nsqdHTTP+"/stats?format=json", &s); err != nil {
		t.Fatal(err)
	}
	return s.Topics
}

// messagesOn counts the messages the nsqd at nsqdHTTP received on topics.
func messagesOn(t *testing.T, nsqdHTTP string, topics []string) uint64 {
	t.Helper()
	var n uint64
	for _, ts := range nsqdStats(t, nsqdHTTP) {
		if slices.Contains(topics, ts.TopicName) {
			n += ts.MessageCount
		}
	}
	return n
}

// waitClients waits until every replica channel of every group has n
// consumers on the nsqd at nsqdHTTP, each ready to receive. A consumer that
// finds a second nsqd may get RDY 0 there at first: go-nsq gave all its
// max-in-flight to the first connection and retries the new one 5 s later.
func waitClients(t *testing.T, nsqdHTTP, prefix string, groups []purge.RedisGroup, n int) {
	t.Helper()
	stacktest.Eventually(t, 10*time.Second, func() error {
		clients, ready := map[string]int{}, map[string]int{}
		for _, ts := range nsqdStats(t, nsqdHTTP) {
			for _, c := range ts.Channels {
				k := ts.TopicName + "/" + c.ChannelName
				clients[k] = len(c.Clients)
				for _, cl := range c.Clients {
					if cl.ReadyCount > 0 {
						ready[k]++
					}
				}
			}
		}
		for _, g := range groups {
			for _, r := range g.Replicas {
				k := invalidate.RedisTopic(prefix, g.Name) + "/" + invalidate.ReplicaChannel(r)
				if clients[k] != n || ready[k] != n {
					return fmt.Errorf("nsqd %s: %s has %d consumers, %d ready, want %d", nsqdHTTP, k, clients[k], ready[k], n)
				}
			}
		}
		return nil
	})
}

func topicsOf(prefix string, groups []purge.RedisGroup) []string {
	var ts []string
	for _, g := range groups {
		ts = append(ts, invalidate.RedisTopic(prefix, g.Name))
	}
	return ts
}

// setKeys writes every key to every replica.
func setKeys(t *testing.T, clients map[string]*redis.Client, keys []string) {
	t.Helper()
	ctx := context.Background()
	for addr, c := range clients {
		pipe := c.Pipeline()
		for _, k := range keys {
			pipe.Set(ctx, k, "v", 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatalf("redis %s: %v", addr, err)
		}
	}
}

// waitPurged waits until no replica holds any of keys.
func waitPurged(t *testing.T, clients map[string]*redis.Client, keys []string, timeout time.Duration) {
	t.Helper()
	ctx := context.Background()
	stacktest.Eventually(t, timeout, func() error {
		for addr, c := range clients {
			if n, err := c.Exists(ctx, keys...).Result(); err != nil || n != 0 {
				return fmt.Errorf("%s still holds %d of %d keys (err %v)", addr, n, len(keys), err)
			}
		}
		return nil
	})
}

// publishKeys publishes one batch per key, the key in every group.
func publishKeys(t *testing.T, p *invalidate.Publisher, groups int, keys []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, k := range keys {
		b := invalidate.NewBatch(groups)
		for g := 0; g < groups; g++ {
			b.Add(g, k)
		}
		if err := p.Publish(ctx, b, invalidate.Meta{Pos: "test:" + k, Seen: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
}

func keyRange(prefix string, from, to int) []string {
	var ks []string
	for i := from; i < to; i++ {
		ks = append(ks, fmt.Sprintf("%s:%d", prefix, i))
	}
	return ks
}

// The publisher writes to its first nsqd until that one stops, then fails
// over to the second; a purger that knows only nsqlookupd purges every batch
// from both on every replica.
func TestLookupdPurgerFollowsPublisherFailover(t *testing.T) {
	t.Parallel()
	const prefix, batches = "flashsync", 20
	lookupd, n1, n2 := lookupdAndTwoNSQD(t)
	groups, gr, clients := redisGroups(t, 2, 2)
	topics := topicsOf(prefix, groups)

	pubReg := prometheus.NewRegistry()
	pub := newPublisher(t, prefix, gr, pubReg, addrs(n1), addrs(n2))
	if err := pub.EnsureChannels(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitRegistered(t, lookupd.HTTPAddr(), topics, n1.TCPAddr(), n2.TCPAddr())
	reg := runPurger(t, purge.RedisPurgerOptions{
		ConsumerOptions: purge.ConsumerOptions{LookupdHTTP: []string{lookupd.HTTPAddr()}, TopicPrefix: prefix, MaxAttempts: 5}, Groups: groups,
	})
	for _, n := range []*stacktest.NSQD{n1, n2} {
		waitClients(t, n.HTTPAddr(), prefix, groups, 1)
	}

	before, after := keyRange("before", 0, batches), keyRange("after", 0, batches)
	setKeys(t, clients, append(append([]string(nil), before...), after...))

	publishKeys(t, pub, len(groups), before)
	waitPurged(t, clients, before, 10*time.Second)
	if got, want := messagesOn(t, n1.HTTPAddr(), topics), uint64(batches*len(groups)); got != want {
		t.Errorf("first nsqd received %d messages before the failover, want %d", got, want)
	}
	if got := messagesOn(t, n2.HTTPAddr(), topics); got != 0 {
		t.Errorf("second nsqd received %d messages before the failover, want 0", got)
	}

	// Messages still on a stopped nsqd wait there for it to come back; these
	// were all purged above, so nothing is left behind.
	n1.Stop()
	publishKeys(t, pub, len(groups), after)
	waitPurged(t, clients, after, 10*time.Second)
	if got, want := messagesOn(t, n2.HTTPAddr(), topics), uint64(batches*len(groups)); got != want {
		t.Errorf("second nsqd received %d messages after the failover, want %d", got, want)
	}
	if n := stacktest.MetricValue(t, pubReg, "flashsync_invalidate_publishes_total", map[string]string{"result": "error"}); n < 1 {
		t.Errorf("publishes_total{error} = %v, want at least 1 (the attempt on the stopped nsqd)", n)
	}
	for _, g := range groups {
		for _, r := range g.Replicas {
			labels := map[string]string{"replica": r, "result": "ok"}
			stacktest.Eventually(t, 2*time.Second, func() error {
				if n := stacktest.MetricValue(t, reg, "flashsync_purger_messages_total", labels); n != 2*batches {
					return fmt.Errorf("messages_total%v = %v, want %d", labels, n, 2*batches)
				}
				return nil
			})
		}
	}
}

// An nsqd that joins after the purger started is found at the next
// nsqlookupd poll, without a restart.
func TestLookupdPurgerDiscoversNewNSQD(t *testing.T) {
	t.Parallel()
	const prefix = "flashsync"
	lookupd := stacktest.StartNSQLookupd(t)
	n1 := stacktest.StartNSQDWithLookupd(t, lookupd.TCPAddr())
	groups, gr, clients := redisGroups(t, 1, 2)
	topics := topicsOf(prefix, groups)
	if err := newPublisher(t, prefix, gr, nil, addrs(n1)).EnsureChannels(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitRegistered(t, lookupd.HTTPAddr(), topics, n1.TCPAddr())
	runPurger(t, purge.RedisPurgerOptions{
		ConsumerOptions: purge.ConsumerOptions{LookupdHTTP: []string{lookupd.HTTPAddr()}, TopicPrefix: prefix, LookupdPollInterval: 100 * time.Millisecond}, Groups: groups,
	})
	waitClients(t, n1.HTTPAddr(), prefix, groups, 1)

	// The new nsqd gets its channels first, as the canal does at start.
	n2 := stacktest.StartNSQDWithLookupd(t, lookupd.TCPAddr())
	pub2 := newPublisher(t, prefix, gr, nil, addrs(n2))
	if err := pub2.EnsureChannels(context.Background()); err != nil {
		t.Fatal(err)
	}
	keys := keyRange("late", 0, 5)
	setKeys(t, clients, keys)
	publishKeys(t, pub2, len(groups), keys)
	waitPurged(t, clients, keys, 10*time.Second)
	waitClients(t, n2.HTTPAddr(), prefix, groups, 1)
}

// Two purgers with the same groups share every replica's channel on every
// nsqd: NSQ hands each message to one of them, and none is lost.
func TestLookupdTwoPurgersShareTheLoad(t *testing.T) {
	t.Parallel()
	const prefix, batches = "flashsync", 100
	lookupd, n1, n2 := lookupdAndTwoNSQD(t)
	groups, gr, clients := redisGroups(t, 1, 2)
	topics := topicsOf(prefix, groups)

	// Two canals, each preferring another nsqd.
	pubA := newPublisher(t, prefix, gr, nil, addrs(n1), addrs(n2))
	pubB := newPublisher(t, prefix, gr, nil, addrs(n2), addrs(n1))
	if err := pubA.EnsureChannels(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitRegistered(t, lookupd.HTTPAddr(), topics, n1.TCPAddr(), n2.TCPAddr())
	var regs []*prometheus.Registry
	for i := 0; i < 2; i++ {
		regs = append(regs, runPurger(t, purge.RedisPurgerOptions{
			ConsumerOptions: purge.ConsumerOptions{LookupdHTTP: []string{lookupd.HTTPAddr()}, TopicPrefix: prefix}, Groups: groups,
		}))
	}
	for _, n := range []*stacktest.NSQD{n1, n2} {
		waitClients(t, n.HTTPAddr(), prefix, groups, 2)
	}

	keys := keyRange("item", 0, batches)
	setKeys(t, clients, keys)
	for i, k := range keys {
		publishKeys(t, []*invalidate.Publisher{pubA, pubB}[i%2], len(groups), []string{k})
	}
	waitPurged(t, clients, keys, 10*time.Second)
	if a, b := messagesOn(t, n1.HTTPAddr(), topics), messagesOn(t, n2.HTTPAddr(), topics); a != batches/2 || b != batches/2 {
		t.Errorf("nsqd received %d and %d messages, want %d each", a, b, batches/2)
	}

	for _, r := range groups[0].Replicas {
		labels := map[string]string{"replica": r, "result": "ok"}
		stacktest.Eventually(t, 2*time.Second, func() error {
			if n := stacktest.MetricValue(t, regs[0], "flashsync_purger_messages_total", labels) +
				stacktest.MetricValue(t, regs[1], "flashsync_purger_messages_total", labels); n != batches {
				return fmt.Errorf("purgers handled %v messages for %s, want %d", n, r, batches)
			}
			return nil
		})
		for i, reg := range regs {
			n := stacktest.MetricValue(t, reg, "flashsync_purger_messages_total", labels)
			t.Logf("purger %d handled %v of %d messages for replica %s", i, n, batches, r)
			if n == 0 {
				t.Errorf("purger %d handled no message for replica %s: the load is not shared", i, r)
			}
		}
	}
}

// The shared stack's nsqd-2 and nsqlookupd: a batch published to nsqd-2 only
// is purged by a purger that knows nothing but nsqlookupd.
func TestStackLookupdPurgerReadsSecondNSQD(t *testing.T) {
	nsqd1 := [2]string{stacktest.NSQDTCP(), stacktest.NSQDHTTP()}
	nsqd2 := [2]string{stacktest.NSQD2TCP(), stacktest.NSQD2HTTP()}
	lookupd := stacktest.NSQLookupdHTTP()
	stacktest.Require(t, "nsqd at "+nsqd1[1], stacktest.PingNSQ(nsqd1[1]))
	stacktest.Require(t, "nsqd-2 at "+nsqd2[1], stacktest.PingNSQ(nsqd2[1]))
	stacktest.Require(t, "nsqlookupd at "+lookupd, stacktest.PingNSQ(lookupd))

	// Topics of its own, removed at the end, so other users of the stack
	// (a running flashsync, other tests) neither see nor keep them.
	prefix := fmt.Sprintf("lookupdtest%d", time.Now().UnixNano())
	groups, gr, clients := redisGroups(t, 1, 2)
	topics := topicsOf(prefix, groups)
	t.Cleanup(func() {
		c := http.Client{Timeout: 2 * time.Second}
		for _, api := range []string{nsqd1[1], nsqd2[1], lookupd} {
			for _, topic := range append(topics, invalidate.DeadLetterTopic(prefix)) {
				resp, err := c.Post("http://"+api+"/topic/delete?topic="+url.QueryEscape(topic), "", nil)
				if err != nil {
					t.Logf("delete topic %s on %s: %v", topic, api, err)
					continue
				}
				resp.Body.Close()
			}
		}
	})

	// Channels on every nsqd, as the canal creates them.
	if err := newPublisher(t, prefix, gr, nil, nsqd1, nsqd2).EnsureChannels(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitRegistered(t, lookupd, topics, nsqd1[0], nsqd2[0])
	runPurger(t, purge.RedisPurgerOptions{
		ConsumerOptions: purge.ConsumerOptions{LookupdHTTP: []string{lookupd}, TopicPrefix: prefix}, Groups: groups,
	})
	waitClients(t, nsqd2[1], prefix, groups, 1)

	keys := keyRange("item", 0, 3)
	setKeys(t, clients, keys)
	publishKeys(t, newPublisher(t, prefix, gr, nil, nsqd2), len(groups), keys)
	waitPurged(t, clients, keys, 10*time.Second)
	if got := messagesOn(t, nsqd1[1], topics); got != 0 {
		t.Errorf("nsqd received %d messages, want 0 (all went to nsqd-2)", got)
	}
	if got := messagesOn(t, nsqd2[1], topics); got != uint64(len(keys)) {
		t.Errorf("nsqd-2 received %d messages, want %d", got, len(keys))
	}
}

// deadLetter is the part of a dead-letter record these tests read.
type deadLetter struct {
	Replica string `json:"replica"`
}

// deadLetters collects the dead letters that reach the nsqd at nsqdTCP.
func deadLetters(t *testing.T, nsqdTCP, prefix string) <-chan deadLetter {
	t.Helper()
	return stacktest.ConsumeJSON[deadLetter](t, nsqdTCP, invalidate.DeadLetterTopic(prefix))
}

// A dead letter goes to the first nsqd that takes it: past an unreachable
// one in nsqd_tcp, and, without nsqd_tcp, to one nsqlookupd lists.
func TestDeadLettersFailOverAcrossNSQD(t *testing.T) {
	t.Parallel()
	const prefix = "flashsync"
	poison := []byte(`{"v":99,"keys":["x"]}`)
	for _, tt := range []struct {
		name       string
		configured bool // nsqd_tcp set, its first nsqd unreachable
	}{{"nsqd_tcp", true}, {"nsqlookupd only", false}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			lookupd, dead, n := lookupdAndTwoNSQD(t)
			groups, gr, _ := redisGroups(t, 1, 1)
			if err := newPublisher(t, prefix, gr, nil, addrs(dead), addrs(n)).EnsureChannels(context.Background()); err != nil {
				t.Fatal(err)
			}
			waitRegistered(t, lookupd.HTTPAddr(), topicsOf(prefix, groups), dead.TCPAddr(), n.TCPAddr())
			// A stopped in-process nsqd stays listed by nsqlookupd, so the
			// purger without nsqd_tcp meets it too.
			dead.Stop()
			opts := purge.RedisPurgerOptions{
				ConsumerOptions: purge.ConsumerOptions{LookupdHTTP: []string{lookupd.HTTPAddr()}, TopicPrefix: prefix, MaxAttempts: 2}, Groups: groups,
			}
			if tt.configured {
				opts.NSQDTCP = []string{dead.TCPAddr(), n.TCPAddr()}
			}
			reg := runPurger(t, opts)
			got := deadLetters(t, n.TCPAddr(), prefix)

			prod, err := nsq.NewProducer(n.TCPAddr(), nsq.NewConfig())
			if err != nil {
				t.Fatal(err)
			}
			defer prod.Stop()
			if err := prod.Publish(invalidate.RedisTopic(prefix, groups[0].Name), poison); err != nil {
				t.Fatal(err)
			}
			select {
			case d := <-got:
				if d.Replica != groups[0].Replicas[0] {
					t.Errorf("dead letter from replica %q, want %q", d.Replica, groups[0].Replicas[0])
				}
			case <-time.After(20 * time.Second):
				t.Fatal("no dead letter reached the running nsqd")
			}
			stacktest.Eventually(t, 2*time.Second, func() error {
				if v := stacktest.MetricValue(t, reg, "flashsync_purger_dead_letters_total", nil); v != 1 {
					return fmt.Errorf("dead_letters_total = %v, want 1", v)
				}
				return nil
			})
		})
	}
}
