package admin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/admin/admintest"
	"github.com/flashsync/flashsync/daemon"
	"github.com/flashsync/flashsync/internal/stacktest"
)

// The demo users of configs/dev.toml.
const (
	adminToken    = "dev-admin-token"
	operatorToken = "dev-operator-token"
	viewerToken   = "dev-viewer-token"
)

const flashsyncVCL = "../configs/varnish/flashsync.vcl"

// fixture is a daemon running the purger, http-purger and admin roles (no
// canal) on a private nsqd, private Redis (group ga: two replicas, gb:
// one) and a private Varnish, with a table of its own database purged by
// the rules of configs/dev.toml's shop.item rule.
type fixture struct {
	db       string // the test database; the table is db.item
	nsqd     *stacktest.NSQD
	ga       []*stacktest.RedisServer
	gb       *stacktest.RedisServer
	varnish  *stacktest.Varnish
	daemon   *daemon.Daemon
	url      string // the admin API
	keyPre   string // the rules' key prefix: "<db>:"
	stop     func()
	config   string // the daemon's config file
	auditDB  string
	reqCount int
}

// pageBackend serves /item/{id}.html with xkey item-{id}, each response
// with a new X-Generation.
func pageBackend(t *testing.T) *httptest.Server {
	var gen atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Generation", fmt.Sprint(gen.Add(1)))
		w.Header().Set("Cache-Control", "max-age=3600")
		if !strings.HasPrefix(r.URL.Path, "/item/") {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("xkey", "item-"+strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/item/"), ".html"))
		fmt.Fprintf(w, "page %s\n", r.URL.Path)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// newFixture starts it all; auditDB "" is the test database.
func newFixture(t *testing.T, auditDB string) *fixture {
	t.Helper()
	return newFixtureWith(t, fixtureOptions{auditDB: auditDB})
}

// fixtureOptions vary a fixture: the audit database, lines added to
// [purger] and [admin], and ga's second replica persistent (its data
// survives a restart).
type fixtureOptions struct {
	auditDB, purger, admin string
	persistentGA1          bool
}

func newFixtureWith(t *testing.T, o fixtureOptions) *fixture {
	t.Helper()
	auditDB := o.auditDB
	f := &fixture{db: stacktest.NewDatabase(t)}
	conn := stacktest.MySQL(t)
	stacktest.Exec(t, conn, "CREATE TABLE "+f.db+".item (id BIGINT PRIMARY KEY, name VARCHAR(100), price DECIMAL(10,2), view_count INT NOT NULL DEFAULT 0)")
	stacktest.Exec(t, conn, "CREATE TABLE "+f.db+".other (id BIGINT PRIMARY KEY)")
	stacktest.Exec(t, conn, "INSERT INTO "+f.db+".item VALUES (1, 'pen', 9.99, 0), (2, 'ink', 3.50, 0)")
	if auditDB == "" {
		auditDB = f.db
	}
	f.auditDB = auditDB
	f.keyPre = f.db + ":"
	f.nsqd = stacktest.StartNSQD(t)
	f.ga = []*stacktest.RedisServer{stacktest.StartRedis(t), nil}
	if o.persistentGA1 {
		f.ga[1] = stacktest.StartRedisPersistent(t)
	} else {
		f.ga[1] = stacktest.StartRedis(t)
	}
	f.gb = stacktest.StartRedis(t)
	f.varnish = stacktest.StartVarnish(t, flashsyncVCL, strings.TrimPrefix(pageBackend(t).URL, "http://"))
	config := admintest.Prelude(f.nsqd.TCPAddr(), f.nsqd.HTTPAddr(), o.purger) + fmt.Sprintf(`
[[redis_group]]
name = "ga"
replicas = [%q, %q]

[[redis_group]]
name = "gb"
replicas = [%q]

[[http_group]]
name = "varnish"
instances = [%q]

[[rule]]
table = "%s.item"
keys = ["%sitem:{id}", "%sitem:page:{id}"]
urls = ["/item/{id}.html"]
tags = ["item-{id}"]
route_by = "id"
ignore_changes = ["view_count"]

[[rule]]
table = "%s.ghost"
keys = ["ghost:{id}"]
route_by = "id"

[admin]
addr = "127.0.0.1:0"
audit_database = %q
max_body_bytes = 2048
%s
`, f.ga[0].Addr(), f.ga[1].Addr(), f.gb.Addr(), f.varnish.Addr(),
		f.db, f.keyPre, f.keyPre, f.db, auditDB, o.admin) + admintest.DemoUsers(t)
	f.daemon, f.config, f.stop = admintest.Start(t, config, daemon.RoleRedisPurger, daemon.RoleHTTPPurger, daemon.RoleAdmin)
	f.url = "http://" + f.daemon.AdminAddr()
	return f
}

// call sends a request with token ("" for none) and decodes the JSON answer.
func (f *fixture) call(t *testing.T, method, path, token, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, f.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatalf("%s %s: %d %q: %v", method, path, resp.StatusCode, data, err)
	}
	return resp.StatusCode, out
}

// published sums the messages ever published to the nsqd's topics, the
// acks' excepted.
func (f *fixture) published(t *testing.T) int {
	t.Helper()
	resp, err := http.Get("http://" + f.nsqd.HTTPAddr() + "/stats?format=json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var stats struct {
		Topics []struct {
			Name  string `json:"topic_name"`
			Count int    `json:"message_count"`
		} `json:"topics"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&stats); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, tp := range stats.Topics {
		if !strings.HasSuffix(tp.Name, ".acks") {
			n += tp.Count
		}
	}
	return n
}

func setKeys(t *testing.T, addr string, keys ...string) *redis.Client {
	t.Helper()
	c := stacktest.Redis(t, addr)
	for _, k := range keys {
		if err := c.Set(context.Background(), k, "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func exists(t *testing.T, c *redis.Client, keys ...string) int64 {
	t.Helper()
	n, err := c.Exists(context.Background(), keys...).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// waitJob polls the job until it is done and returns it.
func (f *fixture) waitJob(t *testing.T, id string) map[string]any {
	t.Helper()
	var job map[string]any
	stacktest.Eventually(t, 20*time.Second, func() error {
		status, out := f.call(t, "GET", "/api/v1/jobs/"+id, viewerToken, "")
		if status != http.StatusOK || out["state"] != "done" {
			return fmt.Errorf("job %s: %d %v", id, status, out)
		}
		job = out
		return nil
	})
	return job
}

func varnishHit(t *testing.T, addr, path string) bool {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return len(strings.Fields(resp.Header.Get("X-Varnish"))) == 2
}

func TestPurgeKeysAndRows(t *testing.T) {
	f := newFixture(t, "")
	key := f.keyPre + "manual"
	ga := []*redis.Client{setKeys(t, f.ga[0].Addr(), key), setKeys(t, f.ga[1].Addr(), key)}
	gb := setKeys(t, f.gb.Addr(), key)

	t.Run("keys of the named group only", func(t *testing.T) {
		status, out := f.call(t, "POST", "/api/v1/purges", operatorToken, `{"reason":"stale key","keys":["`+key+`"],"groups":["ga"]}`)
		if status != http.StatusAccepted || out["job"] == "" {
			t.Fatalf("purge: %d %v", status, out)
		}
		job := f.waitJob(t, out["job"].(string))
		if job["started_by"] != "operator" || job["reason"] != "stale key" || job["done"] != 2.0 {
			t.Errorf("job %v: want started_by operator, reason, 2 targets done", job)
		}
		for i, c := range ga {
			if exists(t, c, key) != 0 {
				t.Errorf("ga replica %d still has %s", i, key)
			}
		}
		if exists(t, gb, key) != 1 {
			t.Errorf("gb lost %s: only ga was named", key)
		}
	})

	t.Run("dry run publishes nothing", func(t *testing.T) {
		before := f.published(t)
		status, out := f.call(t, "POST", "/api/v1/purges", viewerToken, `{"reason":"look","dry_run":true,"keys":["`+key+`"],"rows":[{"table":"`+f.db+`.item","key":{"id":1}}]}`)
		if status != http.StatusOK || out["job"] != nil || out["dry_run"] != true {
			t.Fatalf("dry run: %d %v", status, out)
		}
		b, _ := json.Marshal(out)
		for _, want := range []string{`keys without groups are purged in every Redis group: ga, gb`, `"tier":"http"`, `"/item/1.html"`, `"item-1"`,
			`"kind":"key"`, `"tier":"redis"`, `"` + f.keyPre + `item:1"`, `"instances":["` + f.varnish.Addr() + `"]`} {
			if !strings.Contains(string(b), want) {
				t.Errorf("preview lacks %s: %s", want, b)
			}
		}
		if after := f.published(t); after != before {
			t.Errorf("a dry run published %d messages", after-before)
		}
		if exists(t, gb, key) != 1 {
			t.Error("a dry run purged")
		}
	})

	t.Run("row", func(t *testing.T) {
		// Where item 1 routes, from the preview.
		status, out := f.call(t, "POST", "/api/v1/purges", viewerToken, `{"reason":"look","dry_run":true,"rows":[{"table":"`+f.db+`.item","key":{"id":1}}]}`)
		if status != http.StatusOK {
			t.Fatalf("dry run: %d %v", status, out)
		}
		var group string
		for _, p := range out["purges"].([]any) {
			if p := p.(map[string]any); p["tier"] == "redis" {
				group = p["group"].(string)
			}
		}
		replicas := map[string][]*stacktest.RedisServer{"ga": f.ga, "gb": {f.gb}}[group]
		if len(replicas) == 0 {
			t.Fatalf("item 1 routes to no Redis group: %v", out)
		}
		keys := []string{f.keyPre + "item:1", f.keyPre + "item:page:1"}
		var clients []*redis.Client
		for _, r := range replicas {
			clients = append(clients, setKeys(t, r.Addr(), keys...))
		}
		varnishHit(t, f.varnish.Addr(), "/item/1.html")
		if !varnishHit(t, f.varnish.Addr(), "/item/1.html") {
			t.Fatal("/item/1.html: second GET was not a hit")
		}
		status, out = f.call(t, "POST", "/api/v1/purges", operatorToken, `{"reason":"bad price","rows":[{"table":"`+f.db+`.item","key":{"id":1}}]}`)
		if status != http.StatusAccepted {
			t.Fatalf("row purge: %d %v", status, out)
		}
		f.waitJob(t, out["job"].(string))
		for i, c := range clients {
			if n := exists(t, c, keys...); n != 0 {
				t.Errorf("replica %d of %s keeps %d of %v", i, group, n, keys)
			}
		}
		if varnishHit(t, f.varnish.Addr(), "/item/1.html") {
			t.Error("/item/1.html still cached after the row purge")
		}
	})

	t.Run("deleted row", func(t *testing.T) {
		status, out := f.call(t, "POST", "/api/v1/purges", viewerToken, `{"reason":"gone","dry_run":true,"rows":[{"table":"`+f.db+`.item","key":{"id":99}}]}`)
		b, _ := json.Marshal(out)
		if status != http.StatusOK || !strings.Contains(string(b), "does not exist (any more): purged from the key columns given") || !strings.Contains(string(b), f.keyPre+"item:99") {
			t.Errorf("missing row: %d %s", status, b)
		}
	})

	t.Run("roles", func(t *testing.T) {
		purge := `{"reason":"r","keys":["` + key + `"],"groups":["gb"]}`
		dry := `{"reason":"r","dry_run":true,"keys":["x"]}`
		for _, tt := range []struct {
			method, path, token, body string
			want                      int
		}{
			{"POST", "/api/v1/purges", "", purge, 401},
			{"POST", "/api/v1/purges", "nope", purge, 401},
			{"POST", "/api/v1/purges", "", dry, 401},
			{"POST", "/api/v1/purges", viewerToken, purge, 403},
			{"POST", "/api/v1/purges", viewerToken, dry, 200},
			{"POST", "/api/v1/purges", operatorToken, dry, 200},
			{"POST", "/api/v1/purges", adminToken, purge, 202},
			{"GET", "/api/v1/jobs/nope", "", "", 401},
			{"GET", "/api/v1/jobs/nope", "nope", "", 401},
			{"GET", "/api/v1/jobs/nope", viewerToken, "", 404},
			{"GET", "/api/v1/audit", "", "", 401},
			{"GET", "/api/v1/audit", "nope", "", 401},
			{"GET", "/api/v1/audit", viewerToken, "", 200},
			{"GET", "/api/v1/audit?limit=0", viewerToken, "", 400},
		} {
			status, out := f.call(t, tt.method, tt.path, tt.token, tt.body)
			if status != tt.want {
				t.Errorf("%s %s token %q %s: %d %v, want %d", tt.method, tt.path, tt.token, tt.body, status, out, tt.want)
			}
		}
	})

	t.Run("bad requests", func(t *testing.T) {
		item := f.db + ".item"
		big := `{"reason":"` + strings.Repeat("x", 3000) + `","keys":["k"]}`
		for _, tt := range []struct {
			body string
			want int
			msg  string
		}{
			{`{"reason":`, 400, "body: unexpected EOF"},
			{`{"reason":"r","keys":["k"],"resync":true}`, 400, "resync: not a purge: a re-sync is POST /api/v1/resyncs"},
			{`{"reason":"r","keys":["k"],"bans":["^/item/"]}`, 403, "needs the admin role"},
			{`{"reason":"r","keys":["k"],"patterns":["item:*"]}`, 403, "needs the admin role"},
			{`{"reason":"r","keys":["k"],"foo":1}`, 400, `unknown field "foo"`},
			{`{"reason":"  ","keys":["k"]}`, 400, "reason: missing"},
			{`{"keys":["k"]}`, 400, "reason: missing"},
			{`{"reason":"r"}`, 400, "nothing to purge"},
			{`{"reason":"r","keys":["k"],"groups":["gz"]}`, 400, `groups[0]: unknown Redis group "gz" (ga, gb)`},
			{`{"reason":"r","rows":[{"table":"` + f.db + `.ghost","key":{"id":1}}]}`, 400, "ghost does not exist"},
			{`{"reason":"r","rows":[{"table":"` + f.db + `.other","key":{"id":1}}]}`, 400, "no [[rule]] watches " + f.db + ".other"},
			{`{"reason":"r","rows":[{"table":"` + item + `","key":{"sku":1}}]}`, 400, "rows[0].key.sku: no such column in " + item},
			{`{"reason":"r","rows":[{"table":"` + item + `","key":{"id":true}}]}`, 400, "rows[0].key.id: true is not a key value"},
			{big, 413, "larger than 2048 bytes"},
		} {
			status, out := f.call(t, "POST", "/api/v1/purges", operatorToken, tt.body)
			if msg, _ := out["error"].(string); status != tt.want || !strings.Contains(msg, tt.msg) {
				t.Errorf("%.80s: %d %v, want %d with %q", tt.body, status, out, tt.want, tt.msg)
			}
		}
	})

	t.Run("audit", func(t *testing.T) {
		status, out := f.call(t, "GET", "/api/v1/audit?limit=1000", viewerToken, "")
		if status != http.StatusOK {
			t.Fatalf("audit: %d %v", status, out)
		}
		entries := out["entries"].([]any)
		find := func(match func(e map[string]any) bool) map[string]any {
			for _, e := range entries {
				if e := e.(map[string]any); match(e) {
					return e
				}
			}
			return nil
		}
		accepted := find(func(e map[string]any) bool {
			return e["user"] == "operator" && e["outcome"] == "accepted" && strings.Contains(e["request"].(string), "bad price")
		})
		if accepted == nil || accepted["status"] != 202.0 || accepted["job"] == nil || accepted["keys"] != 2.0 || accepted["urls"] != 1.0 ||
			accepted["tags"] != 1.0 || accepted["role"] != "operator" || !strings.HasPrefix(accepted["client"].(string), "127.0.0.1:") {
			t.Errorf("accepted row purge: %v", accepted)
		}
		refused := find(func(e map[string]any) bool { return e["user"] == "viewer" && e["status"] == 403.0 })
		if refused == nil || refused["outcome"] != "refused" || !strings.Contains(refused["error"].(string), "needs the operator role") || refused["job"] != nil {
			t.Errorf("refused purge: %v", refused)
		}
		if tooLarge := find(func(e map[string]any) bool { return e["status"] == 413.0 }); tooLarge == nil || tooLarge["request"] != "" {
			t.Errorf("413: %v", tooLarge)
		}
		resp, err := http.Get("http://" + f.daemon.HTTPAddr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		metrics, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{`flashsync_admin_requests_total{action="purge",result="accepted"}`, `flashsync_admin_requests_total{action="purge",result="refused"}`,
			`flashsync_admin_requests_total{action="dry_run",result="accepted"}`} {
			if !strings.Contains(string(metrics), want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
		if find(func(e map[string]any) bool { return e["user"] == "" }) != nil {
			t.Error("a request without a known user was audited")
		}
		ids := []float64{}
		for _, e := range entries {
			ids = append(ids, e.(map[string]any)["id"].(float64))
		}
		if !slices.IsSortedFunc(ids, func(a, b float64) int { return int(b - a) }) {
			t.Errorf("audit not newest first: %v", ids)
		}
	})

	t.Run("replica down gets the purge when it returns", func(t *testing.T) {
		k := f.keyPre + "while-down"
		setKeys(t, f.ga[0].Addr(), k)
		f.ga[1].Stop()
		status, out := f.call(t, "POST", "/api/v1/purges", operatorToken, `{"reason":"replica down","keys":["`+k+`"],"groups":["ga"]}`)
		if status != http.StatusAccepted {
			t.Fatalf("purge: %d %v", status, out)
		}
		id := out["job"].(string)
		stacktest.Eventually(t, 20*time.Second, func() error {
			if exists(t, ga[0], k) != 0 {
				return fmt.Errorf("%s still on the running replica", k)
			}
			return nil
		})
		// The running replica's ack arrives; the stopped one's target waits.
		stacktest.Eventually(t, 20*time.Second, func() error {
			if _, job := f.call(t, "GET", "/api/v1/jobs/"+id, viewerToken, ""); job["state"] != "pending" || job["pending"] != 1.0 || job["done"] != 1.0 {
				return fmt.Errorf("job with a replica down: %v", job)
			}
			return nil
		})
		f.ga[1].Start()
		job := f.waitJob(t, id)
		for _, tg := range job["targets"].([]any) {
			if tg := tg.(map[string]any); tg["state"] != "done" {
				t.Errorf("target %v", tg)
			}
		}
	})
}

// An audit row that cannot be written refuses the purge with 503 and
// publishes nothing: here the audit table exists with another schema.
func TestAuditUnwritable(t *testing.T) {
	auditDB := stacktest.NewDatabase(t)
	stacktest.Exec(t, stacktest.MySQL(t), "CREATE TABLE "+auditDB+".admin_audit (id INT PRIMARY KEY)")
	f := newFixture(t, auditDB)
	key := f.keyPre + "audited"
	c := setKeys(t, f.ga[0].Addr(), key)
	before := f.published(t)
	for _, body := range []string{
		`{"reason":"r","keys":["` + key + `"],"groups":["ga"]}`,
		`{"reason":"r","dry_run":true,"keys":["` + key + `"]}`,
	} {
		status, out := f.call(t, "POST", "/api/v1/purges", operatorToken, body)
		if msg, _ := out["error"].(string); status != http.StatusServiceUnavailable || !strings.Contains(msg, "nothing was purged") {
			t.Errorf("%s: %d %v, want 503", body, status, out)
		}
	}
	if after := f.published(t); after != before {
		t.Errorf("an unaudited purge published %d messages", after-before)
	}
	if exists(t, c, key) != 1 {
		t.Error("an unaudited purge purged")
	}
	if status, out := f.call(t, "GET", "/api/v1/audit", viewerToken, ""); status != http.StatusServiceUnavailable {
		t.Errorf("audit listing of a broken table: %d %v", status, out)
	}
}
