// Command hotkey measures one hot key under a steady trickle of updates,
// once with a delete rule and once with a sync rule, in the same run: 64
// readers read hk:item:1 through cacheaside.Reader.Get without pause while
// a writer updates the row 50 times a second. With a delete rule every
// update deletes the key and the next readers go to MySQL (one fills, the
// others wait on its lease or load too); with a sync rule the purger writes
// the new row over the key and readers should keep hitting.
//
// Each mode runs the real binary as a child (`flashsync all`) with its own
// canal server_id, position file, NSQ topic prefix and HTTP port, against
// two private redis-servers (one group of two replicas) that nothing else
// touches, the stack's MariaDB and nsqd. Every loop is bounded in count and
// time; traffic stays on loopback.
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/bench/internal/child"
	"github.com/flashsync/flashsync/bench/internal/loopback"
	"github.com/flashsync/flashsync/bench/internal/redisproc"
	"github.com/flashsync/flashsync/cacheaside"
	"github.com/flashsync/flashsync/invalidate"
)

type flags struct {
	mysql    string
	nsqdTCP  string
	nsqdHTTP string
	binary   string
	duration time.Duration
	readers  int
	rate     int
	maxReads int
	poolSize int
	timeout  time.Duration
}

func main() {
	var f flags
	flag.StringVar(&f.mysql, "mysql", "127.0.0.1:13306", "MariaDB address (root, no password)")
	flag.StringVar(&f.nsqdTCP, "nsqd-tcp", "127.0.0.1:14150", "nsqd TCP address")
	flag.StringVar(&f.nsqdHTTP, "nsqd-http", "127.0.0.1:14151", "nsqd HTTP address")
	flag.StringVar(&f.binary, "flashsync", "bin/flashsync", "flashsync binary run as the child (`make build`)")
	flag.DurationVar(&f.duration, "duration", 20*time.Second, "load time of each mode (max 5m)")
	flag.IntVar(&f.readers, "readers", 64, "reader goroutines (max 1024)")
	flag.IntVar(&f.rate, "rate", 50, "row updates per second (max 5,000)")
	flag.IntVar(&f.maxReads, "max-reads", 20_000_000, "reads per mode at most, over all readers (each one's latency is kept: 8 bytes a read)")
	flag.IntVar(&f.poolSize, "pool-size", 0, "go-redis connections per replica (0: go-redis's default, 10 per GOMAXPROCS)")
	flag.DurationVar(&f.timeout, "timeout", 10*time.Minute, "give up after this long")
	flag.Parse()
	f.duration = min(max(f.duration, time.Second), 5*time.Minute)
	f.readers = min(max(f.readers, 1), 1024)
	f.rate = min(max(f.rate, 1), 5_000)
	f.maxReads = min(max(f.maxReads, f.readers), 100_000_000)
	f.poolSize = min(max(f.poolSize, 0), 4096)

	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	if err := run(ctx, f); err != nil {
		fmt.Fprintln(os.Stderr, "hotkey bench:", err)
		os.Exit(1)
	}
}

const (
	db    = "hotkey_bench"
	key   = "hk:item:1"
	group = "hk"
	// sentinel is put in the key before the first UPDATE of a mode; the
	// mode is ready when both replicas hold something else (delete: no
	// key; sync: the row).
	sentinel = "hotkey-bench-sentinel"
)

// mode is one of the two rule setups.
type mode struct {
	name string
	// serverID is the mode's binlog reader, distinct from the stack's
	// configs (1001), bench/bulkupdate (4242, 4243), bench/checker (4271).
	serverID int
	rule     string
}

var modes = []mode{
	{"delete", 4291, `[[rule]]
table = "%[1]s.item"
route_by = "id"
keys = ["hk:item:{id}"]
`},
	{"sync", 4292, `[[rule]]
table = "%[1]s.item"
route_by = "id"
[[rule.sync]]
key = "hk:item:{id}"
`},
}

func run(ctx context.Context, f flags) error {
	sqlDB, err := sql.Open("mysql", "root@tcp("+f.mysql+")/?parseTime=false&timeout=10s")
	if err != nil {
		return fmt.Errorf("mysql %s: %w", f.mysql, err)
	}
	defer sqlDB.Close()
	// Every reader may load at once, plus the writer.
	sqlDB.SetMaxOpenConns(f.readers + 1)
	sqlDB.SetMaxIdleConns(f.readers + 1)
	if err := setup(ctx, sqlDB); err != nil {
		return fmt.Errorf("setup (run `make stack-up`): %w", err)
	}
	defer sqlDB.ExecContext(context.WithoutCancel(ctx), "DROP DATABASE IF EXISTS "+db)

	fmt.Printf("flashsync hotkey bench: %d readers on %s through cacheaside (MaxStaleness %v), %d updates/s of the row, %v per mode, 1 group of 2 private replicas\n",
		f.readers, key, cacheaside.DefaultMaxStaleness, f.rate, f.duration)
	var results []result
	for _, m := range modes {
		res, err := runMode(ctx, f, m, sqlDB)
		if err != nil {
			return fmt.Errorf("mode %s: %w", m.name, err)
		}
		res.print()
		results = append(results, res)
	}
	del, syn := results[0], results[1]
	fmt.Printf("sync/delete: MySQL reads/s %s (%.1f vs %.1f), read p99 %s (%v vs %v), reads/s %s\n",
		ratio(syn.perSec(syn.loads), del.perSec(del.loads)), syn.perSec(syn.loads), del.perSec(del.loads),
		ratio(float64(syn.q(0.99)), float64(del.q(0.99))), round(syn.q(0.99)), round(del.q(0.99)),
		ratio(syn.perSec(float64(len(syn.lat))), del.perSec(float64(len(del.lat)))))
	return nil
}

func ratio(a, b float64) string {
	if b == 0 {
		return "n/a (delete is 0)"
	}
	return fmt.Sprintf("%.3f×", a/b)
}

func setup(ctx context.Context, sqlDB *sql.DB) error {
	for _, q := range []string{
		"DROP DATABASE IF EXISTS " + db,
		"CREATE DATABASE " + db,
		"CREATE TABLE " + db + ".item (id BIGINT PRIMARY KEY, name VARCHAR(64), price DECIMAL(10,2), stock INT, updated_at DATETIME(6))",
		"INSERT INTO " + db + ".item VALUES (1, 'hot item', 9.99, 100, NOW(6))",
	} {
		if _, err := sqlDB.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

// result is one mode over its measured duration.
type result struct {
	mode     string
	secs     float64
	lat      []time.Duration // every read's, sorted
	results  [cacheaside.Bypassed + 1]int64
	errs     int64
	firstErr error
	loads    float64 // loader calls: MySQL reads
	updates  int64
	// From the child's metrics, over the run.
	syncApplied, syncOlder, keysDeleted float64
	// CPU seconds over the run: this process (readers, writer, go-redis),
	// the flashsync child, the two redis-servers together.
	selfCPU, childCPU, redisCPU float64
	// skips are the replicas reads tried and did not use, by reason
	// (flashsync_cacheaside_replica_skips_total): a bypass follows when
	// both replicas are skipped.
	skips map[string]float64
}

func (r result) perSec(x float64) float64 { return x / r.secs }

func (r result) q(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[min(len(r.lat)-1, int(p*float64(len(r.lat))))]
}

func round(d time.Duration) time.Duration { return d.Round(time.Microsecond) }

// over is the share of reads that took longer than d.
func (r result) over(d time.Duration) float64 {
	if len(r.lat) == 0 {
		return 0
	}
	i, _ := slices.BinarySearch(r.lat, d+1)
	return float64(len(r.lat)-i) / float64(len(r.lat))
}

func (r result) print() {
	fmt.Printf("%-6s %8.0f reads/s  MySQL reads %7.1f/s  latency p50 %v p99 %v p99.9 %v max %v, %.2f%% over 1 ms | hit %d filled %d loaded %d bypassed %d errors %d | updates %d (%.1f/s) | purger: sync writes applied %.0f older %.0f, keys deleted %.0f (both replicas)\n",
		r.mode, r.perSec(float64(len(r.lat))), r.perSec(r.loads), round(r.q(0.50)), round(r.q(0.99)), round(r.q(0.999)), round(r.q(1)), 100*r.over(time.Millisecond),
		r.results[cacheaside.Hit], r.results[cacheaside.Filled], r.results[cacheaside.Loaded], r.results[cacheaside.Bypassed], r.errs,
		r.updates, r.perSec(float64(r.updates)), r.syncApplied, r.syncOlder, r.keysDeleted)
	fmt.Printf("%-6s cpu (share of one core): bench %.0f%%, flashsync %.0f%%, redis-servers %.0f%% | replica skips: stale %.0f no_watermark %.0f error %.0f\n",
		r.mode, 100*r.perSec(r.selfCPU), 100*r.perSec(r.childCPU), 100*r.perSec(r.redisCPU), r.skips["stale"], r.skips["no_watermark"], r.skips["error"])
	if r.firstErr != nil {
		fmt.Printf("%-6s first read error: %v\n", r.mode, r.firstErr)
	}
}

func runMode(ctx context.Context, f flags, m mode, sqlDB *sql.DB) (result, error) {
	tmp, err := os.MkdirTemp("", "flashsync-bench-hotkey-")
	if err != nil {
		return result{}, err
	}
	defer os.RemoveAll(tmp)

	// Fresh replicas per mode: the sync mode's version keys would keep the
	// delete mode's readers from filling, and each mode's counters start
	// at zero.
	var replicas []string
	var rcs []*redis.Client
	var redisPIDs []int
	for range 2 {
		r, err := redisproc.Start(ctx, "")
		if err != nil {
			return result{}, err
		}
		defer r.Stop()
		replicas = append(replicas, r.Addr())
		redisPIDs = append(redisPIDs, r.PID())
		rc := redis.NewClient(&redis.Options{Addr: r.Addr(), ContextTimeoutEnabled: true, PoolSize: f.poolSize})
		defer rc.Close()
		rcs = append(rcs, rc)
	}

	// The mode's topics hold a channel per replica of every earlier run:
	// deleted before and after (loopback.DeleteTopics says why).
	topics := loopback.FlashsyncTopics("flashsync-bench-hotkey-"+m.name, group)
	if err := loopback.DeleteTopics(ctx, f.nsqdHTTP, topics...); err != nil {
		return result{}, err
	}
	defer loopback.DeleteTopics(context.WithoutCancel(ctx), f.nsqdHTTP, topics...)
	fs, err := startFlashsync(ctx, f, m, tmp, replicas)
	if err != nil {
		return result{}, err
	}
	defer fs.stop()

	if err := prime(ctx, sqlDB, rcs); err != nil {
		return result{}, err
	}

	groups := []cacheaside.Group{{Name: group, Replicas: []redis.UniversalClient{rcs[0], rcs[1]}}}
	reg := prometheus.NewRegistry()
	reader, err := cacheaside.New(cacheaside.Options{Groups: groups, Registerer: reg})
	if err != nil {
		return result{}, err
	}
	var loads atomic.Int64
	load := func(ctx context.Context) ([]byte, error) {
		loads.Add(1)
		return loadRow(ctx, sqlDB)
	}

	sync0 := fs.metrics.body()
	redisCPU := func() float64 {
		var s float64
		for _, pid := range redisPIDs {
			s += child.CPUSeconds(pid)
		}
		return s
	}
	self0, child0, redis0 := child.CPUSeconds(os.Getpid()), child.CPUSeconds(fs.proc.PID()), redisCPU()
	res := result{mode: m.name}
	start := time.Now()
	end := start.Add(f.duration)
	lctx, stopLoad := context.WithDeadline(ctx, end)
	defer stopLoad()

	var updates atomic.Int64
	writerErr := make(chan error, 1)
	go func() { writerErr <- write(lctx, sqlDB, f.rate, f.duration, &updates) }()

	type readerOut struct {
		lat      []time.Duration
		results  [cacheaside.Bypassed + 1]int64
		errs     int64
		firstErr error
	}
	outs := make([]readerOut, f.readers)
	perReader := f.maxReads / f.readers
	var wg sync.WaitGroup
	for i := range outs {
		o := &outs[i]
		o.lat = make([]time.Duration, 0, min(perReader, 1<<16))
		wg.Go(func() {
			// Bounded by the mode's deadline and by count.
			for len(o.lat) < perReader && time.Now().Before(end) {
				t0 := time.Now()
				_, r, err := reader.Get(lctx, key, "1", load)
				d := time.Since(t0)
				if err != nil {
					if lctx.Err() != nil {
						return // the read the deadline cut short
					}
					o.errs++
					if o.firstErr == nil {
						o.firstErr = err
					}
					continue
				}
				o.lat = append(o.lat, d)
				o.results[r]++
			}
		})
	}
	wg.Wait()
	res.secs = time.Since(start).Seconds()
	res.selfCPU, res.childCPU, res.redisCPU = child.CPUSeconds(os.Getpid())-self0, child.CPUSeconds(fs.proc.PID())-child0, redisCPU()-redis0
	stopLoad()
	if err := <-writerErr; err != nil {
		return result{}, fmt.Errorf("writer: %w", err)
	}
	res.updates = updates.Load()
	res.loads = float64(loads.Load())
	for i := range outs {
		o := &outs[i]
		res.lat = append(res.lat, o.lat...)
		for r, n := range o.results {
			res.results[r] += n
		}
		res.errs += o.errs
		if res.firstErr == nil {
			res.firstErr = o.firstErr
		}
	}
	slices.Sort(res.lat)
	if res.skips, err = skipsBy(reg); err != nil {
		return result{}, err
	}
	after := fs.metrics.body()
	res.syncApplied = loopback.SumMetric(after, `flashsync_purger_sync_writes_total`, `result="applied"`) - loopback.SumMetric(sync0, `flashsync_purger_sync_writes_total`, `result="applied"`)
	res.syncOlder = loopback.SumMetric(after, `flashsync_purger_sync_writes_total`, `result="older"`) - loopback.SumMetric(sync0, `flashsync_purger_sync_writes_total`, `result="older"`)
	res.keysDeleted = loopback.SumMetric(after, `flashsync_purger_keys_deleted_total`, "") - loopback.SumMetric(sync0, `flashsync_purger_keys_deleted_total`, "")
	if err := fs.stop(); err != nil {
		return result{}, err
	}
	return res, nil
}

// skipsBy sums the reader's replica skips by reason.
func skipsBy(reg *prometheus.Registry) (map[string]float64, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return nil, fmt.Errorf("gather cacheaside metrics: %w", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "flashsync_cacheaside_replica_skips_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" {
					out[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	return out, nil
}

// prime makes the key's state the same in both modes before the readers
// start: the purger has taken both replicas (their watermark is there),
// and an UPDATE has reached both (the sentinel put before it is gone:
// deleted, or overwritten by the synced row).
func prime(ctx context.Context, sqlDB *sql.DB, rcs []*redis.Client) error {
	if err := loopback.WaitFor(ctx, 30*time.Second, 20*time.Millisecond, func() bool {
		for _, rc := range rcs {
			if rc.Exists(ctx, invalidate.WatermarkKey).Val() == 0 {
				return false
			}
		}
		return true
	}); err != nil {
		return fmt.Errorf("watermark on both replicas: %w", err)
	}
	for _, rc := range rcs {
		if err := rc.Set(ctx, key, sentinel, 0).Err(); err != nil {
			return fmt.Errorf("set sentinel on %s: %w", rc.Options().Addr, err)
		}
	}
	if _, err := sqlDB.ExecContext(ctx, "UPDATE "+db+".item SET price = price + 0.01, updated_at = NOW(6) WHERE id = 1"); err != nil {
		return fmt.Errorf("initial update: %w", err)
	}
	if err := loopback.WaitFor(ctx, 30*time.Second, 20*time.Millisecond, func() bool {
		for _, rc := range rcs {
			if v, err := rc.Get(ctx, key).Result(); err == nil && v == sentinel {
				return false
			}
		}
		return true
	}); err != nil {
		return fmt.Errorf("initial update on both replicas: %w", err)
	}
	return nil
}

// loadRow reads the row as the sync rule writes it: a JSON object of every
// column, DECIMAL and DATETIME as strings.
func loadRow(ctx context.Context, sqlDB *sql.DB) ([]byte, error) {
	var id, stock int64
	var name, price, updated string
	err := sqlDB.QueryRowContext(ctx, "SELECT id, name, price, stock, updated_at FROM "+db+".item WHERE id = 1").
		Scan(&id, &name, &price, &stock, &updated)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", key, err)
	}
	return json.Marshal(map[string]any{"id": id, "name": name, "price": price, "stock": stock, "updated_at": updated})
}

// write updates the row rate times a second until ctx ends, at most
// rate × duration times; a tick missed while an UPDATE is slow is skipped.
func write(ctx context.Context, sqlDB *sql.DB, rate int, duration time.Duration, done *atomic.Int64) error {
	maxN := int64(float64(rate)*duration.Seconds()) + 1
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for done.Load() < maxN {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if _, err := sqlDB.ExecContext(ctx, "UPDATE "+db+".item SET price = price + 0.01, updated_at = NOW(6) WHERE id = 1"); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		done.Add(1)
	}
	return nil
}

// flashsync is the binary under test, run as a child process.
type flashsync struct {
	proc    *child.Process
	metrics metricsAt
}

func startFlashsync(ctx context.Context, f flags, m mode, tmp string, replicas []string) (*flashsync, error) {
	httpAddr, err := loopback.FreeAddr()
	if err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`[mysql]
addr = %q
user = "root"
flavor = "mariadb"
server_id = %d

[canal]
position_file = %q
include_tables = ["%s\\..*"]

[nsq]
nsqd_tcp = [%q]
nsqd_http = [%q]
topic_prefix = "flashsync-bench-hotkey-%s"

[http]
addr = %q

[[redis_group]]
name = %q
replicas = ["%s"]

`, f.mysql, m.serverID, filepath.Join(tmp, "position"), db, f.nsqdTCP, f.nsqdHTTP, m.name, httpAddr, group, strings.Join(replicas, `", "`))
	cfg += fmt.Sprintf(m.rule, db)
	path := filepath.Join(tmp, "flashsync.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	logPath := filepath.Join(tmp, "flashsync.log")
	proc, err := child.Start(f.binary, []string{"all", "-config", path}, logPath)
	if err != nil {
		return nil, fmt.Errorf("%w (run `make build`)", err)
	}
	fs := &flashsync{proc: proc, metrics: metricsAt("http://" + httpAddr + "/metrics")}
	if err := loopback.WaitFor(ctx, 30*time.Second, 20*time.Millisecond, func() bool {
		return fs.exited() || fs.metrics.sum("flashsync_canal_position_saves_total") > 0
	}); err != nil || fs.exited() {
		fs.stop()
		out, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("flashsync (%s) did not start: %w\n%s", m.name, errors.Join(err, errors.New("see its log")), out)
	}
	return fs, nil
}

// exited tells whether the child is gone.
func (fs *flashsync) exited() bool { return fs.proc.Exited() }

// stop ends the child with SIGTERM and waits for it.
func (fs *flashsync) stop() error { return fs.proc.Stop(15 * time.Second) }

type metricsAt string

func (m metricsAt) body() string {
	resp, err := http.Get(string(m))
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func (m metricsAt) sum(name string) float64 { return loopback.SumMetric(m.body(), name, "") }
