package admin_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/internal/route"
	"github.com/flashsync/flashsync/internal/stacktest"
)

// taskFixture is a fixture whose tests add rows to db.item and put each
// row's two keys on every Redis replica of both groups.
type taskFixture struct {
	*fixture
	clients map[string][]*redis.Client // by group: ga's two replicas, gb's one
}

// taskAdminLines are the [admin] lines of the task tests: a replay reader
// id of its own (tests replay concurrently on the shared MariaDB) and a
// short lease.
func taskAdminLines(extra string) string {
	return fmt.Sprintf("replay_server_id = %d\ntask_lease = \"1s\"\n%s", 3_000_000_000+time.Now().UnixNano()%1_000_000_000, extra)
}

func newTaskFixture(t *testing.T, adminLines string) *taskFixture {
	t.Helper()
	f := newFixtureWith(t, fixtureOptions{admin: taskAdminLines(adminLines)})
	tf := &taskFixture{fixture: f, clients: map[string][]*redis.Client{
		"ga": {stacktest.Redis(t, f.ga[0].Addr()), stacktest.Redis(t, f.ga[1].Addr())},
		"gb": {stacktest.Redis(t, f.gb.Addr())},
	}}
	return tf
}

// insertRows inserts ids first to first+n-1 into db.item, with the price
// price(id).
func (f *taskFixture) insertRows(t *testing.T, first, n int, price func(id int) string) {
	t.Helper()
	var values []string
	for id := first; id < first+n; id++ {
		values = append(values, fmt.Sprintf("(%d, 'item %d', %s, 0)", id, id, price(id)))
	}
	stacktest.Exec(t, stacktest.MySQL(t), "INSERT INTO "+f.db+".item VALUES "+strings.Join(values, ", "))
}

// rowKeys are the keys the rules render for item id, and the group they
// route to (the rules route by id, as internal/route hashes it).
func (f *taskFixture) rowKeys(id int) (string, []string) {
	s := strconv.Itoa(id)
	group := []string{"ga", "gb"}[route.GroupFor([]byte(s), 2)]
	return group, []string{f.keyPre + "item:" + s, f.keyPre + "item:page:" + s}
}

// setRowKeys writes the keys of every id on every replica of both groups.
func (f *taskFixture) setRowKeys(t *testing.T, ids []int) {
	t.Helper()
	for _, id := range ids {
		_, keys := f.rowKeys(id)
		for _, cs := range f.clients {
			for _, c := range cs {
				for _, k := range keys {
					if err := c.Set(context.Background(), k, "v", 0).Err(); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
	}
}

// checkPurged checks that the keys of purged ids are gone from every
// replica of their group, and stay on the other group's; and that the keys
// of kept ids stay everywhere.
func (f *taskFixture) checkPurged(t *testing.T, purged, kept []int) {
	t.Helper()
	for _, id := range purged {
		group, keys := f.rowKeys(id)
		for g, cs := range f.clients {
			for i, c := range cs {
				n := exists(t, c, keys...)
				if g == group && n != 0 {
					t.Errorf("item %d: %d of its keys still on %s replica %d", id, n, g, i)
				}
				if g != group && n != 2 {
					t.Errorf("item %d routes to %s, but %s replica %d lost its keys", id, group, g, i)
				}
			}
		}
	}
	for _, id := range kept {
		_, keys := f.rowKeys(id)
		for g, cs := range f.clients {
			for i, c := range cs {
				if n := exists(t, c, keys...); n != 2 {
					t.Errorf("item %d: %s replica %d lost %d of its keys (not in the task's rows)", id, g, i, 2-n)
				}
			}
		}
	}
}

// waitPurged polls until the keys of purged ids are gone from their
// groups' replicas.
func (f *taskFixture) waitPurged(t *testing.T, purged []int) {
	t.Helper()
	stacktest.Eventually(t, 20*time.Second, func() error {
		for _, id := range purged {
			group, keys := f.rowKeys(id)
			for i, c := range f.clients[group] {
				if n := exists(t, c, keys...); n != 0 {
					return fmt.Errorf("item %d: %d keys still on %s replica %d", id, n, group, i)
				}
			}
		}
		return nil
	})
}

// waitTask polls the task until cond accepts it.
func (f *fixture) waitTask(t *testing.T, id string, cond func(task map[string]any) error) map[string]any {
	t.Helper()
	var task map[string]any
	stacktest.Eventually(t, 30*time.Second, func() error {
		status, out := f.call(t, "GET", "/api/v1/tasks/"+id, viewerToken, "")
		if status != http.StatusOK {
			return fmt.Errorf("task %s: %d %v", id, status, out)
		}
		task = out
		return cond(out)
	})
	return task
}

// taskState is a waitTask condition: the task reached state.
func taskState(state string) func(map[string]any) error {
	return func(task map[string]any) error {
		if task["state"] != state {
			return fmt.Errorf("task %v: want %s", task, state)
		}
		return nil
	}
}

// waitDone waits until the task is done; a failed task fails the test at
// once.
func (f *fixture) waitDone(t *testing.T, id string) map[string]any {
	t.Helper()
	return f.waitTask(t, id, func(task map[string]any) error {
		if task["state"] == "failed" {
			t.Fatalf("task failed: %v", task)
		}
		return taskState("done")(task)
	})
}

// jobsDone is a waitTask condition: every job published is done.
func jobsDone(n float64) func(map[string]any) error {
	return func(task map[string]any) error {
		j := task["jobs"].(map[string]any)
		if j["published"] != n || j["done"] != n || j["pending"] != 0.0 || j["failed"] != 0.0 {
			return fmt.Errorf("task %s jobs %v: want %v published and done", task["id"], j, n)
		}
		return nil
	}
}

func ids(from, to int, keep func(id int) bool) []int {
	var out []int
	for id := from; id <= to; id++ {
		if keep(id) {
			out = append(out, id)
		}
	}
	return out
}

// expensive is the filter of the re-sync tests: 12 of ids 101 to 130.
func expensive(id int) bool { return id%5 < 2 }

func priceOf(id int) string {
	if expensive(id) {
		return "150.00"
	}
	return "50.00"
}

func TestResyncFilteredTable(t *testing.T) {
	f := newTaskFixture(t, "")
	f.insertRows(t, 101, 30, priceOf)
	matching, others := ids(101, 130, expensive), ids(101, 130, func(id int) bool { return !expensive(id) })
	if len(matching) != 12 {
		t.Fatalf("%d rows match, want 12", len(matching))
	}
	f.setRowKeys(t, ids(101, 130, func(int) bool { return true }))
	body := `{"reason":"rule changed","table":"` + f.db + `.item","where":"price > 100","chunk_rows":5,"rows_per_second":50%s}`

	t.Run("dry run counts and previews the first chunk", func(t *testing.T) {
		before := f.published(t)
		status, out := f.call(t, "POST", "/api/v1/resyncs", adminToken, fmt.Sprintf(body, `,"dry_run":true`))
		if status != http.StatusOK || out["dry_run"] != true {
			t.Fatalf("dry run: %d %v", status, out)
		}
		task, pv := out["task"].(map[string]any), out["preview"].(map[string]any)
		if task["state"] != "preview" || task["total"] != 12.0 || task["unit"] != "rows" || task["kind"] != "resync" {
			t.Errorf("preview task %v", task)
		}
		first := pv["first_chunk"].(map[string]any)
		if pv["matching_rows"] != 12.0 || pv["chunks"] != 3.0 || pv["chunk_rows"] != 5.0 || fmt.Sprint(pv["primary_key"]) != "[id]" ||
			len(first["rows"].([]any)) != 5 || first["counts"].(map[string]any)["keys"] != 10.0 {
			t.Errorf("preview %v", pv)
		}
		if after := f.published(t); after != before {
			t.Errorf("a dry run published %d messages", after-before)
		}
	})

	var id string
	t.Run("run", func(t *testing.T) {
		status, out := f.call(t, "POST", "/api/v1/resyncs", adminToken, fmt.Sprintf(body, ""))
		if status != http.StatusAccepted {
			t.Fatalf("resync: %d %v", status, out)
		}
		task := out["task"].(map[string]any)
		id = task["id"].(string)
		if task["state"] != "running" || task["started_by"] != "admin" || task["reason"] != "rule changed" || task["total"] != 12.0 {
			t.Errorf("accepted task %v", task)
		}
		req := task["request"].(map[string]any)
		if req["rows_per_second"] != 50.0 || req["chunk_rows"] != 5.0 || req["where"] != "price > 100" {
			t.Errorf("stored request %v", req)
		}
		task = f.waitTask(t, id, taskState("done"))
		if task["done"] != 12.0 || task["total"] != 12.0 || task["progress"] != 1.0 || task["error"] != "" {
			t.Errorf("finished task %v: want 12 of 12 rows, progress 1", task)
		}
		if c := task["cursor"].(map[string]any); fmt.Sprint(c["columns"], c["after"]) != "[id] [130]" {
			t.Errorf("cursor %v: want the last matching id, 130", c)
		}
		// 12 rows in chunks of 5: 3 jobs, each acknowledged by both groups'
		// replicas and the Varnish instance its rows reach.
		f.waitTask(t, id, jobsDone(3))
		f.checkPurged(t, matching, others)
		for _, j := range []string{id + "-1", id + "-3"} {
			status, job := f.call(t, "GET", "/api/v1/jobs/"+j, viewerToken, "")
			if status != http.StatusOK || job["started_by"] != "admin" || job["reason"] != "rule changed" {
				t.Errorf("job %s: %d %v", j, status, job)
			}
		}
	})

	t.Run("audited before it ran", func(t *testing.T) {
		rows := f.auditRows(t, func(e map[string]any) bool { return e["job"] == id })
		if len(rows) != 1 || rows[0]["action"] != "resync" || rows[0]["outcome"] != "accepted" || rows[0]["status"] != 202.0 ||
			!strings.Contains(rows[0]["request"].(string), "price > 100") {
			t.Fatalf("audit of task %s: %v", id, rows)
		}
		_, task := f.call(t, "GET", "/api/v1/tasks/"+id, viewerToken, "")
		audited, _ := time.Parse(time.RFC3339Nano, rows[0]["time"].(string))
		created, _ := time.Parse(time.RFC3339Nano, task["created"].(string))
		if !audited.Before(created) {
			t.Errorf("audited at %v, the task created at %v", audited, created)
		}
		if dry := f.auditRows(t, func(e map[string]any) bool { return e["action"] == "resync" && e["dry_run"] == true }); len(dry) != 1 {
			t.Errorf("dry run audit rows %v", dry)
		}
	})

	t.Run("listed and counted", func(t *testing.T) {
		status, out := f.call(t, "GET", "/api/v1/tasks?limit=5", viewerToken, "")
		if tasks, _ := out["tasks"].([]any); status != http.StatusOK || len(tasks) != 1 || tasks[0].(map[string]any)["id"] != id {
			t.Errorf("tasks: %d %v", status, out)
		}
		// Counted once the row said done: polled.
		stacktest.Eventually(t, 10*time.Second, func() error {
			for series, want := range map[string]float64{
				`flashsync_admin_task_units_total{kind="resync"}`:                      12,
				`flashsync_admin_tasks_total{kind="resync",state="done"}`:              1,
				`flashsync_admin_task_progress_ratio{kind="resync",task="` + id + `"}`: -1, // gone once ended
			} {
				if got := f.metric(t, series); got != want {
					return fmt.Errorf("%s = %v, want %v", series, got, want)
				}
			}
			return nil
		})
	})
}

// The task endpoints are the admin's: others get 403, no token 401; bad
// input is a 400 naming it, audited, and starts nothing; past the rate
// limit, 429.
func TestTaskRefusals(t *testing.T) {
	f := newTaskFixture(t, "admin_actions_per_minute = 2")
	f.insertRows(t, 101, 3, priceOf)
	item := f.db + ".item"
	resync := `{"reason":"r","table":"` + item + `"}`
	replay := `{"reason":"r","from":"2026-12-02 14:00:00"}`
	for _, tt := range []struct {
		path, token, body string
		want              int
	}{
		{"/api/v1/resyncs", "", resync, 401},
		{"/api/v1/resyncs", "nope", resync, 401},
		{"/api/v1/resyncs", viewerToken, resync, 403},
		{"/api/v1/resyncs", operatorToken, resync, 403},
		{"/api/v1/resyncs", operatorToken, `{"reason":"r","table":"` + item + `","dry_run":true}`, 403},
		{"/api/v1/replays", "", replay, 401},
		{"/api/v1/replays", viewerToken, replay, 403},
		{"/api/v1/replays", operatorToken, replay, 403},
		{"/api/v1/tasks/nope/cancel", "", "", 401},
		{"/api/v1/tasks/nope/cancel", viewerToken, "", 403},
		{"/api/v1/tasks/nope/cancel", operatorToken, "", 403},
		{"/api/v1/tasks/nope/cancel", adminToken, "", 404},
	} {
		status, out := f.call(t, "POST", tt.path, tt.token, tt.body)
		if msg, _ := out["error"].(string); status != tt.want || (tt.want == 403 && !strings.Contains(msg, "needs the admin role")) {
			t.Errorf("POST %s token %q %s: %d %v, want %d", tt.path, tt.token, tt.body, status, out, tt.want)
		}
	}
	for _, path := range []string{"/api/v1/tasks", "/api/v1/tasks/nope"} {
		if status, out := f.call(t, "GET", path, "", ""); status != 401 {
			t.Errorf("GET %s without token: %d %v", path, status, out)
		}
	}
	if status, out := f.call(t, "GET", "/api/v1/tasks/nope", viewerToken, ""); status != 404 {
		t.Errorf("GET an unknown task: %d %v", status, out)
	}

	logs := binaryLogs(t)
	base, oldest := splitBinlog(t, logs[0])
	_, newest := splitBinlog(t, logs[len(logs)-1])
	gone := fmt.Sprintf("%s.%06d:4", base, oldest-1)
	before := f.published(t)
	bad := []struct {
		path, body, msg string
	}{
		{"/api/v1/resyncs", `{"reason":"r","table":"` + f.db + `.nope"}`, "table: no [[rule]] watches " + f.db + ".nope"},
		{"/api/v1/resyncs", `{"reason":"r","table":"` + f.db + `.other"}`, "table: no [[rule]] watches " + f.db + ".other"},
		{"/api/v1/resyncs", `{"reason":"r","table":"` + f.db + `.ghost"}`, "table: " + f.db + ".ghost does not exist"},
		{"/api/v1/resyncs", `{"reason":"r","table":"` + item + `","where":"price >>> 1"}`, "where: Error 1064 (42000): You have an error in your SQL syntax"},
		{"/api/v1/resyncs", `{"reason":"r","table":"` + item + `","where":"nope > 1"}`, "where: Error 1054 (42S22): Unknown column 'nope'"},
		{"/api/v1/resyncs", `{"reason":"r","table":"` + item + `","where":"1) OR (1"}`, "where: byte 1: ')' closes no '('"},
		{"/api/v1/resyncs", `{"reason":"r","table":"` + item + `","rows_per_second":0}`, "rows_per_second: 0; want 1 to 100000"},
		{"/api/v1/resyncs", `{"reason":"r","table":"` + item + `","rows_per_second":1000000}`, "rows_per_second: 1000000; want 1 to 100000"},
		{"/api/v1/resyncs", `{"table":"` + item + `"}`, "reason: missing"},
		{"/api/v1/replays", `{"reason":"r","from":"2026-13-02 14:00:00"}`, `from: "2026-13-02 14:00:00" is not a datetime`},
		{"/api/v1/replays", `{"reason":"r","from":"2026-12-02 15:00:00","to":"2026-12-02 14:00:00"}`, "to: 2026-12-02T14:00:00Z is not after from"},
		{"/api/v1/replays", `{"reason":"r","from":"2026-12-02 14:00:00","tables":["` + f.db + `.other"]}`, "tables[0]: no [[rule]] watches " + f.db + ".other"},
		{"/api/v1/replays", `{"reason":"r","from":"` + gone + `"}`, "from " + gone + ": replay start is no longer on the server (the oldest binlog is " + logs[0]},
		{"/api/v1/replays", `{"reason":"r","from":"` + fmt.Sprintf("%s.%06d:4", base, newest+1) + `"}`, "is not written yet"},
		{"/api/v1/replays", `{"reason":"r","from":"` + logs[0] + `:4","to":"` + logs[0] + `:999999999999"}`, "is not a datetime"},
		{"/api/v1/replays", `{"reason":"r","from":"` + logs[0] + `:4","to":"` + logs[0] + `:4294967295"}`, "is past the end of " + logs[0]},
	}
	for _, tt := range bad {
		status, out := f.call(t, "POST", tt.path, adminToken, tt.body)
		if msg, _ := out["error"].(string); status != 400 || !strings.Contains(msg, tt.msg) {
			t.Errorf("%s: %d %v, want 400 with %q", tt.body, status, out, tt.msg)
		}
	}
	if status, out := f.call(t, "POST", "/api/v1/replays", adminToken, `{"reason":"r","from":"`+gone+`"}`); out["code"] != "start_gone" {
		t.Errorf("start gone: %d %v, want code start_gone", status, out)
	}
	if status, out := f.call(t, "GET", "/api/v1/tasks", viewerToken, ""); status != 200 || len(out["tasks"].([]any)) != 0 {
		t.Errorf("refused requests started tasks: %d %v", status, out)
	}
	if after := f.published(t); after != before {
		t.Errorf("refused requests published %d messages", after-before)
	}
	refused := f.auditRows(t, func(e map[string]any) bool {
		return (e["action"] == "resync" || e["action"] == "replay") && e["outcome"] == "refused" && e["status"] == 400.0 && e["user"] == "admin"
	})
	if len(refused) != len(bad)+1 {
		t.Errorf("%d refused requests audited, want %d", len(refused), len(bad)+1)
	}
	if rows := f.auditRows(t, func(e map[string]any) bool { return e["status"] == 403.0 && e["user"] == "operator" }); len(rows) != 4 {
		t.Errorf("audited 403s of the operator: %v, want 4", rows)
	}

	// Two a minute: two tiny re-syncs run, the third is refused.
	for i := range 2 {
		status, out := f.call(t, "POST", "/api/v1/resyncs", adminToken, resync)
		if status != http.StatusAccepted {
			t.Fatalf("re-sync %d: %d %v", i, status, out)
		}
		f.waitTask(t, out["task"].(map[string]any)["id"].(string), taskState("done"))
	}
	status, out := f.call(t, "POST", "/api/v1/resyncs", adminToken, `{"reason":"third","table":"`+item+`"}`)
	if ra, _ := out["retry_after_s"].(float64); status != http.StatusTooManyRequests || ra < 1 || ra > 30 {
		t.Errorf("third re-sync: %d %v, want 429 with a retry in 1-30 s", status, out)
	}
	if rows := f.auditRows(t, func(e map[string]any) bool { return e["status"] == 429.0 }); len(rows) != 1 || !strings.Contains(rows[0]["request"].(string), "third") {
		t.Errorf("audit of the 429: %v", rows)
	}
	// A finished task cannot be cancelled.
	_, list := f.call(t, "GET", "/api/v1/tasks", viewerToken, "")
	done := list["tasks"].([]any)[0].(map[string]any)["id"].(string)
	if status, out := f.call(t, "POST", "/api/v1/tasks/"+done+"/cancel", adminToken, ""); status != http.StatusConflict || out["code"] != "not_running" {
		t.Errorf("cancel a finished task: %d %v", status, out)
	}
}

// A task whose audit row cannot be written does not run: 503, no task,
// nothing published.
func TestTaskAuditUnwritable(t *testing.T) {
	auditDB := stacktest.NewDatabase(t)
	stacktest.Exec(t, stacktest.MySQL(t), "CREATE TABLE "+auditDB+".admin_audit (id INT PRIMARY KEY)")
	f := newFixtureWith(t, fixtureOptions{auditDB: auditDB, admin: taskAdminLines("")})
	before := f.published(t)
	for _, body := range []string{
		`{"reason":"r","table":"` + f.db + `.item"}`,
		`{"reason":"r","table":"` + f.db + `.item","dry_run":true}`,
	} {
		status, out := f.call(t, "POST", "/api/v1/resyncs", adminToken, body)
		if msg, _ := out["error"].(string); status != http.StatusServiceUnavailable || !strings.Contains(msg, "nothing was run") {
			t.Errorf("%s: %d %v, want 503", body, status, out)
		}
	}
	if status, out := f.call(t, "GET", "/api/v1/tasks", viewerToken, ""); status != 200 || len(out["tasks"].([]any)) != 0 {
		t.Errorf("an unaudited request started a task: %d %v", status, out)
	}
	if after := f.published(t); after != before {
		t.Errorf("an unaudited re-sync published %d messages", after-before)
	}
}

// binaryLogs lists the shared MariaDB's binlogs, oldest first.
func binaryLogs(t *testing.T) []string {
	t.Helper()
	r := stacktest.Exec(t, stacktest.MySQL(t), "SHOW BINARY LOGS")
	var logs []string
	for i := range r.RowNumber() {
		name, err := r.GetString(i, 0)
		if err != nil {
			t.Fatal(err)
		}
		logs = append(logs, name)
	}
	if len(logs) == 0 {
		t.Fatal("the shared MariaDB has no binlog")
	}
	return logs
}

func splitBinlog(t *testing.T, file string) (string, int) {
	t.Helper()
	i := strings.LastIndexByte(file, '.')
	n, err := strconv.Atoi(file[i+1:])
	if err != nil {
		t.Fatalf("binlog %q: %v", file, err)
	}
	return file[:i], n
}

// masterPos is the shared MariaDB's binlog position now, as a replay bound.
func masterPos(t *testing.T) string {
	t.Helper()
	r := stacktest.Exec(t, stacktest.MySQL(t), "SHOW MASTER STATUS")
	file, err := r.GetString(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	pos, err := r.GetUint(0, 1)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s:%d", file, pos)
}

// TestReplay replays, with canal.Replay, a time range written with SET
// timestamp (in the future: real commits around them have earlier stamps
// and neither start nor end the range), then a range of positions: the
// keys of exactly the rows changed in the range are purged.
func TestReplay(t *testing.T) {
	f := newTaskFixture(t, "")
	f.insertRows(t, 201, 20, priceOf)
	all := ids(201, 220, func(int) bool { return true })
	conn := stacktest.MySQL(t)
	// MariaDB 10.11 stamps at most 2038-01-19 (32-bit); a random hour of
	// 2037 so that no other test's stamps end this range in its middle.
	from := time.Date(2037, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(rand.IntN(300*24)) * time.Hour)
	to := from.Add(time.Hour)
	update := func(stamp time.Time, first, last int) {
		stacktest.Exec(t, conn, fmt.Sprintf("SET timestamp = %d", stamp.Unix()))
		for id := first; id <= last; id++ {
			stacktest.Exec(t, conn, fmt.Sprintf("UPDATE %s.item SET name = 'renamed %d' WHERE id = %d", f.db, id, id))
		}
		stacktest.Exec(t, conn, "SET timestamp = DEFAULT")
	}
	update(from.Add(-10*time.Minute), 201, 205) // before
	update(from, 206, 207)                      // in: at from
	update(from.Add(59*time.Minute), 208, 210)  // in
	update(to, 211, 215)                        // after: at to
	f.setRowKeys(t, all)
	layout := "2006-01-02 15:04:05"

	t.Run("time range", func(t *testing.T) {
		body := fmt.Sprintf(`{"reason":"our rule was wrong","from":%q,"to":%q,"tables":[%q]}`, from.Format(layout), to.Format(layout), f.db+".item")
		status, out := f.call(t, "POST", "/api/v1/replays", adminToken, body)
		if status != http.StatusAccepted {
			t.Fatalf("replay: %d %v", status, out)
		}
		id := out["task"].(map[string]any)["id"].(string)
		task := f.waitDone(t, id)
		if task["unit"] != "bytes" || task["progress"] != 1.0 || task["done"].(float64) <= 0 || task["done"] != task["total"] {
			t.Errorf("finished replay %v", task)
		}
		f.waitPurged(t, ids(206, 210, func(int) bool { return true }))
		f.checkPurged(t, ids(206, 210, func(int) bool { return true }), append(ids(201, 205, func(int) bool { return true }), ids(211, 220, func(int) bool { return true })...))
	})

	t.Run("positions", func(t *testing.T) {
		f.setRowKeys(t, all)
		start := masterPos(t)
		update(time.Now(), 216, 218)
		end := masterPos(t)
		update(time.Now(), 219, 220) // after the range
		status, out := f.call(t, "POST", "/api/v1/replays", adminToken, fmt.Sprintf(`{"reason":"by position","from":%q,"to":%q}`, start, end))
		if status != http.StatusAccepted {
			t.Fatalf("replay: %d %v", status, out)
		}
		f.waitDone(t, out["task"].(map[string]any)["id"].(string))
		f.waitPurged(t, ids(216, 218, func(int) bool { return true }))
		f.checkPurged(t, ids(216, 218, func(int) bool { return true }), append(ids(201, 215, func(int) bool { return true }), 219, 220))
	})

	t.Run("dry run resolves the range", func(t *testing.T) {
		logs := binaryLogs(t)
		start := logs[len(logs)-1] + ":4"
		status, out := f.call(t, "POST", "/api/v1/replays", adminToken, fmt.Sprintf(`{"reason":"look","from":%q,"dry_run":true}`, start))
		if status != http.StatusOK {
			t.Fatalf("dry run: %d %v", status, out)
		}
		pv := out["preview"].(map[string]any)
		files := pv["files"].([]any)
		if pv["bytes_exact"] != true || len(files) != 1 || files[0].(map[string]any)["name"] != logs[len(logs)-1] ||
			pv["bytes_total"] != files[0].(map[string]any)["size"].(float64)-4 || fmt.Sprint(pv["tables"]) != "["+f.db+".ghost "+f.db+".item]" {
			t.Errorf("preview %v", pv)
		}
		if !strings.HasPrefix(pv["to"].(string), logs[len(logs)-1]+":") {
			t.Errorf("to %v: want the server's position", pv["to"])
		}
	})
}
