package configs_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/internal/stacktest"
)

// Every shipped config must load, and its rules must compile.
func TestShippedConfigsLoad(t *testing.T) {
	files, err := filepath.Glob("*.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no configs found: %v", err)
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			cfg, err := configs.Load(f)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cfg.BuildRules(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

const valid = `
[mysql]
addr = "` + stacktest.DefaultMySQLAddr + `"
server_id = 7

[canal]
position_file = "pos"
save_interval = "250ms"

[nsq]
nsqd_tcp = ["` + stacktest.DefaultNSQDTCP + `"]
nsqd_http = ["` + stacktest.DefaultNSQDHTTP + `"]

[[redis_group]]
name = "hot-a"
replicas = ["` + stacktest.DefaultRedisA1 + `"]

[[rule]]
table = "shop.item"
keys = ["item:{id}"]
route_by = "id"
`

func TestParseValidAndDefaults(t *testing.T) {
	cfg, err := configs.Parse([]byte(valid))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Canal.SaveInterval != 250*time.Millisecond {
		t.Errorf("save_interval = %v, want 250ms", cfg.Canal.SaveInterval)
	}
	if cfg.MySQL.Flavor != "mariadb" || cfg.MySQL.User != "root" {
		t.Errorf("defaults not applied: %+v", cfg.MySQL)
	}
	if cfg.HTTP.Addr != "127.0.0.1:18080" || cfg.Purger.MaxAttempts != 10 {
		t.Errorf("defaults not applied: %+v %+v", cfg.HTTP, cfg.Purger)
	}
	if o := cfg.RedisPurgerOptions(); o.GapTimeout != 5*time.Second || o.CheckInterval != 250*time.Millisecond || o.Rejoin != "flush" || len(o.Groups) != 1 {
		t.Errorf("redis purger options %+v, want the watermark defaults and the group", o)
	}
}

func TestParseRuleTargetsAndConditions(t *testing.T) {
	cfg, err := configs.Parse([]byte(strings.Replace(valid, `keys = ["item:{id}"]`, `keys = ["item:{id}"]
urls = ["/item/{id}.html"]
tags = ["item-{id}"]
actions = ["update", "delete"]
ignore_changes = ["view_count", "updated_at"]`, 1) + `
[[http_group]]
name = "varnish-a"
instances = ["` + stacktest.DefaultVarnish1 + `", "127.0.0.1:16083"]

[[rule]]
table = "shop.stock"
tags = ["stock-{item_id}"]
route_by = "item_id"
changed = ["qty"]
`))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Rules[0]
	if r.URLs[0] != "/item/{id}.html" || r.Tags[0] != "item-{id}" || len(r.Actions) != 2 || r.IgnoreChanges[1] != "updated_at" {
		t.Errorf("rule[0] = %+v", r)
	}
	if cfg.Rules[1].Changed[0] != "qty" || len(cfg.Rules[1].Keys) != 0 {
		t.Errorf("rule[1] = %+v", cfg.Rules[1])
	}
	if len(cfg.HTTPGroups) != 1 || cfg.HTTPGroups[0].Name != "varnish-a" || cfg.HTTPGroups[0].Instances[1] != "127.0.0.1:16083" {
		t.Errorf("http groups = %+v", cfg.HTTPGroups)
	}
	rules, err := cfg.BuildRules()
	if err != nil {
		t.Fatal(err)
	}
	if g := rules.HTTPGroups(); len(g) != 1 || g[0].Addrs[0] != stacktest.DefaultVarnish1 {
		t.Errorf("rules' http groups = %+v", g)
	}
}

func TestParseErrorsNameTheKey(t *testing.T) {
	tests := []struct {
		name, edit, from string
		want             []string
	}{
		{"unknown key with line", "[mysql]\naddr", "[mysql]\nadress = 1\naddr", []string{`line 3: unknown key "mysql.adress"`}},
		{"unknown table", "[canal]", "[cannal]\nx = 1\n[canal]", []string{`unknown key "cannal"`}},
		{"missing mysql addr", `addr = "` + stacktest.DefaultMySQLAddr + `"`, "", []string{"mysql.addr: missing address"}},
		{"bad mysql addr", `addr = "` + stacktest.DefaultMySQLAddr + `"`, `addr = "localhost"`, []string{`mysql.addr: "localhost" is not host:port`}},
		{"no replicas", `replicas = ["` + stacktest.DefaultRedisA1 + `"]`, `replicas = []`, []string{"redis_group[0].replicas: missing address"}},
		{"bad duration", `save_interval = "250ms"`, `save_interval = "soon"`, []string{"line 8", "soon"}},
		{"wrong type", `server_id = 7`, `server_id = "seven"`, []string{"server_id"}},
		{"missing server id", `server_id = 7`, ``, []string{"mysql.server_id: missing"}},
		{"nsqd http count", `nsqd_http = ["` + stacktest.DefaultNSQDHTTP + `"]`, ``, []string{"nsq.nsqd_http: needs one HTTP address per nsqd_tcp address"}},
		{"bad include regexp", `save_interval = "250ms"`, `include_tables = ["("]`, []string{"canal.include_tables[0]"}},
		{"rule without route", `route_by = "id"`, ``, []string{"rule[0].route_by: missing"}},
		{"bad group name", `name = "hot-a"`, `name = "hot a"`, []string{`redis_group[0].name: "hot a"`}},
		{"rule without target", `keys = ["item:{id}"]`, ``, []string{"rule[0]: no target; a rule needs at least one of keys, urls, tags"}},
		{"urls without http group", `keys = ["item:{id}"]`, `urls = ["/item/{id}.html"]`, []string{"rule[0].urls: needs at least one [[http_group]]"}},
		{"tags without http group", `keys = ["item:{id}"]`, `tags = ["item-{id}"]`, []string{"rule[0].tags: needs at least one [[http_group]]"}},
		{"keys without redis group", "[[redis_group]]\nname = \"hot-a\"\nreplicas = [\"" + stacktest.DefaultRedisA1 + "\"]\n", "", []string{"rule[0].keys: needs at least one [[redis_group]]"}},
		{"unknown action", `route_by = "id"`, `route_by = "id"` + "\nactions = [\"insert\", \"upsert\"]", []string{`rule[0].actions[1]: unknown action "upsert" (insert, update, delete)`}},
		{"changed and ignore_changes", `route_by = "id"`, `route_by = "id"` + "\nchanged = [\"price\"]\nignore_changes = [\"view_count\"]", []string{"rule[0]: changed and ignore_changes are mutually exclusive"}},
		{"bad condition column", `route_by = "id"`, `route_by = "id"` + "\nchanged = [\"unit price\"]", []string{`rule[0].changed[0]: "unit price" is not a column name`}},
		{"unknown rule key", `route_by = "id"`, `route_by = "id"` + "\nurl = [\"/x\"]", []string{`unknown key "rule.url"`}},
		{"bad http group", `[[rule]]`, "[[http_group]]\nname = \"varnish a\"\ninstances = [\"localhost\", \"localhost\"]\n\n[[http_group]]\nname = \"v\"\n\n[[rule]]",
			[]string{`http_group[0].name: "varnish a"`, `http_group[0].instances[0]: "localhost" is not host:port`, `http_group[0].instances[1]: "localhost" is listed twice`, "http_group[1].instances: missing address"}},
		{"rejoin by replay without a log", `route_by = "id"`, `route_by = "id"` + "\n[purger]\nrejoin = \"replay\"", []string{`purger.rejoin_log_dir: required with rejoin = "replay"`}},
		{"unknown rejoin", `route_by = "id"`, `route_by = "id"` + "\n[purger]\nrejoin = \"rewind\"", []string{`purger.rejoin: "rewind": want "flush" or "replay"`}},
		{"tiny rejoin log", `route_by = "id"`, `route_by = "id"` + "\n[purger]\nrejoin_log_max_bytes = 10", []string{"purger.rejoin_log_max_bytes: must be at least 1024"}},
		{"gap timeout within a check", `route_by = "id"`, `route_by = "id"` + "\n[purger]\ngap_timeout = \"100ms\"", []string{"purger.gap_timeout: must be longer than check_interval (250ms)"}},
		{"no check interval", `route_by = "id"`, `route_by = "id"` + "\n[purger]\ncheck_interval = \"0s\"", []string{"purger.check_interval: must be positive"}},
		{"http group name twice", `[[rule]]`, "[[http_group]]\nname = \"v\"\ninstances = [\"127.0.0.1:1\"]\n[[http_group]]\nname = \"v\"\ninstances = [\"127.0.0.1:2\"]\n[[rule]]",
			[]string{`http_group[1].name: "v" is used twice`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(valid, tt.edit) {
				t.Fatalf("test edit %q not in the valid config", tt.edit)
			}
			_, err := configs.Parse([]byte(strings.Replace(valid, tt.edit, tt.from, 1)))
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
