//go:build linux

// Package e2e runs the real flashsync binary against real servers: the
// shared MariaDB, private Redis replicas and a private nsqd per test.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flashsync/flashsync/internal/stacktest"
)

// purgeDeadline is how soon after a commit its keys must be gone.
const purgeDeadline = 2 * time.Second

func TestInsertUpdateDeletePurgeBothReplicas(t *testing.T) {
	e := newEnv(t)
	g0, g1 := idsInGroup(0, 1, 4), idsInGroup(1, 1, 4)
	// Rows changed below; the rest of the ids are never touched.
	a, b, c := g0[0], g1[0], g0[1]
	untouchedAll := []int{g0[2], g0[3], g1[2], g1[3]}
	e.start("flashsync")

	steps := []struct {
		name  string
		query string
		ids   []int
	}{
		{"insert one row", fmt.Sprintf("INSERT INTO %s.item (id, name, price) VALUES (%d, 'a', 1.50)", e.db, a), []int{a}},
		{"insert rows of both groups", fmt.Sprintf("INSERT INTO %s.item (id, name, price) VALUES (%d, 'b', 2.50), (%d, 'c', 3.50)", e.db, b, c), []int{b, c}},
		{"update price", fmt.Sprintf("UPDATE %s.item SET price = price + 1 WHERE id = %d", e.db, a), []int{a}},
		{"update name", fmt.Sprintf("UPDATE %s.item SET name = 'renamed' WHERE id = %d", e.db, b), []int{b}},
		{"delete", fmt.Sprintf("DELETE FROM %s.item WHERE id = %d", e.db, c), []int{c}},
		{"delete rows of both groups", fmt.Sprintf("DELETE FROM %s.item WHERE id IN (%d, %d)", e.db, a, b), []int{a, b}},
	}
	all := cat([]int{a, b, c}, untouchedAll)
	for _, s := range steps {
		t.Logf("step %q: ids %v (groups %v)", s.name, s.ids, groupsOf(s.ids))
		// Every key of every id on all four replicas: the other group's
		// copies are the control.
		e.seed(all)
		e.exec(s.query)
		var untouched []int
		for _, id := range all {
			if !slices.Contains(s.ids, id) {
				untouched = append(untouched, id)
			}
		}
		e.expectPurged(purgeDeadline, s.ids, untouched)
	}
}

func TestPrimaryKeyChangePurgesOldAndNew(t *testing.T) {
	e := newEnv(t)
	// A second move crosses groups, so each image must route on its own id.
	from := 2
	to := idsInGroup(1-groupOf(from), 150, 1)[0]
	e.insert(1, from, 3)
	e.start("flashsync")
	controls := []int{3, 4, 103}
	e.seed(cat([]int{1, 101, from, to}, controls))
	t.Logf("id 1 routes to group %d, id 101 to group %d", groupOf(1), groupOf(101))

	e.exec("UPDATE " + e.db + ".item SET id = 101 WHERE id = 1")
	e.expectPurged(purgeDeadline, []int{1, 101}, cat([]int{from, to}, controls))

	t.Logf("id %d routes to group %d, id %d to group %d", from, groupOf(from), to, groupOf(to))
	e.exec(fmt.Sprintf("UPDATE %s.item SET id = %d WHERE id = %d", e.db, to, from))
	e.expectPurged(purgeDeadline, []int{from, to}, controls)
}

func TestMultiStatementTransaction(t *testing.T) {
	e := newEnv(t)
	existing := cat(idsInGroup(0, 1, 3), idsInGroup(1, 1, 3)) // updated, one deleted
	inserted := cat(idsInGroup(0, 100, 2), idsInGroup(1, 100, 2))
	controls := cat(idsInGroup(0, 200, 2), idsInGroup(1, 200, 2))
	e.insert(existing...)
	e.insert(controls...)
	e.start("flashsync")
	e.seed(cat(existing, inserted, controls))

	conn := stacktest.MySQL(t) // one connection for the whole transaction
	stacktest.Exec(t, conn, "BEGIN")
	for _, id := range inserted {
		stacktest.Exec(t, conn, "INSERT INTO "+e.db+".item (id, name, price) VALUES (?, 'new', 1.00)", id)
	}
	stacktest.Exec(t, conn, fmt.Sprintf("UPDATE %s.item SET price = price * 2, view_count = view_count + 1 WHERE id IN (%s)", e.db, joinInts(existing)))
	deleted := existing[len(existing)-1]
	stacktest.Exec(t, conn, "DELETE FROM "+e.db+".item WHERE id = ?", deleted)
	// Nothing is in the binlog before COMMIT, so nothing may be purged yet.
	for _, addr := range e.allReplicas() {
		if err := e.presence(addr, true, cat(existing, inserted)...); err != nil {
			t.Fatalf("before COMMIT: %v", err)
		}
	}
	stacktest.Exec(t, conn, "COMMIT")

	e.expectPurged(purgeDeadline, cat(existing, inserted), controls)
}

func TestReplicaDownThenBacklogDrains(t *testing.T) {
	e := newEnv(t)
	const g = 0
	changed := idsInGroup(g, 1, 2)
	controlSame := idsInGroup(g, 100, 1)  // same group, never changed
	controlOther := idsInGroup(1-g, 1, 1) // other group, never changed
	e.insert(changed...)
	e.start("flashsync")
	all := cat(changed, controlSame, controlOther)
	e.seed(all)

	up, down := e.redis[g][0], e.redis[g][1]
	// SAVE so that the restarted replica loads the stale keys from disk.
	if err := e.clients[down.Addr()].Save(context.Background()).Err(); err != nil {
		t.Fatalf("SAVE on %s: %v", down.Addr(), err)
	}
	down.Stop()

	for _, id := range changed { // one transaction each
		e.exec("UPDATE "+e.db+".item SET price = price + 1 WHERE id = ?", id)
	}
	// The replica that is up is purged on time, without waiting for the other.
	stacktest.Eventually(t, purgeDeadline, func() error { return e.presence(up.Addr(), false, changed...) })
	if err := e.presence(up.Addr(), true, controlSame...); err != nil {
		t.Errorf("control on the replica that is up: %v", err)
	}
	for _, addr := range e.replicas(1 - g) {
		if err := e.presence(addr, true, all...); err != nil {
			t.Errorf("control in the other group: %v", err)
		}
	}

	// While the replica is down, health says so and its messages are held.
	stacktest.Eventually(t, 5*time.Second, func() error {
		status, body, err := e.healthz()
		if err != nil {
			return err
		}
		if status != http.StatusServiceUnavailable || !strings.Contains(body, down.Addr()) {
			return fmt.Errorf("/healthz answered %d %s, want 503 naming %s", status, strings.TrimSpace(body), down.Addr())
		}
		return nil
	})
	unreachable := func() error {
		n, err := e.metric("flashsync_purger_messages_total", `replica="`+down.Addr()+`"`, `result="unreachable"`)
		if err != nil {
			return err
		}
		if n <= 0 {
			return fmt.Errorf("unreachable count of %s is %v", down.Addr(), n)
		}
		return nil
	}
	stacktest.Eventually(t, 5*time.Second, unreachable)
	replicaUp := func(want float64) func() error {
		return func() error {
			v, err := e.metric("flashsync_purger_replica_up", `replica="`+down.Addr()+`"`)
			if err == nil && v != want {
				err = fmt.Errorf("flashsync_purger_replica_up of %s is %v, want %v", down.Addr(), v, want)
			}
			return err
		}
	}
	stacktest.Eventually(t, 5*time.Second, replicaUp(0))

	down.Start()
	// The restarted replica loaded every seeded key from dump.rdb; the held
	// purges delete the changed rows' keys and leave the controls (whose
	// presence proves the stale data did come back from disk).
	stacktest.Eventually(t, 10*time.Second, func() error { return e.presence(down.Addr(), false, changed...) })
	if err := e.presence(down.Addr(), true, cat(controlSame, controlOther)...); err != nil {
		t.Errorf("restarted replica did not reload its data: %v", err)
	}
	if err := unreachable(); err != nil {
		t.Error(err)
	}
	// Held, not burnt: no attempt was counted against the message.
	for _, result := range []string{"retry", "dead_letter"} {
		if n := e.metricOrZero("flashsync_purger_messages_total", `replica="`+down.Addr()+`"`, `result="`+result+`"`); n != 0 {
			t.Errorf("%s messages of %s: %v, want 0", result, down.Addr(), n)
		}
	}
	stacktest.Eventually(t, 5*time.Second, func() error {
		status, body, err := e.healthz()
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return fmt.Errorf("/healthz answered %d %s after the replica came back", status, strings.TrimSpace(body))
		}
		return replicaUp(1)()
	})
	e.barrier()
	e.checkControls(changed, cat(controlSame, controlOther))
}

func TestRestartLosesNothing(t *testing.T) { testDownLosesNothing(t, syscall.SIGTERM) }

func TestKillLosesNothing(t *testing.T) { testDownLosesNothing(t, syscall.SIGKILL) }

// testDownLosesNothing stops flashsync with sig, changes rows while it is
// down, refills the cache with stale values and expects the restarted
// flashsync to purge them from where it stopped.
func testDownLosesNothing(t *testing.T, sig syscall.Signal) {
	e := newEnv(t)
	first := idsInGroup(0, 1, 1)[0]
	c := cat(idsInGroup(0, 10, 2), idsInGroup(1, 10, 2))
	inserted := cat(idsInGroup(0, 100, 1), idsInGroup(1, 100, 1))
	controls := cat(idsInGroup(0, 200, 1), idsInGroup(1, 200, 1))
	e.insert(first)
	e.insert(c...)
	e.insert(controls...)

	p := e.start("flashsync #1")
	e.seed([]int{first})
	e.exec("UPDATE "+e.db+".item SET price = price + 1 WHERE id = ?", first)
	e.waitPurged(purgeDeadline, first)

	if err := p.stop(sig, 15*time.Second); err != nil {
		t.Fatalf("%v: %v", sig, err)
	}
	var ee *exec.ExitError
	switch {
	case sig == syscall.SIGTERM && p.err != nil:
		t.Fatalf("after SIGTERM flashsync exited with %v, want status 0; stderr:\n%s", p.err, p.stderr.String())
	case sig == syscall.SIGKILL && !(errors.As(p.err, &ee) && ee.ProcessState.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL):
		t.Fatalf("after SIGKILL: %v, want killed by the signal", p.err)
	}

	// Committed while flashsync is down, in several transactions.
	e.exec("UPDATE "+e.db+".item SET price = price + 1 WHERE id = ?", c[0])
	e.exec(fmt.Sprintf("UPDATE %s.item SET name = 'x' WHERE id IN (%d, %d)", e.db, c[1], c[2]))
	e.exec("BEGIN")
	e.exec("DELETE FROM "+e.db+".item WHERE id = ?", c[3])
	e.insert(inserted...)
	e.exec("COMMIT")
	// Readers refill the cache with what are now stale values.
	changed := cat(c, inserted)
	e.seed(cat(changed, controls))

	e.start("flashsync #2")
	e.expectPurged(5*time.Second, changed, controls)
}

func TestBadConfigFailsWithOneLine(t *testing.T) {
	// Valid apart from the change each case makes; nothing here is ever
	// contacted, because every case must fail before anything runs.
	base := Config{
		MySQLAddr:    "127.0.0.1:1",
		ServerID:     newServerID(),
		PositionFile: "/nonexistent/position",
		DB:           "shop",
		NSQDTCP:      "127.0.0.1:2",
		NSQDHTTP:     "127.0.0.1:3",
		HTTPAddr:     fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t)),
		Groups:       [][]string{{"127.0.0.1:4", "127.0.0.1:5"}, {"127.0.0.1:6", "127.0.0.1:7"}},
		Keys:         []string{"item:{id}", "item:page:{id}"},
	}.TOML()
	replace := func(old, new string) string {
		if !strings.Contains(base, old) {
			t.Fatalf("base config has no %q:\n%s", old, base)
		}
		return strings.Replace(base, old, new, 1)
	}
	lineOf := func(cfg, substr string) int {
		for i, l := range strings.Split(cfg, "\n") {
			if strings.Contains(l, substr) {
				return i + 1
			}
		}
		t.Fatalf("config has no %q", substr)
		return 0
	}

	unknownKey := replace(`addr = "127.0.0.1:1"`, `adress = "127.0.0.1:1"`)
	tests := []struct {
		name       string
		config     string
		configErr  bool // reported by config loading, not by daemon.New
		wantSubstr []string
	}{
		{"unknown key", unknownKey, true, []string{`mysql.adress`, fmt.Sprintf("line %d:", lineOf(unknownKey, "adress ="))}},
		{"group without replicas", replace(`replicas = ["127.0.0.1:4", "127.0.0.1:5"]`, ``), true, []string{"redis_group[0].replicas"}},
		{"missing mysql.addr", replace(`addr = "127.0.0.1:1"`, ``), true, []string{"mysql.addr"}},
		{"bad key template", replace(`keys = ["item:{id}",`, `keys = ["item:{id",`), false, []string{"rule[0]", `item:{id`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, "flashsync.toml", tt.config)
			code, stderr := runFlashsync(t, 20*time.Second, "all", "-config", path)
			if code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			lines := nonEmptyLines(stderr)
			if len(lines) != 1 {
				t.Fatalf("stderr has %d lines, want the error alone on one:\n%s", len(lines), stderr)
			}
			line := lines[0]
			prefix := "flashsync all: "
			if tt.configErr {
				prefix = "flashsync: config " + path + ": "
			}
			if !strings.HasPrefix(line, prefix) {
				t.Errorf("error %q does not start with %q", line, prefix)
			}
			for _, want := range tt.wantSubstr {
				if !strings.Contains(line, want) {
					t.Errorf("error %q does not mention %q", line, want)
				}
			}
		})
	}
}

func TestUnusableBinlogRefused(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"statement format", []string{"--binlog-format=STATEMENT"}, "binlog_format is STATEMENT"},
		{"minimal row image", []string{"--binlog-row-image=MINIMAL"}, "binlog_row_image is MINIMAL"},
		{"binary log off", []string{"--skip-log-bin"}, "the binary log is off"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := stacktest.StartMariaDB(t, tt.args...)
			conn := m.Conn(t)
			stacktest.Exec(t, conn, "CREATE DATABASE shop")
			stacktest.Exec(t, conn, "CREATE TABLE shop.item (id BIGINT PRIMARY KEY, name VARCHAR(100), price DECIMAL(10,2), view_count INT NOT NULL DEFAULT 0)")
			nsqd := stacktest.StartNSQD(t)
			cfg := Config{
				MySQLAddr:    m.Addr(),
				ServerID:     newServerID(),
				PositionFile: filepath.Join(t.TempDir(), "position"),
				DB:           "shop",
				NSQDTCP:      nsqd.TCPAddr(),
				NSQDHTTP:     nsqd.HTTPAddr(),
				HTTPAddr:     fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t)),
				// The canal never talks to Redis; the addresses only name channels.
				Groups: [][]string{{"127.0.0.1:4", "127.0.0.1:5"}, {"127.0.0.1:6", "127.0.0.1:7"}},
				Keys:   []string{"item:{id}", "item:page:{id}"},
			}
			path := writeFile(t, "flashsync.toml", cfg.TOML())

			code, stderr := runFlashsync(t, 30*time.Second, "canal", "-config", path)
			if code != 1 {
				t.Errorf("exit code %d, want 1; stderr:\n%s", code, stderr)
			}
			lines := nonEmptyLines(stderr)
			if len(lines) == 0 {
				t.Fatal("no output")
			}
			last := lines[len(lines)-1]
			if !strings.HasPrefix(last, "flashsync canal:") || !strings.Contains(last, tt.want) {
				t.Errorf("last line %q, want the error `flashsync canal: ... %s ...`; stderr:\n%s", last, tt.want, stderr)
			}
		})
	}
}

func groupsOf(ids []int) []int {
	gs := make([]int, len(ids))
	for i, id := range ids {
		gs[i] = groupOf(id)
	}
	return gs
}

// cat concatenates id lists into a new slice.
func cat(lists ...[]int) []int {
	var all []int
	for _, l := range lists {
		all = append(all, l...)
	}
	return all
}

func joinInts(ids []int) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.Itoa(id)
	}
	return strings.Join(s, ", ")
}
