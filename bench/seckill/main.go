// Command seckill measures the flash-sale core (package seckill) against the
// local stack (`scripts/stack.sh up`): buy requests over real HTTP from many
// keep-alive clients, each a new user and request id, against
//
//   - a naive baseline in this process: every buy runs one MySQL transaction
//     at once (guarded stock UPDATE, INSERT of the order, COMMIT) and answers
//     202 after the commit;
//   - flashsync's seckill.Service (API + order writers) in this process: one
//     Redis Lua step per buy (a private redis-server), the reservation queued
//     in the stack's nsqd, order writers merging the queue into one MySQL
//     transaction per batch.
//
// It reports accepted and answered requests/s, durable orders/s (committed
// in MySQL), accept→commit latency p50/p99 (from the orders rows, in SQL),
// and checks that nothing was oversold. Each system sells its own activity
// (same stock) in one private database (fs_bench_seckill_<random>, dropped
// at the end); the baseline runs first, so flashsync inserts into an orders
// table that already holds the baseline's rows. -floor first drives a
// handler that does nothing, for this machine's HTTP ceiling; -cpuprofile
// profiles this process during the flashsync phase.
// Every loop is bounded in count and time; every address is loopback.
package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/bench/internal/loopback"
	"github.com/flashsync/flashsync/bench/internal/redisproc"
	"github.com/flashsync/flashsync/seckill"
)

type flags struct {
	mysql       string
	nsqdTCP     string
	nsqdHTTP    string
	redisServer string
	clients     int
	requests    int
	duration    time.Duration
	stock       int
	writers     int
	batchMax    int
	redisPool   int
	drain       time.Duration
	timeout     time.Duration
	cpuprofile  string
	baseline    bool
	floor       bool
	durable     bool
}

func main() {
	var f flags
	flag.StringVar(&f.mysql, "mysql", "127.0.0.1:13306", "MariaDB address (root, no password; loopback)")
	flag.StringVar(&f.nsqdTCP, "nsqd-tcp", "127.0.0.1:14150", "nsqd TCP address (loopback)")
	flag.StringVar(&f.nsqdHTTP, "nsqd-http", "127.0.0.1:14151", "nsqd HTTP address (loopback)")
	flag.StringVar(&f.redisServer, "redis-server", "redis-server", "redis-server binary for the private reservations Redis")
	flag.IntVar(&f.clients, "clients", 128, "concurrent HTTP clients, keep-alive (max 1024)")
	flag.IntVar(&f.requests, "requests", 200000, "buy requests per system at most (max 2,000,000)")
	flag.DurationVar(&f.duration, "duration", 20*time.Second, "load time per system at most (max 2m)")
	flag.IntVar(&f.stock, "stock", 300000, "units of each system's activity (max 10,000,000)")
	flag.IntVar(&f.writers, "writers", 0, "seckill order writers, transactions in flight (0: package default)")
	flag.IntVar(&f.batchMax, "batch-max", 0, "reservations per order transaction at most (0: package default)")
	flag.IntVar(&f.redisPool, "redis-pool", 0, "connections to the reservations Redis (0: clients + 8)")
	flag.DurationVar(&f.drain, "drain-timeout", time.Minute, "wait at most this long after the load for the accepted reservations to be committed (max 5m)")
	flag.DurationVar(&f.timeout, "timeout", 5*time.Minute, "give up after this long")
	flag.StringVar(&f.cpuprofile, "cpuprofile", "", "write a CPU profile of this process (API, writers, load clients) during the flashsync phase to this file")
	flag.BoolVar(&f.baseline, "baseline", true, "also run the naive one-transaction-per-request baseline")
	flag.BoolVar(&f.durable, "durable", true, "run with innodb_flush_log_at_trx_commit=1 and sync_binlog=1 (SET GLOBAL for the run, the previous values restored after): a commit is on disk when it returns")
	flag.BoolVar(&f.floor, "floor", false, "first measure the HTTP ceiling of this machine: the same load against a handler that only answers 202")
	flag.Parse()
	f.clients = min(max(f.clients, 1), 1024)
	f.requests = min(max(f.requests, 1), 2_000_000)
	f.duration = min(max(f.duration, 100*time.Millisecond), 2*time.Minute)
	f.stock = min(max(f.stock, 1), 10_000_000)
	f.drain = min(max(f.drain, time.Second), 5*time.Minute)
	for _, a := range []string{f.mysql, f.nsqdTCP, f.nsqdHTTP} {
		if !isLoopback(a) {
			fmt.Fprintf(os.Stderr, "seckill bench: %s is not a loopback address\n", a)
			os.Exit(2)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	if err := run(ctx, f); err != nil {
		fmt.Fprintln(os.Stderr, "seckill bench:", err)
		os.Exit(1)
	}
}

const (
	flashsyncActivity = 1
	baselineActivity  = 2
)

func run(ctx context.Context, f flags) error {
	suffix := randHex(8)
	name := "fs_bench_seckill_" + suffix
	root, err := sql.Open("mysql", dsn(f.mysql, ""))
	if err != nil {
		return err
	}
	defer root.Close()
	if _, err := root.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		return fmt.Errorf("mysql %s: %w (run `scripts/stack.sh up`)", f.mysql, err)
	}
	defer func() {
		c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := root.ExecContext(c, "DROP DATABASE IF EXISTS "+name); err != nil {
			fmt.Fprintf(os.Stderr, "seckill bench: drop database %s: %v\n", name, err)
		}
	}()
	db, err := sql.Open("mysql", dsn(f.mysql, name))
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	if err := seckill.Migrate(ctx, db); err != nil {
		return err
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	acts := map[int64]*seckill.Activity{}
	for _, id := range []int64{flashsyncActivity, baselineActivity} {
		if err := seckill.CreateActivity(ctx, db, seckill.Activity{ID: id, ItemID: id, Title: "bench " + strconv.FormatInt(id, 10), Price: "1.00",
			StartAt: now.Add(-time.Minute), EndAt: now.Add(time.Hour), TotalStock: f.stock, PerUserLimit: 1}); err != nil {
			return err
		}
		// Tokens sign the sale window as MySQL stores it.
		if acts[id], err = seckill.LoadActivity(ctx, db, id); err != nil {
			return err
		}
	}
	var version, flush, syncBinlog, logBin string
	if err := root.QueryRowContext(ctx, "SELECT @@version, @@innodb_flush_log_at_trx_commit, @@sync_binlog, @@log_bin").Scan(&version, &flush, &syncBinlog, &logBin); err != nil {
		return err
	}
	if f.durable && (flush != "1" || syncBinlog != "1") {
		// The stack trades durability for test speed; "durable orders/s"
		// means on disk, so both systems are measured with it.
		if _, err := root.ExecContext(ctx, "SET GLOBAL innodb_flush_log_at_trx_commit = 1, GLOBAL sync_binlog = 1"); err != nil {
			return fmt.Errorf("make MariaDB durable for the run: %w", err)
		}
		defer func(flush, syncBinlog string) {
			c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := root.ExecContext(c, "SET GLOBAL innodb_flush_log_at_trx_commit = "+flush+", GLOBAL sync_binlog = "+syncBinlog); err != nil {
				fmt.Fprintf(os.Stderr, "seckill bench: restore innodb_flush_log_at_trx_commit=%s sync_binlog=%s: %v\n", flush, syncBinlog, err)
			}
		}(flush, syncBinlog)
		flush, syncBinlog = "1", "1"
	}
	fmt.Printf("seckill bench: %d clients, at most %d requests or %v per system, stock %d per activity, database %s\n",
		f.clients, f.requests, f.duration, f.stock, name)
	fmt.Printf("machine: %d CPUs (GOMAXPROCS %d), %s; MariaDB %s innodb_flush_log_at_trx_commit=%s sync_binlog=%s log_bin=%s\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), cpuModel(), version, flush, syncBinlog, logBin)

	rs, err := redisproc.Start(ctx, f.redisServer)
	if err != nil {
		return err
	}
	defer rs.Stop()

	key := []byte(randHex(16))
	if f.floor {
		if err := runFloor(ctx, f, acts[flashsyncActivity], key); err != nil {
			return fmt.Errorf("floor: %w", err)
		}
	}
	var base *result
	if f.baseline {
		base, err = runBaseline(ctx, f, name, acts[baselineActivity], key)
		if err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
		base.print()
		if err := sleep(ctx, time.Second); err != nil { // let InnoDB settle between the phases
			return err
		}
	}
	fs, err := runFlashsync(ctx, f, db, rs, "fs_bench_seckill_"+suffix, acts[flashsyncActivity], key)
	if err != nil {
		return fmt.Errorf("flashsync: %w", err)
	}
	fs.print()

	fmt.Println()
	fmt.Println("| system | answered req/s | accepted req/s (load phase) | accepted req/s (while in stock) | durable orders/s | accept→commit p50 | p99 | oversold |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	for _, r := range []*result{fs, base} {
		if r != nil {
			fmt.Println(r.row())
		}
	}
	if base != nil {
		fmt.Printf("\nratios flashsync ÷ baseline: durable orders/s %.2fx; accepted req/s %.2fx over the load phase, %.2fx while in stock; answered req/s %.2fx\n",
			fs.durableRate()/base.durableRate(), fs.acceptedRate()/base.acceptedRate(), fs.inStockRate()/base.inStockRate(), fs.answeredRate()/base.answeredRate())
	}
	var failed []string
	for _, r := range []*result{fs, base} {
		if r != nil && len(r.failures) > 0 {
			failed = append(failed, r.name+": "+strings.Join(r.failures, "; "))
		}
	}
	if len(failed) > 0 {
		return errors.New("checks failed: " + strings.Join(failed, " | "))
	}
	return nil
}

// result is one system's run.
type result struct {
	name  string
	load  *loadResult
	stock int
	// durable: orders committed, and when the last accepted one was.
	orders     int
	durableEnd time.Time
	// Accept→commit (flashsync: SQL created_at − accepted_at; baseline: the
	// request's time, which includes its commit).
	p50, p99, pmax time.Duration
	latencyHow     string
	checks         []string
	failures       []string
	oversold       int
	cpu            string
	extra          []string
}

func (r *result) answeredRate() float64 {
	return float64(r.load.answered) / r.load.end.Sub(r.load.start).Seconds()
}

func (r *result) acceptedRate() float64 {
	return float64(r.load.accepted) / r.load.end.Sub(r.load.start).Seconds()
}

// inStockRate is the accept rate until the last 202 (the stock may sell out
// before the load ends).
func (r *result) inStockRate() float64 {
	if r.load.accepted == 0 {
		return 0
	}
	return float64(r.load.accepted) / r.load.lastAccept.Sub(r.load.start).Seconds()
}

// durableRate is the orders committed per second from the first accept to
// the commit of the last one.
func (r *result) durableRate() float64 {
	if r.orders == 0 {
		return 0
	}
	return float64(r.orders) / r.durableEnd.Sub(r.load.firstAccept).Seconds()
}

func (r *result) print() {
	l := r.load
	span := l.end.Sub(l.start)
	fmt.Printf("\n== %s ==\n", r.name)
	fmt.Printf("load: %d requests answered in %.2f s over %d clients: %.0f answered/s; %d accepted (202): %.0f/s over the load phase, %.0f/s while in stock (start → last 202 %.2f s)\n",
		l.answered, span.Seconds(), l.clients, r.answeredRate(), l.accepted, r.acceptedRate(), r.inStockRate(), l.lastAccept.Sub(l.start).Seconds())
	if len(l.codes) > 0 {
		var cs []string
		for c, n := range l.codes {
			cs = append(cs, fmt.Sprintf("%s ×%d", c, n))
		}
		slices.Sort(cs)
		fmt.Printf("refusals: %s\n", strings.Join(cs, ", "))
	}
	if l.errors > 0 {
		fmt.Printf("transport errors: %d (first: %v)\n", l.errors, l.firstErr)
	}
	fmt.Printf("HTTP request time: p50 %v  p99 %v  max %v (every answered request)\n", l.quantile(0.5), l.quantile(0.99), l.quantile(1))
	fmt.Printf("durable: %d orders committed %.2f s after the first accept: %.0f orders/s (last commit %v after the last 202)\n",
		r.orders, r.durableEnd.Sub(l.firstAccept).Seconds(), r.durableRate(), r.durableEnd.Sub(l.lastAccept).Round(time.Millisecond))
	fmt.Printf("accept→commit (%s): p50 %v  p99 %v  max %v\n", r.latencyHow, r.p50, r.p99, r.pmax)
	for _, e := range r.extra {
		fmt.Println(e)
	}
	fmt.Printf("checks: oversold %d units; %s\n", r.oversold, strings.Join(r.checks, "; "))
	if r.cpu != "" {
		fmt.Printf("cpu during load+drain: %s\n", r.cpu)
	}
}

func (r *result) row() string {
	return fmt.Sprintf("| %s | %.0f | %.0f | %.0f | %.0f | %v | %v | %d |", r.name, r.answeredRate(), r.acceptedRate(), r.inStockRate(), r.durableRate(), r.p50, r.p99, r.oversold)
}

// ---- load ----

type loadResult struct {
	clients                 int
	answered, accepted      int
	errors                  int
	firstErr                error
	codes                   map[string]int
	start, end              time.Time // first request sent → last answer read
	firstAccept, lastAccept time.Time
	lat                     []time.Duration // sorted request times of the answered requests
	acc                     []time.Duration // sorted request times of the 202s
}

func (l *loadResult) quantile(q float64) time.Duration { return quantile(l.lat, q) }

// quantile of sorted durations.
func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(len(d)-1, int(q*float64(len(d))))].Round(10 * time.Microsecond)
}

// live counters of a running load, for the progress lines.
type live struct{ answered, accepted atomic.Int64 }

// buyURLs precomputes the order URL of every request: request i is user
// u<i> with its token, so the load measures the buy path only.
func buyURLs(f flags, base string, a *seckill.Activity, key []byte) []string {
	urls := make([]string, f.requests)
	for i := range urls {
		user := fmt.Sprintf("u%07d", i)
		urls[i] = fmt.Sprintf("%s/activities/%d/buy?user=%s&token=%s", base, a.ID, user, seckill.Token(key, user, a))
	}
	return urls
}

// drive sends the buy requests of urls: f.clients goroutines, request i
// with request id r<i>, until every URL was sent or f.duration passed.
func drive(ctx context.Context, f flags, urls []string, lv *live) (*loadResult, error) {
	if len(urls) == 0 {
		return nil, errors.New("no requests")
	}
	u, err := url.Parse(urls[0])
	if err != nil {
		return nil, err
	}
	host := u.Host
	prefix := u.Scheme + "://" + host
	for _, x := range urls {
		if !strings.HasPrefix(x, prefix+"/") {
			return nil, fmt.Errorf("%s: not on %s", x, prefix)
		}
	}

	type part struct {
		answered, accepted, errors int
		firstErr                   error
		codes                      map[string]int
		end, firstAccept, last     time.Time
		lat, acc                   []time.Duration
	}
	parts := make([]part, f.clients)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(f.duration)
	for c := range f.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := &parts[c]
			rc := newRawClient(host)
			defer rc.close()
			p.codes = map[string]int{}
			p.lat = make([]time.Duration, 0, len(urls)/f.clients+1)
			for p.errors < 100 {
				i := int(next.Add(1)) - 1
				if i >= len(urls) || ctx.Err() != nil || time.Now().After(deadline) {
					return
				}
				body := []byte(`{"request_id":"r` + fmt.Sprintf("%07d", i) + `","qty":1}`)
				t0 := time.Now()
				status, b, err := rc.post(urls[i][len(prefix):], body)
				t1 := time.Now()
				if err != nil {
					if p.firstErr == nil {
						p.firstErr = err
					}
					p.errors++
					continue
				}
				p.answered++
				lv.answered.Add(1)
				p.lat = append(p.lat, t1.Sub(t0))
				p.end = t1
				if status == http.StatusAccepted {
					p.accepted++
					lv.accepted.Add(1)
					if p.firstAccept.IsZero() {
						p.firstAccept = t1
					}
					p.last = t1
					p.acc = append(p.acc, t1.Sub(t0))
					continue
				}
				var e struct {
					Code string `json:"code"`
				}
				json.Unmarshal(b, &e)
				p.codes[fmt.Sprintf("%d %s", status, e.Code)]++
			}
		}()
	}
	wg.Wait()
	l := &loadResult{clients: f.clients, codes: map[string]int{}, start: start}
	for _, p := range parts {
		l.answered += p.answered
		l.accepted += p.accepted
		l.errors += p.errors
		if l.firstErr == nil {
			l.firstErr = p.firstErr
		}
		for c, n := range p.codes {
			l.codes[c] += n
		}
		if p.end.After(l.end) {
			l.end = p.end
		}
		if !p.firstAccept.IsZero() && (l.firstAccept.IsZero() || p.firstAccept.Before(l.firstAccept)) {
			l.firstAccept = p.firstAccept
		}
		if p.last.After(l.lastAccept) {
			l.lastAccept = p.last
		}
		l.lat = append(l.lat, p.lat...)
		l.acc = append(l.acc, p.acc...)
	}
	slices.Sort(l.lat)
	slices.Sort(l.acc)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if l.answered == 0 {
		return nil, fmt.Errorf("no request answered (first error: %v)", l.firstErr)
	}
	return l, nil
}

// progress prints a line a second while a load runs: answered, accepted and
// committed (durable()) so far.
func progress(lv *live, durable func() int) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		began := time.Now()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fmt.Printf("  %4.1fs  answered %8d  accepted %8d  durable %8d\n", time.Since(began).Seconds(), lv.answered.Load(), lv.accepted.Load(), durable())
			}
		}
	}()
	return func() { close(done); <-finished }
}

// ---- flashsync ----

func runFlashsync(ctx context.Context, f flags, db *sql.DB, rs *redisproc.Server, topic string, a *seckill.Activity, key []byte) (*result, error) {
	fmt.Printf("\nflashsync: seckill.Service (API + writers) in process, reservations Redis %s (pid %d), nsqd %s topic %s\n", rs.Addr(), rs.PID(), f.nsqdTCP, topic)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr(), PoolSize: cmp(f.redisPool, f.clients+8), MaxRetries: -1})
	defer rdb.Close()
	svc, err := seckill.New(seckill.Options{
		Addr: "127.0.0.1:0", DB: db, Reservations: rdb,
		NSQDTCP: []string{f.nsqdTCP}, NSQDHTTP: []string{f.nsqdHTTP}, Topic: topic, TokenKey: key,
		Writers: f.writers, BatchMax: f.batchMax,
		ReconcileGrace: time.Hour, OrderTTL: time.Hour,
		API: true, Writer: true,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return nil, err
	}
	svcCtx, stopSvc := context.WithCancel(ctx)
	svcDone := make(chan error, 1)
	defer svc.Close() // after Run returned (deferred calls run last first)
	go func() { svcDone <- svc.Run(svcCtx) }()
	stopped := false
	stopService := func() error {
		if stopped {
			return nil
		}
		stopped = true
		stopSvc()
		select {
		case err := <-svcDone:
			return err
		case <-time.After(20 * time.Second):
			return errors.New("seckill service did not stop within 20 s")
		}
	}
	defer deleteTopic(f.nsqdHTTP, topic) // after the service stopped (defers run last first)
	defer stopService()
	base := "http://" + svc.Addr()
	if err := waitReady(ctx, base, a.ID, f.nsqdHTTP, topic); err != nil {
		return nil, err
	}

	sold := func() int {
		var n int
		db.QueryRowContext(ctx, "SELECT sold FROM activity_stock WHERE activity_id = ?", a.ID).Scan(&n)
		return n
	}
	urls := buyURLs(f, base, a, key)
	if f.cpuprofile != "" {
		pf, err := os.Create(f.cpuprofile)
		if err != nil {
			return nil, err
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return nil, err
		}
		defer pprof.StopCPUProfile()
	}
	cpu0 := sampleCPU(rs.PID())
	var lv live
	// Durable: the stock row's sold counter is updated in the transaction
	// that inserts the orders, so it reaches the accepted count when the
	// last accepted order is committed (checked against COUNT(*) below).
	// A poller reads it every 5 ms from the start, so a sale that sells out
	// early is timed to its last commit, not to the end of the load.
	pollDone := make(chan struct{})
	var soldNow atomic.Int64
	type change struct {
		n  int
		at time.Time
	}
	var changes []change
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		last := 0
		for {
			if n := sold(); n > last {
				last = n
				soldNow.Store(int64(n))
				changes = append(changes, change{n, time.Now()})
			}
			select {
			case <-pollDone:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	stopPoll := func() {
		select {
		case <-pollDone:
		default:
			close(pollDone)
			<-polled
		}
	}
	defer stopPoll()
	stopProgress := progress(&lv, func() int { return int(soldNow.Load()) })
	l, err := drive(ctx, f, urls, &lv)
	if err != nil {
		stopProgress()
		return nil, err
	}
	loopback.WaitFor(ctx, f.drain, 10*time.Millisecond, func() bool { return int(soldNow.Load()) >= l.accepted })
	stopPoll()
	stopProgress()
	var durableEnd time.Time
	for _, c := range changes {
		if c.n >= l.accepted {
			durableEnd = c.at
			break
		}
	}
	cpu := sampleCPU(rs.PID()).since(cpu0)
	if f.cpuprofile != "" {
		pprof.StopCPUProfile()
	}
	if err := stopService(); err != nil {
		return nil, fmt.Errorf("seckill service: %w", err)
	}
	r := &result{name: "flashsync", load: l, stock: f.stock, durableEnd: durableEnd, cpu: cpu,
		latencyHow: "SQL: orders.created_at − accepted_at; accepted_at has ms precision"}
	if durableEnd.IsZero() {
		r.failures = append(r.failures, fmt.Sprintf("only %d of %d accepted reservations committed %v after the load", sold(), l.accepted, f.drain))
		r.durableEnd = time.Now()
	}
	if err := checkOrders(ctx, db, a.ID, r); err != nil {
		return nil, err
	}
	if err := sqlLatency(ctx, db, a.ID, r); err != nil {
		return nil, err
	}
	if r.orders != l.accepted {
		r.failures = append(r.failures, fmt.Sprintf("%d orders for %d accepted reservations", r.orders, l.accepted))
	} else {
		r.checks = append(r.checks, "orders = accepted 202s")
	}
	left, err := rdb.Get(ctx, fmt.Sprintf("sk:{%d}:stock", a.ID)).Int()
	if err != nil {
		return nil, fmt.Errorf("redis stock: %w", err)
	}
	if left != f.stock-r.orders {
		r.failures = append(r.failures, fmt.Sprintf("Redis reservable %d, want stock − orders = %d", left, f.stock-r.orders))
	} else {
		r.checks = append(r.checks, fmt.Sprintf("Redis reservable %d = stock − orders", left))
	}
	var batches, txs float64
	qctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := db.QueryRowContext(qctx, "SELECT COUNT(DISTINCT created_at), COUNT(*) FROM orders WHERE activity_id = ?", a.ID).Scan(&batches, &txs); err == nil && batches > 0 {
		r.extra = append(r.extra, fmt.Sprintf("writer batches: %.0f INSERT statements (distinct created_at), %.0f orders each on average", batches, txs/batches))
	}
	return r, nil
}

// waitReady waits until the API answers and the writers' consumer is on the
// channel.
func waitReady(ctx context.Context, base string, activity int64, nsqdHTTP, topic string) error {
	c := &http.Client{Timeout: time.Second}
	return loopback.WaitFor(ctx, 15*time.Second, 10*time.Millisecond, func() bool {
		resp, err := c.Get(fmt.Sprintf("%s/activities/%d", base, activity))
		if err != nil {
			return false
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false
		}
		resp, err = c.Get("http://" + nsqdHTTP + "/stats?format=json&topic=" + url.QueryEscape(topic) + "&channel=writers")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st struct {
			Topics []struct {
				Name     string `json:"topic_name"`
				Channels []struct {
					Name    string `json:"channel_name"`
					Clients []any  `json:"clients"`
				} `json:"channels"`
			} `json:"topics"`
		}
		if json.NewDecoder(resp.Body).Decode(&st) != nil {
			return false
		}
		for _, t := range st.Topics {
			for _, ch := range t.Channels {
				if t.Name == topic && ch.Name == "writers" && len(ch.Clients) > 0 {
					return true
				}
			}
		}
		return false
	})
}

func deleteTopic(nsqdHTTP, topic string) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Post("http://"+nsqdHTTP+"/topic/delete?topic="+url.QueryEscape(topic), "", nil)
	if err != nil {
		fmt.Fprintf(os.Stderr, "seckill bench: delete nsq topic %s: %v\n", topic, err)
		return
	}
	resp.Body.Close()
}

// ---- baseline ----

// naive answers every buy with one MySQL transaction made at once.
type naive struct {
	db  *sql.DB
	act *seckill.Activity
	key []byte
	ttl time.Duration
}

func (n *naive) buy(w http.ResponseWriter, r *http.Request) {
	answer := func(status int, v map[string]any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(v)
	}
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id != n.act.ID {
		answer(http.StatusNotFound, map[string]any{"code": "not_found"})
		return
	}
	user := r.URL.Query().Get("user")
	if user == "" || len(user) > 64 {
		answer(http.StatusBadRequest, map[string]any{"code": "bad_request"})
		return
	}
	if !hmac.Equal([]byte(r.URL.Query().Get("token")), []byte(seckill.Token(n.key, user, n.act))) {
		answer(http.StatusForbidden, map[string]any{"code": "bad_token"})
		return
	}
	var req struct {
		RequestID string `json:"request_id"`
		Qty       int    `json:"qty"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil || req.RequestID == "" || len(req.RequestID) > 64 {
		answer(http.StatusBadRequest, map[string]any{"code": "bad_request"})
		return
	}
	if req.Qty != 1 {
		answer(http.StatusForbidden, map[string]any{"code": "over_quota"})
		return
	}
	accepted := time.Now().UTC()
	ok, err := n.order(r.Context(), user, req.RequestID, accepted)
	switch {
	case err != nil:
		answer(http.StatusServiceUnavailable, map[string]any{"code": "unavailable", "error": err.Error()})
	case !ok:
		answer(http.StatusConflict, map[string]any{"code": "sold_out"})
	default:
		answer(http.StatusAccepted, map[string]any{"request_id": req.RequestID, "state": "ordered"})
	}
}

func (n *naive) order(ctx context.Context, user, rid string, accepted time.Time) (bool, error) {
	tx, err := n.db.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, "UPDATE activity_stock SET available = available - 1, sold = sold + 1 WHERE activity_id = ? AND available >= 1", n.act.ID)
	if err != nil {
		return false, err
	}
	if k, err := res.RowsAffected(); err != nil || k == 0 {
		return false, err
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO orders (activity_id, user_id, qty, status, request_id, accepted_at, expires_at) VALUES (?, ?, 1, 'reserved', ?, ?, ?)",
		n.act.ID, user, rid, accepted, accepted.Add(n.ttl)); err != nil {
		return false, err
	}
	return true, tx.Commit()
}

func runBaseline(ctx context.Context, f flags, name string, a *seckill.Activity, key []byte) (*result, error) {
	pool := min(f.clients, 64)
	fmt.Printf("\nbaseline: one MySQL transaction per buy request (UPDATE stock guarded, INSERT order, COMMIT), database/sql pool of %d\n", pool)
	db, err := sql.Open("mysql", dsn(f.mysql, name))
	if err != nil {
		return nil, err
	}
	defer db.Close()
	db.SetMaxOpenConns(pool)
	db.SetMaxIdleConns(pool)
	n := &naive{db: db, act: a, key: key, ttl: time.Hour}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /activities/{id}/buy", n.buy)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer serve(ln, mux)()

	urls := buyURLs(f, "http://"+ln.Addr().String(), a, key)
	var lv live
	cpu0 := sampleCPU(0)
	stopProgress := progress(&lv, func() int { return int(lv.accepted.Load()) })
	l, err := drive(ctx, f, urls, &lv)
	stopProgress()
	if err != nil {
		return nil, err
	}
	r := &result{name: "baseline", load: l, stock: f.stock, durableEnd: l.lastAccept, cpu: sampleCPU(0).since(cpu0),
		latencyHow: "request time of the 202s: the commit is inside it",
	}
	if err := checkOrders(ctx, db, a.ID, r); err != nil {
		return nil, err
	}
	if r.orders != l.accepted {
		r.failures = append(r.failures, fmt.Sprintf("%d orders for %d 202s", r.orders, l.accepted))
	} else {
		r.checks = append(r.checks, "orders = accepted 202s")
	}
	// Accept→commit for the baseline is the request time of its 202s.
	r.p50, r.p99, r.pmax = quantile(l.acc, 0.5), quantile(l.acc, 0.99), quantile(l.acc, 1)
	if p50, p99, pmax, err := sqlQuantiles(ctx, db, a.ID, r.orders); err == nil {
		r.extra = append(r.extra, fmt.Sprintf("(SQL created_at − accepted_at, i.e. handler start → INSERT: p50 %v  p99 %v  max %v)", p50, p99, pmax))
	}
	return r, nil
}

// ---- HTTP ceiling ----

// runFloor drives a handler that reads the body and answers 202 without any
// work: what the HTTP stack and the load clients alone reach on this
// machine.
func runFloor(ctx context.Context, f flags, a *seckill.Activity, key []byte) error {
	fmt.Printf("\nfloor: the same load against a handler that only reads the body and answers 202\n")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /activities/{id}/buy", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, io.LimitReader(r.Body, 4096))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		json.NewEncoder(w).Encode(map[string]any{"request_id": "r0000000", "state": "reserved", "poll": "/orders/r0000000?activity=1"})
	})
	defer serve(ln, mux)()
	urls := buyURLs(f, "http://"+ln.Addr().String(), a, key)
	var lv live
	cpu0 := sampleCPU(0)
	l, err := drive(ctx, f, urls, &lv)
	if err != nil {
		return err
	}
	fmt.Printf("floor: %d requests answered in %.2f s: %.0f answered/s; request time p50 %v p99 %v\ncpu: %s\n",
		l.answered, l.end.Sub(l.start).Seconds(), float64(l.answered)/l.end.Sub(l.start).Seconds(), l.quantile(0.5), l.quantile(0.99), sampleCPU(0).since(cpu0))
	return nil
}

// ---- checks ----

// checkOrders counts the activity's orders and checks the stock row: no
// unit oversold, available + sold = stock, one order per request id.
func checkOrders(ctx context.Context, db *sql.DB, activity int64, r *result) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var total, available, sold, orders, distinct, units int
	if err := db.QueryRowContext(ctx, `SELECT a.total_stock, s.available, s.sold FROM activity a JOIN activity_stock s ON s.activity_id = a.id WHERE a.id = ?`, activity).
		Scan(&total, &available, &sold); err != nil {
		return fmt.Errorf("stock row: %w", err)
	}
	if err := db.QueryRowContext(ctx, "SELECT COUNT(*), COUNT(DISTINCT request_id), COALESCE(SUM(qty), 0) FROM orders WHERE activity_id = ?", activity).
		Scan(&orders, &distinct, &units); err != nil {
		return fmt.Errorf("orders: %w", err)
	}
	r.orders = orders
	r.oversold = max(0, max(sold, units)-total)
	if r.oversold > 0 {
		r.failures = append(r.failures, fmt.Sprintf("OVERSOLD %d units (sold %d, units in orders %d, stock %d)", r.oversold, sold, units, total))
	}
	if available+sold != total {
		r.failures = append(r.failures, fmt.Sprintf("available %d + sold %d != stock %d", available, sold, total))
	} else {
		r.checks = append(r.checks, fmt.Sprintf("available %d + sold %d = stock %d", available, sold, total))
	}
	if units != sold {
		r.failures = append(r.failures, fmt.Sprintf("units in orders %d != sold %d", units, sold))
	}
	if orders != distinct {
		r.failures = append(r.failures, fmt.Sprintf("%d orders but %d distinct request ids", orders, distinct))
	} else {
		r.checks = append(r.checks, fmt.Sprintf("COUNT(*) %d = COUNT(DISTINCT request_id)", orders))
	}
	return nil
}

// sqlLatency computes accept→commit p50/p99/max from the orders rows.
func sqlLatency(ctx context.Context, db *sql.DB, activity int64, r *result) error {
	if r.orders == 0 {
		return nil
	}
	var err error
	r.p50, r.p99, r.pmax, err = sqlQuantiles(ctx, db, activity, r.orders)
	return err
}

// sqlQuantiles are p50, p99 and max of created_at − accepted_at over the
// activity's n orders, each the k-th value of one sort in MariaDB.
// (PERCENTILE_DISC ... OVER () is quadratic in MariaDB 10.11: minutes for
// 100k rows.)
func sqlQuantiles(ctx context.Context, db *sql.DB, activity int64, n int) (p50, p99, pmax time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	at := func(q float64) (time.Duration, error) {
		var v int64
		err := db.QueryRowContext(ctx, `SELECT TIMESTAMPDIFF(MICROSECOND, accepted_at, created_at) AS d FROM orders
			WHERE activity_id = ? ORDER BY d LIMIT 1 OFFSET ?`, activity, min(n-1, int(q*float64(n)))).Scan(&v)
		if err != nil {
			return 0, fmt.Errorf("accept→commit latency: %w", err)
		}
		return (time.Duration(v) * time.Microsecond).Round(10 * time.Microsecond), nil
	}
	if p50, err = at(0.5); err != nil {
		return
	}
	if p99, err = at(0.99); err != nil {
		return
	}
	pmax, err = at(1)
	return
}

// ---- CPU accounting (Linux /proc; empty elsewhere) ----

type cpuSample struct {
	at         time.Time
	busy, all  uint64
	steal      uint64
	procs      map[string]uint64
	redisPid   int
	haveSystem bool
}

// sampleCPU reads the machine's CPU time and that of this process, the
// reservations redis-server (redisPid, 0: none) and the stack's MariaDB and
// nsqd processes (found by name, read only).
func sampleCPU(redisPid int) cpuSample {
	s := cpuSample{at: time.Now(), procs: map[string]uint64{}, redisPid: redisPid}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		fs := strings.Fields(line)
		for i, v := range fs[1:] {
			n, _ := strconv.ParseUint(v, 10, 64)
			if i == 3 || i == 4 { // idle, iowait
				s.all += n
				continue
			}
			switch {
			case i == 7: // steal: the hypervisor ran someone else
				s.steal += n
				s.all += n
			case i < 7: // user nice system . . irq softirq (guest is counted in user)
				s.busy += n
				s.all += n
			}
		}
		s.haveSystem = true
	}
	s.procs["bench (client+API+writers)"] = procTicks(os.Getpid())
	if redisPid > 0 {
		s.procs["redis-server (reservations)"] = procTicks(redisPid)
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile("/proc/" + e.Name() + "/comm")
		if err != nil {
			continue
		}
		switch c := strings.TrimSpace(string(comm)); c {
		case "mariadbd", "mysqld":
			s.procs["mariadbd"] += procTicks(pid)
		case "nsqd":
			s.procs["nsqd"] += procTicks(pid)
		}
	}
	return s
}

// procTicks is a process's user+system CPU time in clock ticks.
func procTicks(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	fs := strings.Fields(string(b[i+1:]))
	if len(fs) < 13 {
		return 0
	}
	u, _ := strconv.ParseUint(fs[11], 10, 64)
	st, _ := strconv.ParseUint(fs[12], 10, 64)
	return u + st
}

// since formats the CPU used between s0 and now, in % of one core (USER_HZ
// 100).
func (s cpuSample) since(s0 cpuSample) string {
	el := s.at.Sub(s0.at).Seconds()
	if el <= 0 || !s.haveSystem {
		return ""
	}
	var parts []string
	if all := s.all - s0.all; all > 0 {
		parts = append(parts, fmt.Sprintf("machine busy %.0f%% of %d00%% (steal %.0f%%)", 100*float64(s.busy-s0.busy)/float64(all)*float64(runtime.NumCPU()), runtime.NumCPU(),
			100*float64(s.steal-s0.steal)/float64(all)*float64(runtime.NumCPU())))
	}
	var names []string
	for n := range s.procs {
		names = append(names, n)
	}
	slices.Sort(names)
	var named float64
	for _, n := range names {
		v := float64(s.procs[n]-s0.procs[n]) / el
		named += v
		parts = append(parts, fmt.Sprintf("%s %.0f%%", n, v))
	}
	if all := s.all - s0.all; all > 0 {
		// The rest of the busy time: the kernel's softirq work not charged to
		// a process, and every other process (other tenants, builds).
		busy := 100 * float64(s.busy-s0.busy) / float64(all) * float64(runtime.NumCPU())
		parts = append(parts, fmt.Sprintf("everything else %.0f%%", max(0, busy-named)))
	}
	return strings.Join(parts, ", ")
}

// ---- helpers ----

// dsn is the go-sql-driver DSN of internal/stacktest.DSN.
func dsn(addr, database string) string {
	return "root@tcp(" + addr + ")/" + database + "?parseTime=true&loc=UTC&time_zone=%27%2B00%3A00%27&interpolateParams=true"
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func cmp(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return runtime.GOARCH
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// serve serves h on ln until the returned stop is called.
func serve(ln net.Listener, h http.Handler) (stop func()) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	return func() {
		c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(c)
		<-served
	}
}
