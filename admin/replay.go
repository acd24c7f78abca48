package admin

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/flashsync/flashsync/canal"
	"github.com/flashsync/flashsync/internal/httpapi"
	"github.com/flashsync/flashsync/invalidate"
)

// DefaultReplayServerID is the server ID of the admin role's binlog reader
// (Options.Binlog.ServerID): distinct from configs/dev.toml's canal (1001);
// every binlog reader of one server needs its own.
const DefaultReplayServerID = 18100

// ReplayFunc is the replay engine, canal.Replay by default: Options.Replay
// lets the task logic (resume, cancel, progress) run on another engine.
type ReplayFunc func(ctx context.Context, opts canal.ReplayOptions) (canal.ReplayResult, error)

// BinlogFile is one binlog of the server, as SHOW BINARY LOGS lists it.
type BinlogFile struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// ReplayPreview is what a replay's dry run answers: the range resolved on
// the server.
type ReplayPreview struct {
	From string `json:"from"`
	// To is the end given, or the server's position now.
	To string `json:"to"`
	// Tables are the tables replayed: those given, or every table with
	// rules.
	Tables []string `json:"tables"`
	// Files are the binlogs the range reads, with their sizes now.
	Files []BinlogFile `json:"files"`
	// BytesTotal is the bytes of the range; an upper bound unless
	// BytesExact (a datetime bound is found by reading the binlogs).
	BytesTotal int64    `json:"bytes_total"`
	BytesExact bool     `json:"bytes_exact"`
	ServerID   uint32   `json:"server_id"`
	Notes      []string `json:"notes,omitempty"`
}

var errStartGone = &httpapi.Error{Status: http.StatusBadRequest, Code: "start_gone"}

// binaryLogs lists the server's binlogs, oldest first.
func (s *Server) binaryLogs(ctx context.Context) ([]BinlogFile, error) {
	var logs []BinlogFile
	err := s.scanShow(ctx, "SHOW BINARY LOGS", func(cols []sql.RawBytes) error {
		size, err := strconv.ParseInt(string(cols[1]), 10, 64)
		if err != nil {
			return fmt.Errorf("SHOW BINARY LOGS: size %q: %w", cols[1], err)
		}
		logs = append(logs, BinlogFile{Name: string(cols[0]), Size: size})
		return nil
	})
	return logs, err
}

// masterStatus is the server's binlog position now.
func (s *Server) masterStatus(ctx context.Context) (canal.ReplayBound, error) {
	var b canal.ReplayBound
	err := s.scanShow(ctx, "SHOW MASTER STATUS", func(cols []sql.RawBytes) error {
		pos, err := strconv.ParseUint(string(cols[1]), 10, 32)
		if err != nil {
			return fmt.Errorf("SHOW MASTER STATUS: position %q: %w", cols[1], err)
		}
		b = canal.ReplayBound{File: string(cols[0]), Pos: uint32(pos)}
		return nil
	})
	if err == nil && b.File == "" {
		err = errors.New("SHOW MASTER STATUS: no binlog (is log_bin on?)")
	}
	return b, err
}

// scanShow runs a SHOW statement whose first two columns are wanted (MySQL
// and MariaDB differ in the columns after).
func (s *Server) scanShow(ctx context.Context, query string, row func(cols []sql.RawBytes) error) error {
	rows, err := s.opts.DB.QueryContext(ctx, query)
	if err != nil {
		return err
	}
	defer rows.Close()
	names, err := rows.Columns()
	if err != nil {
		return err
	}
	if len(names) < 2 {
		return fmt.Errorf("%s: %d columns, want 2 or more", query, len(names))
	}
	cols := make([]sql.RawBytes, len(names))
	ptrs := make([]any, len(cols))
	for i := range cols {
		ptrs[i] = &cols[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return err
		}
		if err := row(cols); err != nil {
			return err
		}
	}
	return rows.Err()
}

// onServer checks that a position bound is in the server's binlogs: a
// position in a binlog older than the oldest (purged) is ErrStartGone, one
// newer than the newest is not written yet. It returns the index of its
// file.
func onServer(key string, b canal.ReplayBound, logs []BinlogFile) (int, error) {
	i := slices.IndexFunc(logs, func(f BinlogFile) bool { return f.Name == b.File })
	if i < 0 {
		base, n := splitBinlogName(b.File)
		oldBase, _ := splitBinlogName(logs[0].Name)
		_, newest := splitBinlogName(logs[len(logs)-1].Name)
		switch {
		case base != oldBase:
			return 0, httpapi.Errorf(http.StatusBadRequest, "%s: %s is not a binlog of this server (%s to %s)", key, b.File, logs[0].Name, logs[len(logs)-1].Name)
		case n > newest:
			return 0, httpapi.Errorf(http.StatusBadRequest, "%s: %s is not written yet (the newest binlog is %s)", key, b.File, logs[len(logs)-1].Name)
		}
		e := *errStartGone
		e.Err = fmt.Errorf("%s %s: %w (the oldest binlog is %s)", key, boundString(b), canal.ErrStartGone, logs[0].Name)
		e.Message = e.Err.Error()
		return 0, &e
	}
	if int64(b.Pos) > logs[i].Size {
		return 0, httpapi.Errorf(http.StatusBadRequest, "%s: %s is past the end of %s (%d bytes)", key, boundString(b), b.File, logs[i].Size)
	}
	return i, nil
}

// planReplay checks a replay request against the server: the tables have
// rules, the positions are in its binlogs, and an omitted to becomes its
// position now (so a resumed replay ends where it would have).
func (s *Server) planReplay(ctx context.Context, body []byte) (*taskPlan, error) {
	q, err := DecodeReplayRequest(body)
	if err != nil {
		return nil, httpapi.Wrap(http.StatusBadRequest, err)
	}
	if s.opts.Binlog.Addr == "" {
		return nil, httpapi.Errorf(http.StatusServiceUnavailable, "replays need the binlog's server (admin Options.Binlog); nothing was started")
	}
	tables := q.Tables
	for i, t := range q.Tables {
		if !slices.Contains(s.opts.Rules.Tables(), t) {
			return nil, httpapi.Errorf(http.StatusBadRequest, "tables[%d]: no [[rule]] watches %s (tables with rules: %s)", i, t, strings.Join(s.opts.Rules.Tables(), ", "))
		}
	}
	if tables == nil {
		tables = s.opts.Rules.Tables()
	}
	// The position first: the binlogs listed after it include it.
	var notes []string
	if q.To == "" {
		if q.to, err = s.masterStatus(ctx); err != nil {
			if sqlError(err) {
				return nil, httpapi.Errorf(http.StatusBadRequest, "the server's position: %w", err)
			}
			return nil, httpapi.Errorf(http.StatusServiceUnavailable, "the server's position: %w", err)
		}
		q.To = boundString(q.to)
		notes = append(notes, "to: omitted: the server's position now, "+q.To)
	}
	logs, err := s.binaryLogs(ctx)
	switch {
	case sqlError(err):
		return nil, httpapi.Errorf(http.StatusBadRequest, "the server's binlogs: %w", err)
	case err != nil:
		return nil, httpapi.Errorf(http.StatusServiceUnavailable, "the server's binlogs: %w", err)
	case len(logs) == 0:
		return nil, httpapi.Errorf(http.StatusBadRequest, "the server has no binlog to replay")
	}
	pv := &ReplayPreview{Tables: tables, ServerID: s.opts.Binlog.ServerID, BytesExact: true, Notes: notes}
	first, firstPos := 0, int64(4)
	if q.from.File != "" {
		if first, err = onServer("from", q.from, logs); err != nil {
			return nil, err
		}
		firstPos = int64(q.from.Pos)
	} else {
		pv.BytesExact = false
		pv.Notes = append(pv.Notes, "from is a datetime: the replay finds its first transaction by reading from the oldest binlog; bytes_total is an upper bound")
	}
	last, lastPos := len(logs)-1, logs[len(logs)-1].Size
	if q.to.File != "" {
		if last, err = onServer("to", q.to, logs); err != nil {
			return nil, err
		}
		lastPos = int64(q.to.Pos)
	} else {
		pv.BytesExact = false
	}
	if last < first || (last == first && lastPos <= firstPos) {
		return nil, httpapi.Errorf(http.StatusBadRequest, "to: %s is not after from %s", q.To, q.From)
	}
	pv.Files = logs[first : last+1]
	for _, f := range pv.Files {
		pv.BytesTotal += f.Size
	}
	pv.BytesTotal -= firstPos + (logs[last].Size - lastPos)
	pv.From, pv.To = q.From, q.To
	stored, err := json.Marshal(q.runForm())
	if err != nil {
		return nil, err
	}
	return &taskPlan{kind: KindReplay, reason: q.Reason, dryRun: q.DryRun, request: stored, total: pv.BytesTotal, preview: pv}, nil
}

// runForm is the request as a task stores and runs it: no dry run, to
// resolved.
func (q *ReplayRequest) runForm() *ReplayRequest {
	c := *q
	c.DryRun = false
	return &c
}

// runReplay replays the task's range from its cursor through the engine:
// each batch the engine hands over is published as one job, and the
// cursor (the position past the batch) saved once nsqd acknowledged it.
func (s *Server) runReplay(ctx context.Context, tr *taskRun) error {
	t := tr.row
	q, err := DecodeReplayRequest(t.request)
	if err != nil {
		return fmt.Errorf("the task's request: %w", err)
	}
	from := q.from
	var c replayCursor
	if err := json.Unmarshal(t.cursor, &c); err != nil {
		return fmt.Errorf("the task's cursor %s: %w", t.cursor, err)
	}
	if c.File != "" {
		from = canal.ReplayBound{File: c.File, Pos: c.Pos}
	}
	// The engine counts the bytes of this run, from the cursor: base is
	// what the runs before it acknowledged.
	base, estimate := t.done, t.total
	var read, total atomic.Int64
	opts := canal.ReplayOptions{
		MySQL: s.opts.Binlog, From: from, To: q.to, Tables: q.Tables, Rules: s.opts.Rules,
		Logger:   s.opts.Logger.With("task", t.id),
		Progress: func(r, tot int64) { read.Store(r); total.Store(tot) },
		Publish: func(ctx context.Context, b *invalidate.Batch, after canal.Position) error {
			batches := t.batches
			if b.Len() > 0 {
				batches++
				job := taskJobID(t.id, batches)
				meta := invalidate.Meta{Pos: fmt.Sprintf("replay:%s:%s:%d", t.id, after.File, after.Pos), GTID: after.GTID, Seen: time.Now(), Job: job}
				if err := s.opts.Publisher.Publish(ctx, b, meta); err != nil {
					return fmt.Errorf("publish job %s: %w", job, err)
				}
				s.opts.Jobs.Describe(job, t.user, t.reason)
			}
			cursor, err := json.Marshal(replayCursor{File: after.File, Pos: after.Pos, GTID: after.GTID})
			if err != nil {
				return err
			}
			done := base + read.Load()
			return tr.save(ctx, cursor, done, max(done, totalOf(base, total.Load(), estimate)), batches)
		},
	}
	res, err := s.opts.Replay(ctx, opts)
	if err != nil {
		return fmt.Errorf("replay %s to %s: %w", boundString(from), q.To, err)
	}
	t.done = base + res.BytesRead
	t.total = max(t.done, totalOf(base, res.BytesTotal, estimate))
	return nil
}

// totalOf is a replay's total: what the runs before acknowledged plus the
// engine's total of this run, or the estimate at submit until the engine
// told one.
func totalOf(base, engine, estimate int64) int64 {
	if engine > 0 {
		return base + engine
	}
	return estimate
}
