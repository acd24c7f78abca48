package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flashsync/flashsync/canal"
	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/internal/stacktest"
)

// adminSection runs the admin role on a free port; the audit database is
// %s (fmt) where a daemon runs.
const adminSection = `
[admin]
addr = "127.0.0.1:0"
audit_database = "%s"

[[admin.user]]
name = "op"
role = "operator"
token_sha256 = "277e6a75a6980887d1bc5c738e59a2504e3e2696d8f9fbf675b7fc49dabd2cf8"
`

// everyRole adds the dispatcher, console, seckill, admin and checker sections to
// explainConfig (canal, purger, http-purger): a daemon of every role, with
// addresses where nothing listens. New dials nothing.
const everyRole = explainConfig + `
[[cdn_node]]
name = "cdn1"
console_url = "http://127.0.0.1:3"
key = "node-test-console-key-0123"

[console]
addr = "127.0.0.1:0"
key = "node-test-console-key-0123"
machines = ["127.0.0.1:4"]

[seckill]
addr = "127.0.0.1:0"
database = "seckill"
item_table = "shop.item"
redis = "127.0.0.1:5"
token_key = "node-test-token-key-0123456789abcdef"
` + "\n[admin]\naddr = \"127.0.0.1:0\"\n\n[[admin.user]]\nname = \"op\"\nrole = \"operator\"\n" +
	"token_sha256 = \"277e6a75a6980887d1bc5c738e59a2504e3e2696d8f9fbf675b7fc49dabd2cf8\"\n" +
	"\n[checker]\n"

// closeCounts wraps the Close of every component n owns with a counter.
func closeCounts(t *testing.T, n *Daemon) map[string]*int {
	t.Helper()
	counts := map[string]*int{}
	for i := range n.owned {
		c := &n.owned[i]
		if counts[c.name] != nil {
			t.Fatalf("two components named %q", c.name)
		}
		k := new(int)
		counts[c.name] = k
		close := c.close
		c.close = func() error { *k++; return close() }
	}
	return counts
}

func checkClosedOnce(t *testing.T, counts map[string]*int) {
	t.Helper()
	for name, k := range counts {
		if *k != 1 {
			t.Errorf("%s closed %d times, want 1", name, *k)
		}
	}
}

func newEveryRole(t *testing.T) *Daemon {
	t.Helper()
	cfg, err := configs.Parse([]byte(everyRole))
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(Options{Config: cfg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(n.roles, Roles) {
		t.Fatalf("roles %v, want every role %v", n.roles, Roles)
	}
	return n
}

func TestCloseClosesEveryComponentOnce(t *testing.T) {
	n := newEveryRole(t)
	counts := closeCounts(t, n)
	var names []string
	for _, c := range n.owned {
		names = append(names, c.name)
	}
	want := []string{
		"publisher", RoleCanal, RoleRedisPurger, RoleHTTPPurger, RoleDispatcher, "console listener",
		"seckill database", "seckill redis",
		"seckill cache client 127.0.0.1:16379", "seckill cache client 127.0.0.1:16380", "seckill cache client 127.0.0.1:16381",
		RoleSeckill, "admin database", RoleAdmin, RoleChecker, "http listener",
	}
	if !slices.Equal(names, want) {
		t.Errorf("components %q,\nwant %q", names, want)
	}
	for range 2 {
		if err := n.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}
	checkClosedOnce(t, counts)
}

// With nothing to talk to, the roles fail at once: the first failure stops
// every other role, and Close then closes each component once.
func TestRunThenCloseClosesEveryComponentOnce(t *testing.T) {
	n := newEveryRole(t)
	counts := closeCounts(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := n.Run(ctx)
	if err == nil {
		t.Fatal("run: no error, with no server to talk to")
	}
	name, _, _ := strings.Cut(err.Error(), ": ")
	if !slices.Contains(Roles, name) {
		t.Errorf("run: %v: does not start with a role's name", err)
	}
	for _, c := range counts {
		if *c != 0 {
			t.Fatalf("run closed a component: %v", counts)
		}
	}
	n.Close()
	n.Close()
	checkClosedOnce(t, counts)
}

// Every role running against real servers: ctx ending is a clean exit in
// which the canal saves its last acknowledged position, and Close then
// closes each component once.
func TestRunStopsEveryRoleCleanly(t *testing.T) {
	db := stacktest.NewDatabase(t)
	conn := stacktest.MySQL(t)
	stacktest.Exec(t, conn, "CREATE TABLE "+db+".item (id BIGINT PRIMARY KEY, name VARCHAR(100), price DECIMAL(10,2), stock INT NOT NULL DEFAULT 0)")
	cache, reservations := stacktest.StartRedis(t), stacktest.StartRedis(t)
	dir := t.TempDir()
	position := filepath.Join(dir, "position")
	consoleAddr := fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t))
	const key = "node-test-console-key-0123"
	cfg, err := configs.Parse(fmt.Appendf(nil, `
[mysql]
addr = %q
user = "root"
flavor = "mariadb"
server_id = %d

[canal]
position_file = %q
include_tables = [%q]
save_interval = "1s"

[nsq]
embedded_tcp = "127.0.0.1:0"
embedded_http = "127.0.0.1:0"
embedded_data_path = %q

[http]
addr = "127.0.0.1:0"

[[redis_group]]
name = "hot"
replicas = [%q]

[[http_group]]
name = "varnish"
instances = ["127.0.0.1:%d"]

[[rule]]
table = %q
keys = ["item:{id}"]
urls = ["/item/{id}.html"]
route_by = "id"

[[cdn_node]]
name = "cdn1"
console_url = "http://%s"
key = %q

[console]
addr = %q
key = %q
machines = ["127.0.0.1:%d"]

[seckill]
addr = "127.0.0.1:0"
database = %q
item_table = %q
redis = %q
token_key = "node-test-token-key-0123456789abcdef"
`+adminSection+"\n[checker]\n", stacktest.MySQLAddr(), 20000+rand.IntN(40000), position, db+`\..*`, filepath.Join(dir, "nsqd"),
		cache.Addr(), stacktest.FreePort(t), db+".item", consoleAddr, key, consoleAddr, key, stacktest.FreePort(t),
		db, db+".item", reservations.Addr(), db))
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(Options{Config: cfg, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(n.roles, Roles) {
		t.Fatalf("roles %v, want every role %v", n.roles, Roles)
	}
	counts := closeCounts(t, n)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()

	stacktest.Eventually(t, 20*time.Second, func() error {
		select {
		case err := <-done:
			t.Fatalf("run returned early: %v", err)
		default:
		}
		resp, err := http.Get("http://" + n.HTTPAddr() + "/healthz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var h health
		if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || len(h.Roles) != len(Roles) || h.Roles[RoleCanal] != "active" {
			return fmt.Errorf("healthz %d %+v", resp.StatusCode, h)
		}
		return nil
	})
	// The canal saves the position it starts from before it streams.
	stacktest.Eventually(t, 20*time.Second, func() error {
		_, err := os.Stat(position)
		return err
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("run after cancel: %v, want nil", err)
	}
	saved, ok, err := canal.NewPositionFile(position).Load()
	if err != nil || !ok || saved.String() != n.canal.Position().String() {
		t.Errorf("saved position %v (%v, %v), want the last acknowledged %v", saved, ok, err, n.canal.Position())
	}
	for _, c := range counts {
		if *c != 0 {
			t.Fatalf("run closed a component: %v", counts)
		}
	}
	if err := n.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	n.Close()
	checkClosedOnce(t, counts)
}

// A New that fails closes what it had built: here the embedded nsqd, whose
// ports the next New binds again.
func TestFailedNewClosesWhatItBuilt(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := t.TempDir()
	config := func(consoleAddr string) *configs.Config {
		cfg, err := configs.Parse(fmt.Appendf(nil, `
[nsq]
embedded_tcp = "127.0.0.1:%d"
embedded_http = "127.0.0.1:%d"
embedded_data_path = %q

[http]
addr = "127.0.0.1:0"

[[redis_group]]
name = "hot"
replicas = ["127.0.0.1:1"]

[console]
addr = %q
key = "node-test-console-key-0123"
machines = ["127.0.0.1:4"]
`, stacktest.FreePort(t), stacktest.FreePort(t), dir, consoleAddr))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	cfg := config(taken.Addr().String())
	opts := Options{Config: cfg, Roles: []string{RoleRedisPurger, RoleConsole}, Logger: slog.New(slog.DiscardHandler)}
	if _, err := New(opts); err == nil || !strings.Contains(err.Error(), "console.addr") {
		t.Fatalf("new with the console's address taken: %v", err)
	}
	cfg.Console.Addr = "127.0.0.1:0"
	n, err := New(opts)
	if err != nil {
		t.Fatalf("new on the ports of the failed one: %v", err)
	}
	if err := n.Close(); err != nil {
		t.Error(err)
	}
}
