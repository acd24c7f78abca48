// Command bulkupdate measures flashsync against the local stack (`make
// stack-up`): row events/s from a bulk UPDATE through rules and publish, the
// same through every replica's purge, the bare go-mysql canal as baseline in
// the same run, and commit→last-replica-purged latency p50/p99 at a fixed
// rate. Every loop is bounded in count and time; traffic stays on loopback.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	gocanal "github.com/go-mysql-org/go-mysql/canal"
	"github.com/go-mysql-org/go-mysql/client"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/node"
)

type flags struct {
	mysql      string
	redisA     string
	redisB     string
	nsqdTCP    string
	nsqdHTTP   string
	rows       int
	latencyN   int
	rate       int
	timeout    time.Duration
	keepTables bool
}

func main() {
	var f flags
	flag.StringVar(&f.mysql, "mysql", "127.0.0.1:13306", "MariaDB address (root, no password)")
	flag.StringVar(&f.redisA, "redis-a", "127.0.0.1:16379,127.0.0.1:16380", "Redis group hot-a replicas")
	flag.StringVar(&f.redisB, "redis-b", "127.0.0.1:16381,127.0.0.1:16382", "Redis group hot-b replicas")
	flag.StringVar(&f.nsqdTCP, "nsqd-tcp", "127.0.0.1:14150", "nsqd TCP address")
	flag.StringVar(&f.nsqdHTTP, "nsqd-http", "127.0.0.1:14151", "nsqd HTTP address")
	flag.IntVar(&f.rows, "rows", 100000, "rows in the bulk UPDATE (max 1,000,000)")
	flag.IntVar(&f.latencyN, "latency-changes", 2000, "single-row transactions for the latency run (max 100,000)")
	flag.IntVar(&f.rate, "rate", 500, "transactions per second in the latency run (max 5,000)")
	flag.DurationVar(&f.timeout, "timeout", 3*time.Minute, "give up after this long")
	flag.BoolVar(&f.keepTables, "keep", false, "keep the bench database afterwards")
	flag.Parse()
	f.rows = min(max(f.rows, 1), 1_000_000)
	f.latencyN = min(max(f.latencyN, 1), 100_000)
	f.rate = min(max(f.rate, 1), 5000)

	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	if err := run(ctx, f); err != nil {
		fmt.Fprintln(os.Stderr, "bulkupdate:", err)
		os.Exit(1)
	}
}

const db = "flashsync_bench"

func run(ctx context.Context, f flags) error {
	conn, err := client.ConnectWithContext(ctx, f.mysql, "root", "", "", 10*time.Second)
	if err != nil {
		return fmt.Errorf("mysql %s: %w (run `make stack-up`)", f.mysql, err)
	}
	defer conn.Close()
	if err := setup(conn, f.rows); err != nil {
		return err
	}
	if !f.keepTables {
		defer conn.Execute("DROP DATABASE IF EXISTS " + db)
	}
	fmt.Printf("flashsync bulkupdate: %d rows, latency run %d tx at %d/s\n", f.rows, f.latencyN, f.rate)

	// Baseline: the bare go-mysql canal counting rows, nothing else.
	base, err := bareCanal(ctx, f, conn)
	if err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	fmt.Printf("baseline  bare canal (decode only):      %9.0f row events/s\n", base)

	groups := [][]string{strings.Split(f.redisA, ","), strings.Split(f.redisB, ",")}
	tmp, err := os.MkdirTemp("", "flashsync-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	httpAddr, err := freeAddr()
	if err != nil {
		return err
	}
	cfg := &configs.Config{
		MySQL: configs.MySQL{Addr: f.mysql, User: "root", Flavor: "mariadb", ServerID: 4242},
		Canal: configs.Canal{PositionFile: filepath.Join(tmp, "position"), IncludeTables: []string{db + `\..*`}},
		NSQ:   configs.NSQ{NSQDTCP: []string{f.nsqdTCP}, NSQDHTTP: []string{f.nsqdHTTP}, TopicPrefix: "flashsync-bench"},
		HTTP:  configs.HTTP{Addr: httpAddr},
		RedisGroups: []configs.RedisGroup{
			{Name: "hot-a", Replicas: groups[0]}, {Name: "hot-b", Replicas: groups[1]},
		},
		Rules: []configs.Rule{{Table: db + ".item", Keys: []string{"item:{id}", "item:page:{id}"}, RouteBy: "id"}},
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	n, err := node.New(node.Options{Config: cfg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	nctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	var runErr error
	go func() { defer wg.Done(); runErr = n.Run(nctx) }()
	defer func() { stop(); wg.Wait() }()
	m := metricsAt("http://" + httpAddr + "/metrics")
	if err := waitFor(ctx, 30*time.Second, func() (bool, error) {
		_, err := os.Stat(cfg.Canal.PositionFile)
		return err == nil, nil
	}); err != nil {
		return fmt.Errorf("flashsync did not start: %w (%v)", err, runErr)
	}

	// Throughput: one bulk UPDATE, timed from its commit to every key
	// published, then to every replica having deleted every key.
	keys := float64(2 * f.rows)
	pub0, del0 := m.sum("flashsync_invalidate_keys_published_total"), m.sum("flashsync_purger_keys_deleted_total")
	start := time.Now()
	if _, err := conn.Execute("UPDATE " + db + ".item SET price = price + 1"); err != nil {
		return err
	}
	committed := time.Now()
	if err := waitFor(ctx, time.Minute, func() (bool, error) {
		return m.sum("flashsync_invalidate_keys_published_total")-pub0 >= keys, nil
	}); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	published := time.Since(committed)
	if err := waitFor(ctx, time.Minute, func() (bool, error) {
		return m.sum("flashsync_purger_keys_deleted_total")-del0 >= keys*2, nil // each key on both replicas of its group
	}); err != nil {
		return fmt.Errorf("purge: %w", err)
	}
	purged := time.Since(committed)
	fmt.Printf("UPDATE of %d rows took %v to commit\n", f.rows, committed.Sub(start).Round(time.Millisecond))
	rp := float64(f.rows) / published.Seconds()
	rd := float64(f.rows) / purged.Seconds()
	fmt.Printf("flashsync rules+publish:                 %9.0f row events/s (%.2fx baseline), %v after commit\n", rp, rp/base, published.Round(time.Millisecond))
	fmt.Printf("flashsync rules+publish+purge, both replicas:%7.0f row events/s (%.2fx baseline), %v after commit\n", rd, rd/base, purged.Round(time.Millisecond))

	lat, err := latency(ctx, f, conn, groups)
	if err != nil {
		return fmt.Errorf("latency: %w", err)
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	fmt.Printf("commit -> last replica purged (%d tx at %d/s): p50 %v  p99 %v  max %v\n",
		len(lat), f.rate, q(0.50).Round(10*time.Microsecond), q(0.99).Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond))
	stop()
	wg.Wait()
	if runErr != nil {
		return runErr
	}
	return nil
}

func setup(conn *client.Conn, rows int) error {
	for _, q := range []string{
		"DROP DATABASE IF EXISTS " + db,
		"CREATE DATABASE " + db,
		"CREATE TABLE " + db + ".item (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL, price DECIMAL(10,2) NOT NULL, stock INT NOT NULL)",
	} {
		if _, err := conn.Execute(q); err != nil {
			return err
		}
	}
	for lo := 1; lo <= rows; lo += 5000 {
		var b strings.Builder
		b.WriteString("INSERT INTO " + db + ".item VALUES ")
		for id := lo; id < lo+5000 && id <= rows; id++ {
			if id > lo {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "(%d,'item %d',9.99,100)", id, id)
		}
		if _, err := conn.Execute(b.String()); err != nil {
			return err
		}
	}
	return nil
}

type countingHandler struct {
	gocanal.DummyEventHandler
	mu   sync.Mutex
	rows int
}

func (h *countingHandler) OnRow(e *gocanal.RowsEvent) error {
	h.mu.Lock()
	h.rows += len(e.Rows) / 2
	h.mu.Unlock()
	return nil
}

func (h *countingHandler) count() int { h.mu.Lock(); defer h.mu.Unlock(); return h.rows }

func bareCanal(ctx context.Context, f flags, conn *client.Conn) (float64, error) {
	cfg := gocanal.NewDefaultConfig()
	cfg.Addr, cfg.User, cfg.Flavor, cfg.ServerID = f.mysql, "root", "mariadb", 4243
	cfg.IncludeTableRegex = []string{db + `\..*`}
	cfg.Dump.ExecutionPath = ""
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	c, err := gocanal.NewCanal(cfg)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	h := &countingHandler{}
	c.SetEventHandler(h)
	pos, err := c.GetMasterPos()
	if err != nil {
		return 0, err
	}
	go c.RunFrom(pos)
	if _, err := conn.Execute("UPDATE " + db + ".item SET stock = stock + 1"); err != nil {
		return 0, err
	}
	committed := time.Now()
	if err := waitFor(ctx, time.Minute, func() (bool, error) { return h.count() >= f.rows, nil }); err != nil {
		return 0, err
	}
	return float64(f.rows) / time.Since(committed).Seconds(), nil
}

// latency updates one row per transaction at a fixed rate and times, from
// the commit's return, the DEL of its page key on every replica (Redis
// keyspace notifications).
func latency(ctx context.Context, f flags, conn *client.Conn, groups [][]string) ([]time.Duration, error) {
	n := min(f.latencyN, f.rows)
	var replicas []*redis.Client
	for _, g := range groups {
		for _, addr := range g {
			rc := redis.NewClient(&redis.Options{Addr: addr})
			defer rc.Close()
			replicas = append(replicas, rc)
		}
	}
	type event struct {
		id int
		at time.Time
	}
	events := make(chan event, 4*n)
	var subs []*redis.PubSub
	for _, rc := range replicas {
		if err := rc.ConfigSet(ctx, "notify-keyspace-events", "Eg").Err(); err != nil {
			return nil, err
		}
		defer rc.ConfigSet(context.Background(), "notify-keyspace-events", "")
		pipe := rc.Pipeline()
		for id := 1; id <= n; id++ {
			pipe.Set(ctx, "item:page:"+strconv.Itoa(id), "x", 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, err
		}
		sub := rc.Subscribe(ctx, "__keyevent@0__:del")
		if _, err := sub.Receive(ctx); err != nil {
			return nil, err
		}
		subs = append(subs, sub)
		go func() {
			for msg := range sub.Channel(redis.WithChannelSize(4 * n)) {
				if id, ok := strings.CutPrefix(msg.Payload, "item:page:"); ok {
					if i, err := strconv.Atoi(id); err == nil {
						events <- event{i, time.Now()}
					}
				}
			}
		}()
	}
	defer func() {
		for _, s := range subs {
			s.Close()
		}
	}()
	// Every id's page key lives on the 2 replicas of its group.
	commits := make([]time.Time, n+1)
	last := make([]time.Time, n+1)
	seen := make([]int, n+1)
	done := 0
	tick := time.NewTicker(time.Second / time.Duration(f.rate))
	defer tick.Stop()
	next := 1
	deadline := time.After(time.Duration(n/f.rate+30) * time.Second)
	for done < n {
		var tc <-chan time.Time
		if next <= n {
			tc = tick.C
		}
		select {
		case <-tc:
			if _, err := conn.Execute(fmt.Sprintf("UPDATE %s.item SET price = price + 1 WHERE id = %d", db, next)); err != nil {
				return nil, err
			}
			commits[next] = time.Now()
			next++
		case e := <-events:
			if e.id > n {
				continue
			}
			seen[e.id]++
			last[e.id] = e.at
			if seen[e.id] == 2 {
				done++
			}
		case <-deadline:
			return nil, fmt.Errorf("only %d of %d changes purged on both replicas", done, n)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	lat := make([]time.Duration, 0, n)
	for id := 1; id <= n; id++ {
		lat = append(lat, last[id].Sub(commits[id]))
	}
	return lat, nil
}

type metricsAt string

// sum adds every sample of a metric in the Prometheus text exposition.
func (m metricsAt) sum(name string) float64 {
	resp, err := http.Get(string(m))
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var total float64
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		if v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64); err == nil {
			total += v
		}
	}
	return total
}

func waitFor(ctx context.Context, limit time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(limit)
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
