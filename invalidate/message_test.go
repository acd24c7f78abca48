package invalidate

import (
	"reflect"
	"testing"
)

func TestDecodePurge(t *testing.T) {
	tests := []struct {
		name, body string
		ok         bool
	}{
		{"valid", `{"v":1,"group":"hot-a","keys":["item:1"]}`, true},
		{"no keys", `{"v":1,"group":"hot-a","keys":[]}`, false},
		{"empty key", `{"v":1,"group":"hot-a","keys":[""]}`, false},
		{"wrong version", `{"v":2,"group":"hot-a","keys":["a"]}`, false},
		{"not json", `item:1`, false},
		{"empty", ``, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodePurge([]byte(tt.body))
			if (err == nil) != tt.ok {
				t.Fatalf("DecodePurge(%q) err = %v, want ok=%v", tt.body, err, tt.ok)
			}
		})
	}
}

func FuzzDecodePurge(f *testing.F) {
	f.Add([]byte(`{"v":1,"group":"hot-a","keys":["item:1","item:page:1"],"pos":"mysql-bin.000001:4","seen_unix_nano":1}`))
	f.Add([]byte(`{"v":1,"keys":["\u0000"]}`))
	f.Add([]byte(`{}`))
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

func TestReplicaChannel(t *testing.T) {
	if got := ReplicaChannel("127.0.0.1:16379"); got != "127.0.0.1_16379" {
		t.Fatalf("got %q", got)
	}
	if got := ReplicaChannel("[::1]:6379"); got != "__1_6379" {
		t.Fatalf("got %q", got)
	}
}
