package configs_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/invalidate"
)

// TestDevConfigSeckillRules: configs/dev.toml purges the flash sale's
// display data — an activity row its cached activity and its item's page, a
// stock row the cached activity — and no rule can name a reservation
// counter (sk:…), which lives in a Redis no group lists.
func TestDevConfigSeckillRules(t *testing.T) {
	cfg, err := configs.Load("../configs/dev.toml")
	if err != nil {
		t.Fatal(err)
	}
	r, err := cfg.BuildRules()
	if err != nil {
		t.Fatal(err)
	}
	purged := func(row string) (keys, urls []string) {
		t.Helper()
		q, err := invalidate.ParseExplainRequest([]byte(row))
		if err != nil {
			t.Fatal(err)
		}
		e, err := r.ExplainRequest(q)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range e.Purges {
			keys = append(keys, p.Keys...)
			urls = append(urls, p.URLs...)
		}
		return keys, urls
	}
	keys, urls := purged(`{"table":"seckill.activity_stock","action":"update","before":{"activity_id":1,"available":100,"sold":0},"after":{"activity_id":1,"available":99,"sold":1}}`)
	if !slices.Equal(keys, []string{"activity:1"}) || len(urls) != 0 {
		t.Errorf("stock row update purges keys %v urls %v, want activity:1 only", keys, urls)
	}
	keys, urls = purged(`{"table":"seckill.activity","action":"update","before":{"id":1,"item_id":5,"price":"99.00"},"after":{"id":1,"item_id":5,"price":"89.00"}}`)
	if !slices.Equal(keys, []string{"activity:1"}) || !slices.Equal(urls, []string{"/item/5.html"}) {
		t.Errorf("activity update purges keys %v urls %v, want activity:1 and /item/5.html", keys, urls)
	}
	keys, _ = purged(`{"table":"seckill.orders","action":"insert","after":{"id":1,"activity_id":1}}`)
	if len(keys) != 0 {
		t.Errorf("an order insert purges %v: orders are not cached", keys)
	}
	for i, rule := range cfg.Rules {
		for _, k := range rule.Keys {
			if strings.HasPrefix(k, "sk:") {
				t.Errorf("rule[%d] key %q names a reservation counter", i, k)
			}
		}
	}
	for _, g := range cfg.RedisGroups {
		if slices.Contains(g.Replicas, cfg.Seckill.Redis) {
			t.Errorf("group %s lists the reservation Redis %s", g.Name, cfg.Seckill.Redis)
		}
	}
}
