package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/flashsync/flashsync/internal/httpapi"
	"github.com/flashsync/flashsync/invalidate"
)

// Actions, as the metric and the audit name them.
const (
	actionPurge  = "purge"
	actionDryRun = "dry_run"
	actionJob    = "job"
	actionJobs   = "jobs"
	actionAudit  = "audit"
	actionHealth = "health"
)

// purge answers POST /api/v1/purges: 200 with the preview for a dry run,
// 202 with the job and the preview once nsqd acknowledged the batch. The
// audit row is written first: a request that cannot be audited is refused
// with 503 and nothing is published. With FlushNeedsApproval, an admin's
// flush is stored for a second admin instead (approval.go).
func (s *Server) purge(w http.ResponseWriter, r *http.Request) error {
	u, err := s.authenticate(w, r)
	if err != nil {
		return s.count(actionPurge, err) // no user to audit
	}
	ctx := r.Context()
	e := &Entry{Time: time.Now(), User: u.name, Role: u.role, Client: r.RemoteAddr, Action: actionPurge}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return s.refuse(ctx, e, httpapi.Errorf(http.StatusRequestEntityTooLarge, "body: larger than %d bytes (admin.max_body_bytes)", s.opts.MaxBodyBytes))
		}
		return s.refuse(ctx, e, httpapi.Errorf(http.StatusBadRequest, "read body: %w", err))
	}
	e.Request = string(body)
	q, err := DecodePurgeRequest(body)
	if err != nil {
		return s.refuse(ctx, e, httpapi.Wrap(http.StatusBadRequest, err))
	}
	e.DryRun = q.DryRun
	if q.DryRun {
		e.Action = actionDryRun
	} else if u.rank < rankOf(RoleOperator) {
		return s.refuse(ctx, e, forbid(u, "a purge (not a dry run)", RoleOperator))
	} else if q.adminKinds() && u.rank < rankOf(RoleAdmin) {
		return s.refuse(ctx, e, forbid(u, "a purge of patterns, bans or flush_groups (not a dry run)", RoleAdmin))
	}
	p, batch, err := s.plan(ctx, q)
	if err != nil {
		return s.refuse(ctx, e, err)
	}
	if !q.DryRun {
		if need := q.unconfirmed(); len(need) > 0 {
			return s.refuse(ctx, e, &httpapi.Error{Status: http.StatusConflict, Code: "unconfirmed",
				Message: fmt.Sprintf("confirm: name %s again to run it: \"confirm\": [%s]; nothing was purged", strings.Join(need, ", "), quoteList(need))})
		}
		if q.adminKinds() {
			if err := s.rateLimit(u, "a purge of patterns, bans or flush_groups"); err != nil {
				return s.refuse(ctx, e, err)
			}
		}
	}
	if q.DryRun {
		if s.needsApproval(q) {
			p.Notes = append(p.Notes, "a run waits for a second admin's approval (admin.flush_needs_approval)")
		}
		if err := s.auditAccepted(ctx, e, p, http.StatusOK, ""); err != nil {
			return s.count(e.Action, err)
		}
		s.count(e.Action, nil)
		return httpapi.WriteJSON(w, http.StatusOK, p)
	}
	if s.needsApproval(q) {
		return s.requestApproval(w, r, e, q, p)
	}
	p.Job = invalidate.NewJobID()
	if err := s.auditAccepted(ctx, e, p, http.StatusAccepted, p.Job); err != nil {
		return s.count(e.Action, err)
	}
	if err := s.publish(ctx, e, p, batch, u.name, u.name, q.Reason); err != nil {
		return s.count(e.Action, err)
	}
	s.count(e.Action, nil)
	return httpapi.WriteJSON(w, http.StatusAccepted, p)
}

// auditAccepted writes the accepted row of e, answered status, with its
// job (published now, or once approved) and p's counts; a row that cannot
// be written is a 503, nothing done.
func (s *Server) auditAccepted(ctx context.Context, e *Entry, p *Preview, status int, job string) error {
	e.Outcome, e.Status, e.Job = OutcomeAccepted, status, job
	e.Keys, e.URLs, e.Tags, e.Targets = p.Counts.Keys, p.Counts.URLs, p.Counts.Tags, p.Counts.Targets
	if err := s.audit.write(ctx, e); err != nil {
		return httpapi.Errorf(http.StatusServiceUnavailable, "%w; nothing was purged", err)
	}
	return nil
}

// publish publishes the batch of p's job, audited (e) as accepted, as a
// job startedBy started for reason; requester names it in the messages'
// position. A failed publish is a 503 and a second, failed, audit row.
func (s *Server) publish(ctx context.Context, e *Entry, p *Preview, batch *invalidate.Batch, requester, startedBy, reason string) error {
	pubCtx, cancel := context.WithTimeout(ctx, s.opts.PublishWait)
	err := s.opts.Publisher.Publish(pubCtx, batch, invalidate.Meta{Pos: "admin:" + requester, Seen: time.Now(), Job: p.Job})
	cancel()
	// OnPublished tracked the job before the batch was sent.
	s.opts.Jobs.Describe(p.Job, startedBy, reason)
	if err == nil {
		return nil
	}
	err = httpapi.Errorf(http.StatusServiceUnavailable, "job %s: %w", p.Job, err)
	f := *e
	f.Time, f.Outcome, f.Status, f.Error = time.Now(), OutcomeFailed, http.StatusServiceUnavailable, err.Error()
	if aerr := s.audit.write(context.WithoutCancel(ctx), &f); aerr != nil {
		s.opts.Logger.Error("admin: audit a failed purge", "job", p.Job, "err", aerr)
	}
	return err
}

// refuse audits a refused request of a known user, then returns err. An
// audit that cannot be written is logged: the request is refused anyway.
func (s *Server) refuse(ctx context.Context, e *Entry, err error) error {
	a := httpapi.Answer(err)
	e.Outcome, e.Status, e.Error = result(err), a.Status, a.Message
	if aerr := s.audit.write(ctx, e); aerr != nil {
		s.opts.Logger.Error("admin: audit a refused request", "user", e.User, "status", a.Status, "err", aerr)
	}
	return s.count(e.Action, err)
}

func rankOf(role string) int {
	for i, r := range Roles {
		if r == role {
			return i
		}
	}
	return -1
}

// getJob answers GET /api/v1/jobs/{id} (viewer and up).
func (s *Server) getJob(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.authenticate(w, r); err != nil {
		return s.count(actionJob, err)
	}
	id := r.PathValue("id")
	j, ok := s.opts.Jobs.Get(id)
	if !ok {
		return s.count(actionJob, httpapi.Errorf(http.StatusNotFound, "job %q unknown (never published here, or evicted)", id))
	}
	s.count(actionJob, nil)
	return httpapi.WriteJSON(w, http.StatusOK, j)
}

// Bounds of ?limit= on every list (audit, jobs, tasks, approvals).
const (
	defaultListLimit = 50
	maxListLimit     = 1000
)

// limitParam reads a list's ?limit=: defaultListLimit without it, 1 to
// maxListLimit, else a 400.
func limitParam(r *http.Request) (int, error) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return defaultListLimit, nil
	}
	l, err := strconv.Atoi(v)
	if err != nil || l < 1 || l > maxListLimit {
		return 0, httpapi.Errorf(http.StatusBadRequest, "limit %q: want 1 to %d", v, maxListLimit)
	}
	return l, nil
}

// listAudit answers GET /api/v1/audit?limit=N (default 50; viewer and up):
// the newest audit rows, newest first.
func (s *Server) listAudit(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.authenticate(w, r); err != nil {
		return s.count(actionAudit, err)
	}
	limit, err := limitParam(r)
	if err != nil {
		return s.count(actionAudit, err)
	}
	entries, err := s.audit.recent(r.Context(), limit)
	if err != nil {
		return s.count(actionAudit, httpapi.Wrap(http.StatusServiceUnavailable, err))
	}
	s.count(actionAudit, nil)
	return httpapi.WriteJSON(w, http.StatusOK, map[string]any{"entries": entries})
}
