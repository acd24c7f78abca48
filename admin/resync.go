package admin

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"golang.org/x/time/rate"

	"github.com/flashsync/flashsync/internal/httpapi"
	"github.com/flashsync/flashsync/invalidate"
)

// Defaults of a re-sync's pace (configs' defaults are these).
const (
	DefaultResyncRowsPerSecond = 500
	DefaultResyncChunkRows     = 200
)

// ResyncPreview is what a re-sync's dry run answers.
type ResyncPreview struct {
	Table string `json:"table"`
	Where string `json:"where,omitempty"`
	// PrimaryKey orders the chunks, in the key's column order.
	PrimaryKey []string `json:"primary_key"`
	Columns    []string `json:"columns"`
	// MatchingRows is COUNT(*) of the filter now.
	MatchingRows     int64   `json:"matching_rows"`
	ChunkRows        int     `json:"chunk_rows"`
	RowsPerSecond    int     `json:"rows_per_second"`
	Chunks           int64   `json:"chunks"`
	EstimatedSeconds float64 `json:"estimated_seconds"`
	// FirstChunk is the first chunk's purge preview, as a purge dry run of
	// its rows answers it.
	FirstChunk *Preview `json:"first_chunk"`
}

// resyncTable is a table a re-sync reads.
type resyncTable struct {
	name        string // db.table
	columns, pk []string
}

// sqlError is a statement the server refused (bad SQL, an unknown column,
// a write in a read-only transaction): the request's fault, not an outage.
func sqlError(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me)
}

// resyncTable checks that table has rules, exists and has a primary key.
func (s *Server) resyncTable(ctx context.Context, table string) (*resyncTable, error) {
	rules := s.opts.Rules
	if !slices.Contains(rules.Tables(), table) {
		return nil, httpapi.Errorf(http.StatusBadRequest, "table: no [[rule]] watches %s (tables with rules: %s)", table, strings.Join(rules.Tables(), ", "))
	}
	columns, pk, err := s.tableColumns(ctx, table)
	switch {
	case err != nil:
		return nil, httpapi.Wrap(http.StatusServiceUnavailable, err)
	case len(columns) == 0:
		return nil, httpapi.Errorf(http.StatusBadRequest, "table: %s does not exist", table)
	case len(pk) == 0:
		return nil, httpapi.Errorf(http.StatusBadRequest, "table: %s has no primary key to chunk it by", table)
	}
	return &resyncTable{name: table, columns: columns, pk: pk}, nil
}

func (t *resyncTable) from() string {
	db, name, _ := strings.Cut(t.name, ".")
	return quote(db) + "." + quote(name)
}

// chunkQuery selects the next limit rows after the key after (none: from
// the first), in key order. A composite key's "(a, b) > (x, y)" is written
// out as "a > x OR (a = x AND b > y)": MariaDB scans the whole index for a
// row comparison but reads a range for this.
func (t *resyncTable) chunkQuery(where string, after []string, limit int) (string, []any) {
	sel := make([]string, len(t.columns))
	for i, c := range t.columns {
		sel[i] = quote(c)
	}
	var conds []string
	if where != "" {
		conds = append(conds, "("+where+")")
	}
	var args []any
	if after != nil {
		var or []string
		for i := range t.pk {
			var and []string
			for j := range i {
				and = append(and, quote(t.pk[j])+" = ?")
				args = append(args, after[j])
			}
			and = append(and, quote(t.pk[i])+" > ?")
			args = append(args, after[i])
			or = append(or, "("+strings.Join(and, " AND ")+")")
		}
		conds = append(conds, "("+strings.Join(or, " OR ")+")")
	}
	q := "SELECT " + strings.Join(sel, ", ") + " FROM " + t.from()
	if len(conds) > 0 {
		q += " WHERE " + strings.Join(conds, " AND ")
	}
	order := make([]string, len(t.pk))
	for i, c := range t.pk {
		order[i] = quote(c)
	}
	q += " ORDER BY " + strings.Join(order, ", ") + fmt.Sprintf(" LIMIT %d", limit)
	return q, args
}

// readOnly runs f in a read-only transaction: a filter is SQL someone
// typed, and whatever it calls cannot write there.
func (s *Server) readOnly(ctx context.Context, f func(tx *sql.Tx) error) error {
	tx, err := s.opts.DB.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return err
	}
	defer tx.Rollback() // after Commit, a no-op
	if err := f(tx); err != nil {
		return err
	}
	return tx.Commit()
}

// readChunk reads the next chunk of rows as text.
func (s *Server) readChunk(ctx context.Context, t *resyncTable, where string, after []string, limit int) ([][]any, error) {
	q, args := t.chunkQuery(where, after, limit)
	var images [][]any
	err := s.readOnly(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			image := make([]any, len(t.columns))
			ptrs := make([]any, len(image))
			for i := range image {
				ptrs[i] = &image[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				return err
			}
			textImage(image)
			images = append(images, image)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", t.name, err)
	}
	return images, nil
}

// keyOf is the primary key of an image, as text.
func (t *resyncTable) keyOf(image []any) []string {
	key := make([]string, len(t.pk))
	for i, c := range t.pk {
		key[i] = fmt.Sprint(image[slices.Index(t.columns, c)])
	}
	return key
}

// planResync checks a re-sync request against the server: the table, its
// key, the filter (EXPLAIN: MariaDB's own message on error) and the rows it
// matches now; a dry run also previews the first chunk.
func (s *Server) planResync(ctx context.Context, body []byte) (*taskPlan, error) {
	q, err := DecodeResyncRequest(body)
	if err != nil {
		return nil, httpapi.Wrap(http.StatusBadRequest, err)
	}
	if q.RowsPerSecond == 0 {
		q.RowsPerSecond = s.opts.ResyncRowsPerSecond
	}
	if q.ChunkRows == 0 {
		q.ChunkRows = s.opts.ResyncChunkRows
	}
	t, err := s.resyncTable(ctx, q.Table)
	if err != nil {
		return nil, err
	}
	var count int64
	err = s.readOnly(ctx, func(tx *sql.Tx) error {
		query, _ := t.chunkQuery(q.Where, nil, 1)
		rows, err := tx.QueryContext(ctx, "EXPLAIN "+query)
		if err != nil {
			return err
		}
		rows.Close()
		countQuery := "SELECT COUNT(*) FROM " + t.from()
		if q.Where != "" {
			countQuery += " WHERE (" + q.Where + ")"
		}
		return tx.QueryRowContext(ctx, countQuery).Scan(&count)
	})
	switch {
	case sqlError(err):
		return nil, httpapi.Errorf(http.StatusBadRequest, "where: %w", err)
	case err != nil:
		return nil, httpapi.Errorf(http.StatusServiceUnavailable, "check the filter on %s: %w", t.name, err)
	}
	stored, err := json.Marshal(q.runForm())
	if err != nil {
		return nil, err
	}
	p := &taskPlan{kind: KindResync, reason: q.Reason, dryRun: q.DryRun, request: stored, total: count}
	if !q.DryRun {
		return p, nil
	}
	pv := &ResyncPreview{Table: t.name, Where: q.Where, PrimaryKey: t.pk, Columns: t.columns, MatchingRows: count,
		ChunkRows: q.ChunkRows, RowsPerSecond: q.RowsPerSecond,
		Chunks:           (count + int64(q.ChunkRows) - 1) / int64(q.ChunkRows),
		EstimatedSeconds: math.Round(float64(count)/float64(q.RowsPerSecond)*10) / 10}
	images, err := s.readChunk(ctx, t, q.Where, nil, q.ChunkRows)
	if err != nil {
		return nil, httpapi.Wrap(http.StatusServiceUnavailable, err)
	}
	first := &Preview{DryRun: true, Reason: q.Reason}
	b := s.opts.Rules.NewBatch()
	for _, image := range images {
		e, err := s.opts.Rules.ExplainRow(t.name, t.columns, image, b)
		if err != nil {
			return nil, httpapi.Errorf(http.StatusBadRequest, "table: %w", err)
		}
		e.SetTopics(s.opts.TopicPrefix)
		first.Rows = append(first.Rows, e)
	}
	s.summarize(first, b)
	pv.FirstChunk = first
	p.preview = pv
	return p, nil
}

// runForm is the request as a task stores and runs it: no dry run.
func (q *ResyncRequest) runForm() *ResyncRequest {
	c := *q
	c.DryRun = false
	return &c
}

// runResync re-syncs chunk after chunk from the cursor: each chunk read in
// a read-only transaction, paced at rows_per_second, published as one job,
// and the cursor saved once nsqd acknowledged it.
func (s *Server) runResync(ctx context.Context, tr *taskRun) error {
	t := tr.row
	q, err := DecodeResyncRequest(t.request)
	if err != nil {
		return fmt.Errorf("the task's request: %w", err)
	}
	table, err := s.resyncTable(ctx, q.Table)
	if err != nil {
		return err
	}
	var after []string
	var c resyncCursor
	if err := json.Unmarshal(t.cursor, &c); err != nil {
		return fmt.Errorf("the task's cursor %s: %w", t.cursor, err)
	}
	if c.After != nil {
		if !slices.Equal(c.Columns, table.pk) || len(c.After) != len(table.pk) {
			return fmt.Errorf("the primary key of %s is now (%s), the cursor's (%s): start a new re-sync", table.name,
				strings.Join(table.pk, ", "), strings.Join(c.Columns, ", "))
		}
		after = c.After
	}
	// A bucket of one chunk: a chunk is never split, and the rate holds
	// over the run.
	pace := rate.NewLimiter(rate.Limit(q.RowsPerSecond), q.ChunkRows)
	for {
		images, err := s.readChunk(ctx, table, q.Where, after, q.ChunkRows)
		if err != nil {
			return err
		}
		if len(images) == 0 {
			return nil
		}
		if err := pace.WaitN(ctx, len(images)); err != nil {
			return err
		}
		b := s.opts.Rules.NewBatch()
		for _, image := range images {
			if _, err := s.opts.Rules.ExplainRow(table.name, table.columns, image, b); err != nil {
				return fmt.Errorf("render %s: %w", table.name, err)
			}
		}
		batches := t.batches
		if b.Len() > 0 {
			batches++
			job := taskJobID(t.id, batches)
			if err := s.opts.Publisher.Publish(ctx, b, invalidate.Meta{Pos: "resync:" + t.id, Seen: time.Now(), Job: job}); err != nil {
				return fmt.Errorf("publish job %s: %w", job, err)
			}
			// OnPublished tracked the job before the batch was sent.
			s.opts.Jobs.Describe(job, t.user, t.reason)
		}
		after = table.keyOf(images[len(images)-1])
		cursor, err := json.Marshal(resyncCursor{Columns: table.pk, After: after})
		if err != nil {
			return err
		}
		done := t.done + int64(len(images))
		if err := tr.save(ctx, cursor, done, max(t.total, done), batches); err != nil {
			return err
		}
		if len(images) < q.ChunkRows {
			return nil
		}
	}
}
