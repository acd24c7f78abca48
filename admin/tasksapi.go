package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/flashsync/flashsync/internal/httpapi"
	"github.com/flashsync/flashsync/invalidate"
)

// Actions of the task endpoints, as the metric and the audit name them.
const (
	actionReplay = KindReplay
	actionResync = KindResync
	actionCancel = "cancel"
	actionTask   = "task"
)

// taskPlan is a checked task request: what its dry run answers, or what a
// run stores and starts.
type taskPlan struct {
	kind, reason string
	dryRun       bool
	request      []byte // the request as it runs (runForm)
	total        int64
	preview      any
}

func (s *Server) mountTasks(mux *http.ServeMux) {
	mux.Handle("POST /api/v1/replays", httpapi.Handler(s.opts.Logger, func(w http.ResponseWriter, r *http.Request) error {
		return s.submitTask(w, r, KindReplay, s.planReplay)
	}))
	mux.Handle("POST /api/v1/resyncs", httpapi.Handler(s.opts.Logger, func(w http.ResponseWriter, r *http.Request) error {
		return s.submitTask(w, r, KindResync, s.planResync)
	}))
	mux.Handle("GET /api/v1/tasks", httpapi.Handler(s.opts.Logger, s.listTasks))
	mux.Handle("GET /api/v1/tasks/{id}", httpapi.Handler(s.opts.Logger, s.getTask))
	mux.Handle("POST /api/v1/tasks/{id}/cancel", httpapi.Handler(s.opts.Logger, s.cancelTask))
}

// taskEntry authenticates a task request of an admin and reads its body:
// the audit entry to write, or the refusal (audited when the user is
// known).
func (s *Server) taskEntry(w http.ResponseWriter, r *http.Request, action, what string) (*user, *Entry, []byte, error) {
	u, err := s.authenticate(w, r)
	if err != nil {
		return nil, nil, nil, s.count(action, err) // no user to audit
	}
	e := &Entry{Time: time.Now(), User: u.name, Role: u.role, Client: r.RemoteAddr, Action: action}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, nil, nil, s.refuse(r.Context(), e, httpapi.Errorf(http.StatusRequestEntityTooLarge, "body: larger than %d bytes (admin.max_body_bytes)", s.opts.MaxBodyBytes))
		}
		return nil, nil, nil, s.refuse(r.Context(), e, httpapi.Errorf(http.StatusBadRequest, "read body: %w", err))
	}
	e.Request = string(body)
	// Dry runs too: a re-sync's filter is SQL the server runs.
	if u.rank < rankOf(RoleAdmin) {
		return nil, nil, nil, s.refuse(r.Context(), e, forbid(u, what, RoleAdmin))
	}
	return u, e, body, nil
}

// submitTask answers POST /api/v1/replays and /api/v1/resyncs: 200 with
// the preview for a dry run; 202 with the task once it is audited, stored
// and started. The audit row is written first: a request that cannot be
// audited is refused with 503 and nothing runs.
func (s *Server) submitTask(w http.ResponseWriter, r *http.Request, kind string, plan func(context.Context, []byte) (*taskPlan, error)) error {
	what := map[string]string{KindReplay: "a replay", KindResync: "a re-sync"}[kind]
	u, e, body, err := s.taskEntry(w, r, kind, what)
	if err != nil {
		return err
	}
	ctx := r.Context()
	p, err := plan(ctx, body)
	if err != nil {
		return s.refuse(ctx, e, err)
	}
	e.DryRun = p.dryRun
	if p.dryRun {
		e.Outcome, e.Status = OutcomeAccepted, http.StatusOK
		if err := s.audit.write(ctx, e); err != nil {
			return s.count(kind, httpapi.Errorf(http.StatusServiceUnavailable, "%w; nothing was run", err))
		}
		now := time.Now().UTC()
		t := &Task{Kind: kind, State: TaskPreview, StartedBy: u.name, Reason: p.reason, Created: now, Updated: now,
			Total: p.total, Unit: unitOf(kind), Cursor: []byte("{}"), Request: p.request}
		s.count(kind, nil)
		return httpapi.WriteJSON(w, http.StatusOK, map[string]any{"dry_run": true, "task": t, "preview": p.preview})
	}
	sl, err := s.runner.reserve(kind)
	if err != nil {
		return s.refuse(ctx, e, err)
	}
	if err := s.rateLimit(u, what); err != nil {
		sl.release()
		return s.refuse(ctx, e, err)
	}
	id := invalidate.NewJobID()
	e.Outcome, e.Status, e.Job = OutcomeAccepted, http.StatusAccepted, id
	if err := s.audit.write(ctx, e); err != nil {
		sl.release()
		return s.count(kind, httpapi.Errorf(http.StatusServiceUnavailable, "%w; nothing was run", err))
	}
	now := time.Now().UTC().Truncate(time.Microsecond) // as stored
	row := &taskRow{id: id, kind: kind, user: u.name, reason: p.reason, request: p.request, state: TaskRunning, cursor: []byte("{}"),
		total: p.total, created: now, updated: now, owner: s.runner.owner, heartbeat: now}
	if err = s.tasks.create(ctx, row); err != nil {
		sl.release()
	} else if err = sl.launch(row); err != nil {
		// Run ended between the reservation and now: the task never ran.
		if ferr := s.tasks.finish(context.WithoutCancel(ctx), id, s.runner.owner, TaskFailed, err.Error(), 0, p.total); ferr != nil {
			s.opts.Logger.Error("admin: end a task that did not start", "task", id, "err", ferr)
		}
	}
	if err != nil {
		err = httpapi.Errorf(http.StatusServiceUnavailable, "task %s: %w", id, err)
		f := *e
		f.Time, f.Outcome, f.Status, f.Error = time.Now(), OutcomeFailed, http.StatusServiceUnavailable, err.Error()
		if aerr := s.audit.write(context.WithoutCancel(ctx), &f); aerr != nil {
			s.opts.Logger.Error("admin: audit a task that did not start", "task", id, "err", aerr)
		}
		return s.count(kind, err)
	}
	s.count(kind, nil)
	return httpapi.WriteJSON(w, http.StatusAccepted, map[string]any{"task": s.task(row)})
}

// listTasks answers GET /api/v1/tasks?limit=N (default 50; viewer and up):
// the newest tasks, newest first.
func (s *Server) listTasks(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.authenticate(w, r); err != nil {
		return s.count(actionTask, err)
	}
	limit, err := limitParam(r)
	if err != nil {
		return s.count(actionTask, err)
	}
	rows, err := s.tasks.list(r.Context(), limit)
	if err != nil {
		return s.count(actionTask, httpapi.Wrap(http.StatusServiceUnavailable, err))
	}
	tasks := make([]*Task, len(rows))
	for i, t := range rows {
		tasks[i] = s.task(t)
	}
	s.count(actionTask, nil)
	return httpapi.WriteJSON(w, http.StatusOK, map[string]any{"tasks": tasks})
}

// getTask answers GET /api/v1/tasks/{id} (viewer and up).
func (s *Server) getTask(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.authenticate(w, r); err != nil {
		return s.count(actionTask, err)
	}
	t, err := s.tasks.get(r.Context(), r.PathValue("id"))
	switch {
	case err != nil:
		return s.count(actionTask, httpapi.Wrap(http.StatusServiceUnavailable, err))
	case t == nil:
		return s.count(actionTask, httpapi.Errorf(http.StatusNotFound, "task %q unknown", r.PathValue("id")))
	}
	s.count(actionTask, nil)
	return httpapi.WriteJSON(w, http.StatusOK, s.task(t))
}

// cancelTask answers POST /api/v1/tasks/{id}/cancel (admin): the task is
// cancelled in its row, whichever process runs it, and stopped here at once
// if it runs here (another process stops it at its next heartbeat or
// batch). Audited first, like a purge.
func (s *Server) cancelTask(w http.ResponseWriter, r *http.Request) error {
	u, e, _, err := s.taskEntry(w, r, actionCancel, "cancelling a task")
	if err != nil {
		return err
	}
	ctx := r.Context()
	id := r.PathValue("id")
	e.Job = id
	t, err := s.tasks.get(ctx, id)
	switch {
	case err != nil:
		return s.refuse(ctx, e, httpapi.Wrap(http.StatusServiceUnavailable, err))
	case t == nil:
		return s.refuse(ctx, e, httpapi.Errorf(http.StatusNotFound, "task %q unknown", id))
	case t.state != TaskRunning:
		return s.refuse(ctx, e, &httpapi.Error{Status: http.StatusConflict, Code: "not_running",
			Message: fmt.Sprintf("task %s is %s, not running: nothing to cancel", id, t.state)})
	}
	e.Outcome, e.Status = OutcomeAccepted, http.StatusOK
	if err := s.audit.write(ctx, e); err != nil {
		return s.count(actionCancel, httpapi.Errorf(http.StatusServiceUnavailable, "%w; the task was not cancelled", err))
	}
	ok, err := s.tasks.cancel(ctx, id, "cancelled by "+u.name)
	switch {
	case err != nil:
		return s.count(actionCancel, httpapi.Errorf(http.StatusServiceUnavailable, "cancel task %s: %w", id, err))
	case !ok:
		return s.count(actionCancel, &httpapi.Error{Status: http.StatusConflict, Code: "not_running",
			Message: fmt.Sprintf("task %s ended before it could be cancelled", id)})
	}
	s.runner.ended.WithLabelValues(t.kind, TaskCancelled).Inc()
	s.runner.stopLocal(id, errCancelled, s.opts.PublishWait)
	switch t, err = s.tasks.get(ctx, id); {
	case err != nil:
		return s.count(actionCancel, httpapi.Errorf(http.StatusServiceUnavailable, "task %s cancelled; %w", id, err))
	case t == nil: // rows are never deleted
		return s.count(actionCancel, httpapi.Errorf(http.StatusNotFound, "task %q cancelled, then gone", id))
	}
	s.count(actionCancel, nil)
	return httpapi.WriteJSON(w, http.StatusOK, s.task(t))
}
