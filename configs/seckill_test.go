package configs_test

import (
	"strings"
	"testing"
	"time"

	"github.com/flashsync/flashsync/cacheaside"
	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/internal/stacktest"
)

const seckillConfig = `
[nsq]
nsqd_tcp = ["` + stacktest.DefaultNSQDTCP + `"]
nsqd_http = ["` + stacktest.DefaultNSQDHTTP + `"]

[[redis_group]]
name = "hot"
replicas = ["` + stacktest.DefaultRedisA1 + `", "` + stacktest.DefaultRedisA2 + `"]

[seckill]
addr = "127.0.0.1:18090"
redis = "` + stacktest.DefaultSeckillRedis + `"
token_key = "0123456789abcdef0123"
`

func TestParseSeckillDefaults(t *testing.T) {
	cfg, err := configs.Parse([]byte(seckillConfig))
	if err != nil {
		t.Fatal(err)
	}
	sk := cfg.Seckill
	if !cfg.SeckillConfigured() || sk.Database != "seckill" || sk.ItemTable != "shop.item" || sk.Topic != "flashsync.seckill" ||
		sk.Writers != 4 || sk.BatchMax != 500 || sk.OrderTTL != 15*time.Minute || sk.ReconcileGrace != time.Minute ||
		sk.RateIP != 0 || sk.RateUser != 0 {
		t.Errorf("seckill defaults %+v", sk)
	}
}

// TestParseSeckillOnly: a flash-sale node needs [mysql] for its database but
// runs no canal, so it needs no server_id or position file.
func TestParseSeckillOnly(t *testing.T) {
	if _, err := configs.Parse([]byte("[mysql]\naddr = \"" + stacktest.DefaultMySQLAddr + "\"\n" + seckillConfig)); err != nil {
		t.Fatal(err)
	}
	if _, err := configs.Parse([]byte("[mysql]\naddr = \"" + stacktest.DefaultMySQLAddr + "\"\n")); err == nil || !strings.Contains(err.Error(), "mysql.server_id") {
		t.Errorf("[mysql] alone: %v, want the canal's keys asked for", err)
	}
}

func TestParseSeckillReconcileGrace(t *testing.T) {
	cfg, err := configs.Parse([]byte(seckillConfig + `reconcile_grace = "30s"` + "\n"))
	if err != nil || cfg.Seckill.ReconcileGrace != 30*time.Second {
		t.Fatalf("reconcile_grace = \"30s\" (three message timeouts): %v", err)
	}
}

// TestParseSeckillMaxStaleness: 1 s by default; a bound or a negative
// value (no check) as written.
func TestParseSeckillMaxStaleness(t *testing.T) {
	for _, tt := range []struct {
		line string
		want time.Duration
	}{{"", cacheaside.DefaultMaxStaleness}, {`max_staleness = "250ms"`, 250 * time.Millisecond}, {`max_staleness = "-1s"`, cacheaside.NoStalenessCheck}} {
		cfg, err := configs.Parse([]byte(seckillConfig + tt.line + "\n"))
		if err != nil {
			t.Fatalf("%q: %v", tt.line, err)
		}
		if cfg.Seckill.MaxStaleness != tt.want {
			t.Errorf("%q: max_staleness %v, want %v", tt.line, cfg.Seckill.MaxStaleness, tt.want)
		}
	}
}

func TestParseSeckillErrorsNameTheKey(t *testing.T) {
	for _, tt := range []struct {
		name, config, wantKey string
	}{
		// The reservation counters must never be a cache the binlog path purges.
		{"redis is a cache replica", strings.Replace(seckillConfig, `redis = "`+stacktest.DefaultSeckillRedis+`"`, `redis = "`+stacktest.DefaultRedisA2+`"`, 1), "seckill.redis:"},
		{"redis missing", strings.Replace(seckillConfig, `redis = "`+stacktest.DefaultSeckillRedis+`"`, ``, 1), "seckill.redis:"},
		{"no token key", strings.Replace(seckillConfig, `token_key = "0123456789abcdef0123"`, ``, 1), "seckill.token_key:"},
		{"short token key", strings.Replace(seckillConfig, `"0123456789abcdef0123"`, `"short"`, 1), "seckill.token_key:"},
		{"token key file missing", strings.Replace(seckillConfig, `token_key = "0123456789abcdef0123"`, `token_key_file = "/nonexistent"`, 1), "seckill.token_key_file:"},
		{"bad addr", strings.Replace(seckillConfig, `"127.0.0.1:18090"`, `"18090"`, 1), "seckill.addr:"},
		{"bad database", seckillConfig + `database = "a b"` + "\n", "seckill.database:"},
		{"bad item table", seckillConfig + `item_table = "item"` + "\n", "seckill.item_table:"},
		{"writers", seckillConfig + `writers = 100` + "\n", "seckill.writers:"},
		{"batch", seckillConfig + `batch_max = -1` + "\n", "seckill.batch_max:"},
		{"ttl", seckillConfig + `order_ttl = "-1s"` + "\n", "seckill.order_ttl:"},
		{"negative rate", seckillConfig + `rate_user = -1.0` + "\n", "seckill.rate_user:"},
		{"negative burst", seckillConfig + `burst_ip = -1` + "\n", "seckill.burst_ip:"},
		{"unknown key", seckillConfig + `stock = 5` + "\n", `unknown key "seckill.stock"`},
		// Shorter than three NSQ message timeouts: a reservation whose
		// writer was SIGKILLed is redelivered only after its message timed
		// out, and would be given back while its order is on its way.
		// 0 would trust no replica: a bound, or negative for no check.
		{"max staleness 0", seckillConfig + `max_staleness = "0s"` + "\n", "seckill.max_staleness: must not be 0"},
		{"reconcile grace under the redelivery time", seckillConfig + `reconcile_grace = "3s"` + "\n", "seckill.reconcile_grace: reconcile grace 3s is shorter than 3 NSQ message timeouts (30s)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := configs.Parse([]byte(tt.config))
			if err == nil || !strings.Contains(err.Error(), tt.wantKey) {
				t.Fatalf("error %v, want one naming %s", err, tt.wantKey)
			}
		})
	}
}
