// Command checker measures what the consistency checker costs (issue 11):
// a fixed rate of single-row UPDATEs runs through a flashsync canal and
// Redis purger built in this process (daemon.New, roles canal and purger)
// while the checker runs, or not, as a separate `flashsync checker` child
// process, in alternating rounds of three settings: off, sample_rate 0.01
// and sample_rate 1.0.
//
// The checker is a child process so that its CPU time and RSS are its own
// (/proc/PID/stat and status): in one process its goroutines' CPU cannot be
// told apart from the canal's and the purger's, and the difference of the
// whole process between settings is smaller than this machine's noise at
// 0.01. Its Redis reads land on two private redis-servers that only this
// command uses, so their INFO counters are exact; MySQL is the shared
// stack's, whose Questions counter every other client moves as well, so
// the checker's MySQL use is also read from its own sockets.
//
// Every loop is bounded in count and time; traffic stays on loopback.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/bench/internal/loopback"
	"github.com/flashsync/flashsync/bench/internal/redisproc"
	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/daemon"
)

type flags struct {
	mysql      string
	nsqdTCP    string
	nsqdHTTP   string
	nsqdPID    string
	redis      string
	binary     string
	rows       int
	rate       int
	workers    int
	rounds     int
	windows    string
	measure    time.Duration
	maxPending int
	timeout    time.Duration
}

func main() {
	var f flags
	flag.StringVar(&f.mysql, "mysql", "127.0.0.1:13306", "MariaDB address (root, no password)")
	flag.StringVar(&f.nsqdTCP, "nsqd-tcp", "127.0.0.1:14150", "nsqd TCP address")
	flag.StringVar(&f.nsqdHTTP, "nsqd-http", "127.0.0.1:14151", "nsqd HTTP address")
	flag.StringVar(&f.nsqdPID, "nsqd-pid-file", ".stack/nsqd.pid", "pid file of that nsqd, to read its CPU time (empty or unreadable: not measured)")
	flag.StringVar(&f.redis, "redis", "", "comma-separated replicas of the checked group (empty: start two private redis-servers, whose counters nothing else moves)")
	flag.StringVar(&f.binary, "flashsync", "bin/flashsync", "flashsync binary run as the checker (`make build`)")
	flag.IntVar(&f.rows, "rows", 5000, "rows of the private table the UPDATEs cycle over (max 100,000)")
	flag.IntVar(&f.rate, "rate", 500, "single-row UPDATE transactions per second (max 5,000)")
	flag.IntVar(&f.workers, "workers", 2, "connections issuing the UPDATEs (max 16)")
	flag.IntVar(&f.rounds, "rounds", 3, "rounds of the three settings (max 10)")
	flag.StringVar(&f.windows, "windows", "1s,5s,15s", "checker windows (the default config's are 1s,5s,1m: each setting then warms up for a minute)")
	flag.DurationVar(&f.measure, "measure", 20*time.Second, "measured interval of each setting, after the checker's warm-up (longest window + 2 s)")
	flag.IntVar(&f.maxPending, "max-pending", 0, "checker max_pending (0: the default, 10000)")
	flag.DurationVar(&f.timeout, "timeout", 15*time.Minute, "give up after this long")
	flag.Parse()
	f.rows = min(max(f.rows, 1), 100_000)
	f.rate = min(max(f.rate, 1), 5_000)
	f.workers = min(max(f.workers, 1), 16)
	f.rounds = min(max(f.rounds, 1), 10)
	f.measure = min(max(f.measure, time.Second), 10*time.Minute)

	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	if err := run(ctx, f); err != nil {
		fmt.Fprintln(os.Stderr, "checker bench:", err)
		os.Exit(1)
	}
}

const (
	db          = "flashsync_bench_checker"
	group       = "bench"
	topicPrefix = "flashsync-bench-checker"
	// serverID is this command's binlog reader, distinct from the stack's
	// configs (4242: bench/bulkupdate) and the tests'.
	serverID = 4271
)

// setting is one checker configuration; rate 0 is the checker off.
type setting struct {
	name string
	rate float64
}

var settings = []setting{{"off", 0}, {"0.01", 0.01}, {"1.0", 1.0}}

func run(ctx context.Context, f flags) error {
	windows, err := parseWindows(f.windows)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "flashsync-bench-checker-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	// The topics hold a channel per replica of every earlier run: deleted
	// before and after (loopback.DeleteTopics says why).
	topics := loopback.FlashsyncTopics(topicPrefix, group)
	if err := loopback.DeleteTopics(ctx, f.nsqdHTTP, topics...); err != nil {
		return err
	}
	defer loopback.DeleteTopics(context.WithoutCancel(ctx), f.nsqdHTTP, topics...)

	conn, err := client.ConnectWithContext(ctx, f.mysql, "root", "", "", 10*time.Second)
	if err != nil {
		return fmt.Errorf("mysql %s: %w (run `make stack-up`)", f.mysql, err)
	}
	defer conn.Close()
	if err := setup(conn, f.rows); err != nil {
		return err
	}
	defer conn.Execute("DROP DATABASE IF EXISTS " + db)

	var replicas []string
	var redisPIDs []int
	if f.redis != "" {
		replicas = strings.Split(f.redis, ",")
	} else {
		for range 2 {
			r, err := redisproc.Start(ctx, "")
			if err != nil {
				return err
			}
			defer r.Stop()
			replicas = append(replicas, r.Addr())
			redisPIDs = append(redisPIDs, r.PID())
		}
	}
	rcs := make([]*redis.Client, len(replicas))
	for i, addr := range replicas {
		rcs[i] = redis.NewClient(&redis.Options{Addr: addr})
		defer rcs[i].Close()
	}

	// The canal and the purger, in this process, as `flashsync canal` and
	// `flashsync purger` build them.
	httpAddr, err := loopback.FreeAddr()
	if err != nil {
		return err
	}
	canalCfg := baseConfig(f, replicas, httpAddr) + fmt.Sprintf(`
[mysql]
addr = %q
user = "root"
flavor = "mariadb"
server_id = %d

[canal]
position_file = %q
include_tables = ["%s\\..*"]

[[rule]]
table = "%s.item"
keys = ["item:{id}", "item:page:{id}"]
route_by = "id"
`, f.mysql, serverID, filepath.Join(tmp, "position"), db, db)
	cfg, err := configs.Parse([]byte(canalCfg))
	if err != nil {
		return fmt.Errorf("canal config: %w", err)
	}
	logFile, err := os.Create(filepath.Join(tmp, "daemon.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	d, err := daemon.New(daemon.Options{Config: cfg, Roles: []string{daemon.RoleCanal, daemon.RoleRedisPurger},
		Logger: slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return err
	}
	dctx, stopDaemon := context.WithCancel(ctx)
	dDone := make(chan error, 1)
	go func() { dDone <- errors.Join(d.Run(dctx), d.Close()) }()
	defer func() { stopDaemon(); <-dDone }()
	dm := metricsAt("http://" + d.HTTPAddr() + "/metrics")
	if err := loopback.WaitFor(ctx, 30*time.Second, 20*time.Millisecond, func() bool { return dm.sum("flashsync_canal_position_saves_total") > 0 }); err != nil {
		return fmt.Errorf("canal did not start: %w", err)
	}

	fmt.Printf("flashsync checker bench: %d single-row UPDATEs/s over %d rows (%d connections), 2 keys each, 1 group of %d replicas %v\n",
		f.rate, f.rows, f.workers, len(replicas), replicas)
	fmt.Printf("checker windows %v, max_pending %s; each setting: warm-up %v (checker on), then %v measured; %d rounds of off, 0.01, 1.0\n",
		windows, cmpOr(f.maxPending, "10000 (default)"), slices.Max(windows)+2*time.Second, f.measure, f.rounds)

	load, err := startLoad(ctx, f)
	if err != nil {
		return err
	}
	defer load.stop()
	// Let the purge path settle before the first measurement.
	if err := sleepCtx(ctx, 3*time.Second); err != nil {
		return err
	}
	b := &bench{f: f, tmp: tmp, replicas: replicas, windows: windows, load: load, daemon: dm,
		rcs: rcs, redisPIDs: redisPIDs, nsqdPID: readPID(f.nsqdPID), conn: conn}

	var results []result
	for round := 1; round <= f.rounds; round++ {
		for _, s := range settings {
			res, err := b.measure(ctx, s, round)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", round, s.name, err)
			}
			res.print()
			results = append(results, res)
			if err := load.err(); err != nil {
				return fmt.Errorf("load: %w", err)
			}
		}
	}
	summarize(results)
	return nil
}

// baseConfig is what the canal's config and the checker's share; the
// checker's has no [mysql]: it never reads MySQL.
func baseConfig(f flags, replicas []string, httpAddr string) string {
	return fmt.Sprintf(`[nsq]
nsqd_tcp = [%q]
nsqd_http = [%q]
topic_prefix = %q

[http]
addr = %q

[[redis_group]]
name = %q
replicas = ["%s"]
`, f.nsqdTCP, f.nsqdHTTP, topicPrefix, httpAddr, group, strings.Join(replicas, `", "`))
}

// result is one setting in one round, over the measured interval.
type result struct {
	round   int
	setting string
	secs    float64
	updates float64 // UPDATEs committed
	msgs    float64 // purge messages applied, per replica
	// The checker process (zero when off).
	cpuSecs  float64
	rss0MB   float64 // at start, before the warm-up
	rssMB    float64 // at the end of the interval
	hwmMB    float64
	checks   float64
	dropped  float64
	mysqlCon int
	// Everyone else.
	redisCmds   float64 // total_commands_processed, all replicas
	redisGets   float64 // cmdstat_get calls, all replicas
	redisCPU    float64 // private redis-servers' CPU seconds (-1: not ours)
	nsqdCPU     float64 // -1: not measured
	selfCPU     float64 // this process: canal, purger, load generator
	questions   float64 // SHOW GLOBAL STATUS Questions, every client's
	purgeMean   float64 // seconds, canal read to purged, per replica
	purgeP50    float64
	purgeP99    float64
	purgeSample float64
}

func (r result) perSec(x float64) float64 { return x / r.secs }

func (r result) print() {
	fmt.Printf("round %d %-4s  %4.0f upd/s %4.0f msg/s | checker cpu %5.1f%% rss %5.1f MB checks %6.0f/s dropped %5.0f mysql conns %d | redis %6.0f cmd/s %5.0f GET/s cpu %s | nsqd cpu %s | bench cpu %5.1f%% | questions %5.0f/s | purge mean %.2f p50 %.2f p99 %.2f ms\n",
		r.round, r.setting, r.perSec(r.updates), r.perSec(r.msgs), 100*r.perSec(r.cpuSecs), r.rssMB, r.perSec(r.checks), r.dropped, r.mysqlCon,
		r.perSec(r.redisCmds), r.perSec(r.redisGets), pct(r.redisCPU, r.secs), pct(r.nsqdCPU, r.secs), 100*r.perSec(r.selfCPU),
		r.perSec(r.questions), 1000*r.purgeMean, 1000*r.purgeP50, 1000*r.purgeP99)
}

func pct(cpu, secs float64) string {
	if cpu < 0 {
		return "  n/a"
	}
	return fmt.Sprintf("%5.1f%%", 100*cpu/secs)
}

// snapshot is every counter read at one instant.
type snapshot struct {
	at        time.Time
	updates   int64
	msgs      float64
	checker   procStat
	checks    float64
	dropped   float64
	redisCmds float64
	redisGets float64
	redisCPU  float64
	nsqdCPU   float64
	selfCPU   float64
	questions float64
	hist      histogram
}

// bench is what every measurement uses.
type bench struct {
	f         flags
	tmp       string
	replicas  []string
	windows   []time.Duration
	load      *loadGen
	daemon    metricsAt // the canal's and purger's
	rcs       []*redis.Client
	redisPIDs []int // the private replicas' (none: -redis given)
	nsqdPID   int   // 0: not measured
	conn      *client.Conn
}

// measure runs one setting: the checker started (unless off) and warmed
// up, then every counter read before and after the measured interval.
func (bn *bench) measure(ctx context.Context, s setting, round int) (result, error) {
	f, windows, load, dm, rcs, redisPIDs, nsqdPID, conn := bn.f, bn.windows, bn.load, bn.daemon, bn.rcs, bn.redisPIDs, bn.nsqdPID, bn.conn
	var ck *checkerProc
	var rss0 int64
	if s.rate > 0 {
		var err error
		ck, err = bn.startChecker(ctx, s.rate)
		if err != nil {
			return result{}, err
		}
		defer ck.stop()
		rss0 = readProc(ck.cmd.Process.Pid).rss
		// Steady state: checks of every window are being done.
		if err := sleepCtx(ctx, slices.Max(windows)+2*time.Second); err != nil {
			return result{}, err
		}
	} else if err := sleepCtx(ctx, 2*time.Second); err != nil {
		// The previous checker's ephemeral channel is gone by now.
		return result{}, err
	}
	take := func() (snapshot, error) {
		sn := snapshot{at: time.Now(), updates: load.done.Load(), redisCPU: -1, nsqdCPU: -1}
		sn.msgs = dm.sum(`flashsync_purger_messages_total`) / float64(len(rcs))
		sn.hist = dm.histogram("flashsync_purger_commit_to_purge_seconds")
		if ck != nil {
			sn.checker = readProc(ck.cmd.Process.Pid)
			sn.checks = ck.metrics.sum("flashsync_consistency_checks_total")
			sn.dropped = ck.metrics.sum("flashsync_consistency_samples_dropped_total")
		}
		for _, rc := range rcs {
			cmds, gets, err := redisCounters(ctx, rc)
			if err != nil {
				return sn, err
			}
			sn.redisCmds += cmds
			sn.redisGets += gets
		}
		if len(redisPIDs) > 0 {
			sn.redisCPU = 0
			for _, pid := range redisPIDs {
				sn.redisCPU += readProc(pid).cpu
			}
		}
		if nsqdPID > 0 {
			sn.nsqdCPU = readProc(nsqdPID).cpu
		}
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		sn.selfCPU = float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
		r, err := conn.Execute("SHOW GLOBAL STATUS LIKE 'Questions'")
		if err != nil {
			return sn, err
		}
		q, _ := r.GetStringByName(0, "Value")
		sn.questions, _ = strconv.ParseFloat(q, 64)
		return sn, nil
	}
	a, err := take()
	if err != nil {
		return result{}, err
	}
	if err := sleepCtx(ctx, f.measure); err != nil {
		return result{}, err
	}
	b, err := take()
	if err != nil {
		return result{}, err
	}
	res := result{
		round: round, setting: s.name, secs: b.at.Sub(a.at).Seconds(),
		updates: float64(b.updates - a.updates), msgs: b.msgs - a.msgs,
		checks: b.checks - a.checks, dropped: b.dropped - a.dropped,
		redisCmds: b.redisCmds - a.redisCmds, redisGets: b.redisGets - a.redisGets,
		redisCPU: b.redisCPU - a.redisCPU, nsqdCPU: b.nsqdCPU - a.nsqdCPU,
		selfCPU: b.selfCPU - a.selfCPU, questions: b.questions - a.questions,
	}
	if len(redisPIDs) == 0 {
		res.redisCPU = -1
	}
	if nsqdPID <= 0 {
		res.nsqdCPU = -1
	}
	if ck != nil {
		res.cpuSecs = b.checker.cpu - a.checker.cpu
		res.rss0MB = float64(rss0) / (1 << 20)
		res.rssMB, res.hwmMB = float64(b.checker.rss)/(1<<20), float64(b.checker.hwm)/(1<<20)
		res.mysqlCon = mysqlConns(ck.cmd.Process.Pid, f.mysql)
	}
	h := b.hist.minus(a.hist)
	res.purgeSample = h.count
	if h.count > 0 {
		res.purgeMean = h.sum / h.count
		res.purgeP50, res.purgeP99 = h.quantile(0.5), h.quantile(0.99)
	}
	return res, nil
}

// summarize prints each setting's medians over the rounds and their ratio
// to the same round's off.
func summarize(results []result) {
	by := map[string][]result{}
	for _, r := range results {
		by[r.setting] = append(by[r.setting], r)
	}
	med := func(rs []result, v func(result) float64) float64 {
		xs := make([]float64, len(rs))
		for i, r := range rs {
			xs[i] = v(r)
		}
		slices.Sort(xs)
		if len(xs)%2 == 1 {
			return xs[len(xs)/2]
		}
		return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
	}
	// ratio is the median over rounds of setting/off within each round.
	ratio := func(name string, v func(result) float64) string {
		var xs []float64
		for _, r := range by[name] {
			for _, o := range by["off"] {
				if o.round == r.round && v(o) > 0 {
					xs = append(xs, v(r)/v(o))
				}
			}
		}
		if len(xs) == 0 {
			return "-"
		}
		slices.Sort(xs)
		return fmt.Sprintf("%.2f×", xs[len(xs)/2])
	}
	fmt.Printf("\nmedians over %d rounds (ratio: median of setting/off in the same round)\n", len(by["off"]))
	fmt.Printf("%-7s %10s %10s %9s %9s %11s %9s %14s %16s %15s %15s %14s %14s %14s\n",
		"setting", "upd/s", "msg/s", "ckr cpu", "ckr rss", "checks/s", "dropped", "redis cmd/s", "redis GET/s", "redis cpu", "nsqd cpu", "purge mean", "purge p50", "purge p99")
	for _, s := range settings {
		rs := by[s.name]
		if len(rs) == 0 {
			continue
		}
		fmt.Printf("%-7s %10.0f %10.0f %8.2f%% %6.1f MB %11.0f %9.0f %8.0f %5s %10.0f %5s %8.2f%% %5s %8.2f%% %5s %8.2fms %5s %8.2fms %5s %8.2fms %5s\n", s.name,
			med(rs, func(r result) float64 { return r.perSec(r.updates) }),
			med(rs, func(r result) float64 { return r.perSec(r.msgs) }),
			med(rs, func(r result) float64 { return 100 * r.perSec(r.cpuSecs) }),
			med(rs, func(r result) float64 { return r.rssMB }),
			med(rs, func(r result) float64 { return r.perSec(r.checks) }),
			med(rs, func(r result) float64 { return r.dropped }),
			med(rs, func(r result) float64 { return r.perSec(r.redisCmds) }), ratio(s.name, func(r result) float64 { return r.redisCmds / r.secs }),
			med(rs, func(r result) float64 { return r.perSec(r.redisGets) }), ratio(s.name, func(r result) float64 { return r.redisGets / r.secs }),
			med(rs, func(r result) float64 { return 100 * r.perSec(r.redisCPU) }), ratio(s.name, func(r result) float64 { return r.redisCPU / r.secs }),
			med(rs, func(r result) float64 { return 100 * r.perSec(r.nsqdCPU) }), ratio(s.name, func(r result) float64 { return r.nsqdCPU / r.secs }),
			1000*med(rs, func(r result) float64 { return r.purgeMean }), ratio(s.name, func(r result) float64 { return r.purgeMean }),
			1000*med(rs, func(r result) float64 { return r.purgeP50 }), ratio(s.name, func(r result) float64 { return r.purgeP50 }),
			1000*med(rs, func(r result) float64 { return r.purgeP99 }), ratio(s.name, func(r result) float64 { return r.purgeP99 }))
	}
	// The checker receives every message whatever its rate (it samples
	// after decoding), so its CPU is a cost per message received plus one
	// per check: the second is the difference between the two rates.
	lo, hi := by[settings[1].name], by[settings[2].name]
	for _, rs := range [][]result{lo, hi} {
		if len(rs) == 0 {
			continue
		}
		var added []float64
		for _, r := range rs {
			for _, o := range by["off"] {
				if o.round == r.round && r.checks > 0 {
					added = append(added, (r.perSec(r.redisCmds)-o.perSec(o.redisCmds))/r.perSec(r.checks))
				}
			}
		}
		slices.Sort(added)
		fmt.Printf("sample_rate %s: checker CPU %.0f µs per message received; RSS %.1f MB at start, %.1f MB peak; Redis commands added per check %s; checker's MySQL connections %v; questions/s %.0f (off %.0f: every client of the shared server)\n",
			rs[0].setting, med(rs, func(r result) float64 { return 1e6 * r.cpuSecs / r.msgs }),
			med(rs, func(r result) float64 { return r.rss0MB }), med(rs, func(r result) float64 { return r.hwmMB }),
			medianOrDash(added), mysqlConnsOf(rs),
			med(rs, func(r result) float64 { return r.perSec(r.questions) }), med(by["off"], func(r result) float64 { return r.perSec(r.questions) }))
	}
	if len(lo) > 0 && len(hi) > 0 {
		cpu := func(r result) float64 { return r.cpuSecs / r.secs }
		checks := func(r result) float64 { return r.perSec(r.checks) }
		fmt.Printf("checker CPU per check (1.0 minus 0.01, over their checks/s): %.1f µs\n",
			1e6*(med(hi, cpu)-med(lo, cpu))/(med(hi, checks)-med(lo, checks)))
	}
}

func medianOrDash(xs []float64) string {
	if len(xs) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", xs[len(xs)/2])
}

func mysqlConnsOf(rs []result) []int {
	var out []int
	for _, r := range rs {
		out = append(out, r.mysqlCon)
	}
	return out
}

func cmpOr(n int, def string) string {
	if n > 0 {
		return strconv.Itoa(n)
	}
	return def
}

func parseWindows(s string) ([]time.Duration, error) {
	var ws []time.Duration
	for _, p := range strings.Split(s, ",") {
		w, err := time.ParseDuration(strings.TrimSpace(p))
		if err != nil || w <= 0 || w > 5*time.Minute {
			return nil, fmt.Errorf("-windows %q: want positive durations up to 5m", s)
		}
		ws = append(ws, w)
	}
	return ws, nil
}

func setup(conn *client.Conn, rows int) error {
	for _, q := range []string{
		"DROP DATABASE IF EXISTS " + db,
		"CREATE DATABASE " + db,
		"CREATE TABLE " + db + ".item (id BIGINT PRIMARY KEY, price BIGINT NOT NULL)",
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
			fmt.Fprintf(&b, "(%d,0)", id)
		}
		if _, err := conn.Execute(b.String()); err != nil {
			return err
		}
	}
	return nil
}

// loadGen issues single-row UPDATEs at a fixed rate until stopped; a tick
// whose workers are all busy is skipped, and done counts the commits.
type loadGen struct {
	done   atomic.Int64
	cancel context.CancelFunc
	wg     sync.WaitGroup
	errs   chan error
}

func startLoad(ctx context.Context, f flags) (*loadGen, error) {
	ctx, cancel := context.WithCancel(ctx)
	l := &loadGen{cancel: cancel, errs: make(chan error, f.workers)}
	ids := make(chan int, f.workers)
	var conns []*client.Conn
	for range f.workers {
		c, err := client.ConnectWithContext(ctx, f.mysql, "root", "", "", 10*time.Second)
		if err != nil {
			cancel()
			for _, c := range conns {
				c.Close()
			}
			return nil, err
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		l.wg.Go(func() {
			defer c.Close()
			for id := range ids {
				if _, err := c.Execute(fmt.Sprintf("UPDATE %s.item SET price = price + 1 WHERE id = %d", db, id)); err != nil {
					l.errs <- err
					return
				}
				l.done.Add(1)
			}
		})
	}
	// Bounded by the context's deadline (-timeout) and by count.
	maxTx := int64(f.rate) * int64(f.timeout/time.Second+1)
	l.wg.Go(func() {
		defer close(ids)
		tick := time.NewTicker(time.Second / time.Duration(f.rate))
		defer tick.Stop()
		for n := int64(0); n < maxTx; {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				select {
				case ids <- int(n%int64(f.rows)) + 1:
					n++
				default:
				}
			}
		}
	})
	return l, nil
}

func (l *loadGen) err() error {
	select {
	case err := <-l.errs:
		return err
	default:
		return nil
	}
}

func (l *loadGen) stop() { l.cancel(); l.wg.Wait() }

// checkerProc is `flashsync checker` run as a child.
type checkerProc struct {
	cmd     *exec.Cmd
	metrics metricsAt
	done    chan error
}

func (bn *bench) startChecker(ctx context.Context, rate float64) (*checkerProc, error) {
	f, tmp := bn.f, bn.tmp
	httpAddr, err := loopback.FreeAddr()
	if err != nil {
		return nil, err
	}
	cfg := baseConfig(f, bn.replicas, httpAddr)
	var ws []string
	for _, w := range bn.windows {
		ws = append(ws, strconv.Quote(w.String()))
	}
	cfg += fmt.Sprintf("\n[checker]\nsample_rate = %v\nwindows = [%s]\n", rate, strings.Join(ws, ", "))
	if f.maxPending > 0 {
		cfg += fmt.Sprintf("max_pending = %d\n", f.maxPending)
	}
	path := filepath.Join(tmp, "checker.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	log, err := os.Create(filepath.Join(tmp, "checker.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(f.binary, "checker", "-config", path)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s (run `make build`): %w", f.binary, err)
	}
	ck := &checkerProc{cmd: cmd, metrics: metricsAt("http://" + httpAddr + "/metrics"), done: make(chan error, 1)}
	go func() { ck.done <- cmd.Wait(); log.Close() }()
	if err := loopback.WaitFor(ctx, 15*time.Second, 20*time.Millisecond, func() bool { return ck.metrics.has("flashsync_consistency_nines") }); err != nil {
		ck.stop()
		out, _ := os.ReadFile(filepath.Join(tmp, "checker.log"))
		return nil, fmt.Errorf("checker did not start: %w\n%s", err, out)
	}
	return ck, nil
}

// stop ends the child with SIGTERM and waits for it (SIGKILL after 10 s).
func (ck *checkerProc) stop() {
	ck.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-ck.done:
	case <-time.After(10 * time.Second):
		ck.cmd.Process.Kill()
		<-ck.done
	}
}

// redisCounters reads a replica's total_commands_processed and GET calls.
func redisCounters(ctx context.Context, rc *redis.Client) (cmds, gets float64, err error) {
	info, err := rc.Info(ctx, "stats", "commandstats").Result()
	if err != nil {
		return 0, 0, fmt.Errorf("redis info: %w", err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "total_commands_processed:"); ok {
			cmds, _ = strconv.ParseFloat(v, 64)
		}
		if v, ok := strings.CutPrefix(line, "cmdstat_get:calls="); ok {
			v, _, _ = strings.Cut(v, ",")
			gets, _ = strconv.ParseFloat(v, 64)
		}
	}
	return cmds, gets, nil
}

// procStat is a process's CPU time (user + system, seconds) and resident
// set (now and peak, bytes).
type procStat struct {
	cpu      float64
	rss, hwm int64
}

// clockTicks is Linux's USER_HZ, the unit of /proc/PID/stat's times.
const clockTicks = 100

func readProc(pid int) procStat {
	var p procStat
	if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// Fields after the command name, which may hold spaces: state is
		// field 3, utime 14 and stime 15.
		if i := strings.LastIndexByte(string(data), ')'); i > 0 {
			fs := strings.Fields(string(data[i+1:]))
			if len(fs) > 12 {
				u, _ := strconv.ParseFloat(fs[11], 64)
				s, _ := strconv.ParseFloat(fs[12], 64)
				p.cpu = (u + s) / clockTicks
			}
		}
	}
	if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			for prefix, dst := range map[string]*int64{"VmRSS:": &p.rss, "VmHWM:": &p.hwm} {
				if v, ok := strings.CutPrefix(line, prefix); ok {
					kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
					*dst = kb << 10
				}
			}
		}
	}
	return p
}

func readPID(path string) int {
	if path == "" {
		return 0
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	if pid > 0 {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d/stat", pid)); err != nil {
			return 0
		}
	}
	return pid
}

// mysqlConns counts pid's TCP sockets connected to the MySQL address: its
// socket inodes (/proc/PID/fd) looked up in /proc/PID/net/tcp.
func mysqlConns(pid int, mysqlAddr string) int {
	_, port, err := net.SplitHostPort(mysqlAddr)
	if err != nil {
		return -1
	}
	p, _ := strconv.Atoi(port)
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	for _, fd := range fds {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil {
			if in, ok := strings.CutPrefix(l, "socket:["); ok {
				inodes[strings.TrimSuffix(in, "]")] = true
			}
		}
	}
	n := 0
	for _, file := range []string{"tcp", "tcp6"} {
		fh, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, file))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			// sl local rem st tx:rx tr:when retrnsmt uid timeout inode
			if len(fs) < 10 || !inodes[fs[9]] {
				continue
			}
			if _, rport, ok := strings.Cut(fs[2], ":"); ok {
				if v, err := strconv.ParseInt(rport, 16, 32); err == nil && int(v) == p {
					n++
				}
			}
		}
		fh.Close()
	}
	return n
}

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

func (m metricsAt) has(name string) bool { return strings.Contains(m.body(), "\n"+name) }

// sum adds every sample of a metric in the Prometheus text exposition.
func (m metricsAt) sum(name string) float64 {
	var total float64
	for _, line := range strings.Split(m.body(), "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		if v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64); err == nil {
			total += v
		}
	}
	return total
}

// histogram is a Prometheus histogram summed over its label sets.
type histogram struct {
	bounds []float64
	counts []float64 // cumulative, per bound
	sum    float64
	count  float64
}

func (m metricsAt) histogram(name string) histogram {
	byLE := map[float64]float64{}
	var h histogram
	for _, line := range strings.Split(m.body(), "\n") {
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(line, name+"_bucket{"):
			i := strings.Index(line, `le="`)
			if i < 0 {
				continue
			}
			le, _, _ := strings.Cut(line[i+4:], `"`)
			b, err := strconv.ParseFloat(le, 64)
			if err == nil && !math.IsInf(b, 1) {
				byLE[b] += v
			}
		case strings.HasPrefix(line, name+"_sum"):
			h.sum += v
		case strings.HasPrefix(line, name+"_count"):
			h.count += v
		}
	}
	for b := range byLE {
		h.bounds = append(h.bounds, b)
	}
	slices.Sort(h.bounds)
	for _, b := range h.bounds {
		h.counts = append(h.counts, byLE[b])
	}
	return h
}

func (h histogram) minus(o histogram) histogram {
	d := histogram{bounds: h.bounds, sum: h.sum - o.sum, count: h.count - o.count}
	for i, b := range h.bounds {
		c := h.counts[i]
		if j := slices.Index(o.bounds, b); j >= 0 {
			c -= o.counts[j]
		}
		d.counts = append(d.counts, c)
	}
	return d
}

// quantile interpolates linearly within the bucket holding q (the
// buckets double from 0.5 ms: a p99 is known to within its bucket).
func (h histogram) quantile(q float64) float64 {
	rank := q * h.count
	lo, below := 0.0, 0.0
	for i, b := range h.bounds {
		if h.counts[i] >= rank {
			in := h.counts[i] - below
			if in <= 0 {
				return b
			}
			return lo + (b-lo)*(rank-below)/in
		}
		lo, below = b, h.counts[i]
	}
	return math.Inf(1)
}

// sleepCtx waits d: the warm-ups and measured intervals are durations of
// load, not waits for a condition.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
