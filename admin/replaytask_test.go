package admin_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/admin"
	"github.com/flashsync/flashsync/canal"
	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/flashsync/flashsync/jobs"
)

// The binlog the scripted engine reads: batches at every 100 bytes from
// its start (4, or the From it is given) to scriptEnd.
const (
	scriptFile = "script-bin.000001"
	scriptEnd  = 1004
)

// scriptedEngine is a replay engine (admin.ReplayFunc) that plays a script
// instead of reading a binlog, so that the task logic around the engine
// (progress, cancel, resume, failure) runs on the real task store, NSQ and
// purgers with every step in the test's hands. Each batch purges one key,
// <prefix>script:<pos>, in the first Redis group; with a gate, the engine
// waits for a token before each batch.
type scriptedEngine struct {
	prefix string
	gate   chan struct{}
	fail   error // returned at once, when set

	mu    sync.Mutex
	froms []canal.ReplayBound
	ended []error // what each call returned
}

func (e *scriptedEngine) replay(ctx context.Context, o canal.ReplayOptions) (res canal.ReplayResult, err error) {
	e.mu.Lock()
	e.froms = append(e.froms, o.From)
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.ended = append(e.ended, err)
		e.mu.Unlock()
	}()
	if e.fail != nil {
		return res, e.fail
	}
	start := uint32(4)
	if o.From.File != "" {
		start = o.From.Pos
	}
	total := int64(scriptEnd - start)
	for p := start + 100; p <= scriptEnd; p += 100 {
		if e.gate != nil {
			select {
			case <-e.gate:
			case <-ctx.Done():
				return res, ctx.Err()
			}
		}
		o.Progress(int64(p-start), total)
		b := o.Rules.NewBatch()
		b.Add(0, e.key(p))
		if err := o.Publish(ctx, b, canal.Position{File: scriptFile, Pos: p}); err != nil {
			return res, err
		}
		res.BytesRead = int64(p - start)
	}
	res.BytesTotal, res.End = total, canal.Position{File: scriptFile, Pos: scriptEnd}
	return res, nil
}

func (e *scriptedEngine) key(pos uint32) string { return e.prefix + "script:" + strconv.Itoa(int(pos)) }

func (e *scriptedEngine) calls() ([]canal.ReplayBound, []error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]canal.ReplayBound(nil), e.froms...), append([]error(nil), e.ended...)
}

// taskServer is an admin server on the fixture's nsqd, groups and rules,
// with its own job store and acks consumer, its tasks in the database
// tasksDB (not the fixture daemon's: that one would resume them with the
// real engine), and replays played by engine.
type taskServer struct {
	url  string
	reg  *prometheus.Registry
	stop func()
}

func (f *fixture) startTaskServer(t *testing.T, tasksDB string, engine admin.ReplayFunc) *taskServer {
	t.Helper()
	cfg, err := configs.Load(f.config)
	if err != nil {
		t.Fatal(err)
	}
	rules, err := cfg.BuildRules()
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	store, err := jobs.New(jobs.Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	redisGroups, httpGroups := cfg.Groups()
	pub, err := invalidate.NewPublisher(invalidate.PublisherOptions{
		NSQDTCP: cfg.NSQ.NSQDTCP, NSQDHTTP: cfg.NSQ.NSQDHTTP, TopicPrefix: cfg.NSQ.TopicPrefix,
		Groups: redisGroups, HTTPGroups: httpGroups, OnPublished: store.Expect, Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pub.Close)
	db, err := sql.Open("mysql", "root@tcp("+stacktest.MySQLAddr()+")/?loc=UTC&time_zone=%27%2B00%3A00%27&interpolateParams=true")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	o := cfg.AdminOptions()
	o.Addr, o.AuditDatabase = "127.0.0.1:0", tasksDB
	o.DB, o.Rules, o.Publisher, o.Jobs, o.Replay, o.Registerer = db, rules, pub, store, engine, reg
	o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := admin.New(o)
	if err != nil {
		t.Fatal(err)
	}
	stopAcks := stacktest.Run(t, "job acks", func(ctx context.Context) error {
		return store.Consume(ctx, jobs.ConsumerOptions{NSQDTCP: cfg.NSQ.NSQDTCP, TopicPrefix: cfg.NSQ.TopicPrefix})
	})
	stopSrv := stacktest.RunAndClose(t, "admin", srv)
	return &taskServer{url: "http://" + srv.Addr(), reg: reg, stop: func() { stopSrv(); stopAcks() }}
}

// on is the fixture's call against another admin server.
func (f *fixture) on(ts *taskServer) *fixture {
	g := *f
	g.url = ts.url
	return &g
}

// replayBody is a replay from a datetime (checked on the server without
// reading it), to the server's position now.
const replayBody = `{"reason":"scripted","from":"2030-01-01 00:00:00"}`

func (f *fixture) submit(t *testing.T, path, body string) string {
	t.Helper()
	status, out := f.call(t, "POST", path, adminToken, body)
	if status != http.StatusAccepted {
		t.Fatalf("POST %s: %d %v", path, status, out)
	}
	return out["task"].(map[string]any)["id"].(string)
}

// doneAt is a waitTask condition: the task acknowledged n bytes.
func doneAt(n float64) func(map[string]any) error {
	return func(task map[string]any) error {
		if task["done"] != n {
			return fmt.Errorf("task %s done %v, want %v", task["id"], task["done"], n)
		}
		return nil
	}
}

func TestReplayTaskProgress(t *testing.T) {
	f := newFixtureWith(t, fixtureOptions{admin: taskAdminLines("")})
	engine := &scriptedEngine{prefix: f.keyPre, gate: make(chan struct{})}
	ts := f.startTaskServer(t, stacktest.NewDatabase(t), engine.replay)
	g := f.on(ts)
	ga := []*redis.Client{setKeys(t, f.ga[0].Addr()), setKeys(t, f.ga[1].Addr())}
	var keys []string
	for p := uint32(104); p <= scriptEnd; p += 100 {
		keys = append(keys, engine.key(p))
	}
	for _, c := range ga {
		for _, k := range keys {
			if err := c.Set(context.Background(), k, "v", 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	id := g.submit(t, "/api/v1/replays", replayBody)
	for i := range 3 {
		engine.gate <- struct{}{}
		task := g.waitTask(t, id, doneAt(float64(100*(i+1))))
		// Progress is what nsqd acknowledged, over the engine's total.
		if want := float64(100*(i+1)) / 1000; task["progress"] != want || task["total"] != 1000.0 || task["state"] != "running" {
			t.Errorf("after batch %d: %v, want progress %v of 1000 bytes", i+1, task, want)
		}
		// The gauge follows the row (it is set once the row is written).
		stacktest.Eventually(t, 5*time.Second, func() error {
			if v := stacktest.MetricValue(t, ts.reg, "flashsync_admin_task_progress_ratio", map[string]string{"kind": "replay", "task": id}); v != float64(100*(i+1))/1000 {
				return fmt.Errorf("progress gauge %v after batch %d", v, i+1)
			}
			return nil
		})
	}
	if c := g.waitTask(t, id, doneAt(300))["cursor"].(map[string]any); c["file"] != scriptFile || c["pos"] != 304.0 {
		t.Errorf("cursor %v: want %s:304, past the third batch", c, scriptFile)
	}
	// One replay at a time in a process.
	if status, out := g.call(t, "POST", "/api/v1/replays", adminToken, replayBody); status != http.StatusConflict || out["code"] != "busy" {
		t.Errorf("a second replay: %d %v, want 409 busy", status, out)
	}
	close(engine.gate)
	task := g.waitTask(t, id, taskState("done"))
	if task["done"] != 1000.0 || task["total"] != 1000.0 || task["progress"] != 1.0 || task["unit"] != "bytes" {
		t.Errorf("finished: %v", task)
	}
	g.waitTask(t, id, jobsDone(10))
	if hasSeries(t, ts.reg, "flashsync_admin_task_progress_ratio", id) {
		t.Error("the progress gauge of a finished task stays")
	}
	for i, c := range ga {
		if n := exists(t, c, keys...); n != 0 {
			t.Errorf("ga replica %d keeps %d of the replayed keys", i, n)
		}
	}
	if v := stacktest.MetricValue(t, ts.reg, "flashsync_admin_task_units_total", map[string]string{"kind": "replay"}); v != 1000 {
		t.Errorf("units counted %v, want the 1000 bytes", v)
	}
	waitMetric(t, ts.reg, "flashsync_admin_tasks_total", map[string]string{"kind": "replay", "state": "done"}, 1)
}

func TestReplayTaskCancel(t *testing.T) {
	f := newFixtureWith(t, fixtureOptions{admin: taskAdminLines("")})
	engine := &scriptedEngine{prefix: f.keyPre, gate: make(chan struct{})}
	ts := f.startTaskServer(t, stacktest.NewDatabase(t), engine.replay)
	g := f.on(ts)
	id := g.submit(t, "/api/v1/replays", replayBody)
	for range 3 {
		engine.gate <- struct{}{}
	}
	g.waitTask(t, id, doneAt(300))
	status, task := g.call(t, "POST", "/api/v1/tasks/"+id+"/cancel", adminToken, "")
	if status != http.StatusOK || task["state"] != "cancelled" || task["error"] != "cancelled by admin" || task["done"] != 300.0 {
		t.Fatalf("cancel: %d %v", status, task)
	}
	// The answer came once the engine had stopped: its context ended.
	if _, ended := engine.calls(); len(ended) != 1 || !errors.Is(ended[0], context.Canceled) {
		t.Errorf("engine returned %v, want context.Canceled", ended)
	}
	if task := g.waitTask(t, id, jobsDone(3)); task["state"] != "cancelled" {
		t.Errorf("after the cancel: %v", task)
	}
	if status, out := g.call(t, "POST", "/api/v1/tasks/"+id+"/cancel", adminToken, ""); status != http.StatusConflict {
		t.Errorf("second cancel: %d %v, want 409", status, out)
	}
	rows := g.auditRows(t, func(e map[string]any) bool { return e["action"] == "cancel" && e["job"] == id })
	if len(rows) != 2 || rows[1]["outcome"] != "accepted" || rows[0]["status"] != 409.0 {
		t.Errorf("audit of the cancels: %v", rows)
	}
	if v := stacktest.MetricValue(t, ts.reg, "flashsync_admin_tasks_total", map[string]string{"kind": "replay", "state": "cancelled"}); v != 1 {
		t.Errorf("cancelled tasks counted %v", v)
	}
	if hasSeries(t, ts.reg, "flashsync_admin_task_progress_ratio", id) {
		t.Error("the progress gauge of a cancelled task stays")
	}
}

// A replay stopped with its process resumes in the next one from its
// cursor, and republishes nothing before it.
func TestReplayTaskResumes(t *testing.T) {
	f := newFixtureWith(t, fixtureOptions{admin: taskAdminLines("")})
	tasksDB := stacktest.NewDatabase(t)
	first := &scriptedEngine{prefix: f.keyPre, gate: make(chan struct{})}
	a := f.startTaskServer(t, tasksDB, first.replay)
	id := f.on(a).submit(t, "/api/v1/replays", replayBody)
	for range 4 {
		first.gate <- struct{}{}
	}
	f.on(a).waitTask(t, id, doneAt(400))
	a.stop()

	second := &scriptedEngine{prefix: f.keyPre}
	b := f.startTaskServer(t, tasksDB, second.replay)
	g := f.on(b)
	task := g.waitTask(t, id, taskState("done"))
	if task["done"] != 1000.0 || task["total"] != 1000.0 {
		t.Errorf("resumed task %v: want 1000 of 1000 bytes", task)
	}
	froms, _ := second.calls()
	if len(froms) != 1 || froms[0] != (canal.ReplayBound{File: scriptFile, Pos: 404}) {
		t.Errorf("the second process replayed from %v, want %s:404", froms, scriptFile)
	}
	// Jobs 5 to 10 are the second process's: it knows them; 1 to 4 it
	// never published.
	task = g.waitTask(t, id, func(task map[string]any) error {
		if j := task["jobs"].(map[string]any); j["published"] != 10.0 || j["done"] != 6.0 {
			return fmt.Errorf("jobs %v: want 10 published, the 6 of this process done", j)
		}
		return nil
	})
	for n, known := range map[int]bool{4: false, 5: true, 10: true} {
		status, _ := g.call(t, "GET", fmt.Sprintf("/api/v1/jobs/%s-%d", id, n), viewerToken, "")
		if (status == http.StatusOK) != known {
			t.Errorf("job %s-%d: %d on the second process", id, n, status)
		}
	}
}

// The engine's ErrStartGone fails the task with its message.
func TestReplayTaskStartGone(t *testing.T) {
	f := newFixtureWith(t, fixtureOptions{admin: taskAdminLines("")})
	engine := &scriptedEngine{prefix: f.keyPre, fail: fmt.Errorf("first binlog event is at 2031-01-01: %w", canal.ErrStartGone)}
	ts := f.startTaskServer(t, stacktest.NewDatabase(t), engine.replay)
	g := f.on(ts)
	id := g.submit(t, "/api/v1/replays", replayBody)
	task := g.waitTask(t, id, taskState("failed"))
	if msg := task["error"].(string); !strings.Contains(msg, "replay start is no longer on the server") || !strings.Contains(msg, "2031-01-01") {
		t.Errorf("failed task's error %q", msg)
	}
	waitMetric(t, ts.reg, "flashsync_admin_tasks_total", map[string]string{"kind": "replay", "state": "failed"}, 1)
}

// hasSeries tells whether reg has a series of name for task.
func hasSeries(t *testing.T, reg prometheus.Gatherer, name, task string) bool {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if mf.GetName() == name && l.GetName() == "task" && l.GetValue() == task {
					return true
				}
			}
		}
	}
	return false
}

// waitMetric polls until the metric is want: the runner counts a task's end
// once its row says so.
func waitMetric(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string, want float64) {
	t.Helper()
	stacktest.Eventually(t, 10*time.Second, func() error {
		if v := stacktest.MetricValue(t, reg, name, labels); v != want {
			return fmt.Errorf("%s%v = %v, want %v", name, labels, v, want)
		}
		return nil
	})
}
