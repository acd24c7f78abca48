package admin

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/flashsync/flashsync/canal"
)

func TestDecodeReplayRequest(t *testing.T) {
	for _, tt := range []struct {
		body     string
		from, to canal.ReplayBound
	}{
		{`{"reason":"rule was wrong","from":"2026-12-02 14:00:00","to":"2026-12-02T15:00:00"}`,
			canal.ReplayBound{Time: time.Date(2026, 12, 2, 14, 0, 0, 0, time.UTC)}, canal.ReplayBound{Time: time.Date(2026, 12, 2, 15, 0, 0, 0, time.UTC)}},
		// A zone is honoured; the bound is kept in UTC.
		{`{"reason":"r","from":"2026-12-02T14:00:00+08:00","to":"2026-12-02T14:00:00Z"}`,
			canal.ReplayBound{Time: time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)}, canal.ReplayBound{Time: time.Date(2026, 12, 2, 14, 0, 0, 0, time.UTC)}},
		{`{"reason":"r","from":"mariadb-bin.000003:1234","to":"mariadb-bin.000004:4"}`,
			canal.ReplayBound{File: "mariadb-bin.000003", Pos: 1234}, canal.ReplayBound{File: "mariadb-bin.000004", Pos: 4}},
		{`{"reason":"r","from":"mysql-bin.000003:4","tables":["shop.item"],"dry_run":true}`,
			canal.ReplayBound{File: "mysql-bin.000003", Pos: 4}, canal.ReplayBound{}},
		// A time and a position compare only on the server.
		{`{"reason":"r","from":"2030-01-01 00:00:00","to":"mysql-bin.000001:4"}`,
			canal.ReplayBound{Time: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}, canal.ReplayBound{File: "mysql-bin.000001", Pos: 4}},
	} {
		q, err := DecodeReplayRequest([]byte(tt.body))
		if err != nil {
			t.Errorf("%s: %v", tt.body, err)
			continue
		}
		if !reflect.DeepEqual(q.from, tt.from) || !reflect.DeepEqual(q.to, tt.to) {
			t.Errorf("%s: from %+v to %+v, want %+v and %+v", tt.body, q.from, q.to, tt.from, tt.to)
		}
	}
	for _, tt := range []struct{ body, want string }{
		{`{"from":"2026-12-02 14:00:00"}`, "reason: missing"},
		{`{"reason":"r"}`, "from: missing"},
		{`{"reason":"r","from":"yesterday"}`, `from: "yesterday" is not a datetime`},
		{`{"reason":"r","from":"2026-12-02 25:00:00"}`, `from: "2026-12-02 25:00:00" is not a datetime`},
		{`{"reason":"r","from":"2026-12-02"}`, `is not a datetime`},
		{`{"reason":"r","from":"1969-12-31 23:59:59"}`, "the year must be 1970 to 2105"},
		{`{"reason":"r","from":"mysql-bin.000001:3"}`, "position 3 is not 4 to"},
		{`{"reason":"r","from":"mysql-bin.000001:9999999999"}`, "position 9999999999 is not 4 to"},
		{`{"reason":"r","from":"mysql-bin:4"}`, "is not a datetime"},
		{`{"reason":"r","from":"2026-12-02 15:00:00","to":"2026-12-02 14:00:00"}`, "to: 2026-12-02T14:00:00Z is not after from 2026-12-02T15:00:00Z"},
		{`{"reason":"r","from":"2026-12-02 15:00:00","to":"2026-12-02T15:00:00Z"}`, "is not after from"},
		{`{"reason":"r","from":"mysql-bin.000002:4","to":"mysql-bin.000001:900"}`, "to: mysql-bin.000001:900 is not after from mysql-bin.000002:4"},
		{`{"reason":"r","from":"mysql-bin.000002:400","to":"mysql-bin.000002:400"}`, "is not after from"},
		{`{"reason":"r","from":"mysql-bin.000002:4","to":"other.000003:4"}`, "to: other.000003 is not a binlog of from's"},
		{`{"reason":"r","from":"mysql-bin.000002:4","tables":["item"]}`, `tables[0]: "item" is not db.table`},
		{`{"reason":"r","from":"mysql-bin.000002:4","tables":["a.b","a.b"]}`, "tables[1]: a.b is listed twice"},
		{`{"reason":"r","from":"mysql-bin.000002:4","tabels":["a.b"]}`, `unknown field "tabels"`},
		{`{"reason":"r","from":"mysql-bin.000002:4"} {}`, "data after the JSON object"},
	} {
		if _, err := DecodeReplayRequest([]byte(tt.body)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err %v, want %q", tt.body, err, tt.want)
		}
	}
}

func TestDecodeResyncRequest(t *testing.T) {
	q, err := DecodeResyncRequest([]byte(`{"reason":" rule changed ","table":"shop.item","where":" price > 100 ","rows_per_second":20,"chunk_rows":5}`))
	if err != nil {
		t.Fatal(err)
	}
	if want := (&ResyncRequest{Reason: "rule changed", Table: "shop.item", Where: "price > 100", RowsPerSecond: 20, ChunkRows: 5}); !reflect.DeepEqual(q, want) {
		t.Errorf("decoded %+v, want %+v", q, want)
	}
	for _, tt := range []struct{ body, want string }{
		{`{"table":"shop.item"}`, "reason: missing"},
		{`{"reason":"r"}`, `table: "" is not db.table`},
		{`{"reason":"r","table":"shop.item","rows_per_second":0}`, "rows_per_second: 0; want 1 to 100000"},
		{`{"reason":"r","table":"shop.item","rows_per_second":100001}`, "rows_per_second: 100001; want 1 to 100000"},
		{`{"reason":"r","table":"shop.item","chunk_rows":0}`, "chunk_rows: 0; want 1 to 10000"},
		{`{"reason":"r","table":"shop.item","chunk_rows":-1}`, "chunk_rows: -1"},
		{`{"reason":"r","table":"shop.item","where":"1) OR (1"}`, "where: byte 1: ')' closes no '('"},
		{`{"reason":"r","table":"shop.item","where":"a = 1; DROP TABLE x"}`, "where: byte 5: no ';'"},
		{`{"reason":"r","table":"shop.item","where":"a = 1 -- x"}`, "where: byte 6: no comment"},
		{`{"reason":"r","table":"shop.item","where":"a = 1 /* x */"}`, "no comment"},
		{`{"reason":"r","table":"shop.item","where":"a = 1 # x"}`, "no comment"},
		{`{"reason":"r","table":"shop.item","where":"a = 'x\\\\' ) OR (1"}`, "no backslash"},
		{`{"reason":"r","table":"shop.item","where":"a = 'x"}`, "' is never closed"},
		{`{"reason":"r","table":"shop.item","where":"(a = 1"}`, "1 '(' never closed"},
		{`{"reason":"r","table":"shop.item","where":"a = \u0000"}`, "control character"},
		{`{"reason":"r","table":"shop.item","id":1}`, `unknown field "id"`},
	} {
		if _, err := DecodeResyncRequest([]byte(tt.body)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err %v, want %q", tt.body, err, tt.want)
		}
	}
}

func TestCheckFilter(t *testing.T) {
	for _, f := range []string{
		"", "price > 100", "name = 'it''s ); --'", "`odd``col)` = 1", `name = "a;b"`, "id IN (SELECT id FROM shop.hot WHERE (x = 1))",
		"a - -1 > 0", "a/2 > 1", "price > 100\n AND name LIKE 'p%'",
	} {
		if err := checkFilter(f); err != nil {
			t.Errorf("%q: %v", f, err)
		}
	}
}

func TestChunkQuery(t *testing.T) {
	single := &resyncTable{name: "shop.item", columns: []string{"id", "price"}, pk: []string{"id"}}
	composite := &resyncTable{name: "shop.sku", columns: []string{"shop", "code", "n"}, pk: []string{"shop", "code"}}
	for _, tt := range []struct {
		t     *resyncTable
		where string
		after []string
		query string
		args  []any
	}{
		{single, "", nil, "SELECT `id`, `price` FROM `shop`.`item` ORDER BY `id` LIMIT 5", nil},
		{single, "price > 100", []string{"7"}, "SELECT `id`, `price` FROM `shop`.`item` WHERE (price > 100) AND ((`id` > ?)) ORDER BY `id` LIMIT 5", []any{"7"}},
		{composite, "n = 1", []string{"3", "b"},
			"SELECT `shop`, `code`, `n` FROM `shop`.`sku` WHERE (n = 1) AND ((`shop` > ?) OR (`shop` = ? AND `code` > ?)) ORDER BY `shop`, `code` LIMIT 5",
			[]any{"3", "3", "b"}},
	} {
		q, args := tt.t.chunkQuery(tt.where, tt.after, 5)
		if q != tt.query || !reflect.DeepEqual(args, tt.args) {
			t.Errorf("chunk of %s after %v:\n got %s %v\nwant %s %v", tt.t.name, tt.after, q, args, tt.query, tt.args)
		}
	}
}

func TestProgress(t *testing.T) {
	for _, tt := range []struct {
		state       string
		done, total int64
		want        float64
	}{
		{TaskRunning, 0, 0, 0}, {TaskRunning, 5, 10, 0.5}, {TaskRunning, 13, 12, 1}, {TaskDone, 0, 0, 1}, {TaskFailed, 3, 12, 0.25},
	} {
		if got := progress(tt.state, tt.done, tt.total); got != tt.want {
			t.Errorf("progress(%s, %d, %d) = %v, want %v", tt.state, tt.done, tt.total, got, tt.want)
		}
	}
}

// FuzzDecodeReplayRequest: the decoder never panics, and what it accepts
// has a reason and a from, a to after it (when both compare), and decodes
// again to itself.
func FuzzDecodeReplayRequest(f *testing.F) {
	for _, s := range []string{
		`{"reason":"r","from":"2026-12-02 14:00:00","to":"2026-12-02 15:00:00"}`,
		`{"reason":"r","from":"2026-12-02T14:00:00+08:00"}`,
		`{"reason":"r","from":"mariadb-bin.000003:1234","to":"mariadb-bin.000004:4","tables":["shop.item"],"dry_run":true}`,
		`{"reason":"r","from":"x.1:4","to":"x.1:5"}`, `{"reason":`, `[]`, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		q, err := DecodeReplayRequest(body)
		if err != nil {
			return
		}
		if q.Reason == "" || (q.from.File == "") == q.from.Time.IsZero() {
			t.Fatalf("accepted %q as %+v", body, q)
		}
		if q.To != "" && checkOrder(q.from, q.to) != nil {
			t.Fatalf("accepted %q: to is not after from", body)
		}
		again, err := json.Marshal(q)
		if err != nil {
			t.Fatal(err)
		}
		q2, err := DecodeReplayRequest(again)
		if err != nil || !reflect.DeepEqual(q, q2) {
			t.Fatalf("%q decoded to %+v, re-encoded %s to %+v (%v)", body, q, again, q2, err)
		}
	})
}

// FuzzDecodeResyncRequest: the decoder never panics, what it accepts has a
// reason, a table and a filter that checkFilter passes, its pace within
// bounds, and decodes again to itself.
func FuzzDecodeResyncRequest(f *testing.F) {
	for _, s := range []string{
		`{"reason":"r","table":"shop.item"}`,
		`{"reason":"r","table":"shop.item","where":"price > 100 AND name <> 'a''b'","rows_per_second":20,"chunk_rows":5,"dry_run":true}`,
		`{"reason":"r","table":"shop.item","where":"id IN (SELECT id FROM shop.hot)"}`,
		`{"reason":"r","table":"shop.item","where":"1) OR (1"}`, `{"reason":`, `[]`, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		q, err := DecodeResyncRequest(body)
		if err != nil {
			return
		}
		if q.Reason == "" || !tableRe.MatchString(q.Table) || checkFilter(q.Where) != nil ||
			q.RowsPerSecond < 0 || q.RowsPerSecond > MaxResyncRowsPerSecond || q.ChunkRows < 0 || q.ChunkRows > MaxResyncChunkRows {
			t.Fatalf("accepted %q as %+v", body, q)
		}
		again, err := json.Marshal(q)
		if err != nil {
			t.Fatal(err)
		}
		q2, err := DecodeResyncRequest(again)
		if err != nil || !reflect.DeepEqual(q, q2) {
			t.Fatalf("%q decoded to %+v, re-encoded %s to %+v (%v)", body, q, again, q2, err)
		}
	})
}

// FuzzCheckFilter: a filter checkFilter accepts, put in the chunk query's
// parentheses, leaves them balanced: it can only be one condition.
func FuzzCheckFilter(f *testing.F) {
	for _, s := range []string{"price > 100", "name = 'it''s'", "1) OR (1", "`a``)` = 1", `"x"`, "a--1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, filter string) {
		if checkFilter(filter) != nil {
			return
		}
		for _, bad := range []string{";", "#", "--", "/*", "\\"} {
			if i := strings.Index(filter, bad); i >= 0 && !inQuotes(filter, i) {
				t.Fatalf("accepted %q with %q outside quotes", filter, bad)
			}
		}
		if d := depthAt(filter, len(filter)); d != 0 {
			t.Fatalf("accepted %q: depth %d at its end", filter, d)
		}
	})
}

// inQuotes and depthAt re-read a filter the way checkFilter does, for the
// fuzz test's invariants: whether byte i is inside a quoted string or name,
// and the parenthesis depth before byte n.
func inQuotes(f string, i int) bool {
	var q byte
	for j := 0; j < i; j++ {
		switch {
		case q != 0 && f[j] == q && j+1 < len(f) && f[j+1] == q:
			j++
		case q != 0 && f[j] == q:
			q = 0
		case q == 0 && (f[j] == '\'' || f[j] == '"' || f[j] == '`'):
			q = f[j]
		}
	}
	return q != 0
}

func depthAt(f string, n int) int {
	d := 0
	for j := 0; j < n; j++ {
		if inQuotes(f, j) || f[j] == '\'' || f[j] == '"' || f[j] == '`' {
			continue
		}
		switch f[j] {
		case '(':
			d++
		case ')':
			d--
		}
	}
	return d
}
