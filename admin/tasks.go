package admin

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/flashsync/flashsync/jobs"
)

// Kinds of tasks, their units and states.
const (
	KindReplay = "replay"
	KindResync = "resync"

	UnitBytes = "bytes"
	UnitRows  = "rows"

	TaskRunning   = "running"
	TaskDone      = "done"
	TaskFailed    = "failed"
	TaskCancelled = "cancelled"
	// TaskPreview is the state of the task a dry run answers: never stored.
	TaskPreview = "preview"
)

// Task is a replay or a re-sync, as the API answers it.
type Task struct {
	// ID names the task; its jobs are "<id>-1", "<id>-2", ... (one per
	// published batch).
	ID        string    `json:"id"`
	Kind      string    `json:"kind"`
	State     string    `json:"state"`
	StartedBy string    `json:"started_by"`
	Reason    string    `json:"reason"`
	Created   time.Time `json:"created"`
	Updated   time.Time `json:"updated"`
	// Done and Total count Unit: bytes of binlog for a replay, rows for a
	// re-sync. Done moves only once nsqd acknowledged what it covers.
	Done     int64   `json:"done"`
	Total    int64   `json:"total"`
	Unit     string  `json:"unit"`
	Progress float64 `json:"progress"`
	Error    string  `json:"error"`
	// Cursor is where the task resumes: for a replay {"file", "pos"} past
	// the last acknowledged batch, for a re-sync {"columns", "after"}, the
	// primary key of its last acknowledged row. {} before the first batch.
	Cursor json.RawMessage `json:"cursor"`
	// Request is the request as it runs: defaults filled in, and a
	// replay's omitted to resolved to the server's position at submit.
	Request json.RawMessage `json:"request"`
	Jobs    TaskJobs        `json:"jobs"`
	// Owner is the admin process running the task (while running), and
	// Heartbeat its last sign of life.
	Owner     string     `json:"owner,omitempty"`
	Heartbeat *time.Time `json:"heartbeat,omitempty"`
}

// TaskJobs aggregates a task's jobs: Published counts every batch it
// published; Pending, Done and Failed count those this process's job store
// still holds by state (none of the jobs published by another process, or
// evicted).
type TaskJobs struct {
	Published int64 `json:"published"`
	Pending   int   `json:"pending"`
	Done      int   `json:"done"`
	Failed    int   `json:"failed"`
}

// progress is done over total, within 0 and 1: rows added to a re-synced
// table after its count may make done pass total. A finished task is 1.
func progress(state string, done, total int64) float64 {
	switch {
	case state == TaskDone:
		return 1
	case total <= 0:
		return 0
	}
	return min(1, max(0, float64(done)/float64(total)))
}

// unitOf is the unit of a kind's done and total.
func unitOf(kind string) string {
	if kind == KindReplay {
		return UnitBytes
	}
	return UnitRows
}

// taskRow is one row of admin_tasks.
type taskRow struct {
	id, kind, user, reason string
	request, cursor        []byte
	state                  string
	done, total, batches   int64
	errText                string
	created, updated       time.Time
	owner                  string
	heartbeat              time.Time
}

// replayCursor is a replay's resume point: the position past the last
// transaction of its last acknowledged batch.
type replayCursor struct {
	File string `json:"file"`
	Pos  uint32 `json:"pos"`
	GTID string `json:"gtid,omitempty"`
}

// resyncCursor is a re-sync's resume point: the primary key (columns in
// the key's order, values as text) of its last acknowledged row.
type resyncCursor struct {
	Columns []string `json:"columns"`
	After   []string `json:"after"`
}

// errTaskGone: the task's row is no longer this process's running task
// (cancelled, or claimed by another process after a stale heartbeat).
var errTaskGone = errors.New("the task is no longer this process's to run")

// taskStore is the table <database>.admin_tasks: one row per task, its
// state, resume point and progress, and the process that runs it with
// its heartbeat. Every write of a running task is conditional on its
// owner, so a process whose heartbeat went stale, and whose task another
// process claimed, cannot move the task any more. version grows with every
// write, so an UPDATE's affected rows say whether it matched (MySQL counts
// a row whose values did not change as unaffected).
type taskStore struct{ sqlTable }

func newTaskStore(db *sql.DB, database string) *taskStore {
	return &taskStore{newSQLTable(db, database, "admin_tasks", "task", `
			id VARCHAR(64) NOT NULL PRIMARY KEY,
			kind VARCHAR(16) NOT NULL,
			user_name VARCHAR(64) NOT NULL,
			reason TEXT NOT NULL,
			request LONGTEXT NOT NULL,
			state VARCHAR(16) NOT NULL,
			cursor_json LONGTEXT NOT NULL,
			done BIGINT NOT NULL,
			total BIGINT NOT NULL,
			batches BIGINT NOT NULL,
			error_text TEXT NOT NULL,
			created DATETIME(6) NOT NULL,
			updated DATETIME(6) NOT NULL,
			owner VARCHAR(128) NOT NULL,
			heartbeat DATETIME(6) NOT NULL,
			version BIGINT NOT NULL,
			KEY (state, heartbeat),
			KEY (created)`)}
}

// The heartbeats are the database's clock (UTC_TIMESTAMP), so that those of
// processes on several machines compare on one clock; so are the updates.
const taskColumns = "id, kind, user_name, reason, request, state, cursor_json, done, total, batches, error_text, created, updated, owner, heartbeat"

// create inserts t, running and owned by t.owner, created at t.created.
func (ts *taskStore) create(ctx context.Context, t *taskRow) error {
	if err := ts.ensure(ctx); err != nil {
		return err
	}
	at := sqlTime(t.created)
	_, err := ts.db.ExecContext(ctx, "INSERT INTO "+ts.table()+" ("+taskColumns+", version)"+
		" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, '', ?, ?, ?, UTC_TIMESTAMP(6), 0)",
		t.id, t.kind, t.user, t.reason, string(t.request), TaskRunning, string(t.cursor), t.done, t.total, at, at, t.owner)
	if err != nil {
		return fmt.Errorf("create task %s in %s: %w", t.id, ts.table(), err)
	}
	return nil
}

func scanTask(row interface{ Scan(...any) error }) (*taskRow, error) {
	var t taskRow
	var request, cursor, created, updated, heartbeat string
	if err := row.Scan(&t.id, &t.kind, &t.user, &t.reason, &request, &t.state, &cursor, &t.done, &t.total, &t.batches, &t.errText,
		&created, &updated, &t.owner, &heartbeat); err != nil {
		return nil, err
	}
	t.request, t.cursor = []byte(request), []byte(cursor)
	for _, f := range []struct {
		s   string
		dst *time.Time
	}{{created, &t.created}, {updated, &t.updated}, {heartbeat, &t.heartbeat}} {
		v, err := time.Parse(sqlTimeRead, f.s)
		if err != nil {
			return nil, fmt.Errorf("task %s: time %q: %w", t.id, f.s, err)
		}
		*f.dst = v
	}
	return &t, nil
}

// get reads one task; nil when there is none.
func (ts *taskStore) get(ctx context.Context, id string) (*taskRow, error) {
	if err := ts.ensure(ctx); err != nil {
		return nil, err
	}
	t, err := scanTask(ts.db.QueryRowContext(ctx, "SELECT "+taskColumns+" FROM "+ts.table()+" WHERE id = ?", id))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("read task %s from %s: %w", id, ts.table(), err)
	}
	return t, nil
}

// list reads the newest limit tasks, newest first.
func (ts *taskStore) list(ctx context.Context, limit int) ([]*taskRow, error) {
	if err := ts.ensure(ctx); err != nil {
		return nil, err
	}
	rows, err := ts.db.QueryContext(ctx, "SELECT "+taskColumns+" FROM "+ts.table()+" ORDER BY created DESC, id DESC LIMIT ?", limit)
	if err != nil {
		return nil, fmt.Errorf("read tasks from %s: %w", ts.table(), err)
	}
	defer rows.Close()
	var out []*taskRow
	for rows.Next() {
		t, err := scanTask(rows)
		if err != nil {
			return nil, fmt.Errorf("read tasks from %s: %w", ts.table(), err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read tasks from %s: %w", ts.table(), err)
	}
	return out, nil
}

// exec runs an UPDATE of one task and tells whether it matched the row.
func (ts *taskStore) exec(ctx context.Context, what, query string, args ...any) (bool, error) {
	if err := ts.ensure(ctx); err != nil {
		return false, err
	}
	res, err := ts.db.ExecContext(ctx, "UPDATE "+ts.table()+" SET "+query, args...)
	if err != nil {
		return false, fmt.Errorf("%s in %s: %w", what, ts.table(), err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("%s in %s: %w", what, ts.table(), err)
	}
	return n == 1, nil
}

// progress saves a running task's resume point and counts once nsqd
// acknowledged what they cover; errTaskGone when owner no longer runs it.
func (ts *taskStore) progress(ctx context.Context, id, owner string, cursor []byte, done, total, batches int64) error {
	ok, err := ts.exec(ctx, "save task "+id,
		"cursor_json = ?, done = ?, total = ?, batches = ?, updated = UTC_TIMESTAMP(6), heartbeat = UTC_TIMESTAMP(6), version = version + 1"+
			" WHERE id = ? AND owner = ? AND state = ?", string(cursor), done, total, batches, id, owner, TaskRunning)
	if err == nil && !ok {
		err = errTaskGone
	}
	return err
}

// finish ends a running task of owner in state (done or failed).
func (ts *taskStore) finish(ctx context.Context, id, owner, state, errText string, done, total int64) error {
	ok, err := ts.exec(ctx, "end task "+id,
		"state = ?, error_text = ?, done = ?, total = ?, updated = UTC_TIMESTAMP(6), version = version + 1"+
			" WHERE id = ? AND owner = ? AND state = ?", state, errText, done, total, id, owner, TaskRunning)
	if err == nil && !ok {
		err = errTaskGone
	}
	return err
}

// cancel ends a running task, whoever runs it; false when it was not
// running.
func (ts *taskStore) cancel(ctx context.Context, id, errText string) (bool, error) {
	return ts.exec(ctx, "cancel task "+id,
		"state = ?, error_text = ?, updated = UTC_TIMESTAMP(6), version = version + 1 WHERE id = ? AND state = ?",
		TaskCancelled, errText, id, TaskRunning)
}

// release makes owner's running task claimable at once (a clean stop: the
// next process, or this one restarted, resumes it without waiting for the
// heartbeat to go stale).
func (ts *taskStore) release(ctx context.Context, id, owner string) error {
	_, err := ts.exec(ctx, "release task "+id,
		"heartbeat = '1970-01-01 00:00:01', version = version + 1 WHERE id = ? AND owner = ? AND state = ?", id, owner, TaskRunning)
	return err
}

// claim takes a running task whose heartbeat is older than lease for
// owner; false when another process took it first or it is alive.
func (ts *taskStore) claim(ctx context.Context, id, owner string, lease time.Duration) (bool, error) {
	return ts.exec(ctx, "claim task "+id,
		"owner = ?, heartbeat = UTC_TIMESTAMP(6), version = version + 1"+
			" WHERE id = ? AND state = ? AND heartbeat < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND",
		owner, id, TaskRunning, lease.Microseconds())
}

// heartbeat marks owner's running tasks alive and lists them: a task of
// this process missing from the list was cancelled or claimed elsewhere.
func (ts *taskStore) heartbeat(ctx context.Context, owner string) (map[string]bool, error) {
	if _, err := ts.exec(ctx, "heartbeat", "heartbeat = UTC_TIMESTAMP(6), version = version + 1 WHERE owner = ? AND state = ?", owner, TaskRunning); err != nil {
		return nil, err
	}
	rows, err := ts.db.QueryContext(ctx, "SELECT id FROM "+ts.table()+" WHERE owner = ? AND state = ?", owner, TaskRunning)
	if err != nil {
		return nil, fmt.Errorf("heartbeat in %s: %w", ts.table(), err)
	}
	defer rows.Close()
	ids := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("heartbeat in %s: %w", ts.table(), err)
		}
		ids[id] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("heartbeat in %s: %w", ts.table(), err)
	}
	return ids, nil
}

// staleTask is a running task whose heartbeat is stale.
type staleTask struct{ id, kind string }

// stale lists the running tasks whose heartbeat is older than lease,
// oldest first.
func (ts *taskStore) stale(ctx context.Context, lease time.Duration) ([]staleTask, error) {
	if err := ts.ensure(ctx); err != nil {
		return nil, err
	}
	rows, err := ts.db.QueryContext(ctx, "SELECT id, kind FROM "+ts.table()+
		" WHERE state = ? AND heartbeat < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND ORDER BY created", TaskRunning, lease.Microseconds())
	if err != nil {
		return nil, fmt.Errorf("read stale tasks from %s: %w", ts.table(), err)
	}
	defer rows.Close()
	var out []staleTask
	for rows.Next() {
		var st staleTask
		if err := rows.Scan(&st.id, &st.kind); err != nil {
			return nil, fmt.Errorf("read stale tasks from %s: %w", ts.table(), err)
		}
		out = append(out, st)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read stale tasks from %s: %w", ts.table(), err)
	}
	return out, nil
}

// maxTaskJobs bounds the jobs a task answer looks up (the job store keeps
// 10000 by default).
const maxTaskJobs = 10000

// task is the API's view of t, its jobs counted in the job store.
func (s *Server) task(t *taskRow) *Task {
	out := &Task{ID: t.id, Kind: t.kind, State: t.state, StartedBy: t.user, Reason: t.reason, Created: t.created, Updated: t.updated,
		Done: t.done, Total: t.total, Unit: unitOf(t.kind), Progress: progress(t.state, t.done, t.total), Error: t.errText,
		Cursor: json.RawMessage("{}"), Request: json.RawMessage(t.request), Jobs: TaskJobs{Published: t.batches}}
	if len(t.cursor) > 0 {
		out.Cursor = json.RawMessage(t.cursor)
	}
	if t.state == TaskRunning {
		hb := t.heartbeat
		out.Owner, out.Heartbeat = t.owner, &hb
	}
	for n := max(1, t.batches-maxTaskJobs+1); n <= t.batches; n++ {
		j, ok := s.opts.Jobs.Get(taskJobID(t.id, n))
		if !ok {
			continue
		}
		switch j.State {
		case jobs.StatePending:
			out.Jobs.Pending++
		case jobs.StateDone:
			out.Jobs.Done++
		default:
			out.Jobs.Failed++
		}
	}
	return out
}

// taskJobID is the job of a task's n-th published batch.
func taskJobID(task string, n int64) string { return fmt.Sprintf("%s-%d", task, n) }

// shortError bounds an error kept in the task row.
func shortError(err error) string {
	s := err.Error()
	if len(s) > 4000 {
		s = s[:4000] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}
