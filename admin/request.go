package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"
)

// PurgeRequest is the body of POST /api/v1/purges.
type PurgeRequest struct {
	// Reason, required, says why (the audit and the job keep it).
	Reason string `json:"reason"`
	// DryRun answers the preview and publishes nothing.
	DryRun bool `json:"dry_run,omitempty"`
	// Keys and Patterns are purged in Groups, or in every Redis group
	// without Groups.
	Keys   []string `json:"keys,omitempty"`
	Groups []string `json:"groups,omitempty"`
	// Patterns (admin only) are Redis globs: every replica unlinks the
	// keys that match (SCAN MATCH + UNLINK). One without a literal prefix
	// ("*", "?x", "[ab]*") must be named in Confirm too.
	Patterns []string `json:"patterns,omitempty"`
	// Bans (admin only) are regexes on the request URL (path and query,
	// as Varnish's req.url): every HTTP instance bans the objects whose URL
	// matches. No whitespace or '"' (the VCL's ban expression takes the
	// regex as one word).
	Bans []string `json:"bans,omitempty"`
	// FlushGroups (admin only) are Redis groups every replica of which
	// empties its database (FLUSHDB ASYNC); each must be named in Confirm.
	FlushGroups []string `json:"flush_groups,omitempty"`
	// Confirm repeats, as a list, every flushed group and every pattern
	// without a literal prefix; a run missing one is a 409.
	Confirm []string `json:"confirm,omitempty"`
	// URLs and Tags are purged in every HTTP group (and on the CDN).
	URLs []string `json:"urls,omitempty"`
	Tags []string `json:"tags,omitempty"`
	// Rows are purged as the rules render them.
	Rows []RowRef `json:"rows,omitempty"`
}

// RowRef names a row by its primary key: {"table": "shop.item", "key": {"id": 42}}.
type RowRef struct {
	Table string `json:"table"`
	// Key maps each primary-key column to its value: an int64 for an
	// integral JSON number, a string otherwise.
	Key map[string]any `json:"key"`
}

// Limits of one request.
const (
	maxReasonLen = 1000
	maxTargets   = 10000 // keys, URLs and tags given
	maxRows      = 100
	maxKeyLen    = 64 << 10 // as the purge message format allows
	maxURLLen    = 8 << 10
	maxTagLen    = 8 << 10
)

// taskFields are fields someone may send a purge for a replay or a
// re-sync, which have endpoints of their own.
var taskFields = map[string]string{"replay": "a replay is POST /api/v1/replays", "resync": "a re-sync is POST /api/v1/resyncs",
	"re_sync": "a re-sync is POST /api/v1/resyncs"}

var (
	tableRe  = regexp.MustCompile(`^[A-Za-z0-9_$]{1,64}\.[A-Za-z0-9_$]{1,64}$`)
	identRe  = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)
	columnRe = regexp.MustCompile(`^[A-Za-z0-9_$]{1,64}$`)
)

// DecodePurgeRequest decodes a body strictly (an unknown field is an error
// naming it) and checks it: a reason, something to purge, each target
// non-empty and within the purge message format's bounds.
func DecodePurgeRequest(body []byte) (*PurgeRequest, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	var raw struct {
		PurgeRequest
		Rows []struct {
			Table string                     `json:"table"`
			Key   map[string]json.RawMessage `json:"key"`
		} `json:"rows"`
	}
	if err := dec.Decode(&raw); err != nil {
		for k, where := range taskFields {
			if strings.Contains(err.Error(), `unknown field "`+k+`"`) {
				return nil, fmt.Errorf("%s: not a purge: %s (a purge takes keys, urls, tags, rows, patterns, bans and flush_groups)", k, where)
			}
		}
		return nil, fmt.Errorf("body: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("body: data after the JSON object")
	}
	q := raw.PurgeRequest
	q.Rows = nil
	// "urls": [] and no urls are the same request.
	for _, l := range []*[]string{&q.Keys, &q.Groups, &q.Patterns, &q.Bans, &q.FlushGroups, &q.Confirm, &q.URLs, &q.Tags} {
		if len(*l) == 0 {
			*l = nil
		}
	}
	q.Reason = strings.TrimSpace(q.Reason)
	switch {
	case q.Reason == "":
		return nil, errors.New("reason: missing; say why you purge (the audit keeps it)")
	case len(q.Reason) > maxReasonLen:
		return nil, fmt.Errorf("reason: longer than %d bytes", maxReasonLen)
	case len(q.Keys)+len(q.URLs)+len(q.Tags)+len(raw.Rows)+len(q.Patterns)+len(q.Bans)+len(q.FlushGroups) == 0:
		return nil, errors.New("nothing to purge: give keys, urls, tags, rows, patterns, bans or flush_groups")
	case len(q.Keys)+len(q.URLs)+len(q.Tags)+len(q.Patterns)+len(q.Bans) > maxTargets:
		return nil, fmt.Errorf("more than %d keys, urls, tags, patterns and bans", maxTargets)
	case len(raw.Rows) > maxRows:
		return nil, fmt.Errorf("rows: more than %d", maxRows)
	case len(q.Groups) > 0 && len(q.Keys)+len(q.Patterns) == 0:
		return nil, errors.New("groups: name the Redis groups of keys or patterns; there are none")
	case len(q.Confirm) > 0 && len(q.FlushGroups)+len(q.Patterns) == 0:
		return nil, errors.New("confirm: confirms flush_groups and patterns; there are none")
	}
	for _, f := range []struct {
		name    string
		targets []string
		max     int
	}{{"keys", q.Keys, maxKeyLen}, {"urls", q.URLs, maxURLLen}, {"tags", q.Tags, maxTagLen}, {"groups", q.Groups, 64},
		{"patterns", q.Patterns, maxKeyLen}, {"bans", q.Bans, maxURLLen}, {"flush_groups", q.FlushGroups, 64}, {"confirm", q.Confirm, maxKeyLen}} {
		for i, t := range f.targets {
			if t == "" || len(t) > f.max {
				return nil, fmt.Errorf("%s[%d]: length %d (1 to %d)", f.name, i, len(t), f.max)
			}
		}
	}
	for i, pat := range q.Patterns {
		if err := checkGlob(pat); err != nil {
			return nil, fmt.Errorf("patterns[%d]: %q: %w", i, pat, err)
		}
	}
	for i, b := range q.Bans {
		if err := checkBan(b); err != nil {
			return nil, fmt.Errorf("bans[%d]: %q: %w", i, b, err)
		}
	}
	for i, r := range raw.Rows {
		key := fmt.Sprintf("rows[%d]", i)
		if !tableRe.MatchString(r.Table) {
			return nil, fmt.Errorf("%s.table: %q is not db.table", key, r.Table)
		}
		if len(r.Key) == 0 {
			return nil, fmt.Errorf("%s.key: missing; map the primary-key columns to their values", key)
		}
		ref := RowRef{Table: r.Table, Key: map[string]any{}}
		for col, v := range r.Key {
			if !columnRe.MatchString(col) {
				return nil, fmt.Errorf("%s.key: %q is not a column name", key, col)
			}
			val, err := keyValue(v)
			if err != nil {
				return nil, fmt.Errorf("%s.key.%s: %w", key, col, err)
			}
			ref.Key[col] = val
		}
		q.Rows = append(q.Rows, ref)
	}
	return &q, nil
}

// checkGlob checks a Redis glob pattern: every "[" closed by a "]", no
// escaping "\" at the end.
func checkGlob(p string) error {
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '\\':
			if i == len(p)-1 {
				return errors.New(`ends with an escaping "\"`)
			}
			i++
		case '[':
			j := i + 1
			if j < len(p) && p[j] == '^' {
				j++
			}
			for ; j < len(p) && p[j] != ']'; j++ {
				if p[j] == '\\' {
					j++
				}
			}
			if j >= len(p) {
				return errors.New(`"[" at byte ` + strconv.Itoa(i) + ` is never closed`)
			}
			i = j
		}
	}
	return nil
}

// checkBan checks a ban's URL regex: it compiles (RE2 syntax, which
// Varnish's PCRE2 reads the same for what RE2 accepts) and holds no
// whitespace or '"', which would split or end the VCL's ban expression.
func checkBan(b string) error {
	if i := strings.IndexFunc(b, func(r rune) bool { return r == '"' || unicode.IsSpace(r) || unicode.IsControl(r) }); i >= 0 {
		return fmt.Errorf("byte %d: no whitespace, control characters or '\"' in a ban (use \\s or \\x22)", i)
	}
	if _, err := regexp.Compile(b); err != nil {
		return err
	}
	return nil
}

// literalPrefix is the part of a glob before its first special character:
// a pattern without one may match every key of the database.
func literalPrefix(p string) string {
	if i := strings.IndexAny(p, `*?[\`); i >= 0 {
		return p[:i]
	}
	return p
}

// keyValue decodes one primary-key value: an integral number becomes an
// int64, another number or a string a string.
func keyValue(v json.RawMessage) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(v))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch x := tok.(type) {
	case string:
		return x, nil
	case json.Number:
		if n, err := strconv.ParseInt(string(x), 10, 64); err == nil {
			return n, nil
		}
		return string(x), nil
	}
	return nil, fmt.Errorf("%s is not a key value (a number or a string)", strings.TrimSpace(string(v)))
}

// sortedColumns lists a key's columns in order.
func sortedColumns(key map[string]any) []string {
	cols := make([]string, 0, len(key))
	for c := range key {
		cols = append(cols, c)
	}
	slices.Sort(cols)
	return cols
}
