package configs_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/invalidate"
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
			var groups []string
			for _, g := range cfg.RedisGroups {
				groups = append(groups, g.Name)
			}
			if _, err := invalidate.NewRules(cfg.Rules, groups); err != nil {
				t.Fatal(err)
			}
		})
	}
}

const valid = `
[mysql]
addr = "127.0.0.1:13306"
server_id = 7

[canal]
position_file = "pos"
save_interval = "250ms"

[nsq]
nsqd_tcp = ["127.0.0.1:14150"]
nsqd_http = ["127.0.0.1:14151"]

[[redis_group]]
name = "hot-a"
replicas = ["127.0.0.1:16379"]

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
}

func TestParseErrorsNameTheKey(t *testing.T) {
	tests := []struct {
		name, edit, from string
		want             []string
	}{
		{"unknown key with line", "[mysql]\naddr", "[mysql]\nadress = 1\naddr", []string{`line 3: unknown key "mysql.adress"`}},
		{"unknown table", "[canal]", "[cannal]\nx = 1\n[canal]", []string{`unknown key "cannal"`}},
		{"missing mysql addr", `addr = "127.0.0.1:13306"`, "", []string{"mysql.addr: missing address"}},
		{"bad mysql addr", `addr = "127.0.0.1:13306"`, `addr = "localhost"`, []string{`mysql.addr: "localhost" is not host:port`}},
		{"no replicas", `replicas = ["127.0.0.1:16379"]`, `replicas = []`, []string{"redis_group[0].replicas: missing address"}},
		{"bad duration", `save_interval = "250ms"`, `save_interval = "soon"`, []string{"line 8", "soon"}},
		{"wrong type", `server_id = 7`, `server_id = "seven"`, []string{"server_id"}},
		{"missing server id", `server_id = 7`, ``, []string{"mysql.server_id: missing"}},
		{"nsqd http count", `nsqd_http = ["127.0.0.1:14151"]`, ``, []string{"nsq.nsqd_http: needs one HTTP address per nsqd_tcp address"}},
		{"bad include regexp", `save_interval = "250ms"`, `include_tables = ["("]`, []string{"canal.include_tables[0]"}},
		{"rule without route", `route_by = "id"`, ``, []string{"rule[0].route_by: missing"}},
		{"bad group name", `name = "hot-a"`, `name = "hot a"`, []string{`redis_group[0].name: "hot a"`}},
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
