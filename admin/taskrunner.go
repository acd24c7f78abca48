package admin

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/internal/httpapi"
)

// Defaults of the task options.
const (
	// DefaultTaskLease is how long a running task's heartbeat may be
	// silent before another admin process (or this one, restarted) claims
	// it and resumes it from its cursor; heartbeats go every third of it.
	DefaultTaskLease = 10 * time.Second
	// MinTaskLease bounds TaskLease from below: a heartbeat a third of it
	// is a database write.
	MinTaskLease = time.Second
	// maxResyncs bounds the re-syncs one process runs at once; replays run
	// one at a time (their binlog reader has one server ID).
	maxResyncs = 4
)

// errCancelled is why a task cancelled here stopped.
var errCancelled = errors.New("cancelled")

// taskRunner runs the tasks this process owns, each in a goroutine it
// waits for, and takes over the running tasks whose owner went silent.
// Run begins it and ends it: a task runs only while Run does.
type taskRunner struct {
	s     *Server
	owner string // this process, in the owner column

	mu      sync.Mutex
	ctx     context.Context // Run's, nil outside Run
	running map[string]*localTask
	wg      sync.WaitGroup

	gauge *prometheus.GaugeVec
	ended *prometheus.CounterVec
	units *prometheus.CounterVec
}

// localTask is a task running here, or a slot reserved for one about to.
type localTask struct {
	kind   string
	cancel context.CancelCauseFunc // nil while reserved
	done   chan struct{}
}

func newTaskRunner(s *Server) *taskRunner {
	host, _ := os.Hostname()
	var b [4]byte
	rand.Read(b[:])
	owner := fmt.Sprintf("%.80s:%d:%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	return &taskRunner{s: s, owner: owner, running: map[string]*localTask{},
		gauge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flashsync_admin_task_progress_ratio",
			Help: "Progress (0 to 1) of each replay and re-sync this process runs, by kind and task; the series goes when the task ends here.",
		}, []string{"kind", "task"}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashsync_admin_tasks_total",
			Help: "Replays and re-syncs ended, by kind and state (done, failed, cancelled).",
		}, []string{"kind", "state"}),
		units: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashsync_admin_task_units_total",
			Help: "Binlog bytes replayed (kind replay) and rows re-synced (kind resync) whose batches nsqd acknowledged.",
		}, []string{"kind"}),
	}
}

func (r *taskRunner) collectors() []prometheus.Collector {
	return []prometheus.Collector{r.gauge, r.ended, r.units}
}

var errRunnerStopped = &httpapi.Error{Status: http.StatusServiceUnavailable, Code: "stopping",
	Message: "the admin role is not running its tasks (stopping, or not started); nothing was started"}

// slot is a reservation of room for one task of a kind; launch uses it,
// release gives it back unused.
type slot struct {
	r  *taskRunner
	id string
}

// reserve takes room for a task of kind, or refuses with 409 while this
// process runs a replay (for kind replay) or maxResyncs re-syncs.
func (r *taskRunner) reserve(kind string) (*slot, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ctx == nil {
		return nil, errRunnerStopped
	}
	n, replay := 0, ""
	for id, lt := range r.running {
		if lt.kind == kind {
			n++
			replay = id
		}
	}
	switch {
	case kind == KindReplay && n > 0:
		return nil, &httpapi.Error{Status: http.StatusConflict, Code: "busy",
			Message: fmt.Sprintf("replay %s runs in this admin process: one replay at a time (cancel it, or wait); nothing was started", replay)}
	case kind == KindResync && n >= maxResyncs:
		return nil, &httpapi.Error{Status: http.StatusConflict, Code: "busy",
			Message: fmt.Sprintf("%d re-syncs run in this admin process, the most it runs at once; nothing was started", n)}
	}
	sl := &slot{r: r, id: "reserved:" + randomToken()}
	r.running[sl.id] = &localTask{kind: kind}
	return sl, nil
}

// release gives an unused slot back.
func (sl *slot) release() {
	sl.r.mu.Lock()
	delete(sl.r.running, sl.id)
	sl.r.mu.Unlock()
}

// launch runs a copy of t, this process's, in the slot's room until it
// ends, is cancelled, is taken over, or Run ends.
func (sl *slot) launch(t *taskRow) error {
	r := sl.r
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.running, sl.id)
	if r.ctx == nil {
		return errRunnerStopped
	}
	ctx, cancel := context.WithCancelCause(r.ctx)
	lt := &localTask{kind: t.kind, cancel: cancel, done: make(chan struct{})}
	r.running[t.id] = lt
	r.wg.Add(1)
	row := *t // the run's own: the caller answers with t
	go func() {
		defer r.wg.Done()
		defer close(lt.done)
		defer cancel(nil)
		r.execute(ctx, &row)
		r.mu.Lock()
		delete(r.running, t.id)
		r.mu.Unlock()
	}()
	return nil
}

// stopLocal cancels the task if it runs here, with cause, and waits until
// it stopped, at most wait; false if it does not run here.
func (r *taskRunner) stopLocal(id string, cause error, wait time.Duration) bool {
	r.mu.Lock()
	lt, ok := r.running[id]
	r.mu.Unlock()
	if !ok || lt.cancel == nil {
		return false
	}
	lt.cancel(cause)
	select {
	case <-lt.done:
	case <-time.After(wait):
	}
	return true
}

// begin opens the runner to tasks for the duration of Run (ctx); run then
// heartbeats and takes over stale tasks until ctx ends, and waits for the
// tasks it runs.
func (r *taskRunner) begin(ctx context.Context) {
	r.mu.Lock()
	r.ctx = ctx
	r.mu.Unlock()
}

func (r *taskRunner) run(ctx context.Context) {
	lease := r.s.opts.TaskLease
	tick := time.NewTicker(lease / 3)
	defer tick.Stop()
	for {
		r.beat(ctx)
		r.resume(ctx)
		select {
		case <-ctx.Done():
			r.mu.Lock()
			r.ctx = nil
			r.mu.Unlock()
			r.wg.Wait()
			return
		case <-tick.C:
		}
	}
}

// beat marks this process's tasks alive and stops those whose row says
// otherwise: cancelled (perhaps through another admin process) or claimed
// by another process while this one's heartbeats did not reach MySQL.
func (r *taskRunner) beat(ctx context.Context) {
	r.mu.Lock()
	n := len(r.running)
	r.mu.Unlock()
	if n == 0 {
		return
	}
	ids, err := r.s.tasks.heartbeat(ctx, r.owner)
	if err != nil {
		if ctx.Err() == nil {
			r.s.opts.Logger.Warn("admin: task heartbeat", "err", err)
		}
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, lt := range r.running {
		if lt.cancel != nil && !ids[id] {
			lt.cancel(errTaskGone)
		}
	}
}

// resume claims the running tasks whose owner's heartbeat is stale (a
// process killed, or stopped cleanly: it released them) and runs them from
// their cursor, as long as there is room.
func (r *taskRunner) resume(ctx context.Context) {
	log := r.s.opts.Logger
	stale, err := r.s.tasks.stale(ctx, r.s.opts.TaskLease)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("admin: look for tasks to resume", "err", err)
		}
		return
	}
	for _, st := range stale {
		sl, err := r.reserve(st.kind)
		if err != nil {
			continue // busy: a later tick
		}
		ok, err := r.s.tasks.claim(ctx, st.id, r.owner, r.s.opts.TaskLease)
		if err != nil || !ok {
			sl.release()
			continue
		}
		t, err := r.s.tasks.get(ctx, st.id)
		if err != nil || t == nil || t.owner != r.owner {
			sl.release()
			continue
		}
		log.Info("admin: resuming task", "task", t.id, "kind", t.kind, "done", t.done, "total", t.total, "cursor", string(t.cursor))
		if err := sl.launch(t); err != nil {
			return
		}
	}
}

// execute runs t to its end and records how it ended: done or failed in its
// row; nothing when it was cancelled or taken over (the row already says
// so); released when Run ended (the next start resumes it).
func (r *taskRunner) execute(ctx context.Context, t *taskRow) {
	s, log := r.s, r.s.opts.Logger.With("task", t.id, "kind", t.kind)
	r.gauge.WithLabelValues(t.kind, t.id).Set(progress(t.state, t.done, t.total))
	run := s.runResync
	if t.kind == KindReplay {
		run = s.runReplay
	}
	tr := &taskRun{r: r, row: t}
	err := run(ctx, tr)
	// Gone before the row says the task ended: the gauge is of running
	// tasks.
	r.gauge.DeleteLabelValues(t.kind, t.id)
	// Writes after the end use a context of their own: Run's may be over.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.PublishWait)
	defer cancel()
	cause := context.Cause(ctx)
	switch {
	case err == nil:
		if err := s.tasks.finish(wctx, t.id, r.owner, TaskDone, "", tr.row.done, max(tr.row.total, tr.row.done)); err != nil {
			log.Warn("admin: end task", "err", err)
			return
		}
		r.ended.WithLabelValues(t.kind, TaskDone).Inc()
		log.Info("admin: task done", "done", tr.row.done, "unit", unitOf(t.kind), "jobs", tr.row.batches)
	case errors.Is(cause, errCancelled), errors.Is(cause, errTaskGone), errors.Is(err, errTaskGone):
		log.Info("admin: task stopped here", "why", cmpErr(cause, err))
	case ctx.Err() != nil:
		// Run ended: make the task claimable now rather than a lease later.
		if err := s.tasks.release(wctx, t.id, r.owner); err != nil {
			log.Warn("admin: release task", "err", err)
		}
		log.Info("admin: task paused until the next start", "done", tr.row.done, "cursor", string(tr.row.cursor))
	case errors.Is(err, errTaskStore):
		// Its row cannot be written: leave it to be resumed once its
		// heartbeat is stale (here or in another process).
		log.Warn("admin: task stopped: its row cannot be written; it resumes once MySQL answers", "err", err)
	default:
		if ferr := s.tasks.finish(wctx, t.id, r.owner, TaskFailed, shortError(err), tr.row.done, tr.row.total); ferr != nil {
			log.Warn("admin: end task", "err", ferr)
			return
		}
		r.ended.WithLabelValues(t.kind, TaskFailed).Inc()
		log.Warn("admin: task failed", "err", err)
	}
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// errTaskStore wraps an error writing a task's row while it runs.
var errTaskStore = errors.New("task store")

// taskRun is one run of a task: its row as this run last saved it.
type taskRun struct {
	r   *taskRunner
	row *taskRow
}

// save records progress once nsqd acknowledged the batches up to cursor:
// the row, the gauge and the units counter. errTaskGone when the task is
// no longer this process's; errTaskStore wrapping a failed write.
func (tr *taskRun) save(ctx context.Context, cursor []byte, done, total, batches int64) error {
	r, t := tr.r, tr.row
	err := r.s.tasks.progress(ctx, t.id, r.owner, cursor, done, total, batches)
	switch {
	case errors.Is(err, errTaskGone):
		return err
	case err != nil:
		return fmt.Errorf("%w: %w", errTaskStore, err)
	}
	if d := done - t.done; d > 0 {
		r.units.WithLabelValues(t.kind).Add(float64(d))
	}
	t.cursor, t.done, t.total, t.batches = cursor, done, total, batches
	r.gauge.WithLabelValues(t.kind, t.id).Set(progress(t.state, done, total))
	return nil
}
