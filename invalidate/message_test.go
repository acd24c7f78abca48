package invalidate

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/flashsync/flashsync/internal/stacktest"
)

func TestDecodePurge(t *testing.T) {
	tests := []struct {
		name, body string
		ok         bool
	}{
		{"valid", `{"v":1,"group":"hot-a","keys":["item:1"]}`, true},
		{"no keys", `{"v":1,"group":"hot-a","keys":[]}`, false},
		{"no target at all", `{"v":1,"group":"hot-a"}`, false},
		{"urls", `{"v":1,"group":"varnish-a","urls":["/item/1.html"]}`, true},
		{"tags", `{"v":1,"group":"varnish-a","tags":["item-1"]}`, true},
		{"urls and tags, empty keys", `{"v":1,"group":"varnish-a","keys":[],"urls":["/a"],"tags":["t"]}`, true},
		{"empty url", `{"v":1,"group":"varnish-a","urls":["/a",""]}`, false},
		{"empty tag", `{"v":1,"group":"varnish-a","tags":[""]}`, false},
		{"url too long", `{"v":1,"group":"varnish-a","urls":["/` + strings.Repeat("x", 8<<10) + `"]}`, false},
		{"tag too long", `{"v":1,"group":"varnish-a","tags":["` + strings.Repeat("x", 8<<10+1) + `"]}`, false},
		{"empty key", `{"v":1,"group":"hot-a","keys":[""]}`, false},
		{"flush", `{"v":2,"group":"hot-a","flush":true}`, true},
		{"patterns", `{"v":2,"group":"hot-a","patterns":["item:page:*"]}`, true},
		{"v2 keys", `{"v":2,"group":"hot-a","keys":["item:1"]}`, true},
		{"flush in v1", `{"v":1,"group":"hot-a","flush":true}`, false},
		{"patterns in v1", `{"v":1,"group":"hot-a","keys":["k"],"patterns":["item:*"]}`, false},
		{"empty pattern", `{"v":2,"group":"hot-a","patterns":[""]}`, false},
		{"flush with urls", `{"v":2,"group":"hot-a","flush":true,"urls":["/a"]}`, false},
		{"bans", `{"v":2,"group":"varnish","bans":["^/item/"]}`, true},
		{"bans in v1", `{"v":1,"group":"varnish","urls":["/a"],"bans":["^/item/"]}`, false},
		{"bans with keys", `{"v":2,"group":"varnish","keys":["k"],"bans":["^/item/"]}`, false},
		{"empty ban", `{"v":2,"group":"varnish","bans":[""]}`, false},
		{"version 3 with keys", `{"v":3,"group":"hot-a","keys":["k"]}`, false},
		{"version 5", `{"v":5,"group":"hot-a","keys":["k"]}`, false},
		{"sync set", `{"v":4,"group":"hot-a","sync":[{"key":"item:json:1","op":"set","ver":"%[1]s","value":"{\"id\":1}"}]}`, true},
		{"sync set of base64 bytes", `{"v":4,"group":"hot-a","sync":[{"key":"aw==","op":"set","ver":"%[1]s","value":"/w==","b64":true}]}`, true},
		{"sync hash", `{"v":4,"group":"hot-a","sync":[{"key":"k","op":"hash","ver":"%[1]s","fields":["a","1"]}]}`, true},
		{"sync del with keys", `{"v":4,"group":"hot-a","keys":["p"],"sync":[{"key":"k","op":"del","ver":"%[1]s","ttl_ms":0}]}`, true},
		{"sync in v2", `{"v":2,"group":"hot-a","sync":[{"key":"k","op":"del","ver":"%[1]s"}]}`, false},
		{"sync set without value", `{"v":4,"group":"hot-a","sync":[{"key":"k","op":"set","ver":"%[1]s"}]}`, false},
		{"sync del with a value", `{"v":4,"group":"hot-a","sync":[{"key":"k","op":"del","ver":"%[1]s","value":"x"}]}`, false},
		{"sync hash of odd fields", `{"v":4,"group":"hot-a","sync":[{"key":"k","op":"hash","ver":"%[1]s","fields":["a"]}]}`, false},
		{"sync hot set", `{"v":4,"group":"hot-a","sync":[{"key":"k","op":"set","ver":"%[1]s","json":{"id":1},"hot":true}]}`, true},
		{"sync hot delete", `{"v":4,"group":"hot-a","sync":[{"key":"k","op":"del","ver":"%[1]s","hot":true}]}`, false},
		{"sync value and json", `{"v":4,"group":"hot-a","sync":[{"key":"k","op":"set","ver":"%[1]s","json":{"id":1},"value":"x"}]}`, false},
		{"sync unknown op", `{"v":4,"group":"hot-a","sync":[{"key":"k","op":"incr","ver":"%[1]s"}]}`, false},
		{"sync bad version", `{"v":4,"group":"hot-a","sync":[{"key":"k","op":"del","ver":"12"}]}`, false},
		{"sync empty key", `{"v":4,"group":"hot-a","sync":[{"key":"","op":"del","ver":"%[1]s"}]}`, false},
		{"sync bad base64", `{"v":4,"group":"hot-a","sync":[{"key":"aw==","op":"set","ver":"%[1]s","value":"!!","b64":true}]}`, false},
		{"sync negative ttl", `{"v":4,"group":"hot-a","sync":[{"key":"k","op":"set","ver":"%[1]s","value":"x","ttl_ms":-1}]}`, false},
		{"sync with urls", `{"v":4,"group":"varnish","urls":["/a"],"sync":[{"key":"k","op":"del","ver":"%[1]s"}]}`, false},
		{"heartbeat with sync", `{"v":3,"group":"hot-a","heartbeat":true,"from":10,"to":20,"part":1,"parts":1,"sync":[{"key":"k","op":"del","ver":"%[1]s"}]}`, false},
		{"heartbeat", `{"v":3,"group":"hot-a","heartbeat":true,"from":10,"to":20,"part":1,"parts":1}`, true},
		{"heartbeat at the same offset", `{"v":3,"group":"hot-a","heartbeat":true,"from":20,"to":20,"part":1,"parts":1}`, true},
		{"heartbeat in v1", `{"v":1,"group":"hot-a","heartbeat":true,"from":10,"to":20,"part":1,"parts":1}`, false},
		{"heartbeat of two parts", `{"v":3,"group":"hot-a","heartbeat":true,"from":10,"to":20,"part":1,"parts":2}`, false},
		{"heartbeat with a flush", `{"v":3,"group":"hot-a","heartbeat":true,"flush":true,"from":10,"to":20,"part":1,"parts":1}`, false},
		{"covered keys", `{"v":1,"group":"hot-a","keys":["k"],"from":10,"to":20,"part":2,"parts":3}`, true},
		{"part beyond parts", `{"v":1,"group":"hot-a","keys":["k"],"from":10,"to":20,"part":4,"parts":3}`, false},
		{"part 0", `{"v":1,"group":"hot-a","keys":["k"],"from":10,"to":20,"part":0,"parts":3}`, false},
		{"from after to", `{"v":1,"group":"hot-a","keys":["k"],"from":30,"to":20,"part":1,"parts":1}`, false},
		{"range without parts", `{"v":1,"group":"hot-a","keys":["k"],"from":10,"to":20}`, false},
		{"wrong version", `{"v":0,"group":"hot-a","keys":["a"]}`, false},
		{"not json", `item:1`, false},
		{"empty", ``, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := tt.body
			if strings.Contains(body, "%[1]s") {
				body = fmt.Sprintf(body, "0000000001:00000000004294967396:0000000000")
			}
			_, err := DecodePurge([]byte(body))
			if (err == nil) != tt.ok {
				t.Fatalf("DecodePurge(%q) err = %v, want ok=%v", body, err, tt.ok)
			}
		})
	}
}

func FuzzDecodePurge(f *testing.F) {
	f.Add([]byte(`{"v":1,"group":"hot-a","keys":["item:1","item:page:1"],"pos":"mysql-bin.000001:4","seen_unix_nano":1}`))
	f.Add([]byte(`{"v":1,"keys":["\u0000"]}`))
	f.Add([]byte(`{"v":1,"group":"varnish-a","urls":["/item/1.html"],"tags":["item-1"],"pos":"mysql-bin.000001:4"}`))
	f.Add([]byte(`{"v":1,"keys":[],"tags":["t"]}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"v":3,"group":"hot-a","heartbeat":true,"from":10,"to":20,"part":1,"parts":1,"caught_up_unix_nano":5}`))
	f.Add([]byte(`{"v":1,"group":"hot-a","keys":["k"],"from":10,"to":20,"part":2,"parts":3}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := DecodePurge(body)
		if err != nil {
			return
		}
		// Whatever decodes must survive a round trip unchanged.
		b, err := p.Marshal()
		if err != nil {
			t.Fatalf("marshal decoded purge: %v", err)
		}
		q, err := DecodePurge(b)
		if err != nil {
			t.Fatalf("re-decode %s: %v", b, err)
		}
		if !reflect.DeepEqual(p, q) {
			t.Fatalf("round trip changed %+v into %+v", p, q)
		}
	})
}

func TestPurgeWireFormat(t *testing.T) {
	b, err := (&Purge{V: 1, Group: "varnish-a", URLs: []string{"/item/1.html"}, Tags: []string{"item-1"}}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"v":1,"group":"varnish-a","urls":["/item/1.html"],"tags":["item-1"]}`; string(b) != want {
		t.Errorf("HTTP purge = %s, want %s", b, want)
	}
	b, _ = (&Purge{V: 1, Group: "hot-a", Keys: []string{"item:1"}}).Marshal()
	if want := `{"v":1,"group":"hot-a","keys":["item:1"]}`; string(b) != want {
		t.Errorf("Redis purge = %s, want %s", b, want)
	}
	if got := HTTPTopic("flashsync", "varnish-a"); got != "flashsync.http.varnish-a" {
		t.Errorf("HTTPTopic = %q", got)
	}
}

func TestReplicaChannel(t *testing.T) {
	if got := ReplicaChannel(stacktest.DefaultRedisA1); got != "127.0.0.1_16379" {
		t.Fatalf("got %q", got)
	}
	if got := ReplicaChannel("[::1]:6379"); got != "__1_6379" {
		t.Fatalf("got %q", got)
	}
}
