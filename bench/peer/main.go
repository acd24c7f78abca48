// Command peer measures flashsync against a naive go-mysql consumer on the
// same binlog, in one run, on the stack's MariaDB and nsqd and on private
// Redis replicas (issue 13, "a peer comparison the project runs itself").
// Each round saves the binlog position, commits -rows single-row UPDATEs in
// transactions of 1,000, then runs each daemon alone, alternating which goes
// first: the catch-up from the saved position to the last key deleted on
// every replica (rows/s), then autocommit UPDATEs at -rate for -latency-for
// with each DEL observed through keyspace notifications (commit -> DEL on
// the last replica), and the daemon's CPU per change over that run. Both
// daemons are child processes (the naive one is this binary re-run with
// -naive-child) so their CPU is read from /proc alike. Every loop is
// bounded in count and time; traffic stays on loopback.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	_ "github.com/go-sql-driver/mysql"
)

type flags struct {
	mysql      string
	nsqdTCP    string
	nsqdHTTP   string
	embedded   bool
	binary     string
	db         string
	rows       int
	rounds     int
	rate       int
	workers    int
	latencyFor time.Duration
	timeout    time.Duration
	profile    string

	// The naive child's own flags (-naive-child).
	naiveChild bool
	from       string
	replicas   string
	serverID   int
}

// keyPrefix is the rule's key, peer:item:{id}, without its id.
const keyPrefix = "peer:item:"

// Server ids of the two daemons' binlog connections: fixed, as only one
// runs at a time, and apart from the other load commands' (4242-4243).
const (
	flashsyncServerID = 4261
	naiveServerID     = 4262
)

func main() {
	var f flags
	flag.StringVar(&f.mysql, "mysql", "127.0.0.1:13306", "MariaDB address (root, no password)")
	flag.StringVar(&f.nsqdTCP, "nsqd-tcp", "127.0.0.1:14150", "nsqd TCP address for flashsync")
	flag.StringVar(&f.nsqdHTTP, "nsqd-http", "127.0.0.1:14151", "nsqd HTTP address for flashsync")
	flag.BoolVar(&f.embedded, "embedded-nsqd", false, "flashsync runs its own nsqd in process (private ports and data) instead of -nsqd-tcp's")
	flag.StringVar(&f.binary, "flashsync", "bin/flashsync", "flashsync binary run as the child (`make build`)")
	flag.StringVar(&f.db, "db", "peer_bench", "private database the run creates and drops")
	flag.IntVar(&f.rows, "rows", 200000, "single-row UPDATEs of the catch-up, in transactions of 1,000 (max 1,000,000)")
	flag.IntVar(&f.rounds, "rounds", 3, "rounds, each daemon once per round, the first one alternating (max 20)")
	flag.IntVar(&f.rate, "rate", 1000, "autocommit UPDATEs per second in the latency run (max 10,000)")
	flag.IntVar(&f.workers, "workers", 4, "connections issuing the latency run's UPDATEs (max 16)")
	flag.DurationVar(&f.latencyFor, "latency-for", 10*time.Second, "length of each latency run (max 2m)")
	flag.DurationVar(&f.timeout, "timeout", 30*time.Minute, "give up after this long")
	flag.StringVar(&f.profile, "profile", "", "directory for CPU profiles of the flashsync child, one of its catch-up and one of its latency run per round (pprof format)")
	flag.BoolVar(&f.naiveChild, "naive-child", false, "internal: run as the naive consumer")
	flag.StringVar(&f.from, "from", "", "internal (-naive-child): binlog file:pos to start at")
	flag.StringVar(&f.replicas, "replicas", "", "internal (-naive-child): Redis replicas, comma-separated")
	flag.IntVar(&f.serverID, "server-id", naiveServerID, "internal (-naive-child): binlog server_id")
	flag.Parse()
	f.rows = min(max(f.rows, 1000), 1_000_000)
	f.rounds = min(max(f.rounds, 1), 20)
	f.rate = min(max(f.rate, 1), 10_000)
	f.workers = min(max(f.workers, 1), 16)
	f.latencyFor = min(max(f.latencyFor, time.Second), 2*time.Minute)
	// The name goes into SQL unquoted.
	if !regexp.MustCompile(`^[a-z][a-z0-9_]{0,40}$`).MatchString(f.db) {
		fmt.Fprintf(os.Stderr, "peer: -db %q: want [a-z][a-z0-9_]*\n", f.db)
		os.Exit(2)
	}

	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	if f.naiveChild {
		ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt)
		defer stop()
		if err := runNaive(ctx, f); err != nil {
			fmt.Fprintln(os.Stderr, "peer naive:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(ctx, f); err != nil {
		fmt.Fprintln(os.Stderr, "peer:", err)
		os.Exit(1)
	}
}

// result is one daemon's measurements in one round.
type result struct {
	catchup    time.Duration // daemon start -> rows x replicas DELs
	catchupCPU float64       // CPU seconds over the catch-up, start included
	firstDel   time.Duration // daemon start -> first DEL counted
	steady     float64       // catch-up rows/s from the first DEL on
	rss        int64         // peak RSS at the catch-up's end
	achieved   float64       // UPDATEs/s the latency run committed
	lat        []time.Duration
	committed  int
	lost       int
	commitP99  time.Duration // the latency run's UPDATE round trips
	backlog    int           // most UPDATEs due that the busy workers had not taken
	cpu        float64
}

func (r result) q(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[min(len(r.lat)-1, int(p*float64(len(r.lat))))]
}

func (r result) cpuPer1000() float64 {
	if r.committed == 0 {
		return 0
	}
	return 1000 * r.cpu / float64(r.committed)
}

func run(ctx context.Context, f flags) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if _, err := os.Stat(f.binary); err != nil {
		return fmt.Errorf("flashsync binary %s (run `make build`): %w", f.binary, err)
	}
	sqlDB, err := sql.Open("mysql", "root@tcp("+f.mysql+")/?multiStatements=true&timeout=10s")
	if err != nil {
		return err
	}
	defer sqlDB.Close()
	sqlDB.SetMaxOpenConns(f.workers + 1)
	sqlDB.SetMaxIdleConns(f.workers + 1)
	latN := f.rate * int(f.latencyFor/time.Second)
	// Two latency ranges after the catch-up's rows, one per daemon slot: the
	// second daemon replays the first one's latency run too, and distinct
	// ids keep those DELs apart from its own (and from coalescing).
	if err := setup(ctx, sqlDB, f.db, f.rows+2*latN); err != nil {
		return err
	}
	defer sqlDB.ExecContext(context.WithoutCancel(ctx), "DROP DATABASE IF EXISTS "+f.db)
	topics := flashsyncTopics()
	nsqd := "nsqd " + f.nsqdTCP
	if f.embedded {
		nsqd = "flashsync's embedded nsqd"
	} else {
		defer deleteTopics(context.WithoutCancel(ctx), f.nsqdHTTP, topics)
	}

	fmt.Printf("flashsync peer: %d rounds; catch-up %d single-row UPDATEs in tx of 1,000 from a saved position; latency %d/s autocommit for %v over %d connections; 1 group of 2 private replicas; %s\n",
		f.rounds, f.rows, f.rate, f.latencyFor, f.workers, nsqd)
	names := []string{"flashsync", "naive"}
	all := map[string][]result{}
	for round := 1; round <= f.rounds; round++ {
		file, pos, err := masterStatus(ctx, sqlDB)
		if err != nil {
			return err
		}
		t0 := time.Now()
		if err := catchupLoad(ctx, sqlDB, f.db, f.rows); err != nil {
			return fmt.Errorf("round %d catch-up load: %w", round, err)
		}
		fmt.Printf("round %d: %d UPDATEs committed in %v from %s:%d\n", round, f.rows, time.Since(t0).Round(time.Millisecond), file, pos)
		order := names
		if round%2 == 0 {
			order = []string{names[1], names[0]}
		}
		res := map[string]result{}
		prior := 0
		for slot, name := range order {
			lo := f.rows + slot*latN + 1
			r, err := measure(ctx, f, exe, name, round, file, pos, prior, lo, latN, topics)
			if err != nil {
				return fmt.Errorf("round %d %s: %w", round, name, err)
			}
			prior += r.committed
			res[name] = r
			all[name] = append(all[name], r)
		}
		report(round, f, res["flashsync"], res["naive"])
	}
	summary(all)
	return nil
}

func report(round int, f flags, fs, nv result) {
	rate := func(r result) float64 { return float64(f.rows) / r.catchup.Seconds() }
	fmt.Printf("round %d catch-up, start to last DEL:  flashsync %7.0f rows/s (%v)  naive %7.0f rows/s (%v)  flashsync/naive %.2fx\n",
		round, rate(fs), fs.catchup.Round(time.Millisecond), rate(nv), nv.catchup.Round(time.Millisecond), rate(fs)/rate(nv))
	fmt.Printf("round %d catch-up, first to last DEL:  flashsync %7.0f rows/s (first DEL %v)  naive %7.0f rows/s (first DEL %v)  flashsync/naive %.2fx\n",
		round, fs.steady, fs.firstDel.Round(time.Millisecond), nv.steady, nv.firstDel.Round(time.Millisecond), fs.steady/nv.steady)
	fmt.Printf("round %d catch-up cpu and memory: flashsync %.2f CPU-s, peak RSS %d MB  naive %.2f CPU-s, peak RSS %d MB\n",
		round, fs.catchupCPU, fs.rss>>20, nv.catchupCPU, nv.rss>>20)
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/1e6) }
	for _, x := range []struct {
		name string
		r    result
	}{{"flashsync", fs}, {"naive", nv}} {
		fmt.Printf("round %d latency %-9s at %d/s (%.0f/s achieved): p50 %s p99 %s max %s  lost %d of %d; UPDATE p99 %s, backlog max %d\n",
			round, x.name, f.rate, x.r.achieved, ms(x.r.q(0.50)), ms(x.r.q(0.99)), ms(x.r.q(1)), x.r.lost, x.r.committed, ms(x.r.commitP99), x.r.backlog)
	}
	ratio := 0.0
	if nv.cpuPer1000() > 0 {
		ratio = fs.cpuPer1000() / nv.cpuPer1000()
	}
	fmt.Printf("round %d cpu per 1000 changes at %d/s: flashsync %.3f s  naive %.3f s  flashsync/naive %.2fx\n", round, f.rate, fs.cpuPer1000(), nv.cpuPer1000(), ratio)
}

func summary(all map[string][]result) {
	fs, nv := all["flashsync"], all["naive"]
	var catch, steady, p50, p99, cpu []string
	ratio := func(a, b float64) string {
		if b == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	for i := range fs {
		catch = append(catch, ratio(nv[i].catchup.Seconds(), fs[i].catchup.Seconds()))
		steady = append(steady, ratio(fs[i].steady, nv[i].steady))
		p50 = append(p50, ratio(float64(fs[i].q(0.50)), float64(nv[i].q(0.50))))
		p99 = append(p99, ratio(float64(fs[i].q(0.99)), float64(nv[i].q(0.99))))
		cpu = append(cpu, ratio(fs[i].cpuPer1000(), nv[i].cpuPer1000()))
	}
	fmt.Printf("summary flashsync/naive by round: catch-up rows/s %s (first DEL on: %s); latency p50 %s, p99 %s; cpu per change %s\n",
		strings.Join(catch, " "), strings.Join(steady, " "), strings.Join(p50, " "), strings.Join(p99, " "), strings.Join(cpu, " "))
}

func setup(ctx context.Context, db *sql.DB, name string, rows int) error {
	for _, q := range []string{
		"DROP DATABASE IF EXISTS " + name,
		"CREATE DATABASE " + name,
		"CREATE TABLE " + name + ".item (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL, price DECIMAL(10,2) NOT NULL, stock INT NOT NULL)",
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("setup %s: %w", name, err)
		}
	}
	for lo := 1; lo <= rows; lo += 5000 {
		var b strings.Builder
		b.WriteString("INSERT INTO " + name + ".item VALUES ")
		for id := lo; id < lo+5000 && id <= rows; id++ {
			if id > lo {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "(%d,'item %d',9.99,100)", id, id)
		}
		if _, err := db.ExecContext(ctx, b.String()); err != nil {
			return fmt.Errorf("setup %s: %w", name, err)
		}
	}
	return nil
}

// masterStatus is the binlog's current file and offset.
func masterStatus(ctx context.Context, db *sql.DB) (string, uint32, error) {
	var file string
	var pos uint32
	var doDB, ignoreDB sql.NullString
	if err := db.QueryRowContext(ctx, "SHOW MASTER STATUS").Scan(&file, &pos, &doDB, &ignoreDB); err != nil {
		return "", 0, fmt.Errorf("show master status: %w", err)
	}
	return file, pos, nil
}

// catchupLoad commits rows single-row UPDATEs, 1,000 per transaction, each
// transaction one multi-statement round trip so the load itself is quick.
func catchupLoad(ctx context.Context, db *sql.DB, name string, rows int) error {
	for lo := 1; lo <= rows; lo += 1000 {
		var b strings.Builder
		b.WriteString("BEGIN;")
		for id := lo; id < lo+1000 && id <= rows; id++ {
			fmt.Fprintf(&b, "UPDATE %s.item SET stock = stock + 1 WHERE id = %d;", name, id)
		}
		b.WriteString("COMMIT")
		if _, err := db.ExecContext(ctx, b.String()); err != nil {
			return err
		}
	}
	return nil
}

// sortedLat sorts and returns lat, for the quantiles.
func sortedLat(lat []time.Duration) []time.Duration {
	slices.Sort(lat)
	return lat
}

var errExited = errors.New("daemon exited")
