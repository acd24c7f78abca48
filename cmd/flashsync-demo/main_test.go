package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/flashsync/flashsync/internal/stacktest"
)

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr strings.Builder
	rc := program.Run(args, &stdout, &stderr)
	return rc, stdout.String(), stderr.String()
}

var missingConfig = filepath.Join(os.TempDir(), "flashsync-demo-cli-test-no-such.toml")

// flagArgs are a valid use of each flag of the demo commands, and of
// flashsync's -reset-to-current, which they refuse.
var flagArgs = map[string]string{
	"-config":           "-config=" + missingConfig,
	"-log-level":        "-log-level=warn",
	"-addr":             "-addr=127.0.0.1:1",
	"-table":            "-table=shop.item",
	"-limit":            "-limit=5",
	"-reset-to-current": "-reset-to-current",
}

var commandFlags = map[string][]string{
	"backend":    {"-config", "-log-level", "-addr", "-table"},
	"seed-cache": {"-config", "-log-level", "-limit"},
	"help":       nil,
	"version":    nil,
}

// Each command takes its own flags (and stops at the missing config: exit
// 1) and refuses the others (exit 2).
func TestCommandFlags(t *testing.T) {
	if len(program.All()) != len(commandFlags) {
		t.Fatalf("%d commands, the test knows %d", len(program.All()), len(commandFlags))
	}
	for name, own := range commandFlags {
		for flagName, arg := range flagArgs {
			args := []string{name, arg}
			if flagName != "-config" && slices.Contains(own, "-config") {
				args = append(args, flagArgs["-config"])
			}
			rc, _, stderr := runCLI(t, args...)
			switch {
			case !slices.Contains(own, flagName):
				if rc != 2 || !strings.Contains(stderr, "flag provided but not defined: "+flagName) || !strings.Contains(stderr, "usage: flashsync-demo "+name) {
					t.Errorf("%q: rc %d, want 2; stderr:\n%s", args, rc, stderr)
				}
			case rc != 1 || !strings.Contains(stderr, "flashsync-demo: config ") || !strings.Contains(stderr, missingConfig):
				t.Errorf("%q: rc %d, want 1 for the missing config; stderr:\n%s", args, rc, stderr)
			}
		}
		rc, out, _ := runCLI(t, "help", name)
		if rc != 0 || !strings.HasPrefix(out, "usage: flashsync-demo "+name+" ") {
			t.Errorf("help %s: rc %d %q", name, rc, out)
		}
	}
	for _, gone := range []string{"demo-backend", "all", "canal"} {
		if rc, _, stderr := runCLI(t, gone); rc != 2 || !strings.Contains(stderr, "unknown command") {
			t.Errorf("%s: rc %d %q", gone, rc, stderr)
		}
	}
}

// seed-cache writes the keys of up to -limit rows of each ruled table to
// every replica of the groups, but none of a table of the flash sale's
// database, whose keys the seckill API fills with JSON.
func TestSeedCache(t *testing.T) {
	db, sk := stacktest.NewDatabase(t), stacktest.NewDatabase(t)
	conn := stacktest.MySQL(t)
	stacktest.Exec(t, conn, "CREATE TABLE "+db+".item (id BIGINT PRIMARY KEY, name VARCHAR(100))")
	stacktest.Exec(t, conn, "CREATE TABLE "+sk+".activity (id BIGINT PRIMARY KEY)")
	for id := 1; id <= 3; id++ {
		stacktest.Exec(t, conn, "INSERT INTO "+db+".item (id, name) VALUES (?, ?)", id, fmt.Sprint("item ", id))
		stacktest.Exec(t, conn, "INSERT INTO "+sk+".activity (id) VALUES (?)", id)
	}
	r1, r2, counters := stacktest.StartRedis(t), stacktest.StartRedis(t), stacktest.StartRedis(t)
	path := filepath.Join(t.TempDir(), "seed.toml")
	cfg := fmt.Sprintf(`
[mysql]
addr = %q
user = "root"
server_id = %d

[canal]
position_file = "unused"

[nsq]
nsqd_tcp = ["127.0.0.1:1"]
nsqd_http = ["127.0.0.1:2"]

[[redis_group]]
name = "hot"
replicas = [%q, %q]

[[rule]]
table = %q
keys = ["item:{id}", "item:page:{id}"]
route_by = "id"

[[rule]]
table = %q
keys = ["activity:{id}"]
route_by = "id"

[seckill]
addr = "127.0.0.1:0"
database = %q
redis = %q
token_key = "a demo token key of 32 bytes...."
`, stacktest.MySQLAddr(), 20000+rand.IntN(40000), r1.Addr(), r2.Addr(), db+".item", sk+".activity", sk, counters.Addr())
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if rc, _, stderr := runCLI(t, "seed-cache", "-config", path, "-limit", "2"); rc != 0 {
		t.Fatalf("seed-cache: rc %d; stderr:\n%s", rc, stderr)
	}
	ctx := context.Background()
	for _, r := range []*stacktest.RedisServer{r1, r2} {
		c := stacktest.Redis(t, r.Addr())
		keys, err := c.Keys(ctx, "*").Result()
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(keys)
		if want := []string{"item:1", "item:2", "item:page:1", "item:page:2"}; !slices.Equal(keys, want) {
			t.Errorf("%s: keys %q, want %q", r.Addr(), keys, want)
		}
	}
}
