//go:build linux

package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
)

// TestSyncStormHA syncs a table (item → items:{id}, the row as JSON) with
// two HA canals and a purger while a writer commits over 500 row changes a
// second and the active canal is SIGKILLed again and again, so the standby
// takes over mid-stream and replays from the checkpoint. Readers read the
// synced keys from every replica without pause. No read may return a
// version older than one any reader saw before from that replica, a
// version must always come with the same value, and every replica must end
// equal to MySQL.
func TestSyncStormHA(t *testing.T) {
	const (
		rows      = 400 // few enough that readers read each key many times a second
		perTx     = 25
		txPerSec  = 32 // 800 row changes/s asked; the log says what the machine made
		stormFor  = 20 * time.Second
		kills     = 4
		readers   = 8
		leaseTTL  = "1s"
		haName    = "syncstorm"
		syncLimit = 60 * time.Second
	)
	db := stacktest.NewDatabase(t)
	haDB := stacktest.NewDatabase(t)
	conn := stacktest.MySQL(t)
	stacktest.Exec(t, conn, "CREATE TABLE "+db+".item (id BIGINT PRIMARY KEY, version BIGINT NOT NULL, name VARCHAR(50))")
	for from := 1; from <= rows; from += 1000 {
		var values []string
		for id := from; id < from+1000 && id <= rows; id++ {
			values = append(values, fmt.Sprintf("(%d, 0, 'item %d')", id, id))
		}
		stacktest.Exec(t, conn, "INSERT INTO "+db+".item (id, version, name) VALUES "+strings.Join(values, ", "))
	}
	var groups [][]string
	var clients []*redis.Client // every replica, in group order
	for range nGroups {
		var addrs []string
		for range 2 {
			s := stacktest.StartRedis(t)
			c := redis.NewClient(&redis.Options{Addr: s.Addr(), PoolSize: 2 * readers})
			t.Cleanup(func() { c.Close() })
			clients = append(clients, c)
			addrs = append(addrs, s.Addr())
		}
		groups = append(groups, addrs)
	}
	replicaGroup := func(i int) int { return i / 2 }
	nsqd := stacktest.StartNSQD(t)
	logs := &stormLogs{dir: t.TempDir()}
	t.Cleanup(func() {
		if t.Failed() {
			logs.dump(t)
		}
	})
	config := func(name string, canal bool) string {
		c := Config{
			MySQLAddr: stacktest.MySQLAddr(), ServerID: newServerID(), PositionFile: filepath.Join(t.TempDir(), "position-unused"),
			DB: db, NSQDTCP: nsqd.TCPAddr(), NSQDHTTP: nsqd.HTTPAddr(), HTTPAddr: fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t)),
			Groups: groups, Keys: []string{"item:{id}"},
		}
		toml := c.TOML() + fmt.Sprintf("\n[[rule]]\ntable = %q\nroute_by = \"id\"\n[[rule.sync]]\nkey = \"items:{id}\"\n", db+".item")
		if canal {
			toml = withHAKeys(t, toml, haName, haDB, leaseTTL)
		}
		return writeFile(t, name+".toml", toml)
	}
	canals := []*stormProc{{name: "canal-a", role: "canal"}, {name: "canal-b", role: "canal"}}
	for _, c := range canals {
		c.cfgPath = config(c.name, true)
		c.httpAddr = httpAddrOf(t, c.cfgPath)
	}
	purger := &stormProc{name: "purger", role: "purger"}
	purger.cfgPath = config(purger.name, false)
	purger.httpAddr = httpAddrOf(t, purger.cfgPath)
	leaseHolder := func() (int, error) {
		r, err := conn.Execute("SELECT holder FROM "+haDB+".canal_lease WHERE name = ?", haName)
		if err != nil {
			return 0, err
		}
		if r.RowNumber() == 0 {
			return 0, errors.New("no lease row yet")
		}
		holder, _ := r.GetString(0, 0)
		return holderPID(holder), nil
	}
	startHA(t, canals, purger, conn, haDB, haName, logs)

	// Readers: each read is an MGET of a key and its version, one state.
	// seen holds, per replica and key, the newest version any reader saw,
	// its value and when that read returned; a read that started after
	// that and returns an older version is a regression. (Reads that
	// overlap it are not ordered against it.)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	type state struct {
		version, value string
		returned       time.Time
	}
	var (
		mu          sync.Mutex
		seen        = make([]map[int]state, len(clients))
		regressions []string
		reads       atomic.Int64
	)
	for i := range seen {
		seen[i] = map[int]state{}
	}
	var wg sync.WaitGroup
	for range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				id := 1 + rand.IntN(rows)
				i := 2*groupOf(id) + rand.IntN(2)
				key := fmt.Sprintf("items:%d", id)
				started := time.Now()
				v, err := clients[i].MGet(ctx, key, invalidate.SyncVersionPrefix+key).Result()
				if err != nil {
					continue
				}
				returned := time.Now()
				val, _ := v[0].(string)
				ver, _ := v[1].(string)
				reads.Add(1)
				mu.Lock()
				prev := seen[i][id]
				switch {
				case ver < prev.version && started.After(prev.returned):
					regressions = append(regressions, fmt.Sprintf("%s on replica %d: version %s (%q) read after a read of %s (%q) returned", key, i, ver, val, prev.version, prev.value))
				case ver == prev.version && ver != "" && val != prev.value:
					regressions = append(regressions, fmt.Sprintf("%s on replica %d: version %s held %q, now %q", key, i, ver, prev.value, val))
				case ver == prev.version && returned.Before(prev.returned):
					seen[i][id] = state{ver, val, returned}
				case ver > prev.version:
					seen[i][id] = state{ver, val, returned}
				}
				mu.Unlock()
			}
		}()
	}

	// The writer: txPerSec transactions a second, each adding 1 to the
	// version of perTx consecutive rows, for stormFor.
	writerConn := stacktest.MySQL(t)
	var committed atomic.Int64
	writerErr := make(chan error, 1)
	stormStart := time.Now()
	go func() {
		writerErr <- func() error {
			lim := rate.NewLimiter(txPerSec, 1)
			blocks := rows / perTx
			for i := 0; time.Since(stormStart) < stormFor; i++ {
				if err := lim.Wait(ctx); err != nil {
					return err
				}
				b := rand.IntN(blocks)
				q := fmt.Sprintf("UPDATE %s.item SET version = version + 1 WHERE id BETWEEN %d AND %d", db, b*perTx+1, (b+1)*perTx)
				if _, err := writerConn.Execute(q); err != nil {
					return fmt.Errorf("transaction %d: %w", i, err)
				}
				committed.Add(1)
			}
			return nil
		}()
	}()

	// Kills: the lease holder, every stormFor/(kills+1); the killed canal
	// comes back as the standby.
	for k := range kills {
		time.Sleep(time.Until(stormStart.Add(time.Duration(k+1) * stormFor / (kills + 1))))
		pid, err := leaseHolder()
		if err != nil {
			t.Fatal(err)
		}
		var active, standby *stormProc
		for i, c := range canals {
			if c.pid() == pid {
				active, standby = c, canals[1-i]
			}
		}
		if active == nil {
			t.Fatalf("kill %d: the lease holder pid %d is neither canal", k+1, pid)
		}
		active.kill(t)
		stacktest.Eventually(t, 10*time.Second, func() error {
			if err := standby.alive(); err != nil {
				t.Fatal(err)
			}
			if pid, err := leaseHolder(); err != nil || pid != standby.pid() {
				return fmt.Errorf("lease held by pid %d (%v), want %s", pid, err, standby.name)
			}
			return nil
		})
		t.Logf("kill %d: %s at %d transactions; %s took over", k+1, active.name, committed.Load(), standby.name)
		active.start(t, logs)
		active.waitStandby(t)
	}
	if err := <-writerErr; err != nil {
		t.Fatalf("writer: %v", err)
	}
	stormTook := time.Since(stormStart)

	// Every replica ends equal to MySQL: items:{id} is the row's JSON.
	want := map[int]string{}
	res, err := conn.Execute("SELECT id, version, name FROM " + db + ".item")
	if err != nil {
		t.Fatal(err)
	}
	for r := range res.RowNumber() {
		id, _ := res.GetInt(r, 0)
		version, _ := res.GetInt(r, 1)
		name, _ := res.GetString(r, 2)
		if version > 0 {
			want[int(id)] = fmt.Sprintf(`{"id":%d,"version":%d,"name":%q}`, id, version, name)
		}
	}
	var wrong []string
	stacktest.Eventually(t, syncLimit, func() error {
		if err := purger.alive(); err != nil {
			t.Fatal(err)
		}
		wrong = wrong[:0]
		for i, c := range clients {
			var ids []int
			for id := range want {
				if groupOf(id) == replicaGroup(i) {
					ids = append(ids, id)
				}
			}
			slices.Sort(ids)
			keys := make([]string, len(ids))
			for j, id := range ids {
				keys[j] = fmt.Sprintf("items:%d", id)
			}
			vals, err := c.MGet(ctx, keys...).Result()
			if err != nil {
				return err
			}
			for j, v := range vals {
				if s, _ := v.(string); s != want[ids[j]] {
					wrong = append(wrong, fmt.Sprintf("replica %d %s = %q, want %q", i, keys[j], s, want[ids[j]]))
				}
			}
		}
		if len(wrong) > 0 {
			return fmt.Errorf("%d synced keys differ from MySQL; first: %s", len(wrong), wrong[0])
		}
		return nil
	})
	stop()
	wg.Wait()
	applied, _ := metricAt(purger.httpAddr, `flashsync_purger_sync_writes_total{group="g0",replica="`+groups[0][0]+`",result="applied"}`)
	refused, _ := (&env{cfg: Config{HTTPAddr: purger.httpAddr}}).metric("flashsync_purger_sync_writes_total", `result="older"`)
	mu.Lock()
	defer mu.Unlock()
	t.Logf("sync storm: %d transactions, %d row changes in %v (%.0f/s), %d kills, %d reads, %d rows synced; sync writes applied on %s %v, refused as older (all replicas) %v",
		committed.Load(), committed.Load()*perTx, stormTook.Round(time.Millisecond), float64(committed.Load()*perTx)/stormTook.Seconds(), kills, reads.Load(), len(want), groups[0][0], applied, refused)
	if len(regressions) > 0 {
		t.Errorf("%d reads went back in time; first %d:\n%s", len(regressions), min(10, len(regressions)), strings.Join(regressions[:min(10, len(regressions))], "\n"))
	}
	// Each takeover replays from the checkpoint, which trails what the
	// killed canal had published: those writes come again, older than what
	// the replicas hold, and must have been refused.
	if refused == 0 {
		t.Error("no sync write was refused as older: the takeovers' replays went unfenced, or did not replay")
	}
	for _, p := range append(slices.Clone(canals), purger) {
		if err := p.stop(syscall.SIGTERM, 15*time.Second); err != nil {
			t.Errorf("%s: %v", p.name, err)
		}
	}
}
