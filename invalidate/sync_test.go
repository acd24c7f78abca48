package invalidate

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// syncWrites renders one row change of shop.item (id, name, price, note)
// with specs at version v and returns every group's writes as
// "group key op value", and the keys deleted instead.
func syncWrites(t *testing.T, specs []SyncTarget, groups int, v *SyncVersion, action Action, before, after []any) (writes, deleted []string) {
	t.Helper()
	names := make([]string, groups)
	for i := range names {
		names[i] = fmt.Sprintf("g%d", i)
	}
	r, err := NewRules([]Rule{{Table: "shop.item", RouteBy: "id", Sync: specs}}, names)
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.Bind("shop.item", []string{"id", "name", "price", "note"})
	if err != nil {
		t.Fatal(err)
	}
	out := r.NewBatch()
	if v != nil {
		b.ApplyRowAt(*v, action, before, after, out)
	} else {
		b.ApplyRow(action, before, after, out)
	}
	for g := 0; g < out.NumGroups(); g++ {
		for _, w := range out.Sync(g) {
			if w.Version != *v {
				t.Errorf("%s: version %v, want %v", w.Key, w.Version, *v)
			}
			s := fmt.Sprintf("g%d %s %s", g, w.Key, w.Op)
			switch w.Op {
			case SyncSet:
				s += " " + string(w.Value)
			case SyncHash:
				s += " " + strings.Join(w.Fields, ",")
			}
			if w.TTL > 0 {
				s += " ttl " + w.TTL.String()
			}
			if w.HotOnly {
				s += " hot"
			}
			writes = append(writes, s)
		}
		for _, k := range out.Keys(g) {
			deleted = append(deleted, fmt.Sprintf("g%d %s", g, k))
		}
	}
	return writes, deleted
}

func TestSyncTargets(t *testing.T) {
	v := &SyncVersion{Epoch: 3, Offset: 1<<32 | 400, Row: 1}
	row := func(id any, name string, price any, note any) []any { return []any{id, name, price, note} }
	jsonKey := []SyncTarget{{Key: "item:json:{id}"}}
	tests := []struct {
		name          string
		specs         []SyncTarget
		groups        int
		v             *SyncVersion
		action        Action
		before, after []any
		writes, dels  []string
	}{
		{"insert writes the after image", jsonKey, 1, v, Insert, nil, row(int64(1), "tea", "9.50", nil),
			[]string{`g0 item:json:1 set {"id":1,"name":"tea","price":"9.50","note":null}`}, nil},
		{"update writes the after image once", jsonKey, 1, v, Update, row(int64(1), "tea", "9.50", nil), row(int64(1), "tea", "8.00", "x"),
			[]string{`g0 item:json:1 set {"id":1,"name":"tea","price":"8.00","note":"x"}`}, nil},
		{"delete deletes", jsonKey, 1, v, Delete, row(int64(1), "tea", "9.50", nil), nil,
			[]string{`g0 item:json:1 del`}, nil},
		{"a key change deletes the old key and writes the new, each in its group", jsonKey, 4, v, Update, row(int64(1), "tea", "9.50", nil), row(int64(2), "tea", "9.50", nil),
			[]string{`g0 item:json:1 del`, `g1 item:json:2 set {"id":2,"name":"tea","price":"9.50","note":null}`}, nil},
		{"chosen columns, hash, ttl", []SyncTarget{{Key: "item:h:{id}", Format: SyncFormatHash, Columns: []string{"price", "note"}, TTL: time.Minute}}, 1, v, Insert, nil, row(int64(1), "tea", "9.50", nil),
			[]string{`g0 item:h:1 hash price,9.50 ttl 1m0s`}, nil},
		{"hash of only NULLs deletes", []SyncTarget{{Key: "item:h:{id}", Format: SyncFormatHash, Columns: []string{"note"}}}, 1, v, Insert, nil, row(int64(1), "tea", "9.50", nil),
			[]string{`g0 item:h:1 del`}, nil},
		{"text", []SyncTarget{{Key: "item:t:{id}", Format: SyncFormatText, Value: "{name}|{price}"}}, 1, v, Update, row(int64(1), "tea", "9.50", nil), row(int64(1), "tea", "9.00", nil),
			[]string{`g0 item:t:1 set tea|9.00`}, nil},
		{"text over a NULL deletes", []SyncTarget{{Key: "item:t:{id}", Format: SyncFormatText, Value: "{name}|{note}"}}, 1, v, Insert, nil, row(int64(1), "tea", "9.50", nil),
			[]string{`g0 item:t:1 del`}, nil},
		{"refresh_hot marks sets, not deletes", []SyncTarget{{Key: "item:json:{id}", Columns: []string{"id"}, RefreshHot: true}}, 4, v, Update, row(int64(1), "tea", "9.50", nil), row(int64(2), "tea", "9.50", nil),
			[]string{`g0 item:json:1 del`, `g1 item:json:2 set {"id":2} hot`}, nil},
		{"a NULL in the key names nothing", []SyncTarget{{Key: "item:n:{note}"}}, 1, v, Insert, nil, row(int64(1), "tea", "9.50", nil), nil, nil},
		{"without a version, sync keys are deleted", jsonKey, 4, nil, Update, row(int64(1), "tea", "9.50", nil), row(int64(2), "tea", "9.50", nil),
			nil, []string{"g0 item:json:1", "g1 item:json:2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			writes, dels := syncWrites(t, tt.specs, tt.groups, tt.v, tt.action, tt.before, tt.after)
			if !reflect.DeepEqual(writes, tt.writes) || !reflect.DeepEqual(dels, tt.dels) {
				t.Errorf("writes %q, deleted %q\nwant   %q, deleted %q", writes, dels, tt.writes, tt.dels)
			}
		})
	}
}

// A batch keeps only the newest write of a key, whatever order its
// changes were added in.
func TestBatchKeepsNewestSyncWrite(t *testing.T) {
	b := NewBatch(1)
	w := func(off uint64, row uint32, val string) SyncWrite {
		return SyncWrite{Key: "k", Op: SyncSet, Version: SyncVersion{Epoch: 1, Offset: off, Row: row}, Value: []byte(val)}
	}
	for _, x := range []SyncWrite{w(10, 0, "a"), w(30, 0, "c"), w(20, 5, "b"), w(30, 1, "d"), w(5, 9, "z")} {
		b.AddSync(0, x)
	}
	got := b.Sync(0)
	if len(got) != 1 || string(got[0].Value) != "d" || b.Len() != 1 {
		t.Fatalf("batch holds %+v (len %d), want only the write at 30/1", got, b.Len())
	}
	if !b.HasRedis(0) {
		t.Error("HasRedis false for a group with sync writes")
	}
	b.Reset()
	if len(b.Sync(0)) != 0 || b.Len() != 0 || b.Bytes() != 0 {
		t.Errorf("after Reset: %d writes, len %d, bytes %d", len(b.Sync(0)), b.Len(), b.Bytes())
	}
}

// Every write survives the wire exactly, bytes that are not UTF-8 too.
func TestSyncWriteWire(t *testing.T) {
	v := SyncVersion{Epoch: 1796221194, Offset: 1<<32 | 4, Row: 2}
	for _, w := range []SyncWrite{
		{Key: "item:json:1", Op: SyncSet, Version: v, Value: []byte(`{"id":1,"name":"héllo"}`), TTL: 90 * time.Second},
		{Key: "item:json:2", Op: SyncSet, Version: v, Value: []byte(`{"id":2,"b":{"$base64":"/wBh"},"q":"a\"b\u0001"}`), JSON: true},
		{Key: "k\xff", Op: SyncSet, Version: v, Value: []byte(`{"id":3}`), JSON: true},
		{Key: "quote\"\\\n\t\x01", Op: SyncSet, Version: v, Value: []byte("line\nbreak \"q\" \\ \x02 é")},
		{Key: "k", Op: SyncSet, Version: v, Value: []byte{}},
		{Key: "k\xff", Op: SyncSet, Version: v, Value: []byte{0xff, 0, 'a'}},
		{Key: "h", Op: SyncHash, Version: v, Fields: []string{"blob", "\xff\x00", "id", "7"}},
		{Key: "d", Op: SyncDel, Version: v},
		{Key: "r", Op: SyncSet, Version: v, Value: []byte(`{"id":4}`), JSON: true, HotOnly: true},
	} {
		body, err := json.Marshal(w)
		if err != nil {
			t.Fatal(err)
		}
		var got SyncWrite
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		if w.Value == nil && w.Op == SyncSet {
			w.Value = []byte{}
		}
		if !reflect.DeepEqual(got, w) {
			t.Errorf("%s\ndecoded %+v\nwant    %+v", body, got, w)
		}
	}
}

// A batch's sync writes reach the wire in messages that decode to them,
// split by count and by bytes, each one part of the group's coverage.
func TestSyncChunks(t *testing.T) {
	var writes []SyncWrite
	for i := range 10 {
		writes = append(writes, SyncWrite{Key: fmt.Sprint("k", i), Op: SyncSet, Value: make([]byte, 100)})
	}
	for _, tt := range []struct{ n, bytes, want int }{{100, 1 << 20, 1}, {3, 1 << 20, 4}, {100, 3 * writes[0].size(), 4}, {100, 1, 10}} {
		chunks := syncChunks(writes, tt.n, tt.bytes)
		total := 0
		for _, c := range chunks {
			total += len(c)
		}
		if len(chunks) != tt.want || total != len(writes) {
			t.Errorf("n %d bytes %d: %d chunks of %d writes, want %d chunks", tt.n, tt.bytes, len(chunks), total, tt.want)
		}
	}
}

func TestSyncTargetErrors(t *testing.T) {
	for _, tt := range []struct {
		spec SyncTarget
		want string
	}{
		{SyncTarget{Key: "item:{id"}, "sync[0]: key: template"},
		{SyncTarget{Key: "k:{id}", Format: "xml"}, `format "xml"`},
		{SyncTarget{Key: "k:{id}", Format: SyncFormatText}, "needs a value template"},
		{SyncTarget{Key: "k:{id}", Value: "{id}"}, "value is the text format's template"},
		{SyncTarget{Key: "k:{id}", Columns: []string{"a b"}}, "is not a column name"},
		{SyncTarget{Key: "k:{id}", TTL: -time.Second}, "negative"},
	} {
		_, err := NewRules([]Rule{{Table: "shop.item", RouteBy: "id", Sync: []SyncTarget{tt.spec}}}, []string{"g"})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: err %v, want it to contain %q", tt.spec, err, tt.want)
		}
	}
	r, err := NewRules([]Rule{{Table: "shop.item", RouteBy: "id", Sync: []SyncTarget{{Key: "k:{id}", Columns: []string{"gone"}}}}}, []string{"g"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Bind("shop.item", []string{"id"}); err == nil || !strings.Contains(err.Error(), `column "gone"`) {
		t.Errorf("bind of a missing sync column: %v", err)
	}
	if _, err := NewRules([]Rule{{Table: "shop.item", RouteBy: "id", Sync: []SyncTarget{{Key: "k:{id}"}}}}, nil); err == nil || !strings.Contains(err.Error(), "sync needs at least one [[redis_group]]") {
		t.Errorf("sync without redis groups: %v", err)
	}
}

func FuzzSyncWriteJSON(f *testing.F) {
	f.Add(`{"key":"k","op":"set","ver":"0000000001:00000000000000000001:0000000000","value":"x"}`)
	f.Add(`{"key":"aw==","op":"hash","ver":"0000000001:00000000000000000001:0000000000","fields":["/w==","AA=="],"b64":true}`)
	f.Fuzz(func(t *testing.T, body string) {
		var w SyncWrite
		if err := json.Unmarshal([]byte(body), &w); err != nil {
			return
		}
		again, err := json.Marshal(w)
		if err != nil {
			t.Fatalf("%+v: %v", w, err)
		}
		var w2 SyncWrite
		if err := json.Unmarshal(again, &w2); err != nil {
			t.Fatalf("re-decode %s: %v", again, err)
		}
		if !reflect.DeepEqual(w, w2) {
			t.Fatalf("round trip changed %+v to %+v", w, w2)
		}
	})
}

// syncBenchMessage is a message of n sync writes of a typical row's JSON.
func syncBenchMessage(n int) *Purge {
	p := &Purge{V: PurgeVersionSync, Group: "hot-a", From: 1, To: 2, Part: 1, Parts: 1, Pos: "mysql-bin.000001:4"}
	names := []string{"id", "name", "price", "stock", "view_count", "updated_at"}
	for i := range n {
		row := []any{int64(i), fmt.Sprintf("item %d", i), "9.99", int32(10), int32(3), "2026-12-03 10:00:00.123456"}
		p.Sync = append(p.Sync, SyncWrite{Key: fmt.Sprintf("item:json:%d", i), Op: SyncSet, Version: SyncVersion{Epoch: 1796221194, Offset: 1<<32 | uint64(i), Row: 0},
			Value: AppendJSONRow(nil, names, []int{0, 1, 2, 3, 4, 5}, row), JSON: true})
	}
	return p
}

func BenchmarkSyncMessageMarshal(b *testing.B) {
	p := syncBenchMessage(1000)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Marshal(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSyncMessageDecode(b *testing.B) {
	body, err := syncBenchMessage(1000).Marshal()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodePurge(body); err != nil {
			b.Fatal(err)
		}
	}
}
