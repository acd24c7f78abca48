package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/bench/internal/loopback"
)

// pageKey and syncKey name a row's keys in the run's own namespace.
func pageKey(id string) string { return db + ":item:page:" + id }
func syncKey(id string) string { return db + ":item:json:" + id }

// versionKey is the purger's companion key of a synced key (docs/sync.md).
func versionKey(key string) string { return "flashsync:v:" + key }

// throughputDelete times one bulk UPDATE from its commit to every key
// published, then to every key deleted on both replicas of its group. It
// returns the row events/s through every replica.
func throughputDelete(ctx context.Context, f flags, conn *client.Conn, fs *flashsync, base float64) (float64, error) {
	keys := float64(2 * f.rows)
	m := fs.metrics
	pub0, del0 := m.sum("flashsync_invalidate_keys_published_total"), m.sum("flashsync_purger_keys_deleted_total")
	if _, err := conn.Execute(fmt.Sprintf("UPDATE %s.item SET price = price + 1 WHERE id <= %d", db, f.rows)); err != nil {
		return 0, err
	}
	committed := time.Now()
	if err := loopback.WaitFor(ctx, 2*time.Minute, 5*time.Millisecond, func() bool { return m.sum("flashsync_invalidate_keys_published_total")-pub0 >= keys }); err != nil {
		return 0, fmt.Errorf("publish: %w", err)
	}
	published := time.Since(committed)
	if err := loopback.WaitFor(ctx, 2*time.Minute, 5*time.Millisecond, func() bool { return m.sum("flashsync_purger_keys_deleted_total")-del0 >= 2*keys }); err != nil {
		return 0, fmt.Errorf("purge: %w", err)
	}
	purged := time.Since(committed)
	rp := float64(f.rows) / published.Seconds()
	fmt.Printf("delete: parsed+routed+published:        %9.0f row events/s (%.2fx baseline), last key published %v after commit\n", rp, rp/base, published.Round(time.Millisecond))
	fmt.Printf("delete: delivered to Redis:             %9.0f invalidations/s (%0.f keys x 2 replicas in %v), %0.f row events/s end to end\n",
		2*keys/purged.Seconds(), keys, purged.Round(time.Millisecond), float64(f.rows)/purged.Seconds())
	return float64(f.rows) / purged.Seconds(), nil
}

// throughputSync times the same bulk UPDATE through the sync rule: from its
// commit to every row's write published, then to every write applied on
// every replica of the row's group (the purger's applied writes summed
// reach rows x replicas). It then reads every row back from every replica:
// each must hold the new price and a version on exactly perGroup replicas.
func throughputSync(ctx context.Context, f flags, conn *client.Conn, fs *flashsync, base float64, replicas []*redis.Client, perGroup int) (float64, error) {
	ids := make([]int, f.rows)
	for i := range ids {
		ids[i] = i + 1
	}
	// Left by a run that died before its cleanup; the TTL would end them too.
	if err := unlinkSynced(ctx, replicas, ids, syncKey); err != nil {
		return 0, err
	}
	defer unlinkSynced(context.Background(), replicas, ids, syncKey)

	m := fs.metrics
	const applied, older = `result="applied"`, `result="older"`
	mem0, err := usedMemory(ctx, replicas)
	if err != nil {
		return 0, err
	}
	pub0 := m.sum("flashsync_invalidate_sync_writes_published_total")
	app0, old0 := m.sumWhere("flashsync_purger_sync_writes_total", applied), m.sumWhere("flashsync_purger_sync_writes_total", older)
	if _, err := conn.Execute(fmt.Sprintf("UPDATE %s.item SET price = price + 1 WHERE id <= %d", db, f.rows)); err != nil {
		return 0, err
	}
	committed := time.Now()
	writes := float64(f.rows)
	if err := loopback.WaitFor(ctx, 2*time.Minute, 5*time.Millisecond, func() bool { return m.sum("flashsync_invalidate_sync_writes_published_total")-pub0 >= writes }); err != nil {
		return 0, fmt.Errorf("publish: %w", err)
	}
	published := time.Since(committed)
	want := writes * float64(perGroup)
	if err := loopback.WaitFor(ctx, 2*time.Minute, 5*time.Millisecond, func() bool { return m.sumWhere("flashsync_purger_sync_writes_total", applied)-app0 >= want }); err != nil {
		return 0, fmt.Errorf("sync writes applied: %w (%.0f of %.0f)", err, m.sumWhere("flashsync_purger_sync_writes_total", applied)-app0, want)
	}
	synced := time.Since(committed)
	mem1, err := usedMemory(ctx, replicas)
	if err != nil {
		return 0, err
	}
	gotApplied := m.sumWhere("flashsync_purger_sync_writes_total", applied) - app0
	gotOlder := m.sumWhere("flashsync_purger_sync_writes_total", older) - old0
	// Redis's own time in scripts (sync.lua and the watermark's), read
	// before the read-back adds its MGETs; the replicas are this child's.
	var scriptUsec, scriptCalls float64
	for _, rc := range replicas {
		for _, cmd := range []string{"evalsha", "eval"} {
			u, c, err := commandStat(ctx, rc, cmd)
			if err != nil {
				return 0, err
			}
			scriptUsec, scriptCalls = scriptUsec+u, scriptCalls+c
		}
	}

	r, err := conn.Execute(fmt.Sprintf("SELECT price FROM %s.item WHERE id = 1", db))
	if err != nil {
		return 0, err
	}
	price, err := r.GetString(0, 0)
	if err != nil {
		return 0, err
	}
	holders := make([]int, f.rows+1)
	for _, rc := range replicas {
		ok, err := matching(ctx, rc, ids, syncKey, true, price)
		if err != nil {
			return 0, fmt.Errorf("read back %s: %w", rc.Options().Addr, err)
		}
		for i, id := range ids {
			if ok[i] {
				holders[id]++
			}
		}
	}
	var wrong []string
	for _, id := range ids {
		if holders[id] != perGroup {
			wrong = append(wrong, fmt.Sprintf("%d on %d", id, holders[id]))
		}
	}
	if len(wrong) > 0 {
		return 0, fmt.Errorf("%d of %d rows are not on %d replicas with price %s and a version, e.g. %s", len(wrong), f.rows, perGroup, price, strings.Join(wrong[:min(5, len(wrong))], ", "))
	}

	rp := float64(f.rows) / published.Seconds()
	fmt.Printf("sync:   parsed+routed+published:        %9.0f row events/s (%.2fx baseline), last write published %v after commit\n", rp, rp/base, published.Round(time.Millisecond))
	fmt.Printf("sync:   written to Redis:               %9.0f sync writes/s (%.0f rows x %d replicas in %v: %.0f applied, %.0f older), %.0f row events/s end to end; read back: every row on %d replicas\n",
		want/synced.Seconds(), writes, perGroup, synced.Round(time.Millisecond), gotApplied, gotOlder, float64(f.rows)/synced.Seconds(), perGroup)
	fmt.Printf("sync:   Redis time in scripts, all replicas: %.2f s in %.0f calls, %.1f µs per applied write\n", scriptUsec/1e6, scriptCalls, scriptUsec/gotApplied)
	fmt.Printf("sync:   replicas' used_memory grew by %.1f MB\n", float64(mem1-mem0)/1e6)
	return float64(f.rows) / synced.Seconds(), nil
}

// commandStat is a command's total µs and calls from INFO commandstats.
func commandStat(ctx context.Context, rc *redis.Client, cmd string) (usec, calls float64, err error) {
	info, err := rc.Info(ctx, "commandstats").Result()
	if err != nil {
		return 0, 0, fmt.Errorf("info commandstats %s: %w", rc.Options().Addr, err)
	}
	for _, line := range strings.Split(info, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_"+cmd+":")
		if !ok {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(kv, "=")
			n, _ := strconv.ParseFloat(v, 64)
			switch k {
			case "usec":
				usec = n
			case "calls":
				calls = n
			}
		}
	}
	return usec, calls, nil
}

// matching reports for each id whether rc holds, at key(id), a JSON object
// whose price is price (and, if versioned, the key's version key).
func matching(ctx context.Context, rc *redis.Client, ids []int, key func(string) string, versioned bool, price string) ([]bool, error) {
	const batch = 1000
	ok := make([]bool, len(ids))
	for lo := 0; lo < len(ids); lo += batch {
		hi := min(lo+batch, len(ids))
		names := make([]string, 0, 2*(hi-lo))
		for _, id := range ids[lo:hi] {
			names = append(names, key(strconv.Itoa(id)))
		}
		if versioned {
			for _, k := range names[:hi-lo] {
				names = append(names, versionKey(k))
			}
		}
		vals, err := rc.MGet(ctx, names...).Result()
		if err != nil {
			return nil, err
		}
		for i := range hi - lo {
			s, _ := vals[i].(string)
			var row struct {
				Price any `json:"price"`
			}
			if s == "" || json.Unmarshal([]byte(s), &row) != nil || fmt.Sprint(row.Price) != price {
				continue
			}
			if versioned && vals[hi-lo+i] == nil {
				continue
			}
			ok[lo+i] = true
		}
	}
	return ok, nil
}

// unlinkSynced removes the run's synced keys and their versions.
func unlinkSynced(ctx context.Context, replicas []*redis.Client, ids []int, key func(string) string) error {
	for _, rc := range replicas {
		for lo := 0; lo < len(ids); lo += 1000 {
			names := make([]string, 0, 2000)
			for _, id := range ids[lo:min(lo+1000, len(ids))] {
				k := key(strconv.Itoa(id))
				names = append(names, k, versionKey(k))
			}
			if err := rc.Unlink(ctx, names...).Err(); err != nil {
				return fmt.Errorf("unlink on %s: %w", rc.Options().Addr, err)
			}
		}
	}
	return nil
}

// transferPeer runs go-mysql-transfer's Redis sync (github.com/wj596/
// go-mysql-transfer) on the same bulk UPDATE if its binary is on PATH:
// rows as JSON strings on one Redis (it writes one copy of each row, where
// flashsync writes one per replica of the group). Done when every row holds
// the new price there, read back until then.
func transferPeer(ctx context.Context, f flags, conn *client.Conn, rc *redis.Client) error {
	bin := f.transfer
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("go-mysql-transfer"); err != nil {
			fmt.Println("peer go-mysql-transfer: skipped (no -transfer and no go-mysql-transfer on PATH; docs/BENCHMARKS.md says how to build it)")
			return nil
		}
	}
	// go-mysql-transfer refuses an empty password: a user of its own.
	for _, q := range []string{
		"CREATE USER IF NOT EXISTS 'fsbench_transfer'@'127.0.0.1' IDENTIFIED BY 'fsbench'",
		"GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'fsbench_transfer'@'127.0.0.1'",
	} {
		if _, err := conn.Execute(q); err != nil {
			return fmt.Errorf("transfer's user: %s: %w", q, err)
		}
	}
	tmp, err := os.MkdirTemp("", "bulkupdate-transfer-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	key := func(id string) string { return db + ":gmt:" + id }
	cfg := fmt.Sprintf(`addr: %s
user: fsbench_transfer
pass: fsbench
charset: utf8mb4
slave_id: 4244
flavor: mariadb
data_dir: %s
target: redis
redis_addrs: %s
rule:
  - schema: %s
    table: item
    value_encoder: json
    redis_structure: string
    redis_key_prefix: "%s"
`, f.mysql, tmp, rc.Options().Addr, db, key(""))
	path := filepath.Join(tmp, "app.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return err
	}
	log, err := os.Create(filepath.Join(tmp, "transfer.log"))
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(bin, "-config", path)
	cmd.Dir, cmd.Stdout, cmd.Stderr = tmp, log, log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	ids := make([]int, f.rows)
	for i := range ids {
		ids[i] = i + 1
	}
	defer unlinkSynced(context.Background(), []*redis.Client{rc}, ids, key)

	// Ready once a change of row 1 arrives: it reads from the binlog's end.
	// One change per 200 ms, not one per poll.
	var changed time.Time
	probe := func() bool {
		if time.Since(changed) > 200*time.Millisecond {
			conn.Execute(fmt.Sprintf("UPDATE %s.item SET stock = stock + 1 WHERE id = 1", db))
			changed = time.Now()
		}
		n, _ := rc.Exists(ctx, key("1")).Result()
		return n == 1
	}
	if err := loopback.WaitFor(ctx, 30*time.Second, 5*time.Millisecond, probe); err != nil {
		out, _ := os.ReadFile(filepath.Join(tmp, "transfer.log"))
		return fmt.Errorf("no write of row 1 within 30 s: %w\n%s", err, out)
	}
	if _, err := conn.Execute(fmt.Sprintf("UPDATE %s.item SET price = price + 1 WHERE id <= %d", db, f.rows)); err != nil {
		return err
	}
	committed := time.Now()
	r, err := conn.Execute(fmt.Sprintf("SELECT price FROM %s.item WHERE id = 1", db))
	if err != nil {
		return err
	}
	price, err := r.GetString(0, 0)
	if err != nil {
		return err
	}
	pending := ids
	if err := loopback.WaitFor(ctx, 2*time.Minute, 5*time.Millisecond, func() bool {
		ok, err := matching(ctx, rc, pending, key, false, price)
		if err != nil {
			return false
		}
		left := pending[:0:0]
		for i, id := range pending {
			if !ok[i] {
				left = append(left, id)
			}
		}
		pending = left
		return len(pending) == 0
	}); err != nil {
		return fmt.Errorf("%d of %d rows not written: %w", len(pending), f.rows, err)
	}
	el := time.Since(committed)
	fmt.Printf("peer go-mysql-transfer (%s), 1 copy per row: %.0f row events/s end to end (%d rows in %v)\n", bin, float64(f.rows)/el.Seconds(), f.rows, el.Round(time.Millisecond))
	return nil
}

// throughputRefresh times the bulk UPDATE through the refresh_hot sync
// rule with one row in f.hotEvery held by the replicas of its group
// beforehand (a reader's fill): done when every write of every row on
// every replica of its group was applied or found cold. Then the hot rows
// must hold the new price on every replica of their group, and the cold
// ones no key and no version anywhere. It prints what the replicas' memory
// grew by, as throughputSync's callers can compare.
func throughputRefresh(ctx context.Context, f flags, conn *client.Conn, fs *flashsync, base float64, replicas []*redis.Client, groups [][]string) (float64, error) {
	var hot, cold []int
	for id := 1; id <= f.rows; id++ {
		if id%max(1, f.hotEvery) == 0 {
			hot = append(hot, id)
		} else {
			cold = append(cold, id)
		}
	}
	all := append(slices.Clone(hot), cold...)
	if err := unlinkSynced(ctx, replicas, all, syncKey); err != nil {
		return 0, err
	}
	defer unlinkSynced(context.Background(), replicas, all, syncKey)
	// Every replica of both groups holds the hot rows: a row's writes go to
	// its own group only, so the other group's copies stay as set.
	for _, rc := range replicas {
		pipe := rc.Pipeline()
		for _, id := range hot {
			pipe.Set(ctx, syncKey(strconv.Itoa(id)), `{"price":"filled"}`, 15*time.Minute)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return 0, fmt.Errorf("seed hot rows on %s: %w", rc.Options().Addr, err)
		}
	}
	mem0, err := usedMemory(ctx, replicas)
	if err != nil {
		return 0, err
	}
	m := fs.metrics
	count := func(result string) float64 {
		return m.sumWhere("flashsync_purger_sync_writes_total", `result="`+result+`"`)
	}
	app0, cold0 := count("applied"), count("cold")
	if _, err := conn.Execute(fmt.Sprintf("UPDATE %s.item SET price = price + 1 WHERE id <= %d", db, f.rows)); err != nil {
		return 0, err
	}
	committed := time.Now()
	want := float64(f.rows * len(groups[0]))
	if err := loopback.WaitFor(ctx, 2*time.Minute, 5*time.Millisecond, func() bool { return count("applied")-app0+count("cold")-cold0 >= want }); err != nil {
		return 0, fmt.Errorf("refresh writes: %w (%.0f applied, %.0f cold of %.0f)", err, count("applied")-app0, count("cold")-cold0, want)
	}
	done := time.Since(committed)
	applied, coldN := count("applied")-app0, count("cold")-cold0
	mem1, err := usedMemory(ctx, replicas)
	if err != nil {
		return 0, err
	}
	r, err := conn.Execute(fmt.Sprintf("SELECT price FROM %s.item WHERE id = 1", db))
	if err != nil {
		return 0, err
	}
	price, err := r.GetString(0, 0)
	if err != nil {
		return 0, err
	}
	perGroup := len(groups[0])
	holders := map[int]int{}
	for _, rc := range replicas {
		ok, err := matching(ctx, rc, hot, syncKey, true, price)
		if err != nil {
			return 0, err
		}
		for i, id := range hot {
			if ok[i] {
				holders[id]++
			}
		}
		for lo := 0; lo < len(cold); lo += 1000 {
			var names []string
			for _, id := range cold[lo:min(lo+1000, len(cold))] {
				k := syncKey(strconv.Itoa(id))
				names = append(names, k, versionKey(k))
			}
			if n, err := rc.Exists(ctx, names...).Result(); err != nil || n != 0 {
				return 0, fmt.Errorf("%s holds %d keys of cold rows (%v): a cold row was written", rc.Options().Addr, n, err)
			}
		}
	}
	for _, id := range hot {
		if holders[id] != perGroup {
			return 0, fmt.Errorf("hot row %d holds price %s on %d replicas, want %d", id, price, holders[id], perGroup)
		}
	}
	fmt.Printf("refresh: written to Redis:              %9.0f writes/s decided (%d rows x %d replicas in %v: %.0f applied, %.0f cold), %.0f row events/s end to end; hot rows refreshed on every replica, cold rows untouched\n",
		want/done.Seconds(), f.rows, perGroup, done.Round(time.Millisecond), applied, coldN, float64(f.rows)/done.Seconds())
	fmt.Printf("refresh: replicas' used_memory grew by %.1f MB (%d of %d rows hot)\n", float64(mem1-mem0)/1e6, len(hot), f.rows)
	return float64(f.rows) / done.Seconds(), nil
}

// usedMemory sums INFO memory's used_memory over the replicas.
func usedMemory(ctx context.Context, replicas []*redis.Client) (int64, error) {
	var total int64
	for _, rc := range replicas {
		info, err := rc.Info(ctx, "memory").Result()
		if err != nil {
			return 0, fmt.Errorf("info memory %s: %w", rc.Options().Addr, err)
		}
		for _, line := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				total += n
			}
		}
	}
	return total, nil
}
