package canal_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/canal"
	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
)

// runner runs a canal against any server and can be stopped and started
// again on the same position file, the way an operator restarts flashsync.
type runner struct {
	t       *testing.T
	addr    string
	db      string
	posFile string
	pub     *gatedPublisher
	rules   []invalidate.Rule
	reset   bool
	onReset func(context.Context) error

	cancel context.CancelFunc
	done   chan error
}

func newRunner(t *testing.T, addr, db string, rules []invalidate.Rule) *runner {
	return &runner{t: t, addr: addr, db: db, posFile: filepath.Join(t.TempDir(), "position"), pub: &gatedPublisher{}, rules: rules}
}

// start runs the canal and waits until its position is saved.
func (r *runner) start() {
	r.t.Helper()
	rules, err := invalidate.NewRules(r.rules, []string{"g"})
	if err != nil {
		r.t.Fatal(err)
	}
	c, err := canal.New(canal.Options{
		MySQL:        canal.Source{Addr: r.addr, User: "root", Flavor: "mariadb", ServerID: uint32(20000 + rand.IntN(30000))},
		PositionFile: r.posFile, IncludeTables: []string{r.db + `\..*`}, SaveInterval: time.Millisecond,
		Rules:          rules,
		Publisher:      r.pub,
		Registerer:     prometheus.NewRegistry(),
		ResetToCurrent: r.reset,
		OnReset:        r.onReset,
	})
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.done = cancel, make(chan error, 1)
	go func() { r.done <- c.Run(ctx) }()
	r.t.Cleanup(func() { r.stop() })
	stacktest.Eventually(r.t, 10*time.Second, func() error {
		select {
		case err := <-r.done:
			r.done <- err
			return nil // ended early: the test reads the error
		default:
		}
		if _, ok, err := canal.NewPositionFile(r.posFile).Load(); !ok {
			return fmt.Errorf("no position saved yet (%v)", err)
		}
		return nil
	})
}

// stop ends the canal (idempotent) and returns Run's error.
func (r *runner) stop() error {
	if r.cancel == nil {
		return nil
	}
	r.cancel()
	r.cancel = nil
	return <-r.done
}

// waitExit waits for Run to end on its own and returns its error; if it
// does not within timeout the test fails with why.
func (r *runner) waitExit(timeout time.Duration, why string) error {
	r.t.Helper()
	select {
	case err := <-r.done:
		r.cancel = nil
		return err
	case <-time.After(timeout):
		r.t.Fatal(why)
		return nil
	}
}

// waitKeys waits until every key in want was published.
func (r *runner) waitKeys(want ...string) {
	r.t.Helper()
	stacktest.Eventually(r.t, 10*time.Second, func() error {
		_, keys := r.pub.snapshot()
		for _, k := range want {
			if !slices.Contains(keys, k) {
				return fmt.Errorf("%s not published (have %d keys: %v)", k, len(keys), tail(keys))
			}
		}
		return nil
	})
}

func tail(s []string) []string { return s[max(0, len(s)-12):] }

var nameRule = []invalidate.Rule{{Table: "", Keys: []string{"item:{id}", "name:{name}"}, RouteBy: "id"}}

func rulesFor(db string) []invalidate.Rule {
	r := slices.Clone(nameRule)
	r[0].Table = db + ".item"
	return r
}

// privateShop starts a private MariaDB (extraArgs on its command line) with
// an empty database shop and returns it with a connection to it.
func privateShop(t *testing.T, extraArgs ...string) (*stacktest.MariaDB, *client.Conn) {
	t.Helper()
	m := stacktest.StartMariaDB(t, extraArgs...)
	conn := m.Conn(t)
	stacktest.Exec(t, conn, "CREATE DATABASE shop")
	return m, conn
}

// shopRunner is privateShop with a table shop.item (id, name) and a runner
// of rulesFor("shop") on it, started.
func shopRunner(t *testing.T, extraArgs ...string) (*stacktest.MariaDB, *client.Conn, *runner) {
	t.Helper()
	m, conn := privateShop(t, extraArgs...)
	stacktest.Exec(t, conn, "CREATE TABLE shop.item (id BIGINT PRIMARY KEY, name VARCHAR(50))")
	r := newRunner(t, m.Addr(), "shop", rulesFor("shop"))
	r.start()
	return m, conn, r
}

// ddlWhileBehind stops the canal, changes rows around column reorders and
// drops, restarts it and checks every key is named from the right column:
// a row read with the wrong column names would publish name:<a number>.
func ddlWhileBehind(t *testing.T, addr string, conn *client.Conn, db string) {
	stacktest.Exec(t, conn, "CREATE TABLE "+db+".item (id BIGINT PRIMARY KEY, name VARCHAR(50), price INT)")
	r := newRunner(t, addr, db, rulesFor(db))
	r.start()
	stacktest.Exec(t, conn, "INSERT INTO "+db+".item VALUES (1, 'one', 10)")
	r.waitKeys("item:1", "name:one")
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"INSERT INTO %s.item VALUES (2, 'two', 20)",
		"ALTER TABLE %s.item ADD COLUMN sku VARCHAR(20) FIRST",
		"INSERT INTO %s.item VALUES ('sku3', 3, 'three', 30)",
		"ALTER TABLE %s.item MODIFY name VARCHAR(50) AFTER price",
		"INSERT INTO %s.item (sku, id, price, name) VALUES ('sku4', 4, 40, 'four')",
		"UPDATE %s.item SET name = 'five', id = 5 WHERE id = 4",
		"ALTER TABLE %s.item DROP COLUMN sku, CHANGE price cost INT FIRST",
		"INSERT INTO %s.item (cost, id, name) VALUES (60, 6, 'six')",
		"DELETE FROM %s.item WHERE id = 1",
	} {
		stacktest.Exec(t, conn, fmt.Sprintf(q, db))
	}
	r.pub = &gatedPublisher{}
	r.start()
	want := []string{"item:2", "name:two", "item:3", "name:three", "item:4", "name:four", "item:5", "name:five", "item:6", "name:six", "item:1", "name:one"}
	r.waitKeys(want...)
	if _, keys := r.pub.snapshot(); len(keys) != 0 {
		for _, k := range keys {
			if !slices.Contains(want, k) {
				t.Errorf("published %q: a row was mapped to the wrong columns (all: %v)", k, keys)
			}
		}
	}
}

// Without binlog column metadata the schema history, saved with the
// position and replayed through each ALTER, names the columns.
func TestDDLWhileBehindWithoutMetadata(t *testing.T) {
	m, conn := privateShop(t, "--binlog-row-metadata=NO_LOG")
	ddlWhileBehind(t, m.Addr(), conn, "shop")
}

// With binlog_row_metadata=FULL the events name their columns.
func TestDDLWhileBehindWithFullMetadata(t *testing.T) {
	m, conn := privateShop(t, "--binlog-row-metadata=FULL")
	ddlWhileBehind(t, m.Addr(), conn, "shop")
}

// A DDL flashsync cannot replay leaves the table's columns uncertain: its
// next row stops the stream with a clear error instead of a guess; with
// FULL metadata the same sequence is fine.
func TestUnreplayableDDLStopsWithoutMetadata(t *testing.T) {
	for _, meta := range []string{"NO_LOG", "FULL"} {
		t.Run(meta, func(t *testing.T) {
			_, conn, r := shopRunner(t, "--binlog-row-metadata="+meta)
			stacktest.Exec(t, conn, "ALTER ONLINE TABLE shop.item ADD COLUMN extra INT FIRST")
			stacktest.Exec(t, conn, "INSERT INTO shop.item VALUES (7, 8, 'eight')")
			if meta == "FULL" {
				r.waitKeys("item:8", "name:eight")
				return
			}
			err := r.waitExit(10*time.Second, "the canal kept running on a table whose columns it cannot know")
			if err == nil || !strings.Contains(err.Error(), "cannot be mapped to columns") || !strings.Contains(err.Error(), "binlog_row_metadata=FULL") {
				t.Fatalf("err = %v, want the mapping error naming binlog_row_metadata=FULL", err)
			}
			if _, keys := r.pub.snapshot(); slices.Contains(keys, "name:8") || slices.Contains(keys, "item:7") {
				t.Fatalf("published a guess: %v", keys)
			}
		})
	}
}

// The saved position purged from the server: start fails naming the
// recovery; the recovery flushes caches, then continues from the current
// position.
func TestPositionGoneAndReset(t *testing.T) {
	_, conn, r := shopRunner(t)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	before, ok, err := canal.NewPositionFile(r.posFile).Load()
	if err != nil || !ok || before.Epoch == 0 {
		t.Fatalf("position before the reset: %+v, %v, %v; want an epoch", before, ok, err)
	}
	stacktest.Exec(t, conn, "INSERT INTO shop.item VALUES (1, 'lost')")
	stacktest.Exec(t, conn, "RESET MASTER")

	r.start()
	err = r.waitExit(15*time.Second, "the canal kept running from a position the server no longer has")
	if !errors.Is(err, canal.ErrPositionGone) || !strings.Contains(err.Error(), "--reset-to-current --flush-all") {
		t.Fatalf("err = %v, want ErrPositionGone with the recovery command", err)
	}

	var flushed atomic.Bool
	r.reset, r.onReset = true, func(context.Context) error { flushed.Store(true); return nil }
	r.start()
	stacktest.Eventually(t, 10*time.Second, func() error {
		if !flushed.Load() {
			return errors.New("reset did not flush the caches")
		}
		return nil
	})
	stacktest.Exec(t, conn, "INSERT INTO shop.item VALUES (2, 'after')")
	r.waitKeys("item:2", "name:after")
	// RESET MASTER took the binlog's offsets back to its start: the sync
	// versions after the reset still order after every one before it, by
	// the epoch the reset chose.
	after, _, err := canal.NewPositionFile(r.posFile).Load()
	if err != nil {
		t.Fatal(err)
	}
	offBefore, _ := invalidate.BinlogOffset(before.File, before.Pos)
	offAfter, _ := invalidate.BinlogOffset(after.File, after.Pos)
	vBefore := invalidate.SyncVersion{Epoch: before.Epoch, Offset: offBefore}
	vAfter := invalidate.SyncVersion{Epoch: after.Epoch, Offset: offAfter}
	if offAfter >= offBefore || vAfter.Compare(vBefore) <= 0 || vAfter.String() <= vBefore.String() {
		t.Errorf("before the reset %v (%s), after %v (%s): want a smaller offset and a larger version", vBefore, before, vAfter, after)
	}
}

// MariaDB restarting mid-stream: the canal reconnects with backoff from the
// acknowledged position and misses nothing committed before or after.
func TestReconnectsWhenMariaDBRestarts(t *testing.T) {
	m, conn, r := shopRunner(t)
	stacktest.Exec(t, conn, "INSERT INTO shop.item VALUES (1, 'before')")
	r.waitKeys("item:1")
	m.Stop()
	m.Start()
	conn = m.Conn(t)
	stacktest.Exec(t, conn, "INSERT INTO shop.item VALUES (2, 'after')")
	r.waitKeys("item:2", "name:after")
	m.Kill()
	m.Start()
	conn = m.Conn(t)
	stacktest.Exec(t, conn, "INSERT INTO shop.item VALUES (3, 'afterkill')")
	r.waitKeys("item:3", "name:afterkill")
	if err := r.stop(); err != nil {
		t.Fatalf("Run after the restarts: %v", err)
	}
}

// A restart on the server that wrote the position resumes from its
// file:pos (no GTID lookup), and the positions it saves still carry the
// executed GTID set, as a GTID start's do: equal to the server's own after
// the last commit, with the server's id. A position of another server (a
// failover) resumes by GTID and misses nothing either.
func TestResumeByPositionKeepsTheGTID(t *testing.T) {
	_, conn, r := shopRunner(t)
	stacktest.Exec(t, conn, "INSERT INTO shop.item VALUES (1, 'one')")
	r.waitKeys("item:1")
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	serverID := func() uint32 {
		res, err := conn.Execute("SELECT @@server_id")
		if err != nil {
			t.Fatal(err)
		}
		id, _ := res.GetUint(0, 0)
		return uint32(id)
	}()
	checkSaved := func(want string) {
		t.Helper()
		stacktest.Eventually(t, 10*time.Second, func() error {
			res, err := conn.Execute("SELECT @@gtid_binlog_pos")
			if err != nil {
				return err
			}
			gtid, _ := res.GetString(0, 0)
			pos, _, err := canal.NewPositionFile(r.posFile).Load()
			if err != nil {
				return err
			}
			if pos.GTID != gtid || pos.ServerID != serverID {
				return fmt.Errorf("saved gtid %q server %d, want the server's %q and %d (%s)", pos.GTID, pos.ServerID, gtid, serverID, want)
			}
			return nil
		})
	}
	checkSaved("before the restart")
	r.start()
	for i := 2; i <= 4; i++ {
		stacktest.Exec(t, conn, "INSERT INTO shop.item VALUES (?, ?)", i, fmt.Sprint("n", i))
	}
	r.waitKeys("item:2", "item:3", "item:4")
	checkSaved("after a file:pos resume and three commits")

	// As if the position came from another server: by GTID.
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	f := canal.NewPositionFile(r.posFile)
	pos, _, err := f.Load()
	if err != nil {
		t.Fatal(err)
	}
	pos.ServerID = serverID + 1
	if err := f.Save(pos); err != nil {
		t.Fatal(err)
	}
	r.start()
	stacktest.Exec(t, conn, "INSERT INTO shop.item VALUES (5, 'five')")
	r.waitKeys("item:5")
	checkSaved("after a gtid resume")
}
