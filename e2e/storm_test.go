//go:build linux

package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/internal/stacktest"
)

// stormSize is how big a storm is.
type stormSize struct {
	rows  int // rows of the table, ids 1..rows
	perTx int // rows one transaction updates (one statement over a block of ids)
	txs   int // transactions
	kills int // SIGKILLs of the active canal during the storm
	pace  time.Duration
}

// TestStormHAKillLosesNothing runs two HA canals and one purger while a
// writer commits a storm of row changes, and SIGKILLs whichever canal holds
// the lease at random points of the storm, restarting it as the standby.
// Every change names a target of its own (itemv:{id}:{version}), and Redis
// MONITOR on every replica records every DEL the purger sends, so "lost"
// is exact: a target some committed change names that never reached a
// replica of its group.
func TestStormHAKillLosesNothing(t *testing.T) {
	size := stormSize{rows: 5000, perTx: 50, txs: 2000, kills: 20}
	if testing.Short() {
		size = stormSize{rows: 1000, perTx: 50, txs: 200, kills: 5}
	}
	// About 3 s of storm per kill: a takeover takes about lease_ttl (1 s),
	// then the killed canal restarts as the standby.
	size.pace = time.Duration(size.kills) * 3 * time.Second / time.Duration(size.txs)
	const (
		leaseTTL        = "1s"
		haName          = "storm"
		takeoverLimit   = 5 * time.Second
		stormLimit      = 4 * time.Minute
		deliveryTimeout = 60 * time.Second
	)
	testStart := time.Now()

	// Servers.
	db := stacktest.NewDatabase(t)
	haDB := stacktest.NewDatabase(t) // lease and checkpoint; canal creates its tables
	conn := stacktest.MySQL(t)       // the test goroutine's: setup, lease row
	stacktest.Exec(t, conn, "CREATE TABLE "+db+".item (id BIGINT PRIMARY KEY, version BIGINT NOT NULL, name VARCHAR(50))")
	for from := 1; from <= size.rows; from += 1000 {
		var values []string
		for id := from; id < from+1000 && id <= size.rows; id++ {
			values = append(values, fmt.Sprintf("(%d, 0, 'item %d')", id, id))
		}
		stacktest.Exec(t, conn, "INSERT INTO "+db+".item (id, version, name) VALUES "+strings.Join(values, ", "))
	}
	var groups [][]string
	clients := map[string]*redis.Client{}
	for range nGroups {
		var addrs []string
		for range 2 {
			s := stacktest.StartRedis(t)
			c := redis.NewClient(&redis.Options{Addr: s.Addr()})
			t.Cleanup(func() { c.Close() })
			clients[s.Addr()] = c
			addrs = append(addrs, s.Addr())
		}
		groups = append(groups, addrs)
	}
	nsqd := stacktest.StartNSQD(t) // in this process: outlives every killed flashsync

	// Logs of every flashsync process, the tails printed if the test fails.
	// Registered before any process starts, so it runs after they stopped.
	logs := &stormLogs{dir: t.TempDir()}
	t.Cleanup(func() {
		if t.Failed() {
			logs.dump(t)
		}
	})

	// One config per process.
	config := func(name string, canal bool) string {
		c := Config{
			MySQLAddr:    stacktest.MySQLAddr(),
			ServerID:     newServerID(),
			PositionFile: filepath.Join(t.TempDir(), "position-unused"),
			DB:           db,
			NSQDTCP:      nsqd.TCPAddr(),
			NSQDHTTP:     nsqd.HTTPAddr(),
			HTTPAddr:     fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t)),
			Groups:       groups,
			Keys:         []string{"item:{id}", "itemv:{id}:{version}"},
		}
		toml := c.TOML()
		if canal {
			toml = withHAKeys(t, toml, haName, haDB, leaseTTL)
		}
		return writeFile(t, name+".toml", toml)
	}
	canals := []*stormProc{
		{name: "canal-a", role: "canal"},
		{name: "canal-b", role: "canal"},
	}
	for _, c := range canals {
		c.cfgPath = config(c.name, true)
		c.httpAddr = httpAddrOf(t, c.cfgPath)
	}
	purger := &stormProc{name: "purger", role: "purger"}
	purger.cfgPath = config(purger.name, false)
	purger.httpAddr = httpAddrOf(t, purger.cfgPath)

	lease := func() (holder string, pid int, token int64, err error) {
		r, err := conn.Execute("SELECT holder, token FROM "+haDB+".canal_lease WHERE name = ?", haName)
		if err != nil {
			return "", 0, 0, err
		}
		if r.RowNumber() == 0 {
			return "", 0, 0, errors.New("no lease row yet")
		}
		holder, _ = r.GetString(0, 0)
		token, _ = r.GetInt(0, 1)
		return holder, holderPID(holder), token, nil
	}

	startHA(t, canals, purger, conn, haDB, haName, logs)
	_, _, firstToken, err := lease()
	if err != nil {
		t.Fatal(err)
	}

	// Delivery evidence: every DEL every replica receives from now on.
	monitors := map[string]*delMonitor{}
	for _, addr := range slices.Concat(groups...) {
		monitors[addr] = startDelMonitor(t, addr)
	}
	// Final-state evidence: item:{id} of every row on every replica.
	ctx := context.Background()
	for addr, c := range clients {
		pipe := c.Pipeline()
		for id := 1; id <= size.rows; id++ {
			pipe.Set(ctx, fmt.Sprintf("item:%d", id), "stale", 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatalf("seed redis %s: %v", addr, err)
		}
	}

	// The storm: transaction i adds 1 to the version of every row of block
	// i mod blocks, in one UPDATE, at most one transaction per pace. The
	// writer never runs more than one kill slot ahead of the killer, so
	// every kill falls inside the storm.
	blocks := size.rows / size.perTx
	slot := float64(size.txs) / float64(size.kills)
	killAt := make([]int, size.kills) // transactions committed before kill k
	for k := range killAt {
		killAt[k] = int(slot * (float64(k) + 0.15 + 0.7*rand.Float64()))
	}
	// How far the writer may go before kill k: one slot past it, and never
	// to the end, so the storm outlasts the last kill.
	allowedBefore := func(k int) int64 {
		return int64(min(killAt[k]+int(slot), size.txs-max(1, int(slot)/10)))
	}
	var committed, allowed atomic.Int64
	allowed.Store(allowedBefore(0))
	writerConn := stacktest.MySQL(t)
	stormCtx, stopStorm := context.WithCancel(context.Background())
	writerDone := make(chan error, 1)
	stormStart := time.Now()
	go func() {
		writerDone <- func() error {
			tick := time.NewTicker(size.pace)
			defer tick.Stop()
			for i := 0; i < size.txs; {
				select {
				case <-stormCtx.Done():
					return stormCtx.Err()
				case <-tick.C:
				}
				if time.Since(stormStart) > stormLimit {
					return fmt.Errorf("the storm took over %v: %d of %d transactions committed", stormLimit, i, size.txs)
				}
				if int64(i) >= allowed.Load() {
					continue
				}
				b := i % blocks
				q := fmt.Sprintf("UPDATE %s.item SET version = version + 1 WHERE id BETWEEN %d AND %d", db, b*size.perTx+1, (b+1)*size.perTx)
				if _, err := writerConn.Execute(q); err != nil {
					return fmt.Errorf("transaction %d: %s: %w", i, q, err)
				}
				i++
				committed.Store(int64(i))
			}
			return nil
		}()
	}()
	writerStopped := false
	stopWriter := func() error {
		if writerStopped {
			return nil
		}
		writerStopped = true
		stopStorm()
		return <-writerDone
	}
	t.Cleanup(func() { stopWriter() }) // before writerConn closes

	checkAlive := func() {
		t.Helper()
		for _, p := range append(slices.Clone(canals), purger) {
			if err := p.alive(); err != nil {
				t.Fatal(err)
			}
		}
	}
	var takeovers []time.Duration
	killsDuringStorm := 0
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for k := 0; k < size.kills; k++ {
		// Wait for this kill's point of the storm.
		for committed.Load() < int64(killAt[k]) {
			select {
			case err := <-writerDone:
				writerDone <- err
				t.Fatalf("writer stopped before kill %d: %v", k+1, err)
			case <-tick.C:
			}
			checkAlive()
		}
		checkAlive()
		_, pid, token, err := lease()
		if err != nil {
			t.Fatalf("kill %d: lease: %v", k+1, err)
		}
		var active, standby *stormProc
		for i, c := range canals {
			if c.pid() == pid {
				active, standby = c, canals[1-i]
			}
		}
		if active == nil {
			t.Fatalf("kill %d: the lease holder pid %d is neither canal (%d, %d)", k+1, pid, canals[0].pid(), canals[1].pid())
		}
		before, err := metricAt(standby.httpAddr, "flashsync_canal_transactions_total")
		if err != nil {
			t.Fatalf("kill %d: %s metrics: %v", k+1, standby.name, err)
		}
		if committed.Load() < int64(size.txs) {
			killsDuringStorm++
		}
		killed := time.Now()
		active.kill(t)

		// The standby takes over: it holds the lease of a new term and reads
		// the binlog.
		var last error
		for {
			holder, pid, tok, err := lease()
			switch {
			case err != nil:
				last = err
			case pid != standby.pid() || tok <= token:
				last = fmt.Errorf("lease held by %s token %d (killed %s pid %d had token %d)", holder, tok, active.name, active.pidWas, token)
			default:
				n, err := metricAt(standby.httpAddr, "flashsync_canal_transactions_total")
				switch {
				case err != nil:
					last = err
				case n <= before:
					last = fmt.Errorf("%s holds the lease (token %d) but read no transaction yet (%v)", standby.name, tok, n)
				default:
					last = nil
				}
			}
			if last == nil {
				break
			}
			if time.Since(killed) > takeoverLimit {
				t.Fatalf("kill %d of %s (pid %d) at %d/%d transactions: %s did not take over within %v: %v",
					k+1, active.name, active.pidWas, committed.Load(), size.txs, standby.name, takeoverLimit, last)
			}
			<-tick.C
			if err := standby.alive(); err != nil {
				t.Fatal(err)
			}
		}
		took := time.Since(killed)
		takeovers = append(takeovers, took)
		t.Logf("kill %d: %s (pid %d) at %d/%d transactions; %s took over in %v", k+1, active.name, active.pidWas, committed.Load(), size.txs, standby.name, took.Round(time.Millisecond))

		// The killed canal comes back as the standby.
		active.start(t, logs)
		active.waitStandby(t)
		if k+1 < size.kills {
			allowed.Store(allowedBefore(k + 1))
		}
	}
	allowed.Store(int64(size.txs))
	if err := <-writerDone; err != nil {
		writerDone <- err
		t.Fatalf("writer: %v", err)
	}
	writerDone <- nil
	stormTook := time.Since(stormStart)
	n := int(committed.Load())
	changes := n * size.perTx

	// Expected targets, from what was committed: every update of row id
	// from v to v+1 names item:id, itemv:id:v and itemv:id:v+1.
	updates := make([]int, size.rows+1) // by id
	for i := range n {
		b := i % blocks
		for id := b*size.perTx + 1; id <= (b+1)*size.perTx; id++ {
			updates[id]++
		}
	}
	namedBy := map[string]int{} // target: how many transactions name it
	for id := 1; id <= size.rows; id++ {
		for v := range updates[id] {
			namedBy[fmt.Sprintf("item:%d", id)]++
			namedBy[fmt.Sprintf("itemv:%d:%d", id, v)]++
			namedBy[fmt.Sprintf("itemv:%d:%d", id, v+1)]++
		}
	}
	replicasOf := func(target string) []string {
		id, ok := targetID(target)
		if !ok {
			return nil
		}
		return groups[groupOf(id)]
	}
	missing := func() []string {
		var lost []string
		for target := range namedBy {
			for _, addr := range replicasOf(target) {
				if monitors[addr].count(target) == 0 {
					lost = append(lost, target+" on "+addr)
				}
			}
		}
		slices.Sort(lost)
		return lost
	}
	var lost []string
	deliveryStart := time.Now()
	poll := time.NewTicker(200 * time.Millisecond)
	defer poll.Stop()
	for {
		for _, m := range monitors {
			if err := m.failed(); err != nil {
				t.Fatal(err)
			}
		}
		lost = missing()
		if len(lost) == 0 || time.Since(deliveryStart) > deliveryTimeout {
			break
		}
		checkAlive()
		<-poll.C
	}
	drained := time.Since(deliveryStart)
	if len(lost) > 0 {
		t.Errorf("lost %d deliveries (target on replica) %v after the storm; first %d: %s",
			len(lost), deliveryTimeout, min(20, len(lost)), strings.Join(lost[:min(20, len(lost))], ", "))
	}

	// Routing, and nothing purged that no change named; duplicates.
	var misrouted, unexpected []string
	duplicates, beyondFirst, expectedDeliveries := 0, 0, 0
	for target, named := range namedBy {
		expectedDeliveries += named * len(replicasOf(target))
	}
	for addr, m := range monitors {
		g := groupOfReplica(groups, addr)
		for target, count := range m.snapshot() {
			id, ok := targetID(target)
			if !ok || namedBy[target] == 0 {
				unexpected = append(unexpected, target+" on "+addr)
				continue
			}
			if groupOf(id) != g {
				misrouted = append(misrouted, fmt.Sprintf("%s (group %d) on %s (group %d)", target, groupOf(id), addr, g))
				continue
			}
			duplicates += max(0, count-namedBy[target])
			beyondFirst += count - 1
		}
	}
	slices.Sort(misrouted)
	slices.Sort(unexpected)
	if len(misrouted) > 0 {
		t.Errorf("%d DELs in the wrong group; first %d: %s", len(misrouted), min(20, len(misrouted)), strings.Join(misrouted[:min(20, len(misrouted))], ", "))
	}
	if len(unexpected) > 0 {
		t.Errorf("%d DELs of targets no committed change names; first %d: %s", len(unexpected), min(20, len(unexpected)), strings.Join(unexpected[:min(20, len(unexpected))], ", "))
	}

	// Final state: item:{id} of every changed row is gone from both
	// replicas of its group and still in the other group's.
	for addr, c := range clients {
		g := groupOfReplica(groups, addr)
		pipe := c.Pipeline()
		cmds := make(map[int]*redis.IntCmd)
		for id := 1; id <= size.rows; id++ {
			if updates[id] > 0 {
				cmds[id] = pipe.Exists(ctx, fmt.Sprintf("item:%d", id))
			}
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatalf("redis %s EXISTS: %v", addr, err)
		}
		var wrong []string
		for id, cmd := range cmds {
			switch {
			case groupOf(id) == g && cmd.Val() != 0:
				wrong = append(wrong, fmt.Sprintf("item:%d still there", id))
			case groupOf(id) != g && cmd.Val() != 1:
				wrong = append(wrong, fmt.Sprintf("item:%d (group %d) purged", id, groupOf(id)))
			}
		}
		slices.Sort(wrong)
		if len(wrong) > 0 {
			t.Errorf("redis %s (group %d): %d item keys in the wrong state; first %d: %s", addr, g, len(wrong), min(20, len(wrong)), strings.Join(wrong[:min(20, len(wrong))], ", "))
		}
	}

	_, _, lastToken, err := lease()
	if err != nil {
		t.Fatal(err)
	}
	sorted := slices.Clone(takeovers)
	slices.Sort(sorted)
	p50, worst := sorted[len(sorted)/2], sorted[len(sorted)-1]
	pct := 0.0
	if expectedDeliveries > 0 {
		pct = 100 * float64(duplicates) / float64(expectedDeliveries)
	}
	t.Logf("storm: %d changes, %d transactions, %d kills, takeover p50 %v / max %v, targets %d, lost %d, duplicate deliveries %d (%.2f%%)",
		changes, n, len(takeovers), p50.Round(time.Millisecond), worst.Round(time.Millisecond), len(namedBy), len(lost), duplicates, pct)
	t.Logf("storm details: %d kills during the storm, storm %v, drained %v after it, %d expected deliveries (target x naming transaction x replica), %d DELs beyond the first per target and replica (item:{id} is named by every update of the row, itemv:{id}:{v} by two), lease terms %d (%d not from kills), test %v",
		killsDuringStorm, stormTook.Round(time.Millisecond), drained.Round(time.Millisecond), expectedDeliveries, beyondFirst,
		lastToken-firstToken, lastToken-firstToken-int64(len(takeovers)), time.Since(testStart).Round(time.Second))
	if killsDuringStorm < size.kills {
		t.Errorf("only %d of %d kills fell inside the storm", killsDuringStorm, size.kills)
	}

	// Every process stops cleanly.
	for _, p := range append(slices.Clone(canals), purger) {
		if err := p.stop(syscall.SIGTERM, 15*time.Second); err != nil {
			t.Errorf("%s: %v", p.name, err)
		}
	}
}

// startHA starts canals[0] alone, so that it is the first leader and saves
// the start position before reading anything, then canals[1] as the
// standby, then the purger, and waits until the purger is healthy.
func startHA(t *testing.T, canals []*stormProc, purger *stormProc, conn *client.Conn, haDB, haName string, logs *stormLogs) {
	t.Helper()
	canals[0].start(t, logs)
	waitFirstLeader(t, canals[0], conn, haDB, haName)
	canals[1].start(t, logs)
	canals[1].waitStandby(t)
	purger.start(t, logs)
	stacktest.Eventually(t, 20*time.Second, func() error {
		if err := purger.alive(); err != nil {
			t.Fatal(err)
		}
		status, body, err := (&env{cfg: Config{HTTPAddr: purger.httpAddr}}).healthz()
		if err == nil && status != 200 {
			err = fmt.Errorf("purger /healthz answered %d %s", status, strings.TrimSpace(body))
		}
		return err
	})
}

// waitFirstLeader waits until c, the first canal started, holds the lease
// named haName and has saved its start position as the checkpoint.
func waitFirstLeader(t *testing.T, c *stormProc, conn *client.Conn, haDB, haName string) {
	t.Helper()
	stacktest.Eventually(t, 20*time.Second, func() error {
		if err := c.alive(); err != nil {
			t.Fatal(err)
		}
		r, err := conn.Execute("SELECT holder FROM "+haDB+".canal_lease WHERE name = ?", haName)
		if err != nil {
			return err
		}
		if r.RowNumber() == 0 {
			return errors.New("no lease row yet")
		}
		holder, _ := r.GetString(0, 0)
		if pid := holderPID(holder); pid != c.pid() {
			return fmt.Errorf("lease held by pid %d, not %s (pid %d)", pid, c.name, c.pid())
		}
		if r, err = conn.Execute("SELECT COUNT(*) FROM "+haDB+".canal_checkpoint WHERE name = ?", haName); err != nil {
			return err
		}
		if n, _ := r.GetInt(0, 0); n == 0 {
			return errors.New("no checkpoint yet")
		}
		return nil
	})
}

// withHAKeys adds the [canal] HA keys to a config rendered by Config.TOML.
func withHAKeys(t *testing.T, toml, name, database, ttl string) string {
	t.Helper()
	const header = "[canal]\n"
	if !strings.Contains(toml, header) {
		t.Fatalf("config has no %q:\n%s", header, toml)
	}
	return strings.Replace(toml, header, header+fmt.Sprintf("ha = true\nha_name = %q\nha_database = %q\nlease_ttl = %q\n", name, database, ttl), 1)
}

// httpAddrOf reads [http] addr back from a config file.
func httpAddrOf(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(data), "[http]\naddr = ")
	if !ok {
		t.Fatalf("%s has no [http] addr", path)
	}
	line, _, _ := strings.Cut(rest, "\n")
	addr, err := strconv.Unquote(line)
	if err != nil {
		t.Fatalf("%s: [http] addr %s: %v", path, line, err)
	}
	return addr
}

// holderPID is the pid in a lease holder "host:pid:nanos".
func holderPID(holder string) int {
	parts := strings.Split(holder, ":")
	if len(parts) < 3 {
		return 0
	}
	pid, _ := strconv.Atoi(parts[len(parts)-2])
	return pid
}

// metricAt reads one metric of the flashsync serving /metrics at addr.
func metricAt(addr, name string) (float64, error) {
	return (&env{cfg: Config{HTTPAddr: addr}}).metric(name)
}

// targetID is the row id in item:{id} or itemv:{id}:{version}.
func targetID(target string) (int, bool) {
	var rest string
	switch {
	case strings.HasPrefix(target, "item:"):
		rest = strings.TrimPrefix(target, "item:")
	case strings.HasPrefix(target, "itemv:"):
		rest, _, _ = strings.Cut(strings.TrimPrefix(target, "itemv:"), ":")
	default:
		return 0, false
	}
	id, err := strconv.Atoi(rest)
	return id, err == nil
}

func groupOfReplica(groups [][]string, addr string) int {
	for g, addrs := range groups {
		if slices.Contains(addrs, addr) {
			return g
		}
	}
	return -1
}

// stormProc is one flashsync process slot (a canal or the purger), run
// again after each kill. Every run logs to a file of its own.
type stormProc struct {
	name, role        string
	cfgPath, httpAddr string
	runs              int
	cmd               *exec.Cmd
	logPath           string
	done              chan struct{}
	err               error // of cmd.Wait, valid once done is closed
	pidWas            int   // pid of the last run
}

func (c *stormProc) pid() int {
	if c.cmd == nil || c.exitedNow() {
		return -1
	}
	return c.cmd.Process.Pid
}

func (c *stormProc) exitedNow() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// alive reports an error if the current run exited.
func (c *stormProc) alive() error {
	if c.exitedNow() {
		return fmt.Errorf("%s (run %d, pid %d) exited by itself: %v; log %s", c.name, c.runs, c.pidWas, c.err, c.logPath)
	}
	return nil
}

// start starts the next run. It is stopped at cleanup (SIGTERM, then
// SIGKILL after 10 s, which fails the test).
func (c *stormProc) start(t *testing.T, logs *stormLogs) {
	t.Helper()
	c.runs++
	c.logPath = logs.add(fmt.Sprintf("%s.%d.log", c.name, c.runs))
	f, err := os.Create(c.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // the child has its own descriptor
	cmd := command(context.Background(), c.role, "-config", c.cfgPath)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", c.name, err)
	}
	done := make(chan struct{})
	c.cmd, c.done, c.pidWas = cmd, done, cmd.Process.Pid
	go func() {
		c.err = cmd.Wait()
		close(done)
	}()
	name, run := c.name, c.runs
	t.Cleanup(func() {
		select {
		case <-done:
			return
		default:
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("%s run %d did not exit within 10 s of SIGTERM; killed", name, run)
		}
	})
}

// kill SIGKILLs the current run and waits until it is gone.
func (c *stormProc) kill(t *testing.T) {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s: %v", c.name, err)
	}
	<-c.done
}

// stop sends sig and waits for an exit with status 0.
func (c *stormProc) stop(sig syscall.Signal, grace time.Duration) error {
	if c.exitedNow() {
		return fmt.Errorf("exited before the end: %v", c.err)
	}
	_ = c.cmd.Process.Signal(sig)
	select {
	case <-c.done:
	case <-time.After(grace):
		_ = c.cmd.Process.Kill()
		<-c.done
		return fmt.Errorf("did not exit within %v of %v; killed", grace, sig)
	}
	if c.err != nil {
		return fmt.Errorf("after %v: %v, want exit status 0", sig, c.err)
	}
	return nil
}

// waitStandby waits until the current run serves /metrics and waits for
// the lease.
func (c *stormProc) waitStandby(t *testing.T) {
	t.Helper()
	stacktest.Eventually(t, 20*time.Second, func() error {
		if err := c.alive(); err != nil {
			t.Fatal(err)
		}
		if _, err := metricAt(c.httpAddr, "flashsync_canal_transactions_total"); err != nil {
			return err
		}
		data, err := os.ReadFile(c.logPath)
		if err != nil {
			return err
		}
		if !strings.Contains(string(data), "canal standby: waiting for the lease") {
			return fmt.Errorf("%s run %d is not waiting for the lease yet", c.name, c.runs)
		}
		return nil
	})
}

// stormLogs are the log files of every run of every process.
type stormLogs struct {
	dir   string
	paths []string
}

func (l *stormLogs) add(name string) string {
	p := filepath.Join(l.dir, name)
	l.paths = append(l.paths, p)
	return p
}

// dump logs the tail of every file, the last run of each process longer.
func (l *stormLogs) dump(t *testing.T) {
	last := map[string]string{} // process: its last log
	for _, p := range l.paths {
		proc, _, _ := strings.Cut(filepath.Base(p), ".")
		last[proc] = p
	}
	for _, p := range l.paths {
		proc, _, _ := strings.Cut(filepath.Base(p), ".")
		n := 12
		if last[proc] == p {
			n = 60
		}
		t.Logf("--- %s (last %d lines) ---\n%s", filepath.Base(p), n, tailLines(p, n))
	}
}

func tailLines(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// delMonitor records, from Redis MONITOR, how many DEL commands named each
// key on one server. MONITOR shows a DEL whether or not the key existed.
//
// It speaks RESP on its own connection rather than through go-redis's
// MonitorCmd, which keeps reading a connection it has returned to the pool,
// spins when that read fails, and blocks Stop until the next line arrives.
type delMonitor struct {
	addr string
	conn net.Conn
	done chan struct{}

	mu     sync.Mutex
	counts map[string]int
	err    error // a read or parse failure before Close
	closed bool
}

// startDelMonitor connects and returns once the server acknowledged
// MONITOR: every command after that is seen. It is closed at cleanup.
func startDelMonitor(t *testing.T, addr string) *delMonitor {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("monitor %s: %v", addr, err)
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	rd := bufio.NewReaderSize(conn, 1<<20)
	if _, err := conn.Write([]byte("MONITOR\r\n")); err != nil {
		conn.Close()
		t.Fatalf("monitor %s: %v", addr, err)
	}
	if reply, err := rd.ReadString('\n'); err != nil || reply != "+OK\r\n" {
		conn.Close()
		t.Fatalf("monitor %s: MONITOR answered %q, %v", addr, reply, err)
	}
	conn.SetDeadline(time.Time{})
	m := &delMonitor{addr: addr, conn: conn, done: make(chan struct{}), counts: map[string]int{}}
	go m.read(rd)
	t.Cleanup(func() {
		m.mu.Lock()
		m.closed = true
		m.mu.Unlock()
		conn.Close()
		<-m.done
	})
	return m
}

func (m *delMonitor) read(rd *bufio.Reader) {
	defer close(m.done)
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			m.fail(err)
			return
		}
		if !strings.HasPrefix(line, "+") {
			m.fail(fmt.Errorf("unexpected MONITOR reply %q", line))
			return
		}
		cmd, args, err := parseMonitorLine(strings.TrimSuffix(line[1:], "\r\n"))
		if err != nil {
			m.fail(err)
			return
		}
		if !strings.EqualFold(cmd, "del") {
			continue
		}
		m.mu.Lock()
		for _, k := range args {
			m.counts[k]++
		}
		m.mu.Unlock()
	}
}

func (m *delMonitor) fail(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed && m.err == nil {
		m.err = fmt.Errorf("monitor %s: %w", m.addr, err)
	}
}

func (m *delMonitor) failed() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

func (m *delMonitor) count(key string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.counts[key]
}

func (m *delMonitor) snapshot() map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]int, len(m.counts))
	for k, v := range m.counts {
		out[k] = v
	}
	return out
}

// parseMonitorLine splits a MONITOR line,
//
//	1700000000.123456 [0 127.0.0.1:1234] "DEL" "k1" "k2"
//
// into the command and its arguments (Redis quotes each with C-like
// escapes, which strconv.Unquote reads).
func parseMonitorLine(line string) (string, []string, error) {
	_, rest, ok := strings.Cut(line, "] ")
	if !ok {
		return "", nil, fmt.Errorf("MONITOR line %q has no client part", line)
	}
	var words []string
	for rest != "" {
		if rest[0] != '"' {
			return "", nil, fmt.Errorf("MONITOR line %q: argument not quoted at %q", line, rest)
		}
		end := 1
		for end < len(rest) && rest[end] != '"' {
			if rest[end] == '\\' {
				end++
			}
			end++
		}
		if end >= len(rest) {
			return "", nil, fmt.Errorf("MONITOR line %q: unterminated argument", line)
		}
		w, err := strconv.Unquote(rest[:end+1])
		if err != nil {
			return "", nil, fmt.Errorf("MONITOR line %q: %v", line, err)
		}
		words = append(words, w)
		rest = strings.TrimPrefix(rest[end+1:], " ")
	}
	if len(words) == 0 {
		return "", nil, fmt.Errorf("MONITOR line %q has no command", line)
	}
	return words[0], words[1:], nil
}
