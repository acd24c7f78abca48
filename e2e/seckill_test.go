//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/internal/stacktest"
)

// TestSeckillReadsPurgedThroughBinlog runs the real binary as canal, Redis
// purger, HTTP purger and seckill service, with a Redis group of two
// private replicas, a Varnish in front of the demo backend, and the
// reservation counters in a Redis of their own: an item edited in MySQL has
// its cached detail (cache-aside through the seckill API) and its page
// purged within 2 s; a stock-row change purges the cached activity; and
// neither touches the reservation counters the buy path decides on.
func TestSeckillReadsPurgedThroughBinlog(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	db := stacktest.NewDatabase(t)
	conn := stacktest.MySQL(t)
	stacktest.Exec(t, conn, "CREATE TABLE "+db+".item (id BIGINT PRIMARY KEY, name VARCHAR(100), price DECIMAL(10,2), stock INT NOT NULL DEFAULT 0)")
	for id := 1; id <= 3; id++ {
		stacktest.Exec(t, conn, "INSERT INTO "+db+".item (id, name, price, stock) VALUES (?, ?, ?, ?)", id, fmt.Sprintf("item %d", id), "9.99", 10)
	}
	r1, r2 := stacktest.StartRedis(t), stacktest.StartRedis(t)
	resv := stacktest.StartRedis(t)
	backendAddr := fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t))
	v := stacktest.StartVarnish(t, filepath.Join(root, "configs", "varnish", "flashsync.vcl"), backendAddr)
	nsqd := stacktest.StartNSQD(t)
	httpAddr := fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t))
	apiAddr := fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t))
	position := filepath.Join(t.TempDir(), "position")
	cfg := fmt.Sprintf(`[mysql]
addr = %q
server_id = %d

[canal]
position_file = %q
include_tables = [%q]

[nsq]
nsqd_tcp = [%q]
nsqd_http = [%q]
topic_prefix = "e2esk"

[http]
addr = %q

[[redis_group]]
name = "hot"
replicas = [%q, %q]

[[http_group]]
name = "varnish"
instances = [%q]

[[rule]]
table = %q
keys = ["item:{id}"]
urls = ["/item/{id}.html"]
route_by = "id"

[[rule]]
table = %q
keys = ["activity:{id}"]
route_by = "id"

[[rule]]
table = %q
keys = ["activity:{activity_id}"]
route_by = "activity_id"

[seckill]
addr = %q
database = %q
item_table = %q
redis = %q
token_key = "e2e-seckill-token-key-0123456789"
`, stacktest.MySQLAddr(), newServerID(), position, db+`\..*`, nsqd.TCPAddr(), nsqd.HTTPAddr(), httpAddr,
		r1.Addr(), r2.Addr(), v.Addr(), db+".item", db+".activity", db+".activity_stock",
		apiAddr, db, db+".item", resv.Addr())
	cfgPath := writeFile(t, "seckill.toml", cfg)

	backend := startFlashsync(t, "demo-backend", "demo-backend", "-config", cfgPath, "-addr", backendAddr, "-table", db+".item")
	fs := startFlashsync(t, "flashsync", "all", "-config", cfgPath)
	api := "http://" + apiAddr
	stacktest.Eventually(t, 20*time.Second, func() error {
		for _, p := range []*process{backend, fs} {
			if p.exited() {
				t.Fatalf("%s exited (%v); stderr:\n%s", p.name, p.err, p.stderr.String())
			}
		}
		for _, u := range []string{"http://" + backendAddr + "/healthz", "http://" + httpAddr + "/healthz", api + "/items/1"} {
			resp, err := httpClient.Get(u)
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: %s", u, resp.Status)
			}
		}
		return nil
	})

	// getItem reads the item through the seckill API: its JSON and whether
	// it came from the cache.
	getItem := func(id int) (map[string]any, string) {
		t.Helper()
		resp, err := httpClient.Get(fmt.Sprintf("%s/items/%d", api, id))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /items/%d: %s %v", id, resp.Status, err)
		}
		return m, resp.Header.Get("X-Cache")
	}
	ctx := context.Background()
	replicas := []*redis.Client{}
	for _, r := range []*stacktest.RedisServer{r1, r2} {
		c := redis.NewClient(&redis.Options{Addr: r.Addr()})
		t.Cleanup(func() { c.Close() })
		replicas = append(replicas, c)
	}
	// Warm: the first read fills every replica of the group, the next hit.
	stacktest.Eventually(t, 5*time.Second, func() error {
		if _, xc := getItem(1); xc != "hit" {
			return fmt.Errorf("GET /items/1: X-Cache %s, want a hit once filled", xc)
		}
		return nil
	})
	for i, c := range replicas {
		if n, err := c.Exists(ctx, "item:1").Result(); err != nil || n != 1 {
			t.Fatalf("replica %d: item:1 exists %d %v, want filled on every replica", i, n, err)
		}
	}
	page := varnishGet(t, v.Addr(), "/item/1.html")
	if again := varnishGet(t, v.Addr(), "/item/1.html"); !again.hit {
		t.Fatalf("item page not cached in Varnish: %+v", again)
	}

	// A flash sale on item 1, its counters loaded by one purchase.
	now := time.Now()
	stacktest.Exec(t, conn, "INSERT INTO "+db+".activity (id, item_id, title, price, start_at, end_at, total_stock, per_user_limit) VALUES (1, 1, 'e2e', 1.00, ?, ?, 5, 1)",
		now.Add(-time.Minute).UTC().Format("2006-01-02 15:04:05"), now.Add(time.Hour).UTC().Format("2006-01-02 15:04:05"))
	stacktest.Exec(t, conn, "INSERT INTO "+db+".activity_stock (activity_id, available, sold) VALUES (1, 5, 0)")
	var activity struct {
		Available int    `json:"available"`
		Status    string `json:"status"`
	}
	getActivity := func() string {
		t.Helper()
		resp, err := httpClient.Get(api + "/activities/1")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(&activity); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /activities/1: %s %v", resp.Status, err)
		}
		return resp.Header.Get("X-Cache")
	}
	stacktest.Eventually(t, 5*time.Second, func() error {
		if xc := getActivity(); xc != "hit" || activity.Available != 5 || activity.Status != "open" {
			return fmt.Errorf("activity %+v (X-Cache %s), want cached, open, 5 available", activity, xc)
		}
		return nil
	})
	// The order URL comes from the dynamic script, as a browser gets it.
	resp, err := httpClient.Get(api + "/activities/1/buy.js?user=alice")
	if err != nil {
		t.Fatal(err)
	}
	js, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var script struct {
		BuyURL string `json:"buy_url"`
	}
	if body, ok := strings.CutPrefix(string(js), "window.flashsale = "); !ok || json.Unmarshal([]byte(body[:strings.Index(body, ";\n")]), &script) != nil || script.BuyURL == "" {
		t.Fatalf("buy.js: %s", js)
	}
	resp, err = httpClient.Post(api+script.BuyURL, "application/json", strings.NewReader(`{"request_id":"r1"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("buy: %s", resp.Status)
	}
	rc := redis.NewClient(&redis.Options{Addr: resv.Addr()})
	t.Cleanup(func() { rc.Close() })
	stockKey := "sk:{1}:stock"
	// The order is written: MySQL's stock row changes, which the binlog
	// path turns into a purge of the cached activity (display data).
	stacktest.Eventually(t, 5*time.Second, func() error {
		getActivity()
		if activity.Available != 4 {
			return fmt.Errorf("cached activity shows %d available, want 4 after the order", activity.Available)
		}
		return nil
	})
	if n, err := rc.Get(ctx, stockKey).Int(); err != nil || n != 4 {
		t.Fatalf("reservation counter %s = %d %v, want 4", stockKey, n, err)
	}

	// The item is edited: its cached detail and its page are purged.
	start := time.Now()
	stacktest.Exec(t, conn, "UPDATE "+db+".item SET price = 19.99 WHERE id = 1")
	stacktest.Eventually(t, 2*time.Second, func() error {
		for i, c := range replicas {
			if v, err := c.Get(ctx, "item:1").Result(); err == nil && strings.Contains(v, `"9.99"`) {
				return fmt.Errorf("replica %d still holds the old item:1", i)
			}
		}
		if pg := varnishGet(t, v.Addr(), "/item/1.html"); pg.gen == page.gen {
			return fmt.Errorf("Varnish still serves the old page")
		}
		return nil
	})
	purged := time.Since(start)
	if m, _ := getItem(1); m["price"] != "19.99" {
		t.Errorf("GET /items/1 after the edit: price %v, want 19.99", m["price"])
	}
	t.Logf("item edit → cached detail purged on both replicas and page purged in Varnish: %v", purged)
	if purged > 2*time.Second {
		t.Errorf("purged after %v, want within 2 s", purged)
	}

	// A hand edit of the stock row (display data) purges the activity but
	// never rewrites the reservation counter.
	stacktest.Exec(t, conn, "UPDATE "+db+".activity_stock SET available = available + 10 WHERE activity_id = 1")
	stacktest.Eventually(t, 2*time.Second, func() error {
		getActivity()
		if activity.Available != 14 {
			return fmt.Errorf("cached activity shows %d available, want 14", activity.Available)
		}
		return nil
	})
	if n, err := rc.Get(ctx, stockKey).Int(); err != nil || n != 4 {
		t.Errorf("reservation counter %s = %d %v after binlog purges, want 4 (untouched)", stockKey, n, err)
	}
}
