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
	"sync"
	"sync/atomic"
	"syscall"
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
	db, conn := itemDatabase(t, 3)
	r1, r2 := stacktest.StartRedis(t), stacktest.StartRedis(t)
	resv := stacktest.StartRedis(t)
	backendAddr := fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t))
	v := stacktest.StartVarnish(t, flashsyncVCL(t), backendAddr)
	nsqd := stacktest.StartNSQD(t)
	httpAddr := fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t))
	apiAddr := fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t))
	position := filepath.Join(t.TempDir(), "position")
	cfg := preludeTOML(stacktest.MySQLAddr(), newServerID(), position, db, nsqd.TCPAddr(), nsqd.HTTPAddr(), httpAddr) + fmt.Sprintf(`[[redis_group]]
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
`, r1.Addr(), r2.Addr(), v.Addr(), db+".item", db+".activity", db+".activity_stock",
		apiAddr, db, db+".item", resv.Addr())
	cfgPath := writeFile(t, "seckill.toml", cfg)

	backend := startDemoBackend(t, "-config", cfgPath, "-addr", backendAddr, "-table", db+".item")
	fs := startFlashsync(t, "flashsync", "all", "-config", cfgPath)
	api := "http://" + apiAddr
	stacktest.Eventually(t, 20*time.Second, func() error {
		for _, p := range []*process{backend, fs} {
			if p.exited() {
				t.Fatalf("%s exited (%v); stderr:\n%s", p.name, p.err, p.stderr.String())
			}
		}
		for _, u := range []string{"http://" + backendAddr + "/healthz", "http://" + httpAddr + "/healthz", api + "/items/1"} {
			if err := httpOK(u); err != nil {
				return err
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

	// /healthz names the seckill role while its Redis is down.
	healthz := func() (int, string) {
		resp, err := httpClient.Get("http://" + httpAddr + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	resv.Stop()
	stacktest.Eventually(t, 5*time.Second, func() error {
		if code, body := healthz(); code != http.StatusServiceUnavailable || !strings.Contains(body, "reservation redis") {
			return fmt.Errorf("/healthz %d %s, want 503 naming the reservation redis", code, body)
		}
		return nil
	})
	resv.Start()
	stacktest.Eventually(t, 5*time.Second, func() error {
		if code, body := healthz(); code != http.StatusOK {
			return fmt.Errorf("/healthz %d %s after the restart", code, body)
		}
		return nil
	})
}

// TestSeckillSIGTERMMidStorm: `flashsync seckill` (API + writers) is
// stopped with SIGTERM while 32 buyers hammer it, then started again on
// the same address. Every request answered 202 ends as exactly one order,
// nothing is oversold, and MySQL and Redis agree.
func TestSeckillSIGTERMMidStorm(t *testing.T) {
	db := stacktest.NewDatabase(t)
	conn := stacktest.MySQL(t)
	resv := stacktest.StartRedis(t)
	nsqd := stacktest.StartNSQD(t)
	apiAddr := fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t))
	const key = "e2e-seckill-token-key-0123456789"
	cfgPath := writeFile(t, "seckill-only.toml", fmt.Sprintf(`[mysql]
addr = %q

[nsq]
nsqd_tcp = [%q]
nsqd_http = [%q]
topic_prefix = "e2eterm"

[http]
addr = "127.0.0.1:0"

[seckill]
addr = %q
database = %q
redis = %q
token_key = %q
`, stacktest.MySQLAddr(), nsqd.TCPAddr(), nsqd.HTTPAddr(), apiAddr, db, resv.Addr(), key))
	api := "http://" + apiAddr
	start := func() *process {
		p := startFlashsync(t, "seckill", "seckill", "-config", cfgPath)
		stacktest.Eventually(t, 20*time.Second, func() error {
			if p.exited() {
				t.Fatalf("seckill exited (%v); stderr:\n%s", p.err, p.stderr.String())
			}
			resp, err := httpClient.Get(api + "/activities/999")
			if err != nil {
				return err
			}
			resp.Body.Close()
			return nil
		})
		return p
	}
	p := start() // creates the tables
	const stock = 400
	now := time.Now().UTC()
	stacktest.Exec(t, conn, "INSERT INTO "+db+".activity (id, item_id, title, price, start_at, end_at, total_stock, per_user_limit) VALUES (1, 1, 'term', 1.00, ?, ?, ?, 1)",
		now.Add(-time.Minute).Format("2006-01-02 15:04:05"), now.Add(time.Hour).Format("2006-01-02 15:04:05"), stock)
	stacktest.Exec(t, conn, "INSERT INTO "+db+".activity_stock (activity_id, available, sold) VALUES (1, ?, 0)", stock)

	// 32 buyers, 600 users; a request that finds the service down (or 503)
	// is retried with the same request id until it has an answer.
	var (
		mu       sync.Mutex
		accepted = map[string]string{} // request id → user
		next     atomic.Int64
		answered atomic.Int64
	)
	buyOnce := func(user string) (int, error) {
		resp, err := httpClient.Get(api + "/activities/1/buy.js?user=" + user)
		if err != nil {
			return 0, err
		}
		js, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var script struct {
			BuyURL string `json:"buy_url"`
		}
		body, ok := strings.CutPrefix(string(js), "window.flashsale = ")
		if !ok || json.Unmarshal([]byte(body[:strings.Index(body, ";\n")]), &script) != nil || script.BuyURL == "" {
			return 0, fmt.Errorf("buy.js: %s", js)
		}
		resp, err = httpClient.Post(api+script.BuyURL, "application/json", strings.NewReader(`{"request_id":"`+user+`-1"}`))
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	var wg sync.WaitGroup
	stopped := make(chan struct{})
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > 600 {
					return
				}
				user := fmt.Sprintf("t%04d", i)
				deadline := time.Now().Add(30 * time.Second)
				for {
					code, err := buyOnce(user)
					if err == nil && code != http.StatusServiceUnavailable {
						if code == http.StatusAccepted {
							mu.Lock()
							accepted[user+"-1"] = user
							mu.Unlock()
						}
						if answered.Add(1) == 150 {
							close(stopped)
						}
						break
					}
					if time.Now().After(deadline) {
						t.Errorf("%s: no answer within 30 s: %d %v", user, code, err)
						return
					}
					time.Sleep(20 * time.Millisecond) // the client's back-off before its retry
				}
			}
		}()
	}
	<-stopped
	if err := p.stop(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if p.err != nil {
		t.Fatalf("seckill did not exit cleanly on SIGTERM: %v\n%s", p.err, p.stderr.String())
	}
	start()
	wg.Wait()

	mu.Lock()
	n := len(accepted)
	mu.Unlock()
	if n != stock {
		t.Errorf("%d requests accepted, want %d (buyers outnumber the stock)", n, stock)
	}
	stacktest.Eventually(t, 20*time.Second, func() error {
		r := stacktest.Exec(t, conn, "SELECT available, sold FROM "+db+".activity_stock WHERE activity_id = 1")
		avail, _ := r.GetInt(0, 0)
		sold, _ := r.GetInt(0, 1)
		if sold != int64(n) || avail+sold != stock {
			return fmt.Errorf("available %d sold %d, want sold = %d accepted and available + sold = %d", avail, sold, n, stock)
		}
		return nil
	})
	r := stacktest.Exec(t, conn, "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM "+db+".orders WHERE activity_id = 1")
	orders, _ := r.GetInt(0, 0)
	distinct, _ := r.GetInt(0, 1)
	if orders != int64(n) || distinct != orders {
		t.Errorf("%d orders (%d distinct request ids), want %d", orders, distinct, n)
	}
	for rid, user := range accepted {
		r := stacktest.Exec(t, conn, "SELECT COUNT(*) FROM "+db+".orders WHERE activity_id = 1 AND request_id = ? AND user_id = ?", rid, user)
		if c, _ := r.GetInt(0, 0); c != 1 {
			t.Errorf("accepted %s of %s: %d orders, want 1", rid, user, c)
		}
	}
	rc := redis.NewClient(&redis.Options{Addr: resv.Addr()})
	defer rc.Close()
	if s, err := rc.Get(context.Background(), "sk:{1}:stock").Int(); err != nil || s != stock-n {
		t.Errorf("Redis reservable %d %v, want %d", s, err, stock-n)
	}
	t.Logf("SIGTERM after 150 answers; %d accepted, all ordered exactly once after the restart", n)
}
