package stacktest

import (
	"bufio"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis returns a client of the Redis server at addr, typically one of
// [RedisGroupA] or [RedisGroupB], after checking that it answers PING
// ([Require] semantics). The client is closed at cleanup.
func Redis(t testing.TB, addr string) *redis.Client {
	t.Helper()
	Require(t, "Redis at "+addr, pingRedis(addr))
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { c.Close() })
	return c
}

// RedisServer is a private redis-server owned by one test, without
// persistence, listening on a free loopback port.
type RedisServer struct {
	daemon
	dir  string
	port int
	// aof keeps the dataset across Stop and Start (StartRedisPersistent).
	aof bool
}

// StartRedis starts a private redis-server and waits until it answers PING.
// It is stopped at cleanup. Starting takes about 25 ms, stopping about 90 ms.
func StartRedis(t testing.TB) *RedisServer {
	t.Helper()
	r := &RedisServer{daemon: daemon{t: t}, dir: t.TempDir(), port: FreePort(t)}
	t.Cleanup(r.Stop)
	r.Start()
	return r
}

// StartRedisPersistent is StartRedis with an append-only file fsynced on
// every write: what the server holds survives Stop and Start.
func StartRedisPersistent(t testing.TB) *RedisServer {
	t.Helper()
	r := &RedisServer{daemon: daemon{t: t}, dir: t.TempDir(), port: FreePort(t), aof: true}
	t.Cleanup(r.Stop)
	r.Start()
	return r
}

// Addr returns the server's host:port.
func (r *RedisServer) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

// Start starts the stopped server again on the same port, waiting until it
// answers PING.
func (r *RedisServer) Start() {
	r.t.Helper()
	r.mustBeStopped("redis " + r.Addr())
	args := []string{
		"--port", strconv.Itoa(r.port),
		"--bind", "127.0.0.1",
		"--dir", r.dir,
		"--save", "",
		"--appendonly", "no",
	}
	if r.aof {
		args = append(args[:len(args)-1], "yes", "--appendfsync", "always")
	}
	r.start("redis", "redis-server", args, filepath.Join(r.dir, "redis.log"), 10*time.Second,
		func() error { return pingRedis(r.Addr()) })
}

// Stop stops the server with SIGTERM, or SIGKILL if it is still running
// after 10 s. It does nothing if the server is stopped.
func (r *RedisServer) Stop() { r.stop(10 * time.Second) }

// PID is the server's process id, 0 while it is stopped: for a test that
// reads what the server costs from /proc.
func (r *RedisServer) PID() int {
	if r.p == nil {
		return 0
	}
	return r.p.cmd.Process.Pid
}

// Pause freezes the server with SIGSTOP until Resume: connections are
// still accepted and requests buffered, but nothing is answered, so a client
// without a read deadline waits.
func (r *RedisServer) Pause() { r.t.Helper(); r.pause("redis " + r.Addr()) }

// Resume lets a paused server run again (SIGCONT); it answers what was
// buffered meanwhile.
func (r *RedisServer) Resume() { r.t.Helper(); r.resume("redis " + r.Addr()) }

// Kill kills the server with SIGKILL, as in a crash: it saves nothing on
// the way out. It does nothing if the server is stopped.
func (r *RedisServer) Kill() { r.kill() }

// Dir is the server's working directory: its dump.rdb (after SAVE) and
// its append-only files (StartRedisPersistent), which Start loads.
func (r *RedisServer) Dir() string { return r.dir }

// pingRedis sends PING to the Redis server at addr and expects PONG.
func pingRedis(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(time.Second)); err != nil {
		return err
	}
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if reply != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(reply))
	}
	return nil
}
