package configs_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/internal/stacktest"
)

const purgerOnly = `
[nsq]
nsqd_tcp = ["` + stacktest.DefaultNSQDTCP + `", "` + stacktest.DefaultNSQD2TCP + `"]
nsqd_http = ["` + stacktest.DefaultNSQDHTTP + `", "` + stacktest.DefaultNSQD2HTTP + `"]
nsqlookupd_http = ["` + stacktest.DefaultNSQLookupdHTTP + `"]

[[redis_group]]
name = "hot-a"
replicas = ["` + stacktest.DefaultRedisA1 + `"]
`

func TestNSQLookupdHTTP(t *testing.T) {
	cfg, err := configs.Parse([]byte(purgerOnly))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{stacktest.DefaultNSQLookupdHTTP}; !slices.Equal(cfg.NSQ.LookupdHTTP, want) {
		t.Errorf("nsqlookupd_http = %q, want %q", cfg.NSQ.LookupdHTTP, want)
	}
	if len(cfg.NSQ.NSQDTCP) != 2 || cfg.NSQ.EmbeddedTCP != "" {
		t.Errorf("nsq = %+v, want two nsqd and no embedded one", cfg.NSQ)
	}

	for _, tt := range []struct{ name, from, to, want string }{
		{"bad address", `nsqlookupd_http = ["` + stacktest.DefaultNSQLookupdHTTP + `"]`, `nsqlookupd_http = ["` + stacktest.DefaultNSQLookupdHTTP + `", "lookupd"]`,
			`nsq.nsqlookupd_http[1]: "lookupd" is not host:port`},
		{"empty address", `nsqlookupd_http = ["` + stacktest.DefaultNSQLookupdHTTP + `"]`, `nsqlookupd_http = [""]`,
			`nsq.nsqlookupd_http[0]: missing address`},
		{"without nsqd", "nsqd_tcp = [\"" + stacktest.DefaultNSQDTCP + "\", \"" + stacktest.DefaultNSQD2TCP + "\"]\nnsqd_http = [\"" + stacktest.DefaultNSQDHTTP + "\", \"" + stacktest.DefaultNSQD2HTTP + "\"]\n", "",
			"nsq.nsqlookupd_http: needs nsqd_tcp"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(purgerOnly, tt.from) {
				t.Fatalf("test edit %q not in the config", tt.from)
			}
			_, err := configs.Parse([]byte(strings.Replace(purgerOnly, tt.from, tt.to, 1)))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Parse error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// The embedded nsqd must not take the stack's nsqlookupd ports
// ([stacktest.DefaultNSQLookupdTCP], [stacktest.DefaultNSQLookupdHTTP]).
func TestEmbeddedNSQDDefaults(t *testing.T) {
	cfg, err := configs.Parse([]byte("[[redis_group]]\nname = \"a\"\nreplicas = [\"" + stacktest.DefaultRedisA1 + "\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NSQ.EmbeddedTCP != "127.0.0.1:14170" || cfg.NSQ.EmbeddedHTTP != "127.0.0.1:14171" {
		t.Errorf("embedded nsqd on %s / %s, want 127.0.0.1:14170 / 127.0.0.1:14171", cfg.NSQ.EmbeddedTCP, cfg.NSQ.EmbeddedHTTP)
	}
	if len(cfg.NSQ.LookupdHTTP) != 0 {
		t.Errorf("nsqlookupd_http = %q, want none by default", cfg.NSQ.LookupdHTTP)
	}
}
