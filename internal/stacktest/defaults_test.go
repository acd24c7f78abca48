package stacktest

import (
	"net"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/flashsync/flashsync/configs"
)

// TestDefaultsAreTheStack: the Default* addresses are those configs/dev.toml
// gives flashsync for the stack, and, for the two it does not name, those
// scripts/stack.sh starts.
func TestDefaultsAreTheStack(t *testing.T) {
	cfg, err := configs.Load("../../configs/dev.toml")
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, got, want []string) {
		t.Helper()
		if !slices.Equal(got, want) {
			t.Errorf("configs/dev.toml %s = %q, the constants say %q", what, got, want)
		}
	}
	check("mysql.addr", []string{cfg.MySQL.Addr}, []string{DefaultMySQLAddr})
	check("nsq.nsqd_tcp", cfg.NSQ.NSQDTCP, []string{DefaultNSQDTCP, DefaultNSQD2TCP})
	check("nsq.nsqd_http", cfg.NSQ.NSQDHTTP, []string{DefaultNSQDHTTP, DefaultNSQD2HTTP})
	check("nsq.nsqlookupd_http", cfg.NSQ.LookupdHTTP, []string{DefaultNSQLookupdHTTP})
	var groups []string
	for _, g := range cfg.RedisGroups {
		groups = append(groups, g.Name+" "+strings.Join(g.Replicas, ","))
	}
	check("redis groups", groups, []string{"hot-a " + DefaultRedisGroupA, "hot-b " + DefaultRedisGroupB})
	var httpGroups []string
	for _, g := range cfg.HTTPGroups {
		httpGroups = append(httpGroups, g.Name+" "+strings.Join(g.Instances, ","))
	}
	check("http groups", httpGroups, []string{"varnish " + DefaultVarnish1 + "," + DefaultVarnish2})
	check("seckill.redis", []string{cfg.Seckill.Redis}, []string{DefaultSeckillRedis})

	script, err := os.ReadFile("../../scripts/stack.sh")
	if err != nil {
		t.Fatal(err)
	}
	for variable, addr := range map[string]string{"NSQLOOKUPD_TCP_PORT": DefaultNSQLookupdTCP, "DEMO_BACKEND_PORT": DefaultDemoBackend} {
		_, port, _ := net.SplitHostPort(addr)
		got := "nothing"
		// VAR=$(port N): N moved by FLASHSYNC_STACK_PORT_OFFSET, 0 here.
		if m := regexp.MustCompile(`(?m)^` + variable + `=\$\(port (\d+)\)$`).FindSubmatch(script); m != nil {
			got = string(m[1])
		}
		if got != port {
			t.Errorf("scripts/stack.sh sets %s to %s, the constants say %s", variable, got, port)
		}
	}
}
