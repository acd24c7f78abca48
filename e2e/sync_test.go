package e2e

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/cacheaside"
	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
)

// syncRule keeps <db>.t's rows in every replica of their group: the row
// as JSON and as a hash.
const syncRule = `
[[rule]]
table = %q
route_by = "id"
[[rule.sync]]
key = "t:json:{id}"
[[rule.sync]]
key = "t:h:{id}"
format = "hash"
columns = ["name", "price", "b"]
`

// syncState is a synced key in one replica: its value (JSON, or the hash
// flattened as field=value,...) and its version.
type syncState struct{ value, version string }

func readSyncState(ctx context.Context, c *redis.Client, key string) (syncState, error) {
	var s syncState
	typ, err := c.Type(ctx, key).Result()
	if err != nil {
		return s, err
	}
	switch typ {
	case "string":
		s.value = c.Get(ctx, key).Val()
	case "hash":
		h := c.HGetAll(ctx, key).Val()
		var parts []string
		for _, f := range []string{"name", "price", "b"} {
			if v, ok := h[f]; ok {
				parts = append(parts, f+"="+v)
			}
		}
		s.value = strings.Join(parts, ",")
	}
	s.version, _ = c.Get(ctx, invalidate.SyncVersionPrefix+key).Result()
	return s, nil
}

// TestSyncMode runs `flashsync all` with sync targets on real replicas and
// MariaDB: every change writes the row to every replica of its group (types
// rendered exactly, NULLs, a blob that is not UTF-8, unsigned integers
// above the signed range), a delete and a key change remove, and neither a
// redelivered older write (straight to NSQ) nor a replay of the binlog
// from an old checkpoint after SIGKILL takes any replica back in time:
// checked by a watcher that reads every replica throughout.
func TestSyncMode(t *testing.T) {
	e := newEnv(t)
	table := e.db + ".t"
	e.exec("CREATE TABLE " + table + " (id BIGINT UNSIGNED PRIMARY KEY, name VARCHAR(50), price DECIMAL(10,2), d DATE, at DATETIME(3), b BLOB, note TEXT, big BIGINT UNSIGNED, f DOUBLE)")
	e.cfgPath = writeFile(t, "flashsync.toml", e.cfg.TOML()+fmt.Sprintf(syncRule, table))
	p := e.start("flashsync #1")
	ctx := context.Background()

	// Rows 1 and 2 live in different groups, so a key change moves a value
	// across groups.
	id1, id2 := idsInGroup(0, 1, 1)[0], idsInGroup(1, 1, 1)[0]
	replicasOf := func(id int) []*redis.Client {
		var cs []*redis.Client
		for _, a := range e.replicas(groupOf(id)) {
			cs = append(cs, e.clients[a])
		}
		return cs
	}
	// want waits until every replica of key's group holds value ("" for
	// none), and returns the version they agree on.
	want := func(id int, key, value string) string {
		t.Helper()
		var version string
		stacktest.Eventually(t, purgeDeadline, func() error {
			version = ""
			for i, c := range replicasOf(id) {
				s, err := readSyncState(ctx, c, key)
				if err != nil {
					return err
				}
				if s.value != value {
					return fmt.Errorf("replica %d: %s = %q, want %q", i, key, s.value, value)
				}
				if i > 0 && s.version != version {
					return fmt.Errorf("replica %d: %s at version %q, replica 0 at %q", i, key, s.version, version)
				}
				version = s.version
			}
			return nil
		})
		return version
	}

	// The watcher: per replica and key, the version only grows, and a
	// version once seen always comes with the same value.
	watchCtx, stopWatch := context.WithCancel(ctx)
	var watchErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		type seen struct{ version, value string }
		last := map[string]seen{}
		byVersion := map[string]string{}
		for watchCtx.Err() == nil {
			for _, id := range []int{id1, id2} {
				for i, c := range replicasOf(id) {
					for _, key := range []string{fmt.Sprintf("t:json:%d", id), fmt.Sprintf("t:json:%d", id1)} {
						// One MGET: value and version as one state.
						v, err := c.MGet(watchCtx, key, invalidate.SyncVersionPrefix+key).Result()
						if err != nil {
							continue
						}
						val, _ := v[0].(string)
						ver, _ := v[1].(string)
						where := fmt.Sprintf("%s on %s", key, c.Options().Addr)
						if prev := last[where]; ver < prev.version {
							watchErr = fmt.Errorf("%s (replica %d) went back from version %s (%q) to %s (%q)", where, i, prev.version, prev.value, ver, val)
							return
						}
						if w, ok := byVersion[key+"@"+ver]; ok && ver != "" && w != val {
							watchErr = fmt.Errorf("%s: version %s held %q and now %q", where, ver, w, val)
							return
						}
						last[where] = seen{ver, val}
						if ver != "" {
							byVersion[key+"@"+ver] = val
						}
					}
				}
			}
			time.Sleep(time.Millisecond)
		}
	}()
	stopWatcher := func() {
		t.Helper()
		stopWatch()
		wg.Wait()
		if watchErr != nil {
			t.Fatal(watchErr)
		}
	}
	defer stopWatch()

	key1 := fmt.Sprintf("t:json:%d", id1)
	e.exec("INSERT INTO "+table+" VALUES (?, 'tea', 9.50, '2026-12-03', '2026-12-03 10:11:12.345', ?, NULL, 18446744073709551615, 1.5)", id1, []byte{0xff, 0x00, 'a'})
	v1 := want(id1, key1, fmt.Sprintf(`{"id":%d,"name":"tea","price":"9.50","d":"2026-12-03","at":"2026-12-03 10:11:12.345","b":{"$base64":"/wBh"},"note":null,"big":18446744073709551615,"f":1.5}`, id1))
	want(id1, fmt.Sprintf("t:h:%d", id1), "name=tea,price=9.50,b=\xff\x00a")
	checkpoint, err := os.ReadFile(e.cfg.PositionFile)
	if err != nil {
		t.Fatal(err)
	}

	e.exec("UPDATE "+table+" SET price = 8.25, note = 'héllo', b = 'text' WHERE id = ?", id1)
	v2 := want(id1, key1, fmt.Sprintf(`{"id":%d,"name":"tea","price":"8.25","d":"2026-12-03","at":"2026-12-03 10:11:12.345","b":"text","note":"héllo","big":18446744073709551615,"f":1.5}`, id1))
	if v2 <= v1 {
		t.Fatalf("version after the update %q, before %q: want it larger", v2, v1)
	}

	// A redelivered older write, straight to NSQ, changes nothing.
	prod, err := nsq.NewProducer(e.nsqd.TCPAddr(), nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Stop()
	old, _ := invalidate.ParseSyncVersion(v1)
	body, err := (&invalidate.Purge{V: invalidate.PurgeVersionSync, Group: fmt.Sprintf("g%d", groupOf(id1)), Sync: []invalidate.SyncWrite{{Key: key1, Op: invalidate.SyncSet, Version: old, Value: []byte(`{"stale":true}`)}}}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	before := e.metricOrZero("flashsync_purger_sync_writes_total", `result="older"`)
	if err := prod.Publish(invalidate.RedisTopic("e2e", fmt.Sprintf("g%d", groupOf(id1))), body); err != nil {
		t.Fatal(err)
	}
	stacktest.Eventually(t, purgeDeadline, func() error {
		if n := e.metricOrZero("flashsync_purger_sync_writes_total", `result="older"`); n < before+2 {
			return fmt.Errorf("older sync writes %v, want %v (one per replica)", n, before+2)
		}
		return nil
	})
	if got := want(id1, key1, fmt.Sprintf(`{"id":%d,"name":"tea","price":"8.25","d":"2026-12-03","at":"2026-12-03 10:11:12.345","b":"text","note":"héllo","big":18446744073709551615,"f":1.5}`, id1)); got != v2 {
		t.Fatalf("version %q after the redelivery, want %q", got, v2)
	}

	// A key change: the old key goes (its version stays, a tombstone), the
	// new one, in the other group, holds the row.
	e.exec("UPDATE "+table+" SET id = ?, b = NULL WHERE id = ?", id2, id1)
	key2 := fmt.Sprintf("t:json:%d", id2)
	v3 := want(id2, key2, fmt.Sprintf(`{"id":%d,"name":"tea","price":"8.25","d":"2026-12-03","at":"2026-12-03 10:11:12.345","b":null,"note":"héllo","big":18446744073709551615,"f":1.5}`, id2))
	if tomb := want(id1, key1, ""); tomb <= v2 {
		t.Fatalf("tombstone of %s at %q, want newer than %q", key1, tomb, v2)
	}
	want(id2, fmt.Sprintf("t:h:%d", id2), "name=tea,price=8.25")

	// SIGKILL, and a restart from the checkpoint before all of that: the
	// canal replays the insert, the update and the key change; no replica
	// goes back (the watcher) and each ends where it was.
	if err := p.stop(syscall.SIGKILL, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.cfg.PositionFile, checkpoint, 0o644); err != nil {
		t.Fatal(err)
	}
	p = e.start("flashsync #2")
	e.exec("UPDATE "+table+" SET name = 'green tea' WHERE id = ?", id2)
	v4 := want(id2, key2, fmt.Sprintf(`{"id":%d,"name":"green tea","price":"8.25","d":"2026-12-03","at":"2026-12-03 10:11:12.345","b":null,"note":"héllo","big":18446744073709551615,"f":1.5}`, id2))
	if v4 <= v3 {
		t.Fatalf("version %q after the replay and an update, want newer than %q", v4, v3)
	}
	if n := e.metricOrZero("flashsync_purger_sync_writes_total", `result="older"`); n == 0 {
		t.Error("the replay from the old checkpoint refused no older write")
	}
	want(id1, key1, "")

	// A delete removes the row everywhere.
	e.exec("DELETE FROM "+table+" WHERE id = ?", id2)
	want(id2, key2, "")
	want(id2, fmt.Sprintf("t:h:%d", id2), "")
	stopWatcher()
	if err := p.stop(syscall.SIGTERM, 15*time.Second); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatal(err)
	}
}

// TestSyncedFillFencesInFlightWrites: a reader's fill of a synced key
// carries the version of its read (cacheaside.GetSynced with
// LoadAtSnapshot), so the sync writes of changes that read already saw,
// still on their way, are refused instead of taking the value back. Here
// they are on their way for certain: flashsync is stopped while the row
// changes twice and the key is evicted, a reader fills it with the newest
// row; then the first change's write is delivered late (published to NSQ
// after the fill, as a requeue would), and flashsync restarts from a
// checkpoint before both changes and replays them.
func TestSyncedFillFencesInFlightWrites(t *testing.T) {
	e := newEnv(t)
	table := e.db + ".t"
	e.exec("CREATE TABLE " + table + " (id BIGINT UNSIGNED PRIMARY KEY, name VARCHAR(50), price DECIMAL(10,2), b BLOB)")
	e.cfgPath = writeFile(t, "flashsync.toml", e.cfg.TOML()+fmt.Sprintf(syncRule, table))
	p := e.start("flashsync #1")
	ctx := context.Background()
	id := idsInGroup(0, 1, 1)[0]
	key := fmt.Sprintf("t:json:%d", id)
	var replicas []*redis.Client
	for _, a := range e.replicas(groupOf(id)) {
		replicas = append(replicas, e.clients[a])
	}
	// holds waits until every replica's key shows price.
	holds := func(price string) {
		t.Helper()
		stacktest.Eventually(t, purgeDeadline, func() error {
			for i, c := range replicas {
				if v := c.Get(ctx, key).Val(); !strings.Contains(v, `"price":"`+price+`"`) {
					return fmt.Errorf("replica %d: %s = %q, want price %s", i, key, v, price)
				}
			}
			return nil
		})
	}
	e.exec("INSERT INTO "+table+" VALUES (?, 'tea', 1, NULL)", id)
	holds("1.00")
	checkpoint, err := os.ReadFile(e.cfg.PositionFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.stop(syscall.SIGTERM, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	v1, err := invalidate.ParseSyncVersion(replicas[0].Get(ctx, invalidate.SyncVersionPrefix+key).Val())
	if err != nil {
		t.Fatal(err)
	}
	e.exec("UPDATE "+table+" SET price = 2 WHERE id = ?", id)
	// The first change's version is at most the binlog's end after it.
	end2, err := wmBinlogEnd(e.conn)
	if err != nil {
		t.Fatal(err)
	}
	e.exec("UPDATE "+table+" SET price = 3 WHERE id = ?", id)
	for _, c := range replicas {
		if err := c.Del(ctx, key).Err(); err != nil { // evicted; its version stays
			t.Fatal(err)
		}
	}
	db := stacktest.SQLDB(t, e.db)
	var readerClients []redis.UniversalClient
	for _, c := range replicas {
		rc := redis.NewClient(&redis.Options{Addr: c.Options().Addr, ContextTimeoutEnabled: true})
		t.Cleanup(func() { rc.Close() })
		readerClients = append(readerClients, rc)
	}
	reader, err := cacheaside.New(cacheaside.Options{Groups: []cacheaside.Group{{Name: "g0", Replicas: readerClients}},
		MaxStaleness: cacheaside.NoStalenessCheck})
	if err != nil {
		t.Fatal(err)
	}
	load := func(ctx context.Context) ([]byte, uint64, error) {
		return cacheaside.LoadAtSnapshot(ctx, db, func(ctx context.Context, c *sql.Conn) ([]byte, error) {
			var price string
			err := c.QueryRowContext(ctx, "SELECT price FROM t WHERE id = ?", id).Scan(&price)
			return []byte(`{"price":"` + price + `"}`), err
		})
	}
	v, res, err := reader.GetSynced(ctx, key, strconv.Itoa(id), load)
	if err != nil || string(v) != `{"price":"3.00"}` || res != cacheaside.Filled {
		t.Fatalf("GetSynced = %q, %v, %v; want the newest row, filled", v, res, err)
	}

	// The first change's write, late.
	prod, err := nsq.NewProducer(e.nsqd.TCPAddr(), nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Stop()
	late := invalidate.SyncVersion{Epoch: v1.Epoch, Offset: end2}
	body, err := (&invalidate.Purge{V: invalidate.PurgeVersionSync, Group: fmt.Sprintf("g%d", groupOf(id)),
		Sync: []invalidate.SyncWrite{{Key: key, Op: invalidate.SyncSet, Version: late, Value: []byte(`{"price":"2.00","late":true}`)}}}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := prod.Publish(invalidate.RedisTopic("e2e", fmt.Sprintf("g%d", groupOf(id))), body); err != nil {
		t.Fatal(err)
	}

	// flashsync applies it and replays both updates; every replica keeps
	// price 3.
	if err := os.WriteFile(e.cfg.PositionFile, checkpoint, 0o644); err != nil {
		t.Fatal(err)
	}
	p = e.start("flashsync #2")
	deadline := time.Now().Add(purgeDeadline)
	for {
		for i, c := range replicas {
			raw, err := c.Get(ctx, key).Bytes()
			if err != nil {
				t.Fatalf("replica %d: %s: %v", i, key, err)
			}
			if v, _, _ := cacheaside.DecodeValue(raw); !strings.Contains(string(v), `"price":"3.00"`) {
				t.Fatalf("replica %d: %s went back to %q", i, key, v)
			}
		}
		// The late write and the replay of the key's last change, on both
		// replicas, refused.
		if n := e.metricOrZero("flashsync_purger_sync_writes_total", `result="older"`); n >= 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replayed writes were not refused within %v (older: %v)", purgeDeadline, e.metricOrZero("flashsync_purger_sync_writes_total", `result="older"`))
		}
		time.Sleep(time.Millisecond)
	}
	// The next change is newer than the fill and lands.
	e.exec("UPDATE "+table+" SET price = 4 WHERE id = ?", id)
	holds("4.00")
}

// TestSyncRefreshHot: a refresh_hot sync target writes a change only to
// the replicas that hold the key. A row cached on one replica of its group
// is refreshed there and left missing on the other; a row cached nowhere
// costs no write and no key, not even its version; a delete deletes.
func TestSyncRefreshHot(t *testing.T) {
	e := newEnv(t)
	table := e.db + ".t"
	e.exec("CREATE TABLE " + table + " (id BIGINT PRIMARY KEY, price DECIMAL(10,2))")
	e.cfgPath = writeFile(t, "flashsync.toml", e.cfg.TOML()+fmt.Sprintf("\n[[rule]]\ntable = %q\nroute_by = \"id\"\n[[rule.sync]]\nkey = \"t:json:{id}\"\nrefresh_hot = true\n", table))
	e.start("flashsync")
	ctx := context.Background()
	hotID, coldID := idsInGroup(0, 1, 2)[0], idsInGroup(0, 1, 2)[1]
	replicas := []*redis.Client{e.clients[e.replicas(0)[0]], e.clients[e.replicas(0)[1]]}
	hotKey, coldKey := fmt.Sprintf("t:json:%d", hotID), fmt.Sprintf("t:json:%d", coldID)
	e.exec("INSERT INTO "+table+" VALUES (?, 1), (?, 1)", hotID, coldID)
	// A reader filled the hot row on replica 0 only.
	if err := replicas[0].Set(ctx, hotKey, "filled by a reader", 0).Err(); err != nil {
		t.Fatal(err)
	}
	cold0 := e.metricOrZero("flashsync_purger_sync_writes_total", `result="cold"`)
	e.exec("UPDATE "+table+" SET price = 2 WHERE id IN (?, ?)", hotID, coldID)
	want := fmt.Sprintf(`{"id":%d,"price":"2.00"}`, hotID)
	stacktest.Eventually(t, purgeDeadline, func() error {
		if v := replicas[0].Get(ctx, hotKey).Val(); v != want {
			return fmt.Errorf("replica 0: %s = %q, want %q", hotKey, v, want)
		}
		// The update's two rows on both replicas: 3 of the 4 writes cold.
		if n := e.metricOrZero("flashsync_purger_sync_writes_total", `result="cold"`) - cold0; n < 3 {
			return fmt.Errorf("%v cold writes, want 3", n)
		}
		return nil
	})
	for i, c := range replicas {
		keys := []string{coldKey, invalidate.SyncVersionPrefix + coldKey}
		if i == 1 {
			keys = append(keys, hotKey, invalidate.SyncVersionPrefix+hotKey)
		}
		if n := c.Exists(ctx, keys...).Val(); n != 0 {
			t.Errorf("replica %d holds %d of %v: a cold key got a write", i, n, keys)
		}
	}
	e.exec("DELETE FROM "+table+" WHERE id = ?", hotID)
	stacktest.Eventually(t, purgeDeadline, func() error {
		if n := replicas[0].Exists(ctx, hotKey).Val(); n != 0 {
			return fmt.Errorf("replica 0 still holds %s", hotKey)
		}
		return nil
	})
}
