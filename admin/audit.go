package admin

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Outcomes of audited requests.
const (
	OutcomeAccepted = resultAccepted // authorized and valid: previewed, or about to be published
	OutcomeRefused  = resultRefused  // 400, 403, 413: nothing published
	OutcomeFailed   = resultFailed   // accepted, but the publish failed (a second row)
)

// Entry is one audit row, as GET /api/v1/audit lists it.
type Entry struct {
	ID     int64     `json:"id"`
	Time   time.Time `json:"time"`
	User   string    `json:"user"`
	Role   string    `json:"role"`
	Client string    `json:"client"`
	Action string    `json:"action"`
	// Request is the body as received (empty when it was too large).
	Request string `json:"request"`
	DryRun  bool   `json:"dry_run"`
	Outcome string `json:"outcome"`
	Status  int    `json:"status"`
	Error   string `json:"error,omitempty"`
	Job     string `json:"job,omitempty"`
	Keys    int    `json:"keys"`
	URLs    int    `json:"urls"`
	Tags    int    `json:"tags"`
	Targets int    `json:"targets"`
}

// audit is the table <database>.admin_audit, append-only: each row is
// written once, final, and nothing updates or deletes it. An accepted
// purge's row is written before it is published, job ID and counts
// included (the job ID is chosen first); if the publish then fails, a
// second row with the same job says so.
type audit struct{ sqlTable }

func newAudit(db *sql.DB, database string) *audit {
	return &audit{newSQLTable(db, database, "admin_audit", "audit", `
			id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
			at DATETIME(6) NOT NULL,
			user_name VARCHAR(64) NOT NULL,
			user_role VARCHAR(16) NOT NULL,
			client VARCHAR(255) NOT NULL,
			action VARCHAR(32) NOT NULL,
			request LONGTEXT NOT NULL,
			dry_run BOOLEAN NOT NULL,
			outcome VARCHAR(16) NOT NULL,
			status SMALLINT NOT NULL,
			error_text TEXT NOT NULL,
			job VARCHAR(64) NOT NULL,
			n_keys INT NOT NULL,
			n_urls INT NOT NULL,
			n_tags INT NOT NULL,
			n_targets INT NOT NULL,
			KEY (job)`)}
}

// write appends e (its ID is the table's).
func (a *audit) write(ctx context.Context, e *Entry) error {
	if err := a.ensure(ctx); err != nil {
		return err
	}
	_, err := a.db.ExecContext(ctx, "INSERT INTO "+a.table()+
		" (at, user_name, user_role, client, action, request, dry_run, outcome, status, error_text, job, n_keys, n_urls, n_tags, n_targets)"+
		" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
		sqlTime(e.Time), e.User, e.Role, e.Client, e.Action, e.Request, e.DryRun, e.Outcome, e.Status, e.Error, e.Job,
		e.Keys, e.URLs, e.Tags, e.Targets)
	if err != nil {
		return fmt.Errorf("write audit %s: %w", a.table(), err)
	}
	return nil
}

// recent lists the newest limit rows, newest first.
func (a *audit) recent(ctx context.Context, limit int) ([]Entry, error) {
	if err := a.ensure(ctx); err != nil {
		return nil, err
	}
	rows, err := a.db.QueryContext(ctx, "SELECT id, at, user_name, user_role, client, action, request, dry_run, outcome, status, error_text, job, n_keys, n_urls, n_tags, n_targets FROM "+
		a.table()+" ORDER BY id DESC LIMIT ?", limit)
	if err != nil {
		return nil, fmt.Errorf("read audit %s: %w", a.table(), err)
	}
	defer rows.Close()
	out := []Entry{}
	for rows.Next() {
		var e Entry
		var at string
		if err := rows.Scan(&e.ID, &at, &e.User, &e.Role, &e.Client, &e.Action, &e.Request, &e.DryRun, &e.Outcome, &e.Status, &e.Error, &e.Job,
			&e.Keys, &e.URLs, &e.Tags, &e.Targets); err != nil {
			return nil, fmt.Errorf("read audit %s: %w", a.table(), err)
		}
		if e.Time, err = time.Parse(sqlTimeRead, at); err != nil {
			return nil, fmt.Errorf("read audit %s: row %d: time %q: %w", a.table(), e.ID, at, err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read audit %s: %w", a.table(), err)
	}
	return out, nil
}
