// Command bulkupdate measures flashsync against the local stack (`make
// stack-up`), running the real binary as a child process: row events/s from
// a bulk UPDATE through rules and publish, the same through every replica's
// purge (invalidations/s delivered), the bare go-mysql canal as baseline in
// the same run, commit→last-replica-purged latency p50/p99 at a fixed rate,
// and flashsync's peak RSS while it reads one huge transaction. With -modes
// sync it also times the same bulk UPDATE through a [[rule.sync]] target
// (every row's JSON written on every replica of its group) in the same run,
// against the delete rule. Every loop is bounded in count and time; traffic
// stays on loopback.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	gocanal "github.com/go-mysql-org/go-mysql/canal"
	"github.com/go-mysql-org/go-mysql/client"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/bench/internal/loopback"
	"github.com/flashsync/flashsync/bench/internal/redisproc"
)

type flags struct {
	mysql    string
	redisA   string
	redisB   string
	nsqdTCP  string
	nsqdHTTP string
	binary   string
	transfer string
	rows     int
	bigRows  int
	latencyN int
	rate     int
	workers  int
	timeout  time.Duration
	window   time.Duration
	perTx    int
	modes    string
	hotEvery int
	db       string
}

func main() {
	var f flags
	flag.StringVar(&f.mysql, "mysql", "127.0.0.1:13306", "MariaDB address (root, no password)")
	// Private replicas by default: a replica has one watermark, so a second
	// flashsync purging the stack's replicas (the dev stack's, another
	// bench's) makes gaps in it that end in a FLUSHDB of the shared server.
	flag.StringVar(&f.redisA, "redis-a", "", "Redis group hot-a replicas, comma-separated (empty: start 2 private redis-servers)")
	flag.StringVar(&f.redisB, "redis-b", "", "Redis group hot-b replicas, comma-separated (empty: start 2 private redis-servers)")
	flag.StringVar(&f.nsqdTCP, "nsqd-tcp", "127.0.0.1:14150", "nsqd TCP address")
	flag.StringVar(&f.nsqdHTTP, "nsqd-http", "127.0.0.1:14151", "nsqd HTTP address")
	flag.StringVar(&f.binary, "flashsync", "bin/flashsync", "flashsync binary to run (`make build`)")
	flag.StringVar(&f.transfer, "transfer", "", "go-mysql-transfer binary for the peer run of sync mode (default: go-mysql-transfer on PATH, else skipped)")
	flag.IntVar(&f.rows, "rows", 100000, "rows in the bulk UPDATE (max 1,000,000)")
	flag.IntVar(&f.bigRows, "big-rows", 0, "rows of the one-transaction RSS run (0 skips; max 2,000,000)")
	flag.IntVar(&f.latencyN, "latency-changes", 10000, "single-row transactions for the latency run (max 100,000)")
	flag.IntVar(&f.rate, "rate", 5000, "transactions per second in the latency run (max 10,000)")
	// (row changes per second = rate x rows-per-tx)
	flag.IntVar(&f.workers, "workers", 4, "connections issuing the latency run's transactions (max 16)")
	flag.DurationVar(&f.timeout, "timeout", 5*time.Minute, "give up after this long")
	flag.IntVar(&f.perTx, "rows-per-tx", 1, "rows each latency-run transaction changes (max 100)")
	flag.DurationVar(&f.window, "coalesce-window", 2*time.Millisecond, "flashsync's canal.coalesce_window")
	flag.StringVar(&f.modes, "modes", "delete,sync", "rules the bulk UPDATE is timed through, in this order: delete (2 keys per row deleted), sync (1 JSON key per row written), refresh (sync with refresh_hot, 1 row in -hot-every held by the replicas)")
	flag.IntVar(&f.hotEvery, "hot-every", 100, "refresh mode: one row in this many is held (hot) by its replicas before the UPDATE")
	flag.StringVar(&f.db, "db", "flashsync_bench", "private database, also the prefix of every Redis key the run touches")
	flag.Parse()
	f.rows = min(max(f.rows, 1), 1_000_000)
	f.bigRows = min(max(f.bigRows, 0), 2_000_000)
	f.latencyN = min(max(f.latencyN, 0), 100_000)
	f.rate = min(max(f.rate, 1), 10_000)
	f.workers = min(max(f.workers, 1), 16)
	f.perTx = min(max(f.perTx, 1), 100)

	for _, m := range strings.Split(f.modes, ",") {
		if m != "delete" && m != "sync" && m != "refresh" {
			fmt.Fprintf(os.Stderr, "bulkupdate: -modes: unknown mode %q (delete, sync, refresh)\n", m)
			os.Exit(2)
		}
	}
	// The name goes into SQL, a TOML regex and key templates unquoted.
	if !regexp.MustCompile(`^[a-z][a-z0-9_]{0,40}$`).MatchString(f.db) {
		fmt.Fprintf(os.Stderr, "bulkupdate: -db %q: want [a-z][a-z0-9_]*\n", f.db)
		os.Exit(2)
	}
	db = f.db

	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	if err := run(ctx, f); err != nil {
		fmt.Fprintln(os.Stderr, "bulkupdate:", err)
		os.Exit(1)
	}
}

// db is the private database (-db). Redis keys are prefixed with it too, so
// that the run never deletes or overwrites an application's keys on the
// shared stack (configs/dev.toml syncs shop.item to item:json:{id}).
var db = "flashsync_bench"

func run(ctx context.Context, f flags) error {
	conn, err := client.ConnectWithContext(ctx, f.mysql, "root", "", "", 10*time.Second)
	if err != nil {
		return fmt.Errorf("mysql %s: %w (run `make stack-up`)", f.mysql, err)
	}
	defer conn.Close()
	rows := max(f.rows, f.bigRows, f.latencyN)
	if err := setup(conn, rows); err != nil {
		return err
	}
	defer conn.Execute("DROP DATABASE IF EXISTS " + db)
	fmt.Printf("flashsync bulkupdate: %d-row UPDATE, latency run %d tx at %d/s over %d connections\n", f.rows, f.latencyN, f.rate, f.workers)

	base, err := bareCanal(ctx, f, conn)
	if err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	fmt.Printf("baseline  bare go-mysql canal, decode only: %9.0f row events/s\n", base)

	// Throughput: one bulk UPDATE of f.rows rows per mode, each through its
	// own flashsync child (a child with both rules would do both modes'
	// work on each UPDATE) on replicas of its own, one mode right after the
	// other so that both see the same minute of this noisy machine.
	endToEnd := map[string]float64{}
	defer loopback.DeleteTopics(context.WithoutCancel(ctx), f.nsqdHTTP, benchTopics()...)
	for _, mode := range strings.Split(f.modes, ",") {
		rs, err := newReplicas(ctx, f)
		if err != nil {
			return err
		}
		// The topics hold a channel per replica of every earlier mode and
		// run: deleted before each mode (and at the end), see
		// loopback.DeleteTopics.
		if err := loopback.DeleteTopics(ctx, f.nsqdHTTP, benchTopics()...); err != nil {
			rs.stop()
			return err
		}
		fs, err := startFlashsync(ctx, f, rs.groups, mode)
		if err != nil {
			rs.stop()
			return err
		}
		var rate float64
		switch mode {
		case "delete":
			rate, err = throughputDelete(ctx, f, conn, fs, base)
		case "refresh":
			rate, err = throughputRefresh(ctx, f, conn, fs, base, rs.clients, rs.groups)
		default:
			rate, err = throughputSync(ctx, f, conn, fs, base, rs.clients, len(rs.groups[0]))
		}
		// A flush during the run would have dropped writes the counters
		// count.
		if m := fs.metrics.sum("flashsync_purger_replica_rejoins_total"); err == nil && m > 0 {
			err = fmt.Errorf("%0.f replica rejoins (flushes) during the run", m)
		}
		if stopErr := fs.stop(); err == nil {
			err = stopErr
		}
		var transferErr error
		if err == nil && mode == "sync" {
			// On the same replicas: its keys have their own prefix.
			transferErr = transferPeer(ctx, f, conn, rs.clients[0])
		}
		rs.stop()
		if err != nil {
			return fmt.Errorf("%s mode: %w", mode, err)
		}
		if transferErr != nil {
			return fmt.Errorf("go-mysql-transfer: %w", transferErr)
		}
		endToEnd[mode] = rate
	}
	if d, s := endToEnd["delete"], endToEnd["sync"]; d > 0 && s > 0 {
		fmt.Printf("sync / delete, row events/s through every replica: %.2fx (sync %.0f, delete %.0f)\n", s/d, s, d)
	}
	if s, r := endToEnd["sync"], endToEnd["refresh"]; s > 0 && r > 0 {
		fmt.Printf("refresh / sync, row events/s through every replica: %.2fx (refresh %.0f, sync %.0f)\n", r/s, r, s)
	}
	if !strings.Contains(f.modes, "sync") {
		fmt.Println("peer go-mysql-transfer: skipped (runs with -modes sync)")
	}

	if f.latencyN == 0 && f.bigRows == 0 {
		return nil
	}
	rs, err := newReplicas(ctx, f)
	if err != nil {
		return err
	}
	defer rs.stop()
	groups := rs.groups
	fs, err := startFlashsync(ctx, f, groups, "delete")
	if err != nil {
		return err
	}
	defer fs.stop()
	m := fs.metrics
	if f.latencyN > 0 {
		lat, err := latency(ctx, f, groups)
		if err != nil {
			return fmt.Errorf("latency: %w", err)
		}
		slices.Sort(lat)
		q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
		fmt.Printf("commit -> last replica purged, %d changes at %d tx/s x %d rows: p50 %v  p99 %v  max %v\n",
			len(lat), f.rate, f.perTx, q(0.50).Round(10*time.Microsecond), q(0.99).Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond))
	}
	if f.bigRows > 0 {
		rssBefore := fs.peakRSS()
		pub0 := m.sum("flashsync_invalidate_keys_published_total")
		start := time.Now()
		if _, err := conn.Execute(fmt.Sprintf("UPDATE %s.item SET stock = stock + 1 WHERE id <= %d", db, f.bigRows)); err != nil {
			return err
		}
		committed := time.Now()
		if err := loopback.WaitFor(ctx, 3*time.Minute, 5*time.Millisecond, func() bool {
			return m.sum("flashsync_invalidate_keys_published_total")-pub0 >= float64(2*f.bigRows)
		}); err != nil {
			return fmt.Errorf("big transaction: %w", err)
		}
		fmt.Printf("one %d-row transaction: committed in %v, published %v after commit; flashsync peak RSS %d MB (before it %d MB)\n",
			f.bigRows, committed.Sub(start).Round(time.Millisecond), time.Since(committed).Round(time.Millisecond), fs.peakRSS()>>20, rssBefore>>20)
	}
	return fs.stop()
}

// replicaSet is the two groups of Redis replicas one flashsync child purges.
type replicaSet struct {
	groups  [][]string
	clients []*redis.Client // every replica, hot-a's first
	stops   []func()
}

// newReplicas starts 2 private redis-servers for each group not given by
// flag. Every child gets new ones: a child's canal starts afresh at the
// binlog's end, so on replicas that hold an earlier child's watermark the
// binlog between the two is a gap, and the purger flushes them after
// gap_timeout, in the middle of the measurement.
func newReplicas(ctx context.Context, f flags) (*replicaSet, error) {
	rs := &replicaSet{}
	for _, g := range []string{f.redisA, f.redisB} {
		if g != "" {
			rs.groups = append(rs.groups, strings.Split(g, ","))
			continue
		}
		var addrs []string
		for range 2 {
			r, err := redisproc.Start(ctx, "")
			if err != nil {
				rs.stop()
				return nil, err
			}
			rs.stops = append(rs.stops, r.Stop)
			addrs = append(addrs, r.Addr())
		}
		rs.groups = append(rs.groups, addrs)
	}
	for _, g := range rs.groups {
		if len(g) != len(rs.groups[0]) {
			rs.stop()
			return nil, errors.New("-redis-a and -redis-b need as many replicas each: a row's writes are counted as rows x replicas of a group")
		}
		for _, addr := range g {
			rc := redis.NewClient(&redis.Options{Addr: addr})
			rs.stops = append(rs.stops, func() { rc.Close() })
			rs.clients = append(rs.clients, rc)
		}
	}
	return rs, nil
}

func (rs *replicaSet) stop() {
	for _, stop := range slices.Backward(rs.stops) {
		stop()
	}
	rs.stops = nil
}

// flashsync is the binary under test, run as a child process.
type flashsync struct {
	cmd     *exec.Cmd
	metrics metricsAt
	tmp     string
	done    chan error
	stopped bool
}

// benchTopics are the topics of the flashsync children (topic prefix
// flashsync-bench, groups hot-a and hot-b).
func benchTopics() []string { return loopback.FlashsyncTopics("flashsync-bench", "hot-a", "hot-b") }

// startFlashsync runs the binary with mode's rule on the table: "delete"
// deletes 2 keys per row, "sync" writes the row's JSON to 1 key per row.
func startFlashsync(ctx context.Context, f flags, groups [][]string, mode string) (*flashsync, error) {
	tmp, err := os.MkdirTemp("", "flashsync-bench-")
	if err != nil {
		return nil, err
	}
	httpAddr, err := loopback.FreeAddr()
	if err != nil {
		return nil, err
	}
	quote := func(addrs []string) string { return `"` + strings.Join(addrs, `", "`) + `"` }
	cfg := fmt.Sprintf(`[mysql]
addr = %q
user = "root"
flavor = "mariadb"
server_id = 4242

[canal]
position_file = %q
include_tables = ["%s\\..*"]
coalesce_window = %q

[nsq]
nsqd_tcp = [%q]
nsqd_http = [%q]
topic_prefix = "flashsync-bench"

[http]
addr = %q

[[redis_group]]
name = "hot-a"
replicas = [%s]

[[redis_group]]
name = "hot-b"
replicas = [%s]

[[rule]]
table = "%s.item"
route_by = "id"
`, f.mysql, filepath.Join(tmp, "position"), db, f.window.String(), f.nsqdTCP, f.nsqdHTTP, httpAddr, quote(groups[0]), quote(groups[1]), db)
	switch mode {
	case "sync":
		// The TTL only bounds what a run that dies before its cleanup
		// leaves on the shared replicas.
		cfg += fmt.Sprintf("[[rule.sync]]\nkey = %q\nttl = \"15m\"\n", syncKey("{id}"))
	case "refresh":
		cfg += fmt.Sprintf("[[rule.sync]]\nkey = %q\nttl = \"15m\"\nrefresh_hot = true\n", syncKey("{id}"))
	default:
		cfg += fmt.Sprintf("keys = [%q, %q]\n", db+":item:{id}", pageKey("{id}"))
	}
	path := filepath.Join(tmp, "flashsync.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	log, err := os.Create(filepath.Join(tmp, "flashsync.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(f.binary, "all", "-config", path)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s (run `make build`): %w", f.binary, err)
	}
	fs := &flashsync{cmd: cmd, metrics: metricsAt("http://" + httpAddr + "/metrics"), tmp: tmp, done: make(chan error, 1)}
	fmt.Printf("flashsync pid %d serving http://%s (metrics, /debug/pprof/)\n", cmd.Process.Pid, httpAddr)
	go func() { fs.done <- cmd.Wait(); log.Close() }()
	if err := loopback.WaitFor(ctx, 30*time.Second, 5*time.Millisecond, func() bool {
		_, err := os.Stat(filepath.Join(tmp, "position"))
		return err == nil && fs.metrics.sum("flashsync_canal_position_saves_total") > 0
	}); err != nil {
		fs.stop()
		out, _ := os.ReadFile(filepath.Join(tmp, "flashsync.log"))
		return nil, fmt.Errorf("flashsync did not start: %w\n%s", err, out)
	}
	return fs, nil
}

// peakRSS is the child's high-water resident set (VmHWM), in bytes.
func (fs *flashsync) peakRSS() int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", fs.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// stop ends the child with SIGTERM and waits for it.
func (fs *flashsync) stop() error {
	if fs.stopped {
		return nil
	}
	fs.stopped = true
	defer os.RemoveAll(fs.tmp)
	fs.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-fs.done:
		return err
	case <-time.After(15 * time.Second):
		fs.cmd.Process.Kill()
		<-fs.done
		return errors.New("flashsync did not stop within 15 s of SIGTERM")
	}
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
	if _, err := conn.Execute(fmt.Sprintf("UPDATE %s.item SET stock = stock + 1 WHERE id <= %d", db, f.rows)); err != nil {
		return 0, err
	}
	committed := time.Now()
	if err := loopback.WaitFor(ctx, time.Minute, 5*time.Millisecond, func() bool { return h.count() >= f.rows }); err != nil {
		return 0, err
	}
	return float64(f.rows) / time.Since(committed).Seconds(), nil
}

// latency updates one row per transaction at a fixed rate, spread over
// f.workers connections, and times, from each commit's return, the DEL of
// its page key on the last of the two replicas of its group (Redis keyspace
// notifications).
func latency(ctx context.Context, f flags, groups [][]string) ([]time.Duration, error) {
	n := f.latencyN
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
	defer func() {
		for _, s := range subs {
			s.Close()
		}
	}()
	for _, rc := range replicas {
		if err := rc.ConfigSet(ctx, "notify-keyspace-events", "Eg").Err(); err != nil {
			return nil, err
		}
		defer rc.ConfigSet(context.Background(), "notify-keyspace-events", "")
		pipe := rc.Pipeline()
		for id := 1; id <= n; id++ {
			pipe.Set(ctx, pageKey(strconv.Itoa(id)), "x", 0)
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
				if id, ok := strings.CutPrefix(msg.Payload, pageKey("")); ok {
					if i, err := strconv.Atoi(id); err == nil {
						events <- event{i, time.Now()}
					}
				}
			}
		}()
	}

	commits := make([]time.Time, n+1)
	ids := make(chan int, f.workers)
	errs := make(chan error, f.workers)
	var wg sync.WaitGroup
	for range f.workers {
		conn, err := client.ConnectWithContext(ctx, f.mysql, "root", "", "", 10*time.Second)
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				last := min(id+f.perTx-1, n)
				if _, err := conn.Execute(fmt.Sprintf("UPDATE %s.item SET price = price + 1 WHERE id BETWEEN %d AND %d", db, id, last)); err != nil {
					errs <- err
					return
				}
				now := time.Now()
				for i := id; i <= last; i++ {
					commits[i] = now
				}
			}
		}()
	}
	// Every id's page key lives on the 2 replicas of its group.
	last := make([]time.Time, n+1)
	seen := make([]int, n+1)
	done, next := 0, 1
	tick := time.NewTicker(time.Second / time.Duration(f.rate))
	defer tick.Stop()
	deadline := time.After(time.Duration(n/f.rate+60) * time.Second)
	began := time.Now()
	for done < n {
		var tc <-chan time.Time
		if next <= n {
			tc = tick.C
		}
		select {
		case <-tc:
			select {
			case ids <- next:
				next += f.perTx
			default: // workers saturated: this tick's transaction is skipped
			}
			if next > n {
				close(ids)
			}
		case e := <-events:
			if e.id > n {
				continue
			}
			seen[e.id]++
			last[e.id] = e.at
			if seen[e.id] == 2 {
				done++
			}
		case err := <-errs:
			return nil, err
		case <-deadline:
			return nil, fmt.Errorf("only %d of %d changes purged on both replicas", done, n)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	workersDone := make(chan struct{})
	go func() { wg.Wait(); close(workersDone) }()
	select {
	case <-workersDone:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var lastCommit time.Time
	for _, c := range commits {
		if c.After(lastCommit) {
			lastCommit = c
		}
	}
	el := lastCommit.Sub(began)
	fmt.Printf("latency run: %d row changes in %d-row transactions in %v: %.0f changes/s, %.0f tx/s achieved\n", n, f.perTx, el.Round(time.Millisecond), float64(n)/el.Seconds(), float64(n)/float64(f.perTx)/el.Seconds())
	lat := make([]time.Duration, 0, n)
	for id := 1; id <= n; id++ {
		lat = append(lat, last[id].Sub(commits[id]))
	}
	return lat, nil
}

type metricsAt string

// sum adds every sample of a metric in the Prometheus text exposition.
func (m metricsAt) sum(name string) float64 { return m.sumWhere(name, "") }

// sumWhere adds the samples of a metric whose labels contain label (for
// example `result="applied"`), every sample if label is empty.
func (m metricsAt) sumWhere(name, label string) float64 {
	resp, err := http.Get(string(m))
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return loopback.SumMetric(string(body), name, label)
}
