package admin

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/flashsync/flashsync/internal/httpapi"
	"github.com/flashsync/flashsync/invalidate"
)

// Preview is what a purge request publishes: the answer of a dry run, and
// of an accepted purge with its job.
type Preview struct {
	// Job is the accepted purge's job (GET /api/v1/jobs/{id}).
	Job    string `json:"job,omitempty"`
	DryRun bool   `json:"dry_run"`
	Reason string `json:"reason"`
	// Notes are remarks on the request: keys sent to every Redis group,
	// rows that no longer exist.
	Notes []string `json:"notes,omitempty"`
	// Rows explain, per row, what every rule of its table renders.
	Rows []*invalidate.Explanation `json:"rows,omitempty"`
	// Purges are the request's distinct targets per group, with the topic
	// and the replicas, instances or CDN nodes that each receive them.
	Purges []invalidate.GroupPurge `json:"purges"`
	Counts Counts                  `json:"counts"`
}

// Counts summarise a preview.
type Counts struct {
	Keys int `json:"keys"`
	URLs int `json:"urls"`
	Tags int `json:"tags"`
	// Patterns counts the patterns per Redis group, Flushes the Redis
	// groups flushed.
	Patterns int `json:"patterns"`
	Flushes  int `json:"flushes"`
	// Bans counts the bans per HTTP group.
	Bans int `json:"bans"`
	// Targets is the replicas, instances and CDN nodes that must each
	// acknowledge the job.
	Targets int `json:"targets"`
}

// plan builds the request's batch and its preview. Rows are read from
// MySQL now. Bad input is a 400, an unreachable MySQL a 503.
func (s *Server) plan(ctx context.Context, q *PurgeRequest) (*Preview, *invalidate.Batch, error) {
	rules := s.opts.Rules
	redis, web := rules.RedisGroups(), rules.HTTPGroups()
	p := &Preview{DryRun: q.DryRun, Reason: q.Reason}
	b := rules.NewBatch()
	if len(q.Keys)+len(q.Patterns)+len(q.FlushGroups) > 0 && len(redis) == 0 {
		return nil, nil, httpapi.Errorf(http.StatusBadRequest, "keys, patterns, flush_groups: no [[redis_group]] to purge them in")
	}
	redisGroup := func(key string, i int, name string) (int, error) {
		g := slices.IndexFunc(redis, func(g invalidate.Group) bool { return g.Name == name })
		if g < 0 {
			return 0, httpapi.Errorf(http.StatusBadRequest, "%s[%d]: unknown Redis group %q (%s)", key, i, name, strings.Join(rules.Groups(), ", "))
		}
		return g, nil
	}
	if len(q.Keys)+len(q.Patterns) > 0 {
		var groups []int
		for i, name := range q.Groups {
			g, err := redisGroup("groups", i, name)
			if err != nil {
				return nil, nil, err
			}
			groups = append(groups, g)
		}
		if len(groups) == 0 {
			for g := range redis {
				groups = append(groups, g)
			}
			what := "keys"
			switch {
			case len(q.Keys) > 0 && len(q.Patterns) > 0:
				what = "keys and patterns"
			case len(q.Patterns) > 0:
				what = "patterns"
			}
			p.Notes = append(p.Notes, fmt.Sprintf("%s without groups are purged in every Redis group: %s", what, strings.Join(rules.Groups(), ", ")))
		}
		for _, g := range groups {
			for _, k := range q.Keys {
				b.Add(g, k)
			}
			for _, pat := range q.Patterns {
				b.AddPattern(g, pat)
			}
		}
	}
	for i, name := range q.FlushGroups {
		g, err := redisGroup("flush_groups", i, name)
		if err != nil {
			return nil, nil, err
		}
		b.AddFlush(g)
	}
	if need := q.unconfirmed(); len(need) > 0 && q.DryRun {
		p.Notes = append(p.Notes, fmt.Sprintf("a run (not a dry run) must confirm %s: add \"confirm\": [%s]", strings.Join(need, ", "), quoteList(need)))
	}
	if len(q.Bans) > 0 {
		if len(web) == 0 {
			return nil, nil, httpapi.Errorf(http.StatusBadRequest, "bans: no [[http_group]] to ban in")
		}
		for g := range web {
			for _, ban := range q.Bans {
				b.AddBan(g, ban)
			}
		}
		if len(s.opts.CDNNodes) > 0 {
			p.Notes = append(p.Notes, "bans reach the [[http_group]]s' instances, not the CDN nodes")
		}
	}
	if len(q.URLs)+len(q.Tags) > 0 {
		if len(web) == 0 {
			return nil, nil, httpapi.Errorf(http.StatusBadRequest, "urls, tags: no [[http_group]] to purge them in")
		}
		for g := range web {
			for _, u := range q.URLs {
				b.AddURL(g, u)
			}
			for _, t := range q.Tags {
				b.AddTag(g, t)
			}
		}
	}
	for i, ref := range q.Rows {
		e, note, err := s.planRow(ctx, fmt.Sprintf("rows[%d]", i), ref, b)
		if err != nil {
			return nil, nil, err
		}
		if note != "" {
			p.Notes = append(p.Notes, note)
		}
		e.SetTopics(s.opts.TopicPrefix)
		p.Rows = append(p.Rows, e)
	}
	if b.Len() == 0 {
		return nil, nil, httpapi.Errorf(http.StatusBadRequest, "nothing to purge: the rows render no target")
	}
	s.summarize(p, b)
	return p, b, nil
}

// summarize fills in p's purges, per group with its topic and the replicas,
// instances or CDN nodes that receive them, and its counts, from b.
func (s *Server) summarize(p *Preview, b *invalidate.Batch) {
	p.Purges = s.opts.Rules.Purges(b)
	var urls, tags []string
	for i := range p.Purges {
		gp := &p.Purges[i]
		if gp.Tier == invalidate.TierRedis {
			gp.Topic = invalidate.RedisTopic(s.opts.TopicPrefix, gp.Group)
			p.Counts.Keys += len(gp.Keys)
			p.Counts.Patterns += len(gp.Patterns)
			if gp.Flush {
				p.Counts.Flushes++
			}
			p.Counts.Targets += len(gp.Replicas)
			continue
		}
		gp.Topic = invalidate.HTTPTopic(s.opts.TopicPrefix, gp.Group)
		p.Counts.URLs += len(gp.URLs)
		p.Counts.Tags += len(gp.Tags)
		p.Counts.Bans += len(gp.Bans)
		p.Counts.Targets += len(gp.Instances)
		urls = appendNew(urls, gp.URLs)
		tags = appendNew(tags, gp.Tags)
	}
	if len(s.opts.CDNNodes) > 0 && len(urls)+len(tags) > 0 {
		p.Purges = append(p.Purges, invalidate.GroupPurge{Tier: invalidate.TierCDN, Group: invalidate.CDNGroup,
			Topic: invalidate.CDNTopic(s.opts.TopicPrefix), Nodes: s.opts.CDNNodes, URLs: urls, Tags: tags})
		p.Counts.Targets += len(s.opts.CDNNodes)
	}
}

// adminKinds tells whether q asks for an admin-only kind.
func (q *PurgeRequest) adminKinds() bool { return len(q.Patterns)+len(q.Bans)+len(q.FlushGroups) > 0 }

// unconfirmed lists what q must confirm and does not: every flushed group
// and every pattern without a literal prefix.
func (q *PurgeRequest) unconfirmed() []string {
	var need []string
	for _, g := range q.FlushGroups {
		need = append(need, g)
	}
	for _, pat := range q.Patterns {
		if literalPrefix(pat) == "" {
			need = append(need, pat)
		}
	}
	var missing []string
	for _, n := range need {
		if !slices.Contains(q.Confirm, n) && !slices.Contains(missing, n) {
			missing = append(missing, n)
		}
	}
	return missing
}

func quoteList(vs []string) string {
	qs := make([]string, len(vs))
	for i, v := range vs {
		qs[i] = strconv.Quote(v)
	}
	return strings.Join(qs, ", ")
}

func appendNew(dst, src []string) []string {
	for _, v := range src {
		if !slices.Contains(dst, v) {
			dst = append(dst, v)
		}
	}
	return dst
}

// quote quotes a MySQL identifier.
func quote(id string) string { return "`" + strings.ReplaceAll(id, "`", "``") + "`" }

// planRow reads one row by its primary key and adds what its table's rules
// render to b. A row that no longer exists is rendered from the key values
// given, every other column NULL: the templates over them are skipped and
// a route column outside the key reaches every group.
func (s *Server) planRow(ctx context.Context, key string, ref RowRef, b *invalidate.Batch) (*invalidate.Explanation, string, error) {
	rules := s.opts.Rules
	if !slices.Contains(rules.Tables(), ref.Table) {
		return nil, "", httpapi.Errorf(http.StatusBadRequest, "%s.table: no [[rule]] watches %s (tables with rules: %s)", key, ref.Table, strings.Join(rules.Tables(), ", "))
	}
	db, table, _ := strings.Cut(ref.Table, ".")
	columns, pk, err := s.tableColumns(ctx, ref.Table)
	if err != nil {
		return nil, "", httpapi.Errorf(http.StatusServiceUnavailable, "%s: %w", key, err)
	}
	switch {
	case len(columns) == 0:
		return nil, "", httpapi.Errorf(http.StatusBadRequest, "%s.table: %s does not exist", key, ref.Table)
	case len(pk) == 0:
		return nil, "", httpapi.Errorf(http.StatusBadRequest, "%s.table: %s has no primary key to name a row by", key, ref.Table)
	}
	given := sortedColumns(ref.Key)
	for _, c := range given {
		if !slices.Contains(columns, c) {
			return nil, "", httpapi.Errorf(http.StatusBadRequest, "%s.key.%s: no such column in %s (columns: %s)", key, c, ref.Table, strings.Join(columns, ", "))
		}
	}
	sortedPK := slices.Sorted(slices.Values(pk))
	if !slices.Equal(given, sortedPK) {
		return nil, "", httpapi.Errorf(http.StatusBadRequest, "%s.key: give the primary key of %s: %s (given: %s)", key, ref.Table, strings.Join(pk, ", "), strings.Join(given, ", "))
	}
	var sel, where []string
	var args []any
	for _, c := range columns {
		sel = append(sel, quote(c))
	}
	for _, c := range pk {
		where = append(where, quote(c)+" = ?")
		args = append(args, ref.Key[c])
	}
	query := "SELECT " + strings.Join(sel, ", ") + " FROM " + quote(db) + "." + quote(table) + " WHERE " + strings.Join(where, " AND ")
	image := make([]any, len(columns))
	ptrs := make([]any, len(columns))
	for i := range image {
		ptrs[i] = &image[i]
	}
	note := ""
	err = s.opts.DB.QueryRowContext(ctx, query, args...).Scan(ptrs...)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		clear(image)
		var kv []string
		for _, c := range pk {
			image[slices.Index(columns, c)] = ref.Key[c]
			kv = append(kv, fmt.Sprintf("%s=%v", c, ref.Key[c]))
		}
		note = fmt.Sprintf("%s: %s %s does not exist (any more): purged from the key columns given; templates over other columns are skipped", key, ref.Table, strings.Join(kv, " "))
	case err != nil:
		return nil, "", httpapi.Errorf(http.StatusServiceUnavailable, "%s: read the row: %w", key, err)
	}
	textImage(image)
	e, err := rules.ExplainRow(ref.Table, columns, image, b)
	if err != nil {
		return nil, "", httpapi.Errorf(http.StatusBadRequest, "%s: %w", key, err)
	}
	if note != "" {
		e.Notes = append(e.Notes, note)
	}
	return e, note, nil
}

// tableColumns lists the columns of table ("db.table"), in order, and those
// of its primary key, in the key's order; none when the table does not
// exist.
func (s *Server) tableColumns(ctx context.Context, table string) (columns, pk []string, err error) {
	db, name, _ := strings.Cut(table, ".")
	rows, err := s.opts.DB.QueryContext(ctx, "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION", db, name)
	if err != nil {
		return nil, nil, fmt.Errorf("read the columns of %s: %w", table, err)
	}
	defer rows.Close()
	for rows.Next() {
		var col string
		if err := rows.Scan(&col); err != nil {
			return nil, nil, fmt.Errorf("read the columns of %s: %w", table, err)
		}
		columns = append(columns, col)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("read the columns of %s: %w", table, err)
	}
	// The key's own order (SEQ_IN_INDEX), not the table's: a chunked scan
	// orders by it.
	keyRows, err := s.opts.DB.QueryContext(ctx, "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX", db, name)
	if err != nil {
		return nil, nil, fmt.Errorf("read the primary key of %s: %w", table, err)
	}
	defer keyRows.Close()
	for keyRows.Next() {
		var col string
		if err := keyRows.Scan(&col); err != nil {
			return nil, nil, fmt.Errorf("read the primary key of %s: %w", table, err)
		}
		pk = append(pk, col)
	}
	if err := keyRows.Err(); err != nil {
		return nil, nil, fmt.Errorf("read the primary key of %s: %w", table, err)
	}
	return columns, pk, nil
}

// textImage turns the driver's values into text as templates render it:
// the driver returns []byte for text protocol values (a DSN without
// parseTime), nil for NULL.
func textImage(image []any) {
	for i, v := range image {
		if bs, ok := v.([]byte); ok {
			image[i] = string(bs)
		}
	}
}
