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
	"time"

	"github.com/flashsync/flashsync/canal"
)

// ReplayRequest is the body of POST /api/v1/replays: re-read the binlog
// between From and To with the current rules and publish what they render.
type ReplayRequest struct {
	// Reason, required, says why (the audit, the task and its jobs keep it).
	Reason string `json:"reason"`
	// From is required: a datetime ("2026-12-02 14:00:00" or
	// "2026-12-02T14:00:00", UTC; or RFC 3339 with its zone,
	// "2026-12-02T14:00:00+08:00") or a binlog position
	// ("mariadb-bin.000003:1234").
	From string `json:"from"`
	// To, in the same forms, ends the range (exclusive); omitted, it is the
	// server's position when the request is accepted.
	To string `json:"to,omitempty"`
	// Tables limits the replay to some "db.table"s with rules; omitted,
	// every table with rules.
	Tables []string `json:"tables,omitempty"`
	// DryRun answers the resolved range and publishes nothing.
	DryRun bool `json:"dry_run,omitempty"`

	from, to canal.ReplayBound // From and To parsed (to zero when To is "")
}

// ResyncRequest is the body of POST /api/v1/resyncs: purge what the rules
// render from every row of Table that matches Where, chunk by chunk in
// primary-key order.
type ResyncRequest struct {
	// Reason, required, says why.
	Reason string `json:"reason"`
	// Table is the "db.table", which must have rules.
	Table string `json:"table"`
	// Where, optional, is an SQL condition on the table's rows
	// ("price > 100"), run in read-only transactions.
	Where string `json:"where,omitempty"`
	// RowsPerSecond bounds the rows read and published a second; 0 (or
	// omitted): the server's default. An explicit 0 is refused.
	RowsPerSecond int `json:"rows_per_second,omitempty"`
	// ChunkRows is the rows of one chunk, one job each; 0: the default.
	ChunkRows int `json:"chunk_rows,omitempty"`
	// DryRun answers the count and the first chunk's preview.
	DryRun bool `json:"dry_run,omitempty"`
}

// Bounds of a task request.
const (
	maxReplayTables = 100
	maxWhereLen     = 4096
	// MaxResyncRowsPerSecond and MaxResyncChunkRows bound a re-sync's
	// rows_per_second and chunk_rows (and the [admin] defaults).
	MaxResyncRowsPerSecond = 100000
	MaxResyncChunkRows     = 10000
)

// The forms of a replay bound. A datetime without a zone is UTC: binlog
// timestamps are unix seconds, and UTC is what the audit and the task
// store write; the server's time_zone (often SYSTEM) would make one
// request mean another hour on another server.
var (
	datetimeLayouts = []string{"2006-01-02 15:04:05", "2006-01-02T15:04:05"}
	binlogPosRe     = regexp.MustCompile(`^([A-Za-z0-9_.-]{1,250}\.[0-9]{1,10}):([0-9]{1,10})$`)
)

// The years a bound may name: binlog timestamps are unsigned 32-bit
// seconds.
const minBoundYear, maxBoundYear = 1970, 2105

// parseBound parses one end of a replay range.
func parseBound(key, v string) (canal.ReplayBound, error) {
	hint := "a datetime (2026-12-02 14:00:00, UTC, or RFC 3339 with a zone) or a binlog position (mariadb-bin.000003:1234)"
	if v == "" {
		return canal.ReplayBound{}, fmt.Errorf("%s: missing; %s", key, hint)
	}
	if m := binlogPosRe.FindStringSubmatch(v); m != nil {
		pos, err := strconv.ParseUint(m[2], 10, 32)
		if err != nil || pos < 4 {
			// A binlog's first event starts after its 4-byte magic number.
			return canal.ReplayBound{}, fmt.Errorf("%s: %q: position %s is not 4 to %d", key, v, m[2], uint32(1<<32-1))
		}
		return canal.ReplayBound{File: m[1], Pos: uint32(pos)}, nil
	}
	var t time.Time
	var err error
	for _, layout := range datetimeLayouts {
		if t, err = time.Parse(layout, v); err == nil {
			break
		}
	}
	if err != nil {
		if t, err = time.Parse(time.RFC3339, v); err != nil {
			return canal.ReplayBound{}, fmt.Errorf("%s: %q is not %s", key, v, hint)
		}
	}
	if y := t.UTC().Year(); y < minBoundYear || y > maxBoundYear {
		return canal.ReplayBound{}, fmt.Errorf("%s: %q: the year must be %d to %d (binlog timestamps)", key, v, minBoundYear, maxBoundYear)
	}
	return canal.ReplayBound{Time: t.UTC()}, nil
}

// boundString is the request form of b: its position, or its time in UTC.
func boundString(b canal.ReplayBound) string {
	if b.File != "" {
		return b.File + ":" + strconv.FormatUint(uint64(b.Pos), 10)
	}
	return b.Time.UTC().Format(time.RFC3339Nano)
}

// decodeStrict decodes body into v: an unknown field is an error naming it,
// and so is anything after the object.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("body: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("body: data after the JSON object")
	}
	return nil
}

func checkReason(reason string) (string, error) {
	reason = strings.TrimSpace(reason)
	switch {
	case reason == "":
		return "", errors.New("reason: missing; say why (the audit keeps it)")
	case len(reason) > maxReasonLen:
		return "", fmt.Errorf("reason: longer than %d bytes", maxReasonLen)
	}
	return reason, nil
}

// DecodeReplayRequest decodes a body strictly and checks it: a reason, a
// from, a to (when given) after it, tables named db.table, once each.
// Whether the positions are on the server and the tables have rules is
// the server's to check.
func DecodeReplayRequest(body []byte) (*ReplayRequest, error) {
	var q ReplayRequest
	if err := decodeStrict(body, &q); err != nil {
		return nil, err
	}
	var err error
	if q.Reason, err = checkReason(q.Reason); err != nil {
		return nil, err
	}
	q.From, q.To = strings.TrimSpace(q.From), strings.TrimSpace(q.To)
	if q.from, err = parseBound("from", q.From); err != nil {
		return nil, err
	}
	if q.To != "" {
		if q.to, err = parseBound("to", q.To); err != nil {
			return nil, err
		}
		if err := checkOrder(q.from, q.to); err != nil {
			return nil, err
		}
	}
	if len(q.Tables) == 0 {
		q.Tables = nil
	}
	if len(q.Tables) > maxReplayTables {
		return nil, fmt.Errorf("tables: more than %d", maxReplayTables)
	}
	for i, t := range q.Tables {
		if !tableRe.MatchString(t) {
			return nil, fmt.Errorf("tables[%d]: %q is not db.table", i, t)
		}
		if slices.Index(q.Tables, t) != i {
			return nil, fmt.Errorf("tables[%d]: %s is listed twice", i, t)
		}
	}
	return &q, nil
}

// checkOrder refuses a range whose to is not after its from, when both are
// times or both positions (a time and a position compare only on the
// server).
func checkOrder(from, to canal.ReplayBound) error {
	switch {
	case from.File == "" && to.File == "":
		if !to.Time.After(from.Time) {
			return fmt.Errorf("to: %s is not after from %s", boundString(to), boundString(from))
		}
	case from.File != "" && to.File != "":
		fb, fn := splitBinlogName(from.File)
		tb, tn := splitBinlogName(to.File)
		if fb != tb {
			return fmt.Errorf("to: %s is not a binlog of from's (%s)", to.File, from.File)
		}
		if tn < fn || (tn == fn && to.Pos <= from.Pos) {
			return fmt.Errorf("to: %s is not after from %s", boundString(to), boundString(from))
		}
	}
	return nil
}

// splitBinlogName splits "mariadb-bin.000003" into its base and number.
func splitBinlogName(file string) (string, uint64) {
	i := strings.LastIndexByte(file, '.')
	n, _ := strconv.ParseUint(file[i+1:], 10, 64) // binlogPosRe checked the digits
	return file[:i], n
}

// DecodeResyncRequest decodes a body strictly and checks it: a reason, a
// db.table, a filter that stays one SQL condition (see checkFilter), and
// rows_per_second and chunk_rows, when given, within their bounds (0
// given is refused: omit it for the default).
func DecodeResyncRequest(body []byte) (*ResyncRequest, error) {
	var raw struct {
		ResyncRequest
		RowsPerSecond *int `json:"rows_per_second"`
		ChunkRows     *int `json:"chunk_rows"`
	}
	if err := decodeStrict(body, &raw); err != nil {
		return nil, err
	}
	q := raw.ResyncRequest
	var err error
	if q.Reason, err = checkReason(q.Reason); err != nil {
		return nil, err
	}
	if !tableRe.MatchString(q.Table) {
		return nil, fmt.Errorf("table: %q is not db.table", q.Table)
	}
	q.Where = strings.TrimSpace(q.Where)
	if err := checkFilter(q.Where); err != nil {
		return nil, fmt.Errorf("where: %w", err)
	}
	for _, f := range []struct {
		key string
		v   *int
		max int
		dst *int
	}{{"rows_per_second", raw.RowsPerSecond, MaxResyncRowsPerSecond, &q.RowsPerSecond}, {"chunk_rows", raw.ChunkRows, MaxResyncChunkRows, &q.ChunkRows}} {
		if f.v == nil {
			continue
		}
		if *f.v < 1 || *f.v > f.max {
			return nil, fmt.Errorf("%s: %d; want 1 to %d (omit it for the server's default)", f.key, *f.v, f.max)
		}
		*f.dst = *f.v
	}
	return &q, nil
}

// checkFilter checks that a re-sync's filter is one SQL condition that
// stays inside the parentheses it is put in, "WHERE (<filter>) AND ...":
// its parentheses balance outside quotes and never close one it did not
// open, and it has no statement separator, no comment (which could hide
// the rest of the query) and no backslash (which a server with
// NO_BACKSLASH_ESCAPES reads as a character, not an escape, so a quote
// could end elsewhere than this check thinks). What it means is the
// server's to check (EXPLAIN at submit); that it cannot write is the read
// only transaction's.
func checkFilter(f string) error {
	if len(f) > maxWhereLen {
		return fmt.Errorf("longer than %d bytes", maxWhereLen)
	}
	depth := 0
	var quote byte // the open quote, 0 outside one
	for i := 0; i < len(f); i++ {
		c := f[i]
		switch {
		case c == '\\':
			return fmt.Errorf("byte %d: no backslash (double a quote to escape it: 'it''s')", i)
		case c < 0x20 && c != '\t' && c != '\n' && c != '\r' || c == 0x7f:
			return fmt.Errorf("byte %d: control character", i)
		case quote != 0:
			if c == quote {
				if i+1 < len(f) && f[i+1] == quote { // '' inside '...'
					i++
				} else {
					quote = 0
				}
			}
		case c == '\'' || c == '"' || c == '`':
			quote = c
		case c == '(':
			depth++
		case c == ')':
			if depth == 0 {
				return fmt.Errorf("byte %d: ')' closes no '('", i)
			}
			depth--
		case c == ';':
			return fmt.Errorf("byte %d: no ';' (one condition, not statements)", i)
		case c == '#', c == '-' && i+1 < len(f) && f[i+1] == '-', c == '/' && i+1 < len(f) && f[i+1] == '*':
			return fmt.Errorf("byte %d: no comment (#, --, /*)", i)
		}
	}
	switch {
	case quote != 0:
		return fmt.Errorf("%c is never closed", quote)
	case depth > 0:
		return fmt.Errorf("%d '(' never closed", depth)
	}
	return nil
}
