//go:build linux

package admin_test

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/admin/admintest"
	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/daemon"
	"github.com/flashsync/flashsync/internal/stacktest"
)

// buildFlashsync builds cmd/flashsync into a temporary directory.
func buildFlashsync(t *testing.T) string {
	t.Helper()
	root, err := stacktest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// go test puts its own GOROOT/bin first in the test binary's PATH.
	build := exec.Command("go", "build", "-o", dir+string(filepath.Separator), "./cmd/flashsync")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/flashsync: %v\n%s", err, out)
	}
	return filepath.Join(dir, "flashsync")
}

// adminProcess is `flashsync admin -config FILE`, a child of the test.
type adminProcess struct {
	cmd    *exec.Cmd
	stderr *strings.Builder
	done   chan struct{}
}

func startAdminProcess(t *testing.T, bin, config, url string) *adminProcess {
	t.Helper()
	p := &adminProcess{cmd: exec.Command(bin, "admin", "-config", config), stderr: new(strings.Builder), done: make(chan struct{})}
	// The kernel kills it if the test binary dies first.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
			t.Error("flashsync admin did not stop within 10 s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("flashsync admin stderr:\n%s", p.stderr.String())
		}
	})
	stacktest.Eventually(t, 20*time.Second, func() error {
		select {
		case <-p.done:
			t.Fatalf("flashsync admin exited: %s", p.stderr.String())
		default:
		}
		resp, err := http.Get(url + "/api/v1/audit")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	return p
}

func (p *adminProcess) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
}

// TestResyncResumesAfterSIGKILL: the admin role runs as its own process; a
// re-sync slow enough (20 rows a second over 100 rows) is SIGKILLed after
// its cursor moved, and the process started again resumes it from the
// cursor: the rows up to the cursor are not published again (their keys,
// written back once the first run's purges landed, stay), the rest are, and
// every matching row's keys are gone.
func TestResyncResumesAfterSIGKILL(t *testing.T) {
	bin := buildFlashsync(t)
	db := stacktest.NewDatabase(t)
	conn := stacktest.MySQL(t)
	stacktest.Exec(t, conn, "CREATE TABLE "+db+".item (id BIGINT PRIMARY KEY, name VARCHAR(100), price DECIMAL(10,2))")
	// 100 of 120 rows match: the ids not divisible by 6.
	matches := func(id int) bool { return id%6 != 0 }
	var values []string
	for id := 1; id <= 120; id++ {
		price := "50.00"
		if matches(id) {
			price = "150.00"
		}
		values = append(values, fmt.Sprintf("(%d, 'item %d', %s)", id, id, price))
	}
	stacktest.Exec(t, conn, "INSERT INTO "+db+".item VALUES "+strings.Join(values, ", "))

	nsqd := stacktest.StartNSQD(t)
	tf := &taskFixture{fixture: &fixture{db: db, keyPre: db + ":"}, clients: map[string][]*redis.Client{}}
	ga := []*stacktest.RedisServer{stacktest.StartRedis(t), stacktest.StartRedis(t)}
	gb := stacktest.StartRedis(t)
	tf.clients["ga"] = []*redis.Client{stacktest.Redis(t, ga[0].Addr()), stacktest.Redis(t, ga[1].Addr())}
	tf.clients["gb"] = []*redis.Client{stacktest.Redis(t, gb.Addr())}
	url := fmt.Sprintf("http://127.0.0.1:%d", stacktest.FreePort(t))
	config := admintest.Prelude(nsqd.TCPAddr(), nsqd.HTTPAddr(), "") + fmt.Sprintf(`
[[redis_group]]
name = "ga"
replicas = [%q, %q]

[[redis_group]]
name = "gb"
replicas = [%q]

[[rule]]
table = "%s.item"
keys = ["%sitem:{id}", "%sitem:page:{id}"]
route_by = "id"

[admin]
addr = %q
audit_database = %q
%s
`, ga[0].Addr(), ga[1].Addr(), gb.Addr(), db, tf.keyPre, tf.keyPre, strings.TrimPrefix(url, "http://"), db, taskAdminLines("")) + admintest.DemoUsers(t)
	path := filepath.Join(t.TempDir(), "flashsync.toml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	// The purgers run in the test, through both lives of the admin process.
	cfg, err := configs.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	purgers, err := daemon.New(daemon.Options{Config: cfg, Roles: []string{daemon.RoleRedisPurger},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	stacktest.RunAndClose(t, "purgers", purgers)
	all, matching := ids(1, 120, func(int) bool { return true }), ids(1, 120, matches)
	tf.setRowKeys(t, all)

	first := startAdminProcess(t, bin, path, url)
	tf.url = url
	id := tf.submit(t, "/api/v1/resyncs", `{"reason":"rule changed","table":"`+db+`.item","where":"price > 100","chunk_rows":5,"rows_per_second":20}`)
	tf.waitTask(t, id, func(task map[string]any) error {
		if done := task["done"].(float64); done < 25 {
			return fmt.Errorf("task done %v, want 25 or more before the kill", done)
		}
		return nil
	})
	first.kill(t)

	// Where the killed process left the task.
	var done int64
	var cursorJSON, state string
	r := stacktest.Exec(t, conn, "SELECT done, cursor_json, state FROM "+db+".admin_tasks WHERE id = ?", id)
	if done, err = r.GetInt(0, 0); err != nil {
		t.Fatal(err)
	}
	cursorJSON, _ = r.GetString(0, 1)
	state, _ = r.GetString(0, 2)
	var cursor struct{ After []string }
	if err := json.Unmarshal([]byte(cursorJSON), &cursor); err != nil || len(cursor.After) != 1 {
		t.Fatalf("cursor %s: %v", cursorJSON, err)
	}
	last, _ := strconv.Atoi(cursor.After[0])
	if state != "running" || done < 25 || done >= 100 {
		t.Fatalf("killed with the task %s, %d rows done (cursor %s): want running, mid-way", state, done, cursorJSON)
	}
	before := ids(1, last, matches)
	if int64(len(before)) != done {
		t.Fatalf("%d rows done, but %d matching rows up to the cursor %d", done, len(before), last)
	}
	// The purges of the rows up to the cursor were acknowledged by nsqd:
	// they land. Their keys written back must then stay.
	tf.waitPurged(t, before)
	tf.setRowKeys(t, before)

	startAdminProcess(t, bin, path, url)
	task := tf.waitDone(t, id)
	if task["done"] != 100.0 || task["total"] != 100.0 || task["progress"] != 1.0 {
		t.Errorf("resumed task %v: want 100 of 100 rows", task)
	}
	if j := task["jobs"].(map[string]any); j["published"].(float64) < 20 {
		t.Errorf("jobs %v: want at least 20 chunks of 5 published", j)
	}
	after := ids(last+1, 120, matches)
	tf.waitPurged(t, after)
	tf.checkPurged(t, after, append(ids(1, 120, func(id int) bool { return !matches(id) }), before...))
	t.Logf("killed after %d of %d rows (cursor id %d); resumed and purged the other %d", done, len(matching), last, len(after))
}
