package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/bench/internal/child"
	"github.com/flashsync/flashsync/bench/internal/loopback"
	"github.com/flashsync/flashsync/bench/internal/redisproc"
)

const (
	topicPrefix = "peer-bench"
	group       = "peer"
)

func flashsyncTopics() []string { return loopback.FlashsyncTopics(topicPrefix, group) }

func deleteTopics(ctx context.Context, nsqdHTTP string, topics []string) error {
	return loopback.DeleteTopics(ctx, nsqdHTTP, topics...)
}

// daemon is one child under test and how its DELs are counted.
type daemon struct {
	name string
	proc *child.Process
	tmp  string
	// dels is the DELs sent so far, summed over the replicas.
	dels    func() float64
	stopped bool
	// pprof is the flashsync child's /debug/pprof/profile URL.
	pprof string
}

// profileTo writes a CPU profile of the flashsync child taken over the next
// seconds to path, in the background; wait returns once it is written.
func (d *daemon) profileTo(ctx context.Context, path string, seconds int) (wait func() error) {
	done := make(chan error, 1)
	go func() {
		done <- func() error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s?seconds=%d", d.pprof, seconds), nil)
			if err != nil {
				return err
			}
			// The child's operator port opens shortly after its start.
			var resp *http.Response
			client := &http.Client{Timeout: time.Duration(seconds+10) * time.Second}
			if werr := loopback.WaitFor(ctx, 10*time.Second, 5*time.Millisecond, func() bool {
				resp, err = client.Do(req)
				return err == nil
			}); werr != nil {
				return fmt.Errorf("profile: %w (%v)", werr, err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("profile: %s", resp.Status)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				return fmt.Errorf("profile: %w", err)
			}
			return os.WriteFile(path, body, 0o644)
		}()
	}()
	return func() error { return <-done }
}

func (d *daemon) exited() bool { return d.proc.Exited() }

func (d *daemon) log() string {
	out, _ := os.ReadFile(filepath.Join(d.tmp, "daemon.log"))
	if len(out) > 4000 {
		out = out[len(out)-4000:]
	}
	return string(out)
}

// stop ends the child with SIGTERM and waits for it.
func (d *daemon) stop() error {
	if d.stopped {
		return nil
	}
	d.stopped = true
	defer os.RemoveAll(d.tmp)
	if err := d.proc.Stop(15 * time.Second); err != nil {
		return fmt.Errorf("%s: %w\n%s", d.name, err, d.log())
	}
	return nil
}

// startDaemon starts name ("flashsync" or "naive") at the binlog position
// file:pos, deleting keys on replicas.
func startDaemon(ctx context.Context, f flags, exe, name, file string, pos uint32, replicas []string, rcs []*redis.Client) (*daemon, error) {
	tmp, err := os.MkdirTemp("", "flashsync-bench-peer-")
	if err != nil {
		return nil, err
	}
	d := &daemon{name: name, tmp: tmp}
	var bin string
	var args []string
	switch name {
	case "naive":
		bin, args = exe, []string{"-naive-child", "-mysql", f.mysql, "-db", f.db, "-from", fmt.Sprintf("%s:%d", file, pos),
			"-replicas", strings.Join(replicas, ","), "-server-id", strconv.Itoa(naiveServerID), "-timeout", f.timeout.String()}
		// One DEL command per key: Redis's own count is the naive one's.
		d.dels = func() float64 {
			var n float64
			for _, rc := range rcs {
				n += delCalls(ctx, rc)
			}
			return n
		}
	default:
		httpAddr, err := loopback.FreeAddr()
		if err != nil {
			return nil, err
		}
		// The position file flashsync resumes from: file:pos only, as a
		// GTID would make MariaDB scan the binlog from the file's start
		// (issue 13). No schema: the current one is this table's.
		posFile := filepath.Join(tmp, "position")
		if err := os.WriteFile(posFile, fmt.Appendf(nil, `{"file":%q,"pos":%d,"flavor":"mariadb"}`, file, pos), 0o644); err != nil {
			return nil, err
		}
		nsq := fmt.Sprintf("nsqd_tcp = [%q]\nnsqd_http = [%q]", f.nsqdTCP, f.nsqdHTTP)
		if f.embedded {
			// In flashsync's process, on ports and in a directory of this
			// child's own: nothing to share, nothing to delete after.
			tcp, err := loopback.FreeAddr()
			if err != nil {
				return nil, err
			}
			httpNSQ, err := loopback.FreeAddr()
			if err != nil {
				return nil, err
			}
			nsq = fmt.Sprintf("embedded_tcp = %q\nembedded_http = %q\nembedded_data_path = %q", tcp, httpNSQ, filepath.Join(tmp, "nsqd"))
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
%s
topic_prefix = %q

[http]
addr = %q

[[redis_group]]
name = %q
replicas = ["%s"]

[[rule]]
table = "%s.item"
route_by = "id"
keys = ["%s{id}"]
`, f.mysql, flashsyncServerID, posFile, f.db, nsq, topicPrefix, httpAddr, group, strings.Join(replicas, `", "`), f.db, keyPrefix)
		path := filepath.Join(tmp, "flashsync.toml")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			return nil, err
		}
		bin, args = f.binary, []string{"all", "-config", path}
		metrics := "http://" + httpAddr + "/metrics"
		d.pprof = "http://" + httpAddr + "/debug/pprof/profile"
		d.dels = func() float64 { return metricSum(metrics, "flashsync_purger_keys_deleted_total") }
	}
	if d.proc, err = child.Start(bin, args, filepath.Join(tmp, "daemon.log")); err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return d, nil
}

var metricsClient = http.Client{Timeout: 2 * time.Second}

func metricSum(url, name string) float64 {
	resp, err := metricsClient.Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return loopback.SumMetric(string(body), name, "")
}

// delCalls is the DEL commands rc has run (INFO commandstats).
func delCalls(ctx context.Context, rc *redis.Client) float64 {
	info, err := rc.Info(ctx, "commandstats").Result()
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(info, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_del:")
		if !ok {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				n, _ := strconv.ParseFloat(v, 64)
				return n
			}
		}
	}
	return 0
}

// measure runs one daemon alone on new replicas: the catch-up from
// file:pos (rows keys, then prior keys of the earlier slot's latency run),
// then the latency run on ids lo..lo+latN-1.
func measure(ctx context.Context, f flags, exe, name string, round int, file string, pos uint32, prior, lo, latN int, topics []string) (result, error) {
	var replicas []string
	var rcs []*redis.Client
	for range 2 {
		r, err := redisproc.Start(ctx, "")
		if err != nil {
			return result{}, err
		}
		defer r.Stop()
		rc := redis.NewClient(&redis.Options{Addr: r.Addr()})
		defer rc.Close()
		// A DEL of a key that exists notifies; the catch-up's keys do not
		// exist, so only the latency run's are seen.
		if err := rc.ConfigSet(ctx, "notify-keyspace-events", "Eg").Err(); err != nil {
			return result{}, err
		}
		replicas, rcs = append(replicas, r.Addr()), append(rcs, rc)
	}
	if name == "flashsync" && !f.embedded {
		// The topics hold a channel per replica of every earlier run:
		// deleted before and after (loopback.DeleteTopics says why).
		if err := deleteTopics(ctx, f.nsqdHTTP, topics); err != nil {
			return result{}, err
		}
		defer deleteTopics(context.WithoutCancel(ctx), f.nsqdHTTP, topics)
	}
	// The latency run's keys, there before the daemon starts so that the
	// count of DELs below only ever sees the daemon's.
	for _, rc := range rcs {
		pipe := rc.Pipeline()
		for id := lo; id < lo+latN; id++ {
			pipe.Set(ctx, keyPrefix+strconv.Itoa(id), "x", 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return result{}, err
		}
	}

	started := time.Now()
	d, err := startDaemon(ctx, f, exe, name, file, pos, replicas, rcs)
	if err != nil {
		return result{}, err
	}
	defer d.stop()
	pid := d.proc.PID()
	var res result
	reps := float64(len(rcs))
	var firstAt time.Time
	var firstN float64
	wait := func(what string, n int) error {
		want := float64(n) * reps
		err := loopback.WaitFor(ctx, 5*time.Minute, 10*time.Millisecond, func() bool {
			got := d.dels()
			if got > 0 && firstAt.IsZero() {
				firstAt, firstN = time.Now(), got
			}
			return d.exited() || got >= want
		})
		if err == nil && d.exited() {
			err = errExited
		}
		if err != nil {
			return fmt.Errorf("%s: %w (%.0f of %.0f DELs)\n%s", what, err, d.dels(), want, d.log())
		}
		return nil
	}
	profile := func(what string, seconds int) func() error {
		if f.profile == "" || d.pprof == "" {
			return func() error { return nil }
		}
		return d.profileTo(ctx, filepath.Join(f.profile, fmt.Sprintf("round%d-%s.pprof", round, what)), seconds)
	}
	// pprof takes whole seconds, and the catch-up runs at 100k-250k
	// rows/s here: one second per 200k rows stays within it.
	catchupProfile := profile("catchup", max(1, f.rows/200000))
	if err := wait("catch-up", f.rows); err != nil {
		return result{}, err
	}
	res.catchup = time.Since(started)
	res.catchupCPU = child.CPUSeconds(pid)
	res.rss = peakRSS(pid)
	// From the first DEL seen on: the rate once the daemon is up and
	// reading, without its start (schema load, NSQ connections).
	res.firstDel = firstAt.Sub(started)
	if steady := res.catchup - res.firstDel; steady > 0 {
		res.steady = (float64(f.rows) - firstN/reps) / steady.Seconds()
	}
	if err := wait("replay of the earlier latency run", f.rows+prior); err != nil {
		return result{}, err
	}
	if err := catchupProfile(); err != nil {
		return result{}, err
	}
	latencyProfile := profile("latency", max(1, int(f.latencyFor/time.Second)-1))
	if err := latency(ctx, f, rcs, pid, lo, latN, &res); err != nil {
		return result{}, fmt.Errorf("latency: %w", err)
	}
	if err := latencyProfile(); err != nil {
		return result{}, err
	}
	return res, d.stop()
}

// latency runs autocommit UPDATEs of ids lo.. at f.rate for f.latencyFor
// over f.workers connections, and times each from its commit's return to
// the DEL of its key on the last replica (keyspace notifications). It
// counts the daemon's CPU from the first UPDATE to the last DEL seen.
func latency(ctx context.Context, f flags, rcs []*redis.Client, pid, lo, latN int, res *result) error {
	type event struct {
		id int
		at time.Time
	}
	events := make(chan event, 4*latN)
	for _, rc := range rcs {
		sub := rc.Subscribe(ctx, "__keyevent@0__:del")
		defer sub.Close()
		if _, err := sub.Receive(ctx); err != nil {
			return err
		}
		go func() {
			for msg := range sub.Channel(redis.WithChannelSize(4 * latN)) {
				if s, ok := strings.CutPrefix(msg.Payload, keyPrefix); ok {
					if id, err := strconv.Atoi(s); err == nil && id >= lo && id < lo+latN {
						events <- event{id - lo, time.Now()}
					}
				}
			}
		}()
	}
	sqlDB, err := sql.Open("mysql", "root@tcp("+f.mysql+")/?timeout=10s")
	if err != nil {
		return err
	}
	defer sqlDB.Close()
	commits := make([]time.Time, latN)
	// Each UPDATE's round trip: a daemon that takes the cores slows the
	// commits themselves, which commit -> DEL does not show.
	took := make([]time.Duration, latN)
	ids := make(chan int, f.workers)
	errs := make(chan error, f.workers)
	var wg sync.WaitGroup
	for range f.workers {
		conn, err := sqlDB.Conn(ctx)
		if err != nil {
			return err
		}
		defer conn.Close()
		wg.Go(func() {
			for i := range ids {
				t0 := time.Now()
				if _, err := conn.ExecContext(ctx, fmt.Sprintf("UPDATE %s.item SET price = price + 1 WHERE id = %d", f.db, lo+i)); err != nil {
					errs <- err
					return
				}
				commits[i] = time.Now()
				took[i] = commits[i].Sub(t0)
			}
		})
	}
	workersDone := make(chan struct{})

	last := make([]time.Time, latN)
	seen := make([]int, latN)
	cpu0 := child.CPUSeconds(pid)
	tick := time.NewTicker(time.Second / time.Duration(f.rate))
	defer tick.Stop()
	began := time.Now()
	sendUntil := began.Add(f.latencyFor)
	// After the last commit, what is not on every replica within this
	// grace is lost.
	const grace = 5 * time.Second
	var graceEnd <-chan time.Time
	next, done := 0, 0
	sending := true
	var sentFor time.Duration
	for {
		var tc <-chan time.Time
		if sending {
			tc = tick.C
		}
		select {
		case now := <-tc:
			if next >= latN || now.After(sendUntil) {
				sending = false
				sentFor = now.Sub(began)
				close(ids)
				go func() { wg.Wait(); close(workersDone) }()
				continue
			}
			// Every UPDATE due by now, not one per tick: the ticker drops
			// ticks when this loop is late, and the rate would sag with
			// the machine's noise. What the workers cannot take yet waits
			// for the next tick.
			due := min(latN, int(now.Sub(began)*time.Duration(f.rate)/time.Second))
		send:
			for next < due {
				select {
				case ids <- next:
					next++
				default:
					res.backlog = max(res.backlog, due-next)
					break send
				}
			}
		case <-workersDone:
			workersDone = nil
			graceEnd = time.After(grace)
		case e := <-events:
			seen[e.id]++
			last[e.id] = e.at
			if seen[e.id] == len(rcs) {
				done++
			}
		case err := <-errs:
			return err
		case <-graceEnd:
			graceEnd = nil
		case <-ctx.Done():
			return ctx.Err()
		}
		if !sending && workersDone == nil && (done == next || graceEnd == nil) {
			break
		}
	}
	res.cpu = child.CPUSeconds(pid) - cpu0
	res.committed = next
	res.achieved = float64(next) / sentFor.Seconds()
	for i := range next {
		if seen[i] < len(rcs) {
			res.lost++
			continue
		}
		res.lat = append(res.lat, max(last[i].Sub(commits[i]), 0))
	}
	res.lat = sortedLat(res.lat)
	res.commitP99 = sortedLat(took[:next])[min(next-1, next*99/100)]
	if res.committed == 0 {
		return errors.New("no UPDATE committed")
	}
	return nil
}

// peakRSS is the process's high-water resident set (VmHWM), in bytes.
func peakRSS(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
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
