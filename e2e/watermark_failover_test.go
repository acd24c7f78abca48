//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
)

// The replicas' applied watermarks through a canal failure (issue 11): the
// real binary, a canal SIGKILLed mid-stream while a writer changes rows.
// The canal that streams next replays from the saved checkpoint, which is
// behind what the watermarks already claim, so it repeats ranges the
// replicas have applied and overlaps others. Throughout, on every replica,
// the watermark never claims a change whose purge has not been applied
// there, never goes backwards, and it reaches the binlog's end after the
// writer stops.

// TestWatermarkThroughCanalKill SIGKILLs the only canal and starts it again
// on the same position file, as a supervisor would.
func TestWatermarkThroughCanalKill(t *testing.T) { testWatermarkFailover(t, false) }

// TestWatermarkThroughHATakeover runs two HA canals and SIGKILLs the one
// holding the lease: the standby takes over from the checkpoint in MySQL.
func TestWatermarkThroughHATakeover(t *testing.T) { testWatermarkFailover(t, true) }

// The writer's bounds: at most wmChangesMax changes, one per wmPace, for
// at most wmWriteLimit; the canal is killed after wmKillAfter of them.
const (
	wmChangesMax = 2400
	wmPace       = 4 * time.Millisecond // at most 250 changes/s
	wmWriteLimit = 14 * time.Second
	wmKillAfter  = 600
	// wmAfterResume is how many changes the writer must commit after the
	// watermarks resumed: the new canal is tested under load, not only on
	// its replay.
	wmAfterResume = 300
	// wmCheckEvery paces each replica's checker: about 500 checks a second,
	// far finer than the heartbeats (100 ms) and the writer's changes.
	wmCheckEvery = 2 * time.Millisecond
	// wmCheckKeys bounds the keys of one check: the oldest open changes.
	// Purges keep up within milliseconds, so only a failover (about 350
	// changes during an HA takeover) or a lost purge leaves more than a
	// few open.
	wmCheckKeys = 1024
	wmLeaseTTL  = "1s"
	wmHAName    = "wmfailover"
	// wmResumeLimit bounds the kill to the first watermark past it: a
	// restart (or lease_ttl, 1 s) plus the replay. gap_timeout (5 s) is
	// larger, so the purger has no reason to flush a replica.
	wmResumeLimit = 4 * time.Second
)

func testWatermarkFailover(t *testing.T, ha bool) {
	testStart := time.Now()

	// Servers: a database with a row for each change, one Redis group of
	// two private replicas, an nsqd in this process (it outlives the kill).
	db := stacktest.NewDatabase(t)
	conn := stacktest.MySQL(t) // the test goroutine's
	stacktest.Exec(t, conn, "CREATE TABLE "+db+".item (id BIGINT PRIMARY KEY, version BIGINT NOT NULL)")
	for from := 1; from <= wmChangesMax; from += 500 {
		var values []string
		for id := from; id < from+500 && id <= wmChangesMax; id++ {
			values = append(values, fmt.Sprintf("(%d, 0)", id))
		}
		stacktest.Exec(t, conn, "INSERT INTO "+db+".item (id, version) VALUES "+strings.Join(values, ", "))
	}
	haDB := ""
	if ha {
		haDB = stacktest.NewDatabase(t) // lease and checkpoint; the canal creates its tables
	}
	var replicas []string
	clients := map[string]*redis.Client{}
	for range 2 {
		s := stacktest.StartRedis(t)
		c := redis.NewClient(&redis.Options{Addr: s.Addr()})
		t.Cleanup(func() { c.Close() })
		replicas = append(replicas, s.Addr())
		clients[s.Addr()] = c
	}
	nsqd := stacktest.StartNSQD(t)

	logs := &stormLogs{dir: t.TempDir()}
	t.Cleanup(func() {
		if t.Failed() {
			logs.dump(t)
		}
	})
	positionFile := filepath.Join(t.TempDir(), "position") // the single canal's
	config := func(name string, canal bool) string {
		c := Config{
			MySQLAddr:    stacktest.MySQLAddr(),
			ServerID:     newServerID(),
			PositionFile: positionFile,
			DB:           db,
			NSQDTCP:      nsqd.TCPAddr(),
			NSQDHTTP:     nsqd.HTTPAddr(),
			HTTPAddr:     fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t)),
			Groups:       [][]string{replicas},
			Keys:         []string{"item:{id}"},
		}
		toml := c.TOML()
		if canal && ha {
			toml = withHAKeys(t, toml, wmHAName, haDB, wmLeaseTTL)
		}
		return writeFile(t, name+".toml", toml)
	}
	canals := []*stormProc{{name: "canal-a", role: "canal"}}
	if ha {
		canals = append(canals, &stormProc{name: "canal-b", role: "canal"})
	}
	for _, c := range canals {
		c.cfgPath = config(c.name, true)
		c.httpAddr = httpAddrOf(t, c.cfgPath)
	}
	purger := &stormProc{name: "purger", role: "purger"}
	purger.cfgPath = config(purger.name, false)
	purger.httpAddr = httpAddrOf(t, purger.cfgPath)
	var down *stormProc // the HA canal killed and not started again
	checkAlive := func() {
		t.Helper()
		for _, p := range append(slices.Clone(canals), purger) {
			if p == down {
				continue
			}
			if err := p.alive(); err != nil {
				t.Fatal(err)
			}
		}
	}

	lease := func() (pid int, token int64, err error) {
		r, err := conn.Execute("SELECT holder, token FROM "+haDB+".canal_lease WHERE name = ?", wmHAName)
		if err != nil {
			return 0, 0, err
		}
		if r.RowNumber() == 0 {
			return 0, 0, errors.New("no lease row yet")
		}
		holder, _ := r.GetString(0, 0)
		token, _ = r.GetInt(0, 1)
		return holderPID(holder), token, nil
	}
	// checkpoint is where the next canal to stream resumes: the offset of
	// the saved position, or its Covered if that is earlier (canal/stream.go).
	checkpoint := func() (uint64, error) {
		var raw []byte
		if ha {
			r, err := conn.Execute("SELECT position FROM "+haDB+".canal_checkpoint WHERE name = ?", wmHAName)
			if err != nil {
				return 0, err
			}
			if r.RowNumber() == 0 {
				return 0, errors.New("no checkpoint yet")
			}
			s, _ := r.GetString(0, 0)
			raw = []byte(s)
		} else {
			var err error
			if raw, err = os.ReadFile(positionFile); err != nil {
				return 0, err
			}
		}
		var pos struct {
			File    string `json:"file"`
			Pos     uint32 `json:"pos"`
			Covered uint64 `json:"covered"`
		}
		if err := json.Unmarshal(raw, &pos); err != nil {
			return 0, fmt.Errorf("checkpoint %q: %w", raw, err)
		}
		off, ok := invalidate.BinlogOffset(pos.File, pos.Pos)
		if !ok {
			return 0, fmt.Errorf("checkpoint %q: binlog file without sequence number", raw)
		}
		if pos.Covered > 0 && pos.Covered < off {
			off = pos.Covered
		}
		return off, nil
	}

	// canal-a streams first: it saved its start position before reading.
	canals[0].start(t, logs)
	stacktest.Eventually(t, 20*time.Second, func() error {
		checkAlive()
		if ha {
			pid, _, err := lease()
			if err != nil {
				return err
			}
			if pid != canals[0].pid() {
				return fmt.Errorf("lease held by pid %d, not %s (pid %d)", pid, canals[0].name, canals[0].pid())
			}
		}
		_, err := checkpoint()
		return err
	})
	if ha {
		canals[1].start(t, logs)
		canals[1].waitStandby(t)
	}
	purger.start(t, logs)
	stacktest.Eventually(t, 20*time.Second, func() error {
		checkAlive()
		status, body, err := (&env{cfg: Config{HTTPAddr: purger.httpAddr}}).healthz()
		if err == nil && status != 200 {
			err = fmt.Errorf("purger /healthz answered %d %s", status, strings.TrimSpace(body))
		}
		return err
	})
	// The canal's heartbeats start every replica's watermark.
	ctx := context.Background()
	stacktest.Eventually(t, 20*time.Second, func() error {
		checkAlive()
		for _, addr := range replicas {
			if err := clients[addr].Get(ctx, invalidate.WatermarkKey).Err(); err != nil {
				return fmt.Errorf("redis %s GET %s: %w", addr, invalidate.WatermarkKey, err)
			}
		}
		return nil
	})

	// The checkers, from before the first change until the end.
	changes := &wmChangeLog{}
	checkCtx, stopChecks := context.WithCancel(ctx)
	var checkers []*wmChecker
	for _, addr := range replicas {
		checkers = append(checkers, startWMChecker(checkCtx, addr, clients[addr], changes))
	}
	stopCheckers := func() {
		stopChecks()
		for _, c := range checkers {
			<-c.done
		}
	}
	t.Cleanup(stopCheckers) // idempotent: a closed done does not block

	// The writer: change i of row r is "SET item:r pre:i on every replica,
	// commit, read SHOW MASTER STATUS".
	writerConn := stacktest.MySQL(t)
	writeCtx, stopWriting := context.WithCancel(ctx)
	writerDone := make(chan error, 1)
	writeStart := time.Now()
	go func() {
		writerDone <- wmWrite(writeCtx, writerConn, db, replicas, clients, changes, writeStart)
	}()
	writerErr, writerStopped := error(nil), false
	waitWriter := func() error {
		if !writerStopped {
			writerErr, writerStopped = <-writerDone, true
		}
		return writerErr
	}
	t.Cleanup(func() { stopWriting(); waitWriter() }) // before writerConn closes

	// The kill, once the writer is wmKillAfter changes in and the
	// checkpoint is behind the watermark of every replica: the next canal
	// repeats ranges they have applied.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	behindSince := time.Time{}
	var ckpt uint64
	for {
		checkAlive()
		select {
		case err := <-writerDone:
			writerErr, writerStopped = err, true
			t.Fatalf("the writer stopped at %d changes, before the kill: %v", changes.len(), err)
		case <-tick.C:
		}
		if changes.len() < wmKillAfter {
			continue
		}
		if behindSince.IsZero() {
			behindSince = time.Now()
		}
		var err error
		if ckpt, err = checkpoint(); err != nil {
			t.Fatal(err)
		}
		if lowest := wmLowest(checkers); lowest > ckpt {
			break
		}
		if time.Since(behindSince) > 5*time.Second {
			t.Fatalf("the checkpoint (offset %d) never fell behind every replica's watermark (lowest %d) in 5 s", ckpt, wmLowest(checkers))
		}
	}
	active, standby := canals[0], (*stormProc)(nil)
	var token int64
	if ha {
		pid, tok, err := lease()
		if err != nil {
			t.Fatal(err)
		}
		if pid != canals[0].pid() && pid != canals[1].pid() {
			t.Fatalf("the lease holder pid %d is neither canal (%d, %d)", pid, canals[0].pid(), canals[1].pid())
		}
		if pid == canals[1].pid() {
			active = canals[1]
		}
		standby, token = canals[0], tok
		if active == canals[0] {
			standby = canals[1]
		}
	}
	wmAtKill := wmLowest(checkers)
	// Changes [0, atKill) are recorded; change atKill may be committing
	// now; every later one starts after the kill.
	atKill := changes.len()
	firstAfter := atKill + 1
	killed := time.Now()
	active.kill(t)
	if ha {
		down = active
	}
	var leaseTakeover time.Duration
	if ha {
		for {
			pid, tok, err := lease()
			if err == nil && pid == standby.pid() && tok > token {
				break
			}
			if time.Since(killed) > wmResumeLimit {
				t.Fatalf("%s did not take the lease within %v of the kill of %s (pid %d, token %d): pid %d token %d, %v",
					standby.name, wmResumeLimit, active.name, active.pidWas, token, pid, tok, err)
			}
			if err := standby.alive(); err != nil {
				t.Fatal(err)
			}
			<-tick.C
		}
		leaseTakeover = time.Since(killed)
	} else {
		active.start(t, logs) // on the same position file
	}

	// The watermarks resume: every replica's covers a change committed
	// after the kill.
	for !wmCoverAll(checkers, firstAfter+1) {
		if time.Since(killed) > wmResumeLimit {
			t.Fatalf("the watermarks %v did not cover change %d (committed after the kill) within %v of the kill",
				wmStates(checkers), firstAfter, wmResumeLimit)
		}
		checkAlive()
		<-tick.C
	}
	resumed := time.Since(killed)
	atResume := changes.len()
	if err := waitWriter(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	wrote := time.Since(writeStart)
	n := changes.len()
	if n-atResume < wmAfterResume {
		t.Errorf("the writer committed %d changes after the watermarks resumed, want at least %d (%d in all in %v)", n-atResume, wmAfterResume, n, wrote.Round(time.Millisecond))
	}
	last, _ := changes.get(n - 1)

	// The end: every replica's watermark passes the last change, no key
	// holds a value a purge deletes, and the watermark is fresh.
	endKeys := []string{invalidate.WatermarkKey}
	for i := range n {
		endKeys = append(endKeys, wmKey(i))
	}
	endCheck := func() error {
		checkAlive()
		for _, addr := range replicas {
			vals, err := clients[addr].MGet(ctx, endKeys...).Result()
			if err != nil {
				return fmt.Errorf("redis %s: %w", addr, err)
			}
			now := time.Now()
			s, _ := vals[0].(string)
			wm, err := invalidate.ParseWatermark(s)
			if err != nil {
				return fmt.Errorf("redis %s: %w", addr, err)
			}
			if wm.To < last.offset {
				return fmt.Errorf("redis %s: watermark %s, short of the last change's offset %d", addr, wm, last.offset)
			}
			for i, v := range vals[1:] {
				if v != nil {
					return fmt.Errorf("redis %s: %s holds %v after the writer stopped", addr, wmKey(i), v)
				}
			}
			if d := now.Sub(wm.CaughtUp); d < -time.Second || d > time.Second {
				return fmt.Errorf("redis %s: watermark %s caught up %v ago, want within 1 s", addr, wm, d)
			}
		}
		// And each checker saw every change's key gone: its last check
		// may predate the last purges.
		for _, c := range checkers {
			if s := c.summary(); len(s.open) > 0 {
				return fmt.Errorf("checker of %s: %d changes not seen purged yet: %v", c.addr, len(s.open), s.open[:min(len(s.open), 20)])
			}
		}
		return nil
	}
	// Not Eventually: what the checkers saw is reported either way.
	endStart := time.Now()
	for err := endCheck(); err != nil; err = endCheck() {
		if time.Since(endStart) > 5*time.Second {
			t.Errorf("5 s after the writer stopped: %v", err)
			break
		}
		<-tick.C
	}
	settled := time.Since(endStart)
	stopCheckers()

	rejoins, err := metricAt(purger.httpAddr, "flashsync_purger_replica_rejoins_total")
	if err != nil && !errors.Is(err, errNoSample) {
		t.Fatal(err)
	}
	if rejoins != 0 {
		t.Errorf("the purger flushed replicas %v times: no replica restarted or missed a purge", rejoins)
	}
	replayed := 0 // changes the next canal replayed that every watermark had covered
	for i := range n {
		if ch, _ := changes.get(i); ch.offset > ckpt && ch.offset <= wmAtKill {
			replayed++
		}
	}
	var checks, violations, regressions, maxOpen int
	var lags []time.Duration
	var maxStale time.Duration
	for _, c := range checkers {
		s := c.summary()
		if s.err != nil {
			t.Errorf("checker of %s: %v", c.addr, s.err)
		}
		if s.violations > 0 {
			t.Errorf("redis %s: %d checks saw the watermark claim a change whose purge was not applied; first: %s",
				c.addr, s.violations, strings.Join(s.firstViolations, "; "))
		}
		if s.regressions > 0 {
			t.Errorf("redis %s: the watermark went backwards %d times (rejoins %v); first: %s",
				c.addr, s.regressions, rejoins, strings.Join(s.firstRegressions, "; "))
		}
		if len(s.open) > 0 {
			t.Errorf("redis %s: %d changes never seen purged: %v", c.addr, len(s.open), s.open[:min(len(s.open), 20)])
		}
		if s.checks == 0 {
			t.Errorf("redis %s: no check ran", c.addr)
		}
		checks += s.checks
		violations += s.violations
		regressions += s.regressions
		lags = append(lags, s.lags...)
		maxStale = max(maxStale, s.maxStaleness)
		maxOpen = max(maxOpen, s.maxOpen)
	}
	slices.Sort(lags)
	pct := func(p float64) time.Duration {
		if len(lags) == 0 {
			return 0
		}
		return lags[min(len(lags)-1, int(p*float64(len(lags))))].Round(100 * time.Microsecond)
	}
	how := "restarted"
	if ha {
		how = fmt.Sprintf("%s took the lease in %v", standby.name, leaseTakeover.Round(time.Millisecond))
	}
	t.Logf("watermark failover: %d changes in %v (%.0f/s), %s SIGKILLed after %d, %s; watermarks resumed %v after the kill (change %d covered); "+
		"checkpoint %d bytes behind the watermark at the kill: %d covered changes replayed",
		n, wrote.Round(time.Millisecond), float64(n)/wrote.Seconds(), active.name, atKill, how, resumed.Round(time.Millisecond), firstAfter,
		wmAtKill-ckpt, replayed)
	t.Logf("watermark failover: %d checks (MGET of the watermark and the keys of open changes, %d at most) on %d replicas, %d claims of an unapplied change, %d regressions, %v rejoins; "+
		"change to watermark lag p50 %v, p99 %v, max %v; largest staleness (now minus caught-up) %v; settled %v after the writer stopped; test %v",
		checks, maxOpen, len(replicas), violations, regressions, rejoins, pct(0.5), pct(0.99), pct(1), maxStale.Round(time.Millisecond),
		settled.Round(time.Millisecond), time.Since(testStart).Round(100*time.Millisecond))

	for _, p := range append(slices.Clone(canals), purger) {
		if p == down {
			continue
		}
		if err := p.stop(syscall.SIGTERM, 15*time.Second); err != nil {
			t.Errorf("%s: %v", p.name, err)
		}
	}
}

// wmChange is one change of the writer: the binlog's end read right after
// the commit returned (every event of the change ends at or before it),
// and when it returned.
type wmChange struct {
	offset    uint64
	committed time.Time
}

// wmChangeLog is the writer's changes, in order, read by the checkers.
type wmChangeLog struct {
	mu      sync.Mutex
	changes []wmChange
}

func (l *wmChangeLog) add(c wmChange) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.changes = append(l.changes, c)
}

func (l *wmChangeLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.changes)
}

func (l *wmChangeLog) get(i int) (wmChange, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if i < 0 || i >= len(l.changes) {
		return wmChange{}, false
	}
	return l.changes[i], true
}

// wmKey is the key of the row change i updates, row i+1: each change has a
// row of its own, so a purge that is never applied leaves its value there
// for good, as it would a reader's cached value, rather than until the
// row's next change.
func wmKey(i int) string { return "item:" + strconv.Itoa(i+1) }

// wmWrite is the writer: change i updates row i+1 once it has SET the
// row's key to "pre:i" on every replica (a value only the purge of change i
// deletes), and records the binlog's end after the commit. It stops after
// wmChangesMax changes, wmWriteLimit after start, or when ctx ends.
func wmWrite(ctx context.Context, conn *client.Conn, db string, replicas []string, clients map[string]*redis.Client, log *wmChangeLog, start time.Time) error {
	tick := time.NewTicker(wmPace)
	defer tick.Stop()
	for i := range wmChangesMax {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if time.Since(start) > wmWriteLimit {
			return nil
		}
		row := i + 1
		key, val := wmKey(i), "pre:"+strconv.Itoa(i)
		for _, addr := range replicas {
			if err := clients[addr].Set(ctx, key, val, 0).Err(); err != nil {
				return fmt.Errorf("change %d: redis %s SET %s: %w", i, addr, key, err)
			}
		}
		if _, err := conn.Execute("UPDATE "+db+".item SET version = version + 1 WHERE id = ?", row); err != nil {
			return fmt.Errorf("change %d: update row %d: %w", i, row, err)
		}
		committed := time.Now()
		off, err := wmBinlogEnd(conn)
		if err != nil {
			return fmt.Errorf("change %d: %w", i, err)
		}
		log.add(wmChange{offset: off, committed: committed})
	}
	return nil
}

// wmBinlogEnd reads SHOW MASTER STATUS as an offset (invalidate.BinlogOffset).
func wmBinlogEnd(conn *client.Conn) (uint64, error) {
	r, err := conn.Execute("SHOW MASTER STATUS")
	if err != nil {
		return 0, fmt.Errorf("show master status: %w", err)
	}
	if r.RowNumber() == 0 {
		return 0, errors.New("show master status: no binlog")
	}
	file, _ := r.GetString(0, 0)
	pos, err := r.GetUint(0, 1)
	if err != nil {
		return 0, fmt.Errorf("show master status: %w", err)
	}
	off, ok := invalidate.BinlogOffset(file, uint32(pos))
	if !ok {
		return 0, fmt.Errorf("show master status: binlog file %q has no sequence number", file)
	}
	return off, nil
}

// wmChecker polls one replica with one MGET of its watermark and the keys
// of the open changes (recorded by the writer, and not yet seen gone from
// this replica; the oldest wmCheckKeys of them), so each check sees the
// watermark and the keys at one instant. A change that is open for good
// (its purge lost) is checked for good.
//
// A violation is a check where a key holds "pre:i" while the watermark
// claims change i. The writer SET "pre:i" before committing change i, and
// only the purge of change i (derived from the binlog after the commit)
// deletes it, so while the key holds it that purge has not been applied to
// this replica. The watermark claims change i when:
//
//   - To >= o_i. o_i is the binlog's end read after the commit returned: at
//     or after the end of change i's last event (the XID event's end offset,
//     which the canal names the commit by), and possibly past other events
//     (the server is shared; the HA lease and checkpoint are written to it
//     too). To is the end offset of the last event of a completed range, so
//     To >= o_i implies every event of change i is inside the claimed
//     coverage. The converse does not hold: a To between the change's end
//     and o_i claims it but is not caught. So the check misses some claims
//     and never reports a false one. Offsets are file sequence << 32 | pos,
//     so they compare across a binlog rotation.
//   - CaughtUp >= the time the commit returned: the watermark says every
//     commit written before CaughtUp is at or before To, and change i was
//     written before its UPDATE returned. The canal stamps CaughtUp with
//     the time it started reading the binlog's end, on this machine's
//     clock. This is the bound readers rely on (max_staleness).
//
// A change enters the open set only once the writer recorded it, after its
// SET: a key seen absent then was purged (nothing else deletes it here;
// a rejoin flush would, and is counted apart).
type wmChecker struct {
	addr    string
	client  *redis.Client
	changes *wmChangeLog
	done    chan struct{}

	mu sync.Mutex
	wmCheckerState
}

type wmCheckerState struct {
	checks           int
	last             invalidate.Watermark
	seen             bool
	open             []int // changes whose key was not seen gone, in order
	known            int   // changes [0, known) were added to open
	maxOpen          int   // the most keys one check read
	covered          int   // changes [0, covered) are at or before last.To
	lags             []time.Duration
	maxStaleness     time.Duration
	violations       int
	firstViolations  []string
	regressions      int
	firstRegressions []string
	err              error // a Redis error or a value no one should write
}

func startWMChecker(ctx context.Context, addr string, c *redis.Client, changes *wmChangeLog) *wmChecker {
	ch := &wmChecker{addr: addr, client: c, changes: changes, done: make(chan struct{})}
	go ch.run(ctx)
	return ch
}

func (c *wmChecker) run(ctx context.Context) {
	defer close(c.done)
	tick := time.NewTicker(wmCheckEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		ids := c.next()
		keys := []string{invalidate.WatermarkKey}
		for _, i := range ids {
			keys = append(keys, wmKey(i))
		}
		vals, err := c.client.MGet(ctx, keys...).Result()
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		if err == nil {
			err = c.check(now, ids, vals)
		}
		if err != nil {
			c.mu.Lock()
			c.err = fmt.Errorf("check %d: %w", c.checks+1, err)
			c.mu.Unlock()
			return
		}
	}
}

// next opens the changes recorded since the last check and returns the
// oldest open ones, the keys of the next check.
func (c *wmChecker) next() []int {
	n := c.changes.len()
	c.mu.Lock()
	defer c.mu.Unlock()
	for ; c.known < n; c.known++ {
		c.open = append(c.open, c.known)
	}
	ids := slices.Clone(c.open[:min(len(c.open), wmCheckKeys)])
	c.maxOpen = max(c.maxOpen, len(ids))
	return ids
}

// check judges one MGET of the watermark and the keys of changes ids.
func (c *wmChecker) check(now time.Time, ids []int, vals []any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.checks++
	s, ok := vals[0].(string)
	if !ok {
		return fmt.Errorf("no watermark (%v)", vals[0])
	}
	wm, err := invalidate.ParseWatermark(s)
	if err != nil {
		return err
	}
	note := func(list *[]string, format string, args ...any) {
		if len(*list) < 5 {
			*list = append(*list, fmt.Sprintf(format, args...))
		}
	}
	gone := map[int]bool{}
	for k, v := range vals[1:] {
		i := ids[k]
		if v == nil {
			gone[i] = true
			continue
		}
		if want := "pre:" + strconv.Itoa(i); v != want {
			return fmt.Errorf("%s holds %v, want %s or nothing", wmKey(i), v, want)
		}
		ch, _ := c.changes.get(i) // recorded: it was opened
		if wm.To >= ch.offset {
			c.violations++
			note(&c.firstViolations, "watermark %s is at or past change %d's offset %d while %s holds pre:%d", wm, i, ch.offset, wmKey(i), i)
		} else if !wm.CaughtUp.IsZero() && !wm.CaughtUp.Before(ch.committed) {
			c.violations++
			note(&c.firstViolations, "watermark %s caught up at %s, not before change %d returned (%s), while %s holds pre:%d",
				wm, wm.CaughtUp.Format(time.StampMicro), i, ch.committed.Format(time.StampMicro), wmKey(i), i)
		}
	}
	c.open = slices.DeleteFunc(c.open, func(i int) bool { return gone[i] })
	if c.seen && (wm.To < c.last.To || wm.CaughtUp.Before(c.last.CaughtUp)) {
		c.regressions++
		note(&c.firstRegressions, "%s after %s", wm, c.last)
	}
	c.last, c.seen = wm, true
	for {
		ch, known := c.changes.get(c.covered)
		if !known || ch.offset > wm.To {
			break
		}
		c.lags = append(c.lags, now.Sub(ch.committed))
		c.covered++
	}
	if !wm.CaughtUp.IsZero() {
		c.maxStaleness = max(c.maxStaleness, now.Sub(wm.CaughtUp))
	}
	return nil
}

func (c *wmChecker) summary() wmCheckerState {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.wmCheckerState
	s.lags = slices.Clone(s.lags)
	s.open = slices.Clone(s.open)
	return s
}

// wmLowest is the lowest watermark To the checkers saw last (0 if one has
// not seen any).
func wmLowest(cs []*wmChecker) uint64 {
	lowest := uint64(1<<64 - 1)
	for _, c := range cs {
		c.mu.Lock()
		to, seen := c.last.To, c.seen
		c.mu.Unlock()
		if !seen {
			return 0
		}
		lowest = min(lowest, to)
	}
	return lowest
}

// wmCoverAll reports whether every checker saw changes [0, n) covered.
func wmCoverAll(cs []*wmChecker, n int) bool {
	for _, c := range cs {
		c.mu.Lock()
		covered := c.covered
		c.mu.Unlock()
		if covered < n {
			return false
		}
	}
	return true
}

func wmStates(cs []*wmChecker) string {
	var s []string
	for _, c := range cs {
		c.mu.Lock()
		s = append(s, fmt.Sprintf("%s: %s (changes covered %d, checks %d, err %v)", c.addr, c.last, c.covered, c.checks, c.err))
		c.mu.Unlock()
	}
	return strings.Join(s, "; ")
}
