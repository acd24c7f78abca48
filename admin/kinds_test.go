package admin_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/admin"
	"github.com/flashsync/flashsync/internal/stacktest"
)

func dbSize(t *testing.T, c *redis.Client) int64 {
	t.Helper()
	n, err := c.DBSize(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// fill writes n keys prefix0..prefix(n-1) in pipelines.
func fill(t *testing.T, c *redis.Client, prefix string, n int) {
	t.Helper()
	ctx := context.Background()
	for i := 0; i < n; i += 500 {
		pipe := c.Pipeline()
		for j := i; j < min(n, i+500); j++ {
			pipe.Set(ctx, prefix+strconv.Itoa(j), "v", 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// auditRows lists the audit rows that match.
func (f *fixture) auditRows(t *testing.T, match func(e map[string]any) bool) []map[string]any {
	t.Helper()
	status, out := f.call(t, "GET", "/api/v1/audit?limit=1000", viewerToken, "")
	if status != http.StatusOK {
		t.Fatalf("audit: %d %v", status, out)
	}
	var rows []map[string]any
	for _, e := range out["entries"].([]any) {
		if e := e.(map[string]any); match(e) {
			rows = append(rows, e)
		}
	}
	return rows
}

// metric reads one sample of the daemon's /metrics (-1 when absent).
func (f *fixture) metric(t *testing.T, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + f.daemon.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	return -1
}

// refusal is a purge request and the status and error text it must get.
type refusal struct {
	token, body string
	want        int
	msg         string
}

// expectRefused sends each request and checks its refusal, then that none
// of them published anything.
func (f *fixture) expectRefused(t *testing.T, cases []refusal) {
	t.Helper()
	before := f.published(t)
	for _, tt := range cases {
		status, out := f.call(t, "POST", "/api/v1/purges", tt.token, tt.body)
		if msg, _ := out["error"].(string); status != tt.want || !strings.Contains(msg, tt.msg) {
			t.Errorf("%s: %d %v, want %d with %q", tt.body, status, out, tt.want, tt.msg)
		}
	}
	if after := f.published(t); after != before {
		t.Errorf("%d messages published by refused requests", after-before)
	}
}

func TestFlushGroups(t *testing.T) {
	f := newFixtureWith(t, fixtureOptions{persistentGA1: true})
	ga := []*redis.Client{stacktest.Redis(t, f.ga[0].Addr()), stacktest.Redis(t, f.ga[1].Addr())}
	gb := stacktest.Redis(t, f.gb.Addr())
	for _, c := range append(ga, gb) {
		fill(t, c, "flush:", 100)
	}
	flush := `{"reason":"poisoned cache","flush_groups":["ga"]%s}`

	t.Run("refused before anything is published", func(t *testing.T) {
		f.expectRefused(t, []refusal{
			{operatorToken, fmt.Sprintf(flush, `,"confirm":["ga"]`), 403, "needs the admin role"},
			{adminToken, fmt.Sprintf(flush, ""), 409, `confirm: name ga again to run it: "confirm": ["ga"]`},
			{adminToken, fmt.Sprintf(flush, `,"confirm":["gb"]`), 409, "confirm: name ga again"},
			{adminToken, `{"reason":"r","flush_groups":["nope"],"confirm":["nope"]}`, 400, `flush_groups[0]: unknown Redis group "nope"`},
		})
		for i, c := range append(ga, gb) {
			if n := dbSize(t, c); n != 100 {
				t.Errorf("redis %d holds %d keys after refused flushes, want 100", i, n)
			}
		}
	})

	t.Run("dry run lists the groups and replicas", func(t *testing.T) {
		before := f.published(t)
		status, out := f.call(t, "POST", "/api/v1/purges", viewerToken, `{"reason":"look","dry_run":true,"flush_groups":["ga"]}`)
		if status != http.StatusOK {
			t.Fatalf("dry run: %d %v", status, out)
		}
		purges := out["purges"].([]any)
		if len(purges) != 1 {
			t.Fatalf("purges %v, want ga only", purges)
		}
		gp := purges[0].(map[string]any)
		if gp["group"] != "ga" || gp["flush"] != true || fmt.Sprint(gp["replicas"]) != fmt.Sprint([]any{f.ga[0].Addr(), f.ga[1].Addr()}) {
			t.Errorf("preview %v", gp)
		}
		if c := out["counts"].(map[string]any); c["flushes"] != 1.0 || c["targets"] != 2.0 {
			t.Errorf("counts %v", c)
		}
		if notes := fmt.Sprint(out["notes"]); !strings.Contains(notes, `must confirm ga`) {
			t.Errorf("notes %s: want the confirm it needs", notes)
		}
		if after := f.published(t); after != before {
			t.Errorf("a dry run published %d messages", after-before)
		}
	})

	t.Run("confirmed: every replica of the group is emptied", func(t *testing.T) {
		status, out := f.call(t, "POST", "/api/v1/purges", adminToken, fmt.Sprintf(flush, `,"confirm":["ga"]`))
		if status != http.StatusAccepted {
			t.Fatalf("flush: %d %v", status, out)
		}
		job := f.waitJob(t, out["job"].(string))
		if job["done"] != 2.0 || job["started_by"] != "admin" {
			t.Errorf("job %v", job)
		}
		for i, c := range ga {
			if n := dbSize(t, c); n != 0 {
				t.Errorf("ga replica %d holds %d keys after the flush", i, n)
			}
		}
		if n := dbSize(t, gb); n != 100 {
			t.Errorf("gb holds %d keys, want its 100: only ga was flushed", n)
		}
	})

	t.Run("replica down gets the flush when it returns", func(t *testing.T) {
		fill(t, ga[0], "down:", 10)
		fill(t, ga[1], "down:", 10)
		// The replica keeps its data across a restart: an empty replica
		// after the flush is the flush's doing.
		f.ga[1].Stop()
		f.ga[1].Start()
		if n := dbSize(t, ga[1]); n != 10 {
			t.Fatalf("persistent replica holds %d keys after a restart, want 10", n)
		}
		f.ga[1].Stop()
		status, out := f.call(t, "POST", "/api/v1/purges", adminToken, fmt.Sprintf(flush, `,"confirm":["ga"]`))
		if status != http.StatusAccepted {
			t.Fatalf("flush: %d %v", status, out)
		}
		id := out["job"].(string)
		stacktest.Eventually(t, 20*time.Second, func() error {
			if _, job := f.call(t, "GET", "/api/v1/jobs/"+id, viewerToken, ""); job["pending"] != 1.0 || job["done"] != 1.0 {
				return fmt.Errorf("job with a replica down: %v", job)
			}
			return nil
		})
		if n := dbSize(t, ga[0]); n != 0 {
			t.Errorf("running replica holds %d keys", n)
		}
		f.ga[1].Start()
		f.waitJob(t, id)
		if n := dbSize(t, ga[1]); n != 0 {
			t.Errorf("restarted replica holds %d keys after its flush", n)
		}
	})

	t.Run("audit", func(t *testing.T) {
		rows := f.auditRows(t, func(e map[string]any) bool { return strings.Contains(e["request"].(string), "flush_groups") })
		byStatus := map[float64]int{}
		for _, e := range rows {
			byStatus[e["status"].(float64)]++
			if e["status"] == 202.0 && (e["outcome"] != "accepted" || e["user"] != "admin" || e["job"] == nil || e["targets"] != 2.0) {
				t.Errorf("accepted flush row %v", e)
			}
		}
		if byStatus[202] != 2 || byStatus[403] != 1 || byStatus[409] != 2 || byStatus[400] != 1 || byStatus[200] != 1 {
			t.Errorf("audit rows by status %v", byStatus)
		}
	})
}

func TestPatterns(t *testing.T) {
	const keysPerSecond = 2000
	f := newFixtureWith(t, fixtureOptions{purger: fmt.Sprintf("pattern_keys_per_second = %d", keysPerSecond)})
	ga := []*redis.Client{stacktest.Redis(t, f.ga[0].Addr()), stacktest.Redis(t, f.ga[1].Addr())}
	gb := stacktest.Redis(t, f.gb.Addr())
	const match, other = 5000, 1000
	for _, c := range append(ga, gb) {
		fill(t, c, "item:page:", match)
		fill(t, c, "item:other:", other)
	}

	t.Run("refused", func(t *testing.T) {
		f.expectRefused(t, []refusal{
			{operatorToken, `{"reason":"r","patterns":["item:page:*"]}`, 403, "needs the admin role"},
			{adminToken, `{"reason":"r","patterns":["item:[page"]}`, 400, "is never closed"},
			{adminToken, `{"reason":"r","patterns":[""]}`, 400, "patterns[0]: length 0"},
			{adminToken, `{"reason":"r","patterns":["*page*"],"groups":["gb"]}`, 409, `confirm: name *page* again`},
			{adminToken, `{"reason":"r","patterns":["item:*"],"groups":["nope"]}`, 400, `groups[0]: unknown Redis group "nope"`},
		})
	})

	t.Run("bounded and complete", func(t *testing.T) {
		start := time.Now()
		status, out := f.call(t, "POST", "/api/v1/purges", adminToken, `{"reason":"stale pages","patterns":["item:page:*"],"groups":["ga"]}`)
		if status != http.StatusAccepted {
			t.Fatalf("pattern purge: %d %v", status, out)
		}
		job := f.waitJob(t, out["job"].(string))
		elapsed := time.Since(start)
		if job["done"] != 2.0 {
			t.Errorf("job %v", job)
		}
		// Each replica's limiter starts with a burst of min(1000, rate)
		// keys; the rest come at the rate.
		if bound := time.Duration(float64(match-min(1000, keysPerSecond)) / keysPerSecond * float64(time.Second)); elapsed < bound {
			t.Errorf("%d keys unlinked in %v at %d keys/s: want at least %v", match, elapsed, keysPerSecond, bound)
		}
		ctx := context.Background()
		for i, c := range ga {
			if keys, _, err := c.Scan(ctx, 0, "item:page:*", 100000).Result(); err != nil || len(keys) != 0 {
				t.Errorf("ga replica %d: %d matching keys left (%v)", i, len(keys), err)
			}
			if n := dbSize(t, c); n != other {
				t.Errorf("ga replica %d holds %d keys, want the %d others", i, n, other)
			}
			series := fmt.Sprintf(`flashsync_purger_pattern_keys_unlinked_total{group="ga",replica=%q}`, f.ga[i].Addr())
			if n := f.metric(t, series); n < match {
				t.Errorf("%s = %v, want at least %d", series, n, match)
			}
		}
		if n := dbSize(t, gb); n != match+other {
			t.Errorf("gb holds %d keys, want all %d: only ga was named", n, match+other)
		}
	})

	t.Run("a pattern without a literal prefix, confirmed", func(t *testing.T) {
		status, out := f.call(t, "POST", "/api/v1/purges", adminToken, `{"reason":"every page","patterns":["*page*"],"groups":["gb"],"confirm":["*page*"]}`)
		if status != http.StatusAccepted {
			t.Fatalf("pattern purge: %d %v", status, out)
		}
		f.waitJob(t, out["job"].(string))
		if n := dbSize(t, gb); n != other {
			t.Errorf("gb holds %d keys, want the %d others", n, other)
		}
	})

	t.Run("audit", func(t *testing.T) {
		rows := f.auditRows(t, func(e map[string]any) bool { return strings.Contains(e["request"].(string), "patterns") })
		byStatus := map[float64]int{}
		for _, e := range rows {
			byStatus[e["status"].(float64)]++
		}
		if byStatus[202] != 2 || byStatus[403] != 1 || byStatus[400] != 3 || byStatus[409] != 1 {
			t.Errorf("audit rows by status %v", byStatus)
		}
	})
}

func TestAdminRateLimit(t *testing.T) {
	const otherToken = "second-admin-token"
	f := newFixtureWith(t, fixtureOptions{admin: fmt.Sprintf("admin_actions_per_minute = 2\n\n[[admin.user]]\nname = \"admin2\"\nrole = \"admin\"\ntoken_sha256 = %q\n", admin.HashToken(otherToken))})
	body := `{"reason":"r","patterns":["nothing:*"],"groups":["gb"]}`
	for i := 0; i < 2; i++ {
		if status, out := f.call(t, "POST", "/api/v1/purges", adminToken, body); status != http.StatusAccepted {
			t.Fatalf("run %d: %d %v", i, status, out)
		}
	}
	// Dry runs and purges of keys are not admin-only actions: not limited.
	if status, out := f.call(t, "POST", "/api/v1/purges", adminToken, `{"reason":"r","dry_run":true,"patterns":["nothing:*"]}`); status != http.StatusOK {
		t.Errorf("dry run over the limit: %d %v", status, out)
	}
	if status, out := f.call(t, "POST", "/api/v1/purges", adminToken, `{"reason":"r","keys":["k"]}`); status != http.StatusAccepted {
		t.Errorf("key purge over the limit: %d %v", status, out)
	}
	before := f.published(t)
	req, _ := http.NewRequest("POST", f.url+"/api/v1/purges", strings.NewReader(`{"reason":"third","flush_groups":["gb"],"confirm":["gb"]}`))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// 2 a minute: the next in 30 s.
	if ra, _ := strconv.Atoi(resp.Header.Get("Retry-After")); resp.StatusCode != http.StatusTooManyRequests || ra < 1 || ra > 30 {
		t.Errorf("third admin action: %d Retry-After %q %s, want 429 and 1-30 s", resp.StatusCode, resp.Header.Get("Retry-After"), msg)
	}
	if after := f.published(t); after != before {
		t.Errorf("a rate-limited request published %d messages", after-before)
	}
	rows := f.auditRows(t, func(e map[string]any) bool { return e["status"] == 429.0 })
	if len(rows) != 1 || rows[0]["outcome"] != "refused" || rows[0]["user"] != "admin" || !strings.Contains(rows[0]["request"].(string), "third") {
		t.Errorf("audit rows of the 429: %v", rows)
	}
	// Each user has their own budget.
	if status, out := f.call(t, "POST", "/api/v1/purges", otherToken, body); status != http.StatusAccepted {
		t.Errorf("another admin user, limited by the first's budget: %d %v", status, out)
	}
}

func TestBans(t *testing.T) {
	f := newFixture(t, "")
	v := f.varnish.Addr()
	pages := []string{"/item/1.html", "/item/1xhtml", "/item/2.html", "/item/12.html"}
	for _, p := range pages {
		varnishHit(t, v, p) // cache it
		if !varnishHit(t, v, p) {
			t.Fatalf("%s not cached", p)
		}
	}

	t.Run("refused", func(t *testing.T) {
		f.expectRefused(t, []refusal{
			{operatorToken, `{"reason":"r","bans":["^/item/"]}`, 403, "needs the admin role"},
			{adminToken, `{"reason":"r","bans":["^/item/("]}`, 400, "missing closing )"},
			{adminToken, `{"reason":"r","bans":["^/item/ x"]}`, 400, "no whitespace"},
			{adminToken, `{"reason":"r","bans":["^/item/\""]}`, 400, "no whitespace"},
			{adminToken, `{"reason":"r","bans":[""]}`, 400, "bans[0]: length 0"},
		})
		for _, p := range pages {
			if !varnishHit(t, v, p) {
				t.Errorf("%s no longer cached after refused bans", p)
			}
		}
	})

	t.Run("dry run", func(t *testing.T) {
		status, out := f.call(t, "POST", "/api/v1/purges", viewerToken, `{"reason":"look","dry_run":true,"bans":["^/item/1\\.html$"]}`)
		if status != http.StatusOK {
			t.Fatalf("dry run: %d %v", status, out)
		}
		gp := out["purges"].([]any)[0].(map[string]any)
		if gp["tier"] != "http" || fmt.Sprint(gp["bans"]) != `[^/item/1\.html$]` || fmt.Sprint(gp["instances"]) != "["+v+"]" {
			t.Errorf("preview %v", gp)
		}
	})

	t.Run("matching pages miss, others stay cached", func(t *testing.T) {
		status, out := f.call(t, "POST", "/api/v1/purges", adminToken, `{"reason":"bad page","bans":["^/item/1\\.html$"]}`)
		if status != http.StatusAccepted {
			t.Fatalf("ban: %d %v", status, out)
		}
		if job := f.waitJob(t, out["job"].(string)); job["done"] != 1.0 {
			t.Errorf("job %v", job)
		}
		if varnishHit(t, v, "/item/1.html") {
			t.Error("/item/1.html still a hit after its ban")
		}
		// "\." is a literal dot: /item/1xhtml does not match.
		for _, p := range []string{"/item/1xhtml", "/item/2.html", "/item/12.html"} {
			if !varnishHit(t, v, p) {
				t.Errorf("%s missed: the ban does not match it", p)
			}
		}
	})

	t.Run("audit", func(t *testing.T) {
		rows := f.auditRows(t, func(e map[string]any) bool { return strings.Contains(e["request"].(string), "bans") })
		byStatus := map[float64]int{}
		for _, e := range rows {
			byStatus[e["status"].(float64)]++
		}
		if byStatus[202] != 1 || byStatus[403] != 1 || byStatus[400] != 4 || byStatus[200] != 1 {
			t.Errorf("audit rows by status %v", byStatus)
		}
	})
}
