package invalidate

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
)

// Whatever decodePurgeFast accepts, encoding/json decodes to the same
// Purge; what it refuses goes to encoding/json.
func FuzzDecodePurgeFast(f *testing.F) {
	for _, s := range []string{
		`{"v":1,"group":"hot-a","keys":["item:1","item:page:1"],"pos":"mysql-bin.000001:4","commit_unix":1796221194,"seen_unix_nano":1796221194000000000,"job":"j","from":1,"to":2,"part":1,"parts":1,"caught_up_unix_nano":5}`,
		`{"v":2,"group":"g","flush":true,"patterns":["a*"]}`, `{"v":2,"group":"v","bans":["^/item/"],"urls":[],"tags":["t"]}`,
		`{"v":3,"group":"g","heartbeat":true,"from":1,"to":2,"part":1,"parts":1}`,
		`{"V":1,"group":"g"}`, `{"v":1,"group":"g","keys":["a\"b"]}`, `{"v":01}`, `{"v":-0}`, `{"v":1e2}`, `{"v":1}x`,
		`{"v":1,"v":2}`, `{"to":18446744073709551615}`, `{"to":18446744073709551616}`, `{"v":1,"keys":null}`, `{"flush":false}`, `{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		fast, ok := decodePurgeFast(body)
		if !ok {
			return
		}
		var std Purge
		if err := json.Unmarshal(body, &std); err != nil {
			t.Fatalf("%q: the fast path took it, encoding/json refuses it: %v", body, err)
		}
		if !reflect.DeepEqual(fast, std) {
			t.Fatalf("%q:\nfast          %+v\nencoding/json %+v", body, fast, std)
		}
	})
}

// The fast path takes what the publisher writes.
func TestDecodePurgeFastTakesPublishedMessages(t *testing.T) {
	for _, p := range []Purge{
		{V: PurgeVersionBasic, Group: "hot-a", Keys: []string{"item:1", "item:page:1"}, Pos: "mysql-bin.000001:4", GTID: "0-1-5", CommitUnix: 1, SeenUnixNano: 2, Job: "j", From: 3, To: 4, Part: 1, Parts: 2, CaughtUpUnixNano: 5},
		{V: PurgeVersion, Group: "g", Flush: true},
		{V: PurgeVersionHeartbeat, Group: "g", Heartbeat: true, From: 1, To: 2, Part: 1, Parts: 1},
		{V: PurgeVersionBasic, Group: "varnish", URLs: []string{"/item/1.html"}, Tags: []string{"item-1"}},
	} {
		body, err := p.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		got, ok := decodePurgeFast(body)
		if !ok || !reflect.DeepEqual(got, p) {
			t.Errorf("%s: fast path %v, %+v", body, ok, got)
		}
	}
}

func BenchmarkDecodePurgeKeys(b *testing.B) {
	p := &Purge{V: 1, Group: "hot-a", From: 1, To: 2, Part: 1, Parts: 1, Pos: "mysql-bin.000001:4", Job: "abc"}
	for i := range 1000 {
		p.Keys = append(p.Keys, fmt.Sprintf("item:%d", 100000+i), fmt.Sprintf("item:page:%d", 100000+i))
	}
	body, err := p.Marshal()
	if err != nil {
		b.Fatal(err)
	}
	b.Run("fast", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodePurge(body); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		for b.Loop() {
			var p Purge
			if err := json.Unmarshal(body, &p); err != nil {
				b.Fatal(err)
			}
		}
	})
}
