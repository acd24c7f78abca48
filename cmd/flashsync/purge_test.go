package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"strings"
	"testing"

	"github.com/flashsync/flashsync/admin/admintest"
	"github.com/flashsync/flashsync/daemon"
	"github.com/flashsync/flashsync/internal/stacktest"
)

// The request body purge builds from its flags.
func TestPurgeRequestBody(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-reason", "stale", "-key", "item:1"}, `{"reason":"stale","keys":["item:1"]}`},
		{[]string{"-reason", "stale", "-dry-run", "-key", "a", "-key", "b", "-group", "ga", "-group", "gb"},
			`{"reason":"stale","dry_run":true,"keys":["a","b"],"groups":["ga","gb"]}`},
		{[]string{"-reason", "r", "-url", "/item/1.html", "-tag", "item-1", "-tag", "item-2"},
			`{"reason":"r","urls":["/item/1.html"],"tags":["item-1","item-2"]}`},
		// Integers are JSON numbers, anything else a string; commas or spaces.
		{[]string{"-reason", "r", "-row", "shop.item id=42", "-row", "shop.sku shop=7,code=0042", "-row", "shop.x  a=-3 b=1.5  c=x=y"},
			`{"reason":"r","rows":[{"table":"shop.item","key":{"id":42}},{"table":"shop.sku","key":{"code":"0042","shop":7}},{"table":"shop.x","key":{"a":-3,"b":"1.5","c":"x=y"}}]}`},
		{[]string{"-reason", "r", "-row", "shop.s id=+5,n=99999999999999999999"},
			`{"reason":"r","rows":[{"table":"shop.s","key":{"id":"+5","n":"99999999999999999999"}}]}`},
		{[]string{"-reason", "r", "-pattern", "item:*", "-pattern", "*", "-confirm", "*", "-group", "ga"},
			`{"reason":"r","groups":["ga"],"patterns":["item:*","*"],"confirm":["*"]}`},
		{[]string{"-reason", "r", "-ban", `^/item/\d+\.html`, "-flush-group", "ga", "-flush-group", "gb", "-confirm", "ga", "-confirm", "gb"},
			`{"reason":"r","bans":["^/item/\\d+\\.html"],"flush_groups":["ga","gb"],"confirm":["ga","gb"]}`},
	} {
		fs := flag.NewFlagSet("purge", flag.ContinueOnError)
		var f purgeFlags
		f.define(fs)
		if err := fs.Parse(tt.args); err != nil {
			t.Fatalf("%q: %v", tt.args, err)
		}
		body, err := f.request()
		if err != nil || string(body) != tt.want {
			t.Errorf("%q:\n got %s (%v)\nwant %s", tt.args, body, err, tt.want)
		}
	}
}

// A wrong purge command line exits 2 with the usage, before any request.
func TestPurgeCommandLineErrors(t *testing.T) {
	t.Setenv(tokenEnv, "")
	api := "-admin=http://127.0.0.1:1"
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{api, "-token=t", "-key=k"}, "-reason is required"},
		{[]string{api, "-token=t", "-reason= ", "-key=k"}, "-reason is required"},
		{[]string{api, "-token=t", "-reason=r"}, "nothing to purge"},
		{[]string{api, "-reason=r", "-key=k"}, "no token: give -token or set $FLASHSYNC_ADMIN_TOKEN"},
		{[]string{api, "-token=t", "-reason=r", "-row=shop.item"}, `-row "shop.item": want db.table col=value`},
		{[]string{api, "-token=t", "-reason=r", "-row=id=1"}, `want db.table col=value`},
		{[]string{api, "-token=t", "-reason=r", "-row=shop.item id"}, `"id": want col=value`},
		{[]string{api, "-token=t", "-reason=r", "-row=shop.item id=1,id=2"}, "column id given twice"},
		{[]string{api, "-token=t", "-reason=r", "-row=item id=1"}, `rows[0].table: "item" is not db.table`},
		{[]string{api, "-token=t", "-reason=r", "-url=/u", "-group=ga"}, "groups: name the Redis groups of keys or patterns"},
		{[]string{api, "-token=t", "-reason=r", "-key=k", "-confirm=ga"}, "confirm: confirms flush_groups and patterns"},
		{[]string{api, "-token=t", "-reason=r", "-ban=a b"}, "no whitespace"},
		{[]string{api, "-token=t", "-reason=r", "-pattern=a["}, "never closed"},
		{[]string{"-admin=ftp://x", "-token=t", "-reason=r", "-key=k"}, `-admin "ftp://x": want http://host:port`},
		{[]string{api, "-token=t", "-reason=r", "-key=k", "-timeout=soon"}, "invalid value"},
	} {
		rc, stdout, stderr := runCLI(t, append([]string{"purge"}, tt.args...)...)
		if rc != 2 || !strings.Contains(stderr, tt.want) || !strings.Contains(stderr, "usage: flashsync purge") || stdout != "" {
			t.Errorf("%q: rc %d, want 2 with %q and the usage; stdout %q, stderr:\n%s", tt.args, rc, tt.want, stdout, stderr)
		}
	}
}

// purgeAPI is a daemon running the purger and admin roles on a private
// nsqd and a private Redis group ga of two replicas, the audit in a test
// database of the shared MariaDB; config is its file.
type purgeAPI struct {
	url, config, keyPre string
	ga                  [2]*stacktest.RedisServer
}

func startPurgeAPI(t *testing.T) *purgeAPI {
	t.Helper()
	db := stacktest.NewDatabase(t)
	stacktest.Exec(t, stacktest.MySQL(t), "CREATE TABLE "+db+".item (id BIGINT PRIMARY KEY, name VARCHAR(100))")
	p := &purgeAPI{keyPre: db + ":"}
	nsqd := stacktest.StartNSQD(t)
	p.ga = [2]*stacktest.RedisServer{stacktest.StartRedis(t), stacktest.StartRedis(t)}
	addr := fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t))
	config := admintest.Prelude(nsqd.TCPAddr(), nsqd.HTTPAddr(), "") + fmt.Sprintf(`
[[redis_group]]
name = "ga"
replicas = [%q, %q]

[[rule]]
table = "%s.item"
keys = ["%sitem:{id}"]
route_by = "id"

[admin]
addr = %q
audit_database = %q
`, p.ga[0].Addr(), p.ga[1].Addr(), db, p.keyPre, addr, db) + admintest.DemoUsers(t)
	d, path, _ := admintest.Start(t, config, daemon.RoleRedisPurger, daemon.RoleAdmin)
	p.url, p.config = "http://"+d.AdminAddr(), path
	return p
}

// purge against a real admin role: a dry run previews the key's replicas,
// a run with -wait purges it from both, a bad token is the API's 401.
func TestPurgeAgainstAdminRole(t *testing.T) {
	api := startPurgeAPI(t)
	key := api.keyPre + "manual"
	ctx := context.Background()
	ga := []func() int64{}
	for _, r := range api.ga {
		c := stacktest.Redis(t, r.Addr())
		if err := c.Set(ctx, key, "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
		ga = append(ga, func() int64 {
			n, err := c.Exists(ctx, key).Result()
			if err != nil {
				t.Fatal(err)
			}
			return n
		})
	}

	t.Run("dry run from -config", func(t *testing.T) {
		rc, out, stderr := runCLI(t, "purge", "-config", api.config, "-token", "dev-viewer-token", "-reason", "look", "-dry-run", "-key", key)
		if rc != 0 || stderr != "" {
			t.Fatalf("rc %d, stderr %q, stdout:\n%s", rc, stderr, out)
		}
		for _, want := range []string{
			"dry run: nothing was purged (reason: look)\n",
			"note: keys without groups are purged in every Redis group: ga\n",
			"redis ga (replicas " + api.ga[0].Addr() + ", " + api.ga[1].Addr() + ", topic ",
			"\n    key " + key + "\n",
			"1 keys, 0 patterns, 0 flushes, 0 urls, 0 tags, 0 bans; 2 targets\n",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("preview lacks %q:\n%s", want, out)
			}
		}
		for i, n := range ga {
			if n() != 1 {
				t.Errorf("a dry run purged replica %d", i)
			}
		}
		rc, out, _ = runCLI(t, "purge", "-admin", api.url, "-token", "dev-viewer-token", "-reason", "look", "-dry-run", "-json", "-key", key)
		var p struct {
			DryRun bool `json:"dry_run"`
			Purges []struct{ Replicas []string }
		}
		if err := json.Unmarshal([]byte(out), &p); rc != 0 || err != nil || !p.DryRun || len(p.Purges) != 1 || len(p.Purges[0].Replicas) != 2 {
			t.Errorf("-json: rc %d, %v: %s", rc, err, out)
		}
	})

	t.Run("run and wait, token from the environment", func(t *testing.T) {
		t.Setenv(tokenEnv, "dev-operator-token")
		rc, out, stderr := runCLI(t, "purge", "-admin", strings.TrimPrefix(api.url, "http://"), "-reason", "stale key", "-wait", "-group", "ga", "-key", key)
		if rc != 0 || stderr != "" {
			t.Fatalf("rc %d, stderr %q, stdout:\n%s", rc, stderr, out)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "job ") || !strings.HasPrefix(lines[1], lines[0]+" done: 2 done, 0 failed") {
			t.Errorf("output:\n%s", out)
		}
		for i, n := range ga {
			if n() != 0 {
				t.Errorf("replica %d still has %s", i, key)
			}
		}
	})

	t.Run("run and wait as JSON", func(t *testing.T) {
		rc, out, stderr := runCLI(t, "purge", "-admin", api.url, "-token", "dev-operator-token", "-reason", "again", "-wait", "-json", "-key", key)
		if rc != 0 || stderr != "" {
			t.Fatalf("rc %d, stderr %q, stdout:\n%s", rc, stderr, out)
		}
		// The purge's answer, then the finished job.
		dec := json.NewDecoder(strings.NewReader(out))
		var answer struct{ Job string }
		var job struct{ ID, State, Reason string }
		if err := dec.Decode(&answer); err != nil || answer.Job == "" {
			t.Fatalf("answer %v: %s", err, out)
		}
		if err := dec.Decode(&job); err != nil || job.ID != answer.Job || job.State != "done" || job.Reason != "again" {
			t.Errorf("job %+v (%v): %s", job, err, out)
		}
	})

	t.Run("API errors exit 1 with the server's error", func(t *testing.T) {
		for _, tt := range []struct {
			token string
			args  []string
			want  string
		}{
			{"wrong-token", []string{"-dry-run", "-key", key}, "(HTTP 401"},
			{"dev-viewer-token", []string{"-key", key}, "(HTTP 403"},
			{"dev-operator-token", []string{"-dry-run", "-key", key, "-group", "nope"}, `groups[0]: unknown Redis group "nope" (ga) (HTTP 400`},
		} {
			args := append([]string{"purge", "-admin", api.url, "-token", tt.token, "-reason", "r"}, tt.args...)
			rc, out, stderr := runCLI(t, args...)
			if rc != 1 || out != "" || !strings.HasPrefix(stderr, "flashsync purge: ") || !strings.Contains(stderr, tt.want) || strings.Contains(stderr, "usage:") {
				t.Errorf("%q: rc %d, want 1 with %q; stdout %q, stderr %q", tt.args, rc, tt.want, out, stderr)
			}
		}
	})
	t.Run("a job that does not finish within -timeout exits 1", func(t *testing.T) {
		api.ga[1].Stop() // its channel keeps the purge: the job stays pending
		rc, out, stderr := runCLI(t, "purge", "-admin", api.url, "-token", "dev-operator-token", "-reason", "r", "-wait", "-timeout", "1s", "-key", key)
		if rc != 1 || !strings.HasPrefix(out, "job ") || !strings.Contains(stderr, "not finished within -timeout 1s (1 done, 1 pending, 0 failed)") {
			t.Errorf("rc %d, stdout %q, stderr %q", rc, out, stderr)
		}
	})
}
