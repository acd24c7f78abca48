package configs_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/internal/stacktest"
)

const consoleConfig = `
[console]
addr = "127.0.0.1:16100"
key = "0123456789abcdef0123"
machines = ["` + stacktest.DefaultVarnish1 + `", "` + stacktest.DefaultVarnish2 + `"]
`

const dispatcherConfig = `
[[cdn_node]]
name = "edge-1"
console_url = "https://cdn1.example.com:16100"
key = "0123456789abcdef0123"
ca_file = "/etc/flashsync/ca.pem"

[[cdn_node]]
name = "edge-2"
console_url = "http://127.0.0.1:16100"
key = "0123456789abcdef0123"
`

func TestParseCDNDefaults(t *testing.T) {
	cfg, err := configs.Parse([]byte(consoleConfig + dispatcherConfig))
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Console
	if c.MaxBodyBytes != 1<<20 || c.MaxSkew != 30*time.Second || c.Concurrency != 8 || c.HostTimeout != 2*time.Second {
		t.Errorf("console defaults %+v", c)
	}
	if !cfg.ConsoleConfigured() || len(cfg.CDNNodes) != 2 || cfg.Dispatcher.Timeout != 10*time.Second {
		t.Errorf("cdn config %+v %+v", cfg.CDNNodes, cfg.Dispatcher)
	}
}

func TestParseCDNErrorsNameTheKey(t *testing.T) {
	for _, tt := range []struct {
		name, config, wantKey string
	}{
		{"console without key", strings.Replace(consoleConfig, `key = "0123456789abcdef0123"`, "", 1), "console.key:"},
		{"console short key", strings.Replace(consoleConfig, `"0123456789abcdef0123"`, `"short"`, 1), "console.key:"},
		{"console key and key_file", strings.Replace(consoleConfig, `key =`, `key_file = "/k"`+"\nkey =", 1), "console.key:"},
		{"console key_file missing", strings.Replace(consoleConfig, `key = "0123456789abcdef0123"`, `key_file = "/nonexistent/key"`, 1), "console.key_file:"},
		{"console without machines", strings.Replace(consoleConfig, `machines = ["`+stacktest.DefaultVarnish1+`", "`+stacktest.DefaultVarnish2+`"]`, "", 1), "console.machines:"},
		{"console bad machine", strings.Replace(consoleConfig, `"`+stacktest.DefaultVarnish2+`"`, `"nohost"`, 1), "console.machines[1]:"},
		{"console machine twice", strings.Replace(consoleConfig, `"`+stacktest.DefaultVarnish2+`"`, `"`+stacktest.DefaultVarnish1+`"`, 1), "console.machines[1]:"},
		{"console bad addr", strings.Replace(consoleConfig, `"127.0.0.1:16100"`, `"16100"`, 1), "console.addr:"},
		{"console tls half", consoleConfig + `tls_cert = "/c.pem"` + "\n", "console.tls_cert:"},
		{"console skew", consoleConfig + `max_skew = "1h"` + "\n", "console.max_skew:"},
		{"console body", consoleConfig + `max_body_bytes = 10` + "\n", "console.max_body_bytes:"},
		{"console concurrency", consoleConfig + `concurrency = -1` + "\n", "console.concurrency:"},
		{"node name", strings.Replace(dispatcherConfig, `"edge-2"`, `"edge 2"`, 1), "cdn_node[1].name:"},
		{"node name twice", strings.Replace(dispatcherConfig, `"edge-2"`, `"edge-1"`, 1), "cdn_node[1].name:"},
		{"node url", strings.Replace(dispatcherConfig, `"http://127.0.0.1:16100"`, `"127.0.0.1:16100"`, 1), "cdn_node[1].console_url:"},
		{"node ca without https", strings.Replace(dispatcherConfig, `"https://cdn1`, `"http://cdn1`, 1), "cdn_node[0].ca_file:"},
		{"node without key", strings.Replace(dispatcherConfig, `console_url = "http://127.0.0.1:16100"`+"\n"+`key = "0123456789abcdef0123"`, `console_url = "http://127.0.0.1:16100"`, 1), "cdn_node[1].key:"},
		{"node unknown key", dispatcherConfig + `secret = "x"` + "\n", `unknown key "cdn_node.secret"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := configs.Parse([]byte(tt.config))
			if err == nil || !strings.Contains(err.Error(), tt.wantKey) {
				t.Fatalf("error %v, want one naming %s", err, tt.wantKey)
			}
		})
	}
}

func TestLoadKeyFromFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(path, []byte("  0123456789abcdef0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := configs.LoadKey("console", "", path)
	if err != nil || string(key) != "0123456789abcdef0123" {
		t.Fatalf("key %q, err %v", key, err)
	}
	cfg, err := configs.Parse([]byte(strings.Replace(consoleConfig, `key = "0123456789abcdef0123"`, `key_file = "`+path+`"`, 1)))
	if err != nil || cfg.Console.KeyFile != path {
		t.Fatalf("cfg %+v, err %v", cfg, err)
	}
}
