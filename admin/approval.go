package admin

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/flashsync/flashsync/internal/httpapi"
	"github.com/flashsync/flashsync/invalidate"
)

// The two-person rule for flushes (Options.FlushNeedsApproval): an admin's
// flush is audited and stored as a pending approval instead of published;
// another admin approves it (it is then planned again and published as a
// purge is: audited first) or rejects it, within ApprovalTTL. The
// approvals are the table <audit_database>.admin_approvals.

// DefaultApprovalTTL is how long a flush waits for its approval by default.
const DefaultApprovalTTL = time.Hour

// States of an approval.
const (
	ApprovalPending  = "pending"
	ApprovalApproved = "approved"
	ApprovalRejected = "rejected"
	// ApprovalExpired is a pending approval past its expiry.
	ApprovalExpired = "expired"
)

// Actions of approvals, as the metric and the audit name them.
const (
	actionApprovalRequested = "approval_requested"
	actionApprove           = "approve"
	actionReject            = "reject"
	actionApprovals         = "approvals"
)

// Approval is one flush held for a second admin, as the API answers it.
type Approval struct {
	ID    string `json:"id"`
	State string `json:"state"`
	// RequestedBy and Reason are the requester's; Request is the purge
	// request as they sent it.
	RequestedBy string          `json:"requested_by"`
	Reason      string          `json:"reason"`
	Request     json.RawMessage `json:"request"`
	Created     time.Time       `json:"created"`
	Expires     time.Time       `json:"expires"`
	DecidedBy   string          `json:"decided_by,omitempty"`
	DecidedAt   *time.Time      `json:"decided_at,omitempty"`
	// Job is the job the flush runs as once approved (chosen with the
	// request, so the audit rows of both name it).
	Job string `json:"job"`
}

// ApprovalAnswer answers a flush held for approval, an approval and a
// rejection: the approval, and the preview of what it publishes (with its
// job once approved).
type ApprovalAnswer struct {
	Approval *Approval `json:"approval"`
	Preview  *Preview  `json:"preview,omitempty"`
}

// needsApproval tells whether a run of q waits for a second admin.
func (s *Server) needsApproval(q *PurgeRequest) bool {
	return s.opts.FlushNeedsApproval && len(q.FlushGroups) > 0
}

func (s *Server) mountApprovals(mux *http.ServeMux) {
	mux.Handle("GET /api/v1/approvals", httpapi.Handler(s.opts.Logger, s.listApprovals))
	mux.Handle("POST /api/v1/approvals/{id}/approve", httpapi.Handler(s.opts.Logger, func(w http.ResponseWriter, r *http.Request) error {
		return s.decide(w, r, ApprovalApproved)
	}))
	mux.Handle("POST /api/v1/approvals/{id}/reject", httpapi.Handler(s.opts.Logger, func(w http.ResponseWriter, r *http.Request) error {
		return s.decide(w, r, ApprovalRejected)
	}))
}

// requestApproval holds an admin's flush (e and q, planned as p, checked
// and audited as nothing yet): its row is audited first, as
// approval_requested with the job it will run as, then stored; 202 with
// the approval and the preview. Nothing is published.
func (s *Server) requestApproval(w http.ResponseWriter, r *http.Request, e *Entry, q *PurgeRequest, p *Preview) error {
	ctx := r.Context()
	now := adminNow()
	a := &Approval{ID: invalidate.NewJobID(), State: ApprovalPending, RequestedBy: e.User, Reason: q.Reason,
		Request: json.RawMessage(e.Request), Created: now, Expires: now.Add(s.opts.ApprovalTTL), Job: invalidate.NewJobID()}
	e.Action = actionApprovalRequested
	if err := s.auditAccepted(ctx, e, p, http.StatusAccepted, a.Job); err != nil {
		return s.count(e.Action, err)
	}
	if err := s.flushes.insert(ctx, a); err != nil {
		err := httpapi.Errorf(http.StatusServiceUnavailable, "approval %s: %w; nothing was purged or held", a.ID, err)
		f := *e
		f.Time, f.Outcome, f.Status, f.Error = time.Now(), OutcomeFailed, http.StatusServiceUnavailable, err.Error()
		if aerr := s.audit.write(context.WithoutCancel(ctx), &f); aerr != nil {
			s.opts.Logger.Error("admin: audit a failed approval request", "approval", a.ID, "err", aerr)
		}
		return s.count(e.Action, err)
	}
	s.opts.Logger.Info("admin: flush awaits a second admin", "approval", a.ID, "user", e.User, "groups", q.FlushGroups, "expires", a.Expires)
	s.count(e.Action, nil)
	return httpapi.WriteJSON(w, http.StatusAccepted, ApprovalAnswer{Approval: a, Preview: p})
}

// decide answers POST /api/v1/approvals/{id}/approve (202 with the
// approval and the published job's preview) and .../reject (200 with the
// approval); admins only, and the requester may reject (withdraw) but not
// approve. The decision is taken by a conditional UPDATE of a pending,
// unexpired row, so of two concurrent approvals one publishes and the
// other is a 409; then it is audited (a row that cannot be written undoes
// the decision: 503, nothing published), then an approval publishes.
func (s *Server) decide(w http.ResponseWriter, r *http.Request, to string) error {
	action := actionApprove
	if to == ApprovalRejected {
		action = actionReject
	}
	u, err := s.authenticate(w, r)
	if err != nil {
		return s.count(action, err)
	}
	ctx := r.Context()
	id := r.PathValue("id")
	ref, _ := json.Marshal(map[string]string{"approval": id})
	e := &Entry{Time: time.Now(), User: u.name, Role: u.role, Client: r.RemoteAddr, Action: action, Request: string(ref)}
	if u.rank < rankOf(RoleAdmin) {
		return s.refuse(ctx, e, forbid(u, "deciding on a held flush", RoleAdmin))
	}
	now := adminNow()
	a, err := s.flushes.get(ctx, id, now)
	switch {
	case err != nil:
		return s.refuse(ctx, e, httpapi.Wrap(http.StatusServiceUnavailable, err))
	case a == nil:
		return s.refuse(ctx, e, httpapi.Errorf(http.StatusNotFound, "approval %q unknown", id))
	}
	e.Job = a.Job
	if to == ApprovalApproved && a.RequestedBy == u.name {
		return s.refuse(ctx, e, &httpapi.Error{Status: http.StatusForbidden, Code: "self_approval",
			Message: fmt.Sprintf("approval %s: %s requested this flush; a second admin must approve it", a.ID, a.RequestedBy)})
	}
	if err := s.decidable(ctx, a, now); err != nil {
		return s.refuse(ctx, e, err)
	}
	p, batch := &Preview{}, (*invalidate.Batch)(nil)
	var q *PurgeRequest
	if to == ApprovalApproved {
		// Planned again: the rows and the groups are read as they are now.
		if q, err = DecodePurgeRequest(a.Request); err != nil {
			return s.refuse(ctx, e, httpapi.Errorf(http.StatusInternalServerError, "approval %s: stored request: %w", a.ID, err))
		}
		if p, batch, err = s.plan(ctx, q); err != nil {
			return s.refuse(ctx, e, err)
		}
		p.Job = a.Job
	}
	won, err := s.flushes.decide(ctx, a, to, u.name, now)
	if err != nil {
		return s.refuse(ctx, e, httpapi.Wrap(http.StatusServiceUnavailable, err))
	}
	if !won { // another admin, or the expiry, came first
		if a, err = s.flushes.get(ctx, id, now); err != nil || a == nil {
			return s.refuse(ctx, e, httpapi.Errorf(http.StatusServiceUnavailable, "approval %s: decided meanwhile, and then: %v", id, err))
		}
		err := s.decidable(ctx, a, now)
		if err == nil {
			err = httpapi.Errorf(http.StatusConflict, "approval %s: decided meanwhile", id)
		}
		return s.refuse(ctx, e, err)
	}
	a.State, a.DecidedBy, a.DecidedAt = to, u.name, &now
	status := http.StatusOK
	if to == ApprovalApproved {
		status = http.StatusAccepted
	}
	if err := s.auditAccepted(ctx, e, p, status, a.Job); err != nil {
		if uerr := s.flushes.undo(context.WithoutCancel(ctx), a); uerr != nil {
			s.opts.Logger.Error("admin: undo an unaudited decision", "approval", a.ID, "state", to, "err", uerr)
		}
		return s.count(action, err)
	}
	s.opts.Logger.Info("admin: held flush "+to, "approval", a.ID, "requested_by", a.RequestedBy, "user", u.name, "job", a.Job)
	if to == ApprovalApproved {
		if err := s.publish(ctx, e, p, batch, a.RequestedBy, a.RequestedBy+", approved by "+u.name, q.Reason); err != nil {
			return s.count(action, err)
		}
	}
	s.count(action, nil)
	answer := ApprovalAnswer{Approval: a}
	if to == ApprovalApproved {
		answer.Preview = p
	}
	return httpapi.WriteJSON(w, status, answer)
}

// decidable refuses a decision on an approval that is not pending: 409,
// code "expired" (marked so in the table) or "decided".
func (s *Server) decidable(ctx context.Context, a *Approval, now time.Time) error {
	switch a.State {
	case ApprovalPending:
		return nil
	case ApprovalExpired:
		if err := s.flushes.expire(ctx, a.ID, now); err != nil {
			s.opts.Logger.Warn("admin: mark an approval expired", "approval", a.ID, "err", err)
		}
		return &httpapi.Error{Status: http.StatusConflict, Code: "expired",
			Message: fmt.Sprintf("approval %s expired at %s (admin.approval_ttl); request the flush again", a.ID, a.Expires.UTC().Format(time.RFC3339))}
	}
	return &httpapi.Error{Status: http.StatusConflict, Code: "decided",
		Message: fmt.Sprintf("approval %s is already %s by %s", a.ID, a.State, a.DecidedBy)}
}

// listApprovals answers GET /api/v1/approvals?limit=N (default 50; viewer
// and up): the pending approvals, then the others, newest first.
func (s *Server) listApprovals(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.authenticate(w, r); err != nil {
		return s.count(actionApprovals, err)
	}
	limit, err := limitParam(r)
	if err != nil {
		return s.count(actionApprovals, err)
	}
	list, err := s.flushes.recent(r.Context(), limit, adminNow())
	if err != nil {
		return s.count(actionApprovals, httpapi.Wrap(http.StatusServiceUnavailable, err))
	}
	s.count(actionApprovals, nil)
	return httpapi.WriteJSON(w, http.StatusOK, map[string]any{"approvals": list})
}

// approvals is the table <database>.admin_approvals: one row per held
// flush, its state changed only from pending, by conditional UPDATEs.
type approvals struct{ sqlTable }

func newApprovals(db *sql.DB, database string) *approvals {
	return &approvals{newSQLTable(db, database, "admin_approvals", "approvals", `
			id VARCHAR(64) NOT NULL PRIMARY KEY,
			requested_by VARCHAR(64) NOT NULL,
			reason TEXT NOT NULL,
			request LONGTEXT NOT NULL,
			created DATETIME(6) NOT NULL,
			expires DATETIME(6) NOT NULL,
			state VARCHAR(16) NOT NULL,
			decided_by VARCHAR(64) NOT NULL DEFAULT '',
			decided_at DATETIME(6) NULL,
			job VARCHAR(64) NOT NULL,
			KEY (created)`)}
}

func (a *approvals) insert(ctx context.Context, ap *Approval) error {
	if err := a.ensure(ctx); err != nil {
		return err
	}
	_, err := a.db.ExecContext(ctx, "INSERT INTO "+a.table()+" (id, requested_by, reason, request, created, expires, state, job) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
		ap.ID, ap.RequestedBy, ap.Reason, string(ap.Request), sqlTime(ap.Created), sqlTime(ap.Expires), ap.State, ap.Job)
	if err != nil {
		return fmt.Errorf("write approval %s: %w", a.table(), err)
	}
	return nil
}

const approvalColumns = "id, requested_by, reason, request, created, expires, state, decided_by, decided_at, job"

// scanApproval reads one row of approvalColumns; a pending approval past
// its expiry at now reads as expired.
func scanApproval(row interface{ Scan(...any) error }, now time.Time) (*Approval, error) {
	var ap Approval
	var request, created, expires string
	var decidedAt sql.NullString
	if err := row.Scan(&ap.ID, &ap.RequestedBy, &ap.Reason, &request, &created, &expires, &ap.State, &ap.DecidedBy, &decidedAt, &ap.Job); err != nil {
		return nil, err
	}
	ap.Request = json.RawMessage(request)
	var err error
	if ap.Created, err = time.Parse(sqlTimeRead, created); err != nil {
		return nil, fmt.Errorf("approval %s: created %q: %w", ap.ID, created, err)
	}
	if ap.Expires, err = time.Parse(sqlTimeRead, expires); err != nil {
		return nil, fmt.Errorf("approval %s: expires %q: %w", ap.ID, expires, err)
	}
	if decidedAt.Valid {
		at, err := time.Parse(sqlTimeRead, decidedAt.String)
		if err != nil {
			return nil, fmt.Errorf("approval %s: decided_at %q: %w", ap.ID, decidedAt.String, err)
		}
		ap.DecidedAt = &at
	}
	if ap.State == ApprovalPending && !now.Before(ap.Expires) {
		ap.State = ApprovalExpired
	}
	return &ap, nil
}

// get reads one approval; nil without such a row.
func (a *approvals) get(ctx context.Context, id string, now time.Time) (*Approval, error) {
	if err := a.ensure(ctx); err != nil {
		return nil, err
	}
	ap, err := scanApproval(a.db.QueryRowContext(ctx, "SELECT "+approvalColumns+" FROM "+a.table()+" WHERE id = ?", id), now)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("read approval %s: %w", a.table(), err)
	}
	return ap, nil
}

// decide moves a pending, unexpired approval to state, by whom, at now;
// false if it was not pending any more (another decision came first) or
// expired. An approval is never its requester's.
func (a *approvals) decide(ctx context.Context, ap *Approval, state, by string, now time.Time) (bool, error) {
	q := "UPDATE " + a.table() + " SET state = ?, decided_by = ?, decided_at = ? WHERE id = ? AND state = 'pending' AND expires > ?"
	args := []any{state, by, sqlTime(now), ap.ID, sqlTime(now)}
	if state == ApprovalApproved {
		q += " AND requested_by <> ?"
		args = append(args, by)
	}
	res, err := a.db.ExecContext(ctx, q, args...)
	if err != nil {
		return false, fmt.Errorf("decide approval %s: %w", a.table(), err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("decide approval %s: %w", a.table(), err)
	}
	return n == 1, nil
}

// undo sets a decision taken by decide back to pending (its audit row
// could not be written).
func (a *approvals) undo(ctx context.Context, ap *Approval) error {
	_, err := a.db.ExecContext(ctx, "UPDATE "+a.table()+" SET state = 'pending', decided_by = '', decided_at = NULL WHERE id = ? AND state = ? AND decided_by = ?",
		ap.ID, ap.State, ap.DecidedBy)
	if err != nil {
		return fmt.Errorf("undo approval %s: %w", a.table(), err)
	}
	return nil
}

// expire marks a pending approval past its expiry as expired.
func (a *approvals) expire(ctx context.Context, id string, now time.Time) error {
	_, err := a.db.ExecContext(ctx, "UPDATE "+a.table()+" SET state = 'expired' WHERE id = ? AND state = 'pending' AND expires <= ?", id, sqlTime(now))
	if err != nil {
		return fmt.Errorf("expire approval %s: %w", a.table(), err)
	}
	return nil
}

// recent lists up to limit approvals: the pending ones first, then the
// others, each newest first.
func (a *approvals) recent(ctx context.Context, limit int, now time.Time) ([]Approval, error) {
	if err := a.ensure(ctx); err != nil {
		return nil, err
	}
	rows, err := a.db.QueryContext(ctx, "SELECT "+approvalColumns+" FROM "+a.table()+
		" ORDER BY (state = 'pending' AND expires > ?) DESC, created DESC, id LIMIT ?", sqlTime(now), limit)
	if err != nil {
		return nil, fmt.Errorf("read approvals %s: %w", a.table(), err)
	}
	defer rows.Close()
	out := []Approval{}
	for rows.Next() {
		ap, err := scanApproval(rows, now)
		if err != nil {
			return nil, fmt.Errorf("read approvals %s: %w", a.table(), err)
		}
		out = append(out, *ap)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read approvals %s: %w", a.table(), err)
	}
	return out, nil
}
