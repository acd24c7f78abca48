// Package stacktest holds helpers for integration tests that run against real
// servers: MariaDB, Redis, nsqd and nsqlookupd.
//
// Two kinds of servers are available.
//
// The shared stack is started once by `make stack-up` and listens on fixed
// loopback ports, named by the Default* constants below. Tests reach it
// through [MySQL], [NewDatabase], [Redis] and the address functions below.
// Its addresses can be overridden with environment variables:
//
//	FLASHSYNC_TEST_MYSQL            MariaDB host:port, user root, empty password (default DefaultMySQLAddr)
//	FLASHSYNC_TEST_REDIS_A          comma-separated Redis group A (default DefaultRedisGroupA)
//	FLASHSYNC_TEST_REDIS_B          comma-separated Redis group B (default DefaultRedisGroupB)
//	FLASHSYNC_TEST_NSQD_TCP         nsqd TCP address (default DefaultNSQDTCP)
//	FLASHSYNC_TEST_NSQD_HTTP        nsqd HTTP address (default DefaultNSQDHTTP)
//	FLASHSYNC_TEST_NSQD2_TCP        second nsqd (nsqd-2) TCP address (default DefaultNSQD2TCP)
//	FLASHSYNC_TEST_NSQD2_HTTP       second nsqd (nsqd-2) HTTP address (default DefaultNSQD2HTTP)
//	FLASHSYNC_TEST_NSQLOOKUPD_HTTP  nsqlookupd HTTP address, which both nsqd register with (default DefaultNSQLookupdHTTP)
//
// When a shared server cannot be reached the test is skipped with a hint to
// run `make stack-up`, unless CI=true, in which case it fails (see [Require]).
//
// Private servers are owned by a single test, which may stop, restart or kill
// them: [StartRedis], [StartMariaDB], [StartNSQD] (or [StartNSQDWithLookupd]),
// [StartNSQLookupd] and [StartVarnish]. They listen on free loopback ports, keep their data
// in t.TempDir() and are stopped at cleanup. Their methods must be called
// from the test goroutine, except NSQD.Stop and NSQLookupd.Stop.
//
// Tests also share [Run], which runs a component (a Run or Serve method)
// until cleanup, [Eventually], [Consume] and [ConsumeJSON] for the messages
// of an NSQ topic, and [MetricValue] for a metric of a registry.
package stacktest

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The addresses of the shared stack that `make stack-up` starts
// (scripts/stack.sh) and configs/dev.toml names; TestDefaultsAreTheStack
// checks the two agree with these, the one place tests name them. Tests that
// use the servers reach them through the functions below, which honor the
// FLASHSYNC_TEST_* overrides; tests that only need the stack's addresses as
// values (a configuration to parse, the output expected of one) use these.
const (
	DefaultMySQLAddr = "127.0.0.1:13306"

	// The Redis cache groups hot-a and hot-b, two replicas each.
	DefaultRedisA1     = "127.0.0.1:16379"
	DefaultRedisA2     = "127.0.0.1:16380"
	DefaultRedisB1     = "127.0.0.1:16381"
	DefaultRedisB2     = "127.0.0.1:16382"
	DefaultRedisGroupA = DefaultRedisA1 + "," + DefaultRedisA2
	DefaultRedisGroupB = DefaultRedisB1 + "," + DefaultRedisB2
	// DefaultSeckillRedis holds the flash sale's reservation counters; no
	// cache group lists it.
	DefaultSeckillRedis = "127.0.0.1:16383"

	DefaultNSQDTCP   = "127.0.0.1:14150"
	DefaultNSQDHTTP  = "127.0.0.1:14151"
	DefaultNSQD2TCP  = "127.0.0.1:14152"
	DefaultNSQD2HTTP = "127.0.0.1:14153"
	// The nsqlookupd both shared nsqd register with.
	DefaultNSQLookupdTCP  = "127.0.0.1:14160"
	DefaultNSQLookupdHTTP = "127.0.0.1:14161"

	// The HTTP group varnish: two Varnish instances in front of the demo
	// backend (`flashsync-demo backend`).
	DefaultVarnish1    = "127.0.0.1:16081"
	DefaultVarnish2    = "127.0.0.1:16082"
	DefaultDemoBackend = "127.0.0.1:16090"
)

// MySQLAddr returns the address of the shared MariaDB (user root, empty
// password): $FLASHSYNC_TEST_MYSQL or [DefaultMySQLAddr].
func MySQLAddr() string { return env("FLASHSYNC_TEST_MYSQL", DefaultMySQLAddr) }

// RedisGroupA returns the addresses of the shared Redis group A:
// $FLASHSYNC_TEST_REDIS_A or [DefaultRedisGroupA].
func RedisGroupA() []string {
	return strings.Split(env("FLASHSYNC_TEST_REDIS_A", DefaultRedisGroupA), ",")
}

// RedisGroupB returns the addresses of the shared Redis group B:
// $FLASHSYNC_TEST_REDIS_B or [DefaultRedisGroupB].
func RedisGroupB() []string {
	return strings.Split(env("FLASHSYNC_TEST_REDIS_B", DefaultRedisGroupB), ",")
}

// NSQDTCP returns the TCP address of the shared nsqd:
// $FLASHSYNC_TEST_NSQD_TCP or [DefaultNSQDTCP].
func NSQDTCP() string { return env("FLASHSYNC_TEST_NSQD_TCP", DefaultNSQDTCP) }

// NSQDHTTP returns the HTTP address of the shared nsqd:
// $FLASHSYNC_TEST_NSQD_HTTP or [DefaultNSQDHTTP].
func NSQDHTTP() string { return env("FLASHSYNC_TEST_NSQD_HTTP", DefaultNSQDHTTP) }

// NSQD2TCP returns the TCP address of the shared second nsqd (nsqd-2):
// $FLASHSYNC_TEST_NSQD2_TCP or [DefaultNSQD2TCP].
func NSQD2TCP() string { return env("FLASHSYNC_TEST_NSQD2_TCP", DefaultNSQD2TCP) }

// NSQD2HTTP returns the HTTP address of the shared second nsqd (nsqd-2):
// $FLASHSYNC_TEST_NSQD2_HTTP or [DefaultNSQD2HTTP].
func NSQD2HTTP() string { return env("FLASHSYNC_TEST_NSQD2_HTTP", DefaultNSQD2HTTP) }

// NSQLookupdHTTP returns the HTTP address of the shared nsqlookupd:
// $FLASHSYNC_TEST_NSQLOOKUPD_HTTP or [DefaultNSQLookupdHTTP]. Check it with
// [PingNSQ] and [Require].
func NSQLookupdHTTP() string { return env("FLASHSYNC_TEST_NSQLOOKUPD_HTTP", DefaultNSQLookupdHTTP) }

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// Require stops the test when err, the result of reaching a server the test
// needs, is not nil: it fails the test if CI=true and skips it otherwise, so
// that `go test` works on a machine without the shared stack.
func Require(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s unavailable: %v", what, err)
	} else {
		t.Skipf("%s unavailable: %v (run `make stack-up` to start the test stack)", what, err)
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("find free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port
		}
	}
	t.Fatal("find free port: 100 ports in a row were handed out before")
	return 0
}

// handedOut are the ports FreePort returned in this process. The kernel
// may give a port again once its probe listener is closed, before the
// server it was meant for binds it: two servers of one test then got the
// same port (TestWatermarkThroughCanalKill's purger got its canal's).
// Package state, as the ports are the process's.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// Eventually calls cond every 10 ms until it returns nil, and fails the test
// with cond's last error if that has not happened within timeout.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	if err := poll(timeout, 10*time.Millisecond, cond); err != nil {
		t.Fatalf("condition not met within %v: %v", timeout, err)
	}
}

// poll calls cond every interval until it returns nil or timeout has passed,
// and returns cond's last error. cond is always called at least once.
func poll(timeout, interval time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(interval)
	}
}

// ModuleRoot walks up from the working directory (a test's: its package
// directory) to the flashsync module's go.mod.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(data, []byte("module github.com/flashsync/flashsync\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("module root of github.com/flashsync/flashsync not found above the package directory")
		}
		dir = parent
	}
}
