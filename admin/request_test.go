package admin

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestDecodePurgeRequest(t *testing.T) {
	q, err := DecodePurgeRequest([]byte(`{"reason":" stale ","keys":["a"],"groups":["hot-a"],"urls":["/x"],"tags":["t"],
		"rows":[{"table":"shop.item","key":{"id":42,"sku":"A-1","big":18446744073709551615,"f":1.5}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	want := &PurgeRequest{Reason: "stale", Keys: []string{"a"}, Groups: []string{"hot-a"}, URLs: []string{"/x"}, Tags: []string{"t"},
		Rows: []RowRef{{Table: "shop.item", Key: map[string]any{"id": int64(42), "sku": "A-1", "big": "18446744073709551615", "f": "1.5"}}}}
	if !reflect.DeepEqual(q, want) {
		t.Errorf("decoded %+v, want %+v", q, want)
	}
	for _, tt := range []struct{ body, want string }{
		{`{"reason":"r","keys":["a"]} {}`, "data after the JSON object"},
		{`{"reason":"r","replay":["a"]}`, "replay: not a purge: a replay is POST /api/v1/replays"},
		{`{"reason":"r","bans":["a("]}`, `bans[0]: "a(": error parsing regexp`},
		{`{"reason":"r","bans":["a b"]}`, `bans[0]: "a b": byte 1: no whitespace`},
		{`{"reason":"r","groups":["a"]}`, "nothing to purge"},
		{`{"reason":"r","urls":["/x"],"groups":["a"]}`, "groups: name the Redis groups of keys"},
		{`{"reason":"r","keys":[""]}`, "keys[0]: length 0"},
		{`{"reason":"r","rows":[{"table":"item","key":{"id":1}}]}`, `rows[0].table: "item" is not db.table`},
		{`{"reason":"r","rows":[{"table":"a.b"}]}`, "rows[0].key: missing"},
		{`{"reason":"r","rows":[{"table":"a.b","key":{"id":null}}]}`, "rows[0].key.id: null is not a key value"},
		{`{"reason":"r","rows":[{"table":"a.b","key":{"a b":1}}]}`, `rows[0].key: "a b" is not a column name`},
		{`[]`, "body:"},
		{`{"reason":"r","patterns":[""]}`, "patterns[0]: length 0"},
		{`{"reason":"r","patterns":["item:[ab"]}`, `patterns[0]: "item:[ab": "[" at byte 5 is never closed`},
		{`{"reason":"r","patterns":["item:\\"]}`, `ends with an escaping`},
		{`{"reason":"r","keys":["a"],"confirm":["x"]}`, "confirm: confirms flush_groups and patterns; there are none"},
		{`{"reason":"r","flush_groups":[""]}`, "flush_groups[0]: length 0"},
	} {
		if _, err := DecodePurgeRequest([]byte(tt.body)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err %v, want %q", tt.body, err, tt.want)
		}
	}
}

// FuzzDecodePurgeRequest: the decoder never panics, and what it accepts
// has a reason and something to purge, and decodes again to itself.
func FuzzDecodePurgeRequest(f *testing.F) {
	for _, s := range []string{
		`{"reason":"r","keys":["a"],"groups":["g"]}`,
		`{"reason":"r","dry_run":true,"urls":["/x"],"tags":["t"]}`,
		`{"reason":"r","rows":[{"table":"shop.item","key":{"id":42,"s":"x","f":1.5}}]}`,
		`{"reason":"r","patterns":["*"]}`, `{"reason":`, `[]`, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		q, err := DecodePurgeRequest(body)
		if err != nil {
			return
		}
		if q.Reason == "" || len(q.Keys)+len(q.URLs)+len(q.Tags)+len(q.Rows)+len(q.Patterns)+len(q.Bans)+len(q.FlushGroups) == 0 {
			t.Fatalf("accepted %q as %+v", body, q)
		}
		again, err := json.Marshal(q)
		if err != nil {
			t.Fatal(err)
		}
		q2, err := DecodePurgeRequest(again)
		if err != nil || !reflect.DeepEqual(q, q2) {
			t.Fatalf("%q decoded to %+v, re-encoded %s to %+v (%v)", body, q, again, q2, err)
		}
	})
}
