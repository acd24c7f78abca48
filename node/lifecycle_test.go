package node

import (
	"log/slog"
	"slices"
	"testing"

	"github.com/flashsync/flashsync/configs"
)

// everyRole adds the dispatcher, console and seckill sections to
// explainConfig (canal, purger, http-purger): a node of every role, with
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
`

// closeCounts wraps the Close of every component n owns with a counter.
func closeCounts(t *testing.T, n *Node) map[string]*int {
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

func newEveryRole(t *testing.T) *Node {
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
		RoleSeckill, "http listener",
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
