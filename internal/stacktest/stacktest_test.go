package stacktest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/redis/go-redis/v9"
)

func TestRedisServerRestart(t *testing.T) {
	start := time.Now()
	r := StartRedis(t)
	t.Logf("StartRedis took %v", time.Since(start))

	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { c.Close() })
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}

	r.Stop()
	if err := pingRedis(r.Addr()); err == nil {
		t.Fatal("PING answered after Stop")
	}

	start = time.Now()
	r.Start()
	t.Logf("restart took %v", time.Since(start))
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after restart: %v", err)
	}
	if err := c.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET k after restart of a server without persistence: %v, want redis.Nil", err)
	}
}

func TestMariaDBExtraArgs(t *testing.T) {
	start := time.Now()
	m := StartMariaDB(t, "--binlog-format=STATEMENT")
	t.Logf("StartMariaDB took %v", time.Since(start))

	r := Exec(t, m.Conn(t), "SELECT @@binlog_format, @@log_bin")
	if got, _ := r.GetString(0, 0); got != "STATEMENT" {
		t.Errorf("@@binlog_format = %q, want STATEMENT", got)
	}
	if got, _ := r.GetInt(0, 1); got != 1 {
		t.Errorf("@@log_bin = %d, want 1", got)
	}
}

func TestMariaDBKillAndStart(t *testing.T) {
	m := StartMariaDB(t)
	conn := m.Conn(t)
	Exec(t, conn, "CREATE DATABASE d")
	Exec(t, conn, "CREATE TABLE d.t (id INT PRIMARY KEY)")
	Exec(t, conn, "INSERT INTO d.t VALUES (?)", 1)

	m.Kill()
	if err := m.login(); err == nil {
		t.Fatal("login succeeded after Kill")
	}
	start := time.Now()
	m.Start()
	t.Logf("restart after Kill took %v", time.Since(start))

	r := Exec(t, m.Conn(t), "SELECT COUNT(*) FROM d.t")
	if n, _ := r.GetInt(0, 0); n != 1 {
		t.Errorf("rows after crash recovery = %d, want 1", n)
	}

	m.Stop()
	m.Start()
	Exec(t, m.Conn(t), "SELECT 1")
}

func TestNSQDPublishConsume(t *testing.T) {
	s := StartNSQD(t)
	quiet := log.New(io.Discard, "", 0)

	got := make(chan string, 1)
	consumer, err := nsq.NewConsumer("topic", "channel", nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	consumer.SetLogger(quiet, nsq.LogLevelError)
	consumer.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
		got <- string(m.Body)
		return nil
	}))
	if err := consumer.ConnectToNSQD(s.TCPAddr()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		consumer.Stop()
		<-consumer.StopChan
	})

	producer, err := nsq.NewProducer(s.TCPAddr(), nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	producer.SetLogger(quiet, nsq.LogLevelError)
	t.Cleanup(producer.Stop)
	if err := producer.Publish("topic", []byte("hello")); err != nil {
		t.Fatal(err)
	}

	select {
	case body := <-got:
		if body != "hello" {
			t.Errorf("consumed %q, want hello", body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no message consumed within 10s")
	}
}

func TestSharedMySQL(t *testing.T) {
	db := NewDatabase(t)
	conn := MySQL(t)
	Exec(t, conn, "CREATE TABLE "+db+".t (id INT PRIMARY KEY, v VARCHAR(10))")
	Exec(t, conn, "INSERT INTO "+db+".t VALUES (?, ?)", 1, "one")
	r := Exec(t, conn, "SELECT v FROM "+db+".t WHERE id = ?", 1)
	if v, _ := r.GetString(0, 0); v != "one" {
		t.Errorf("v = %q, want one", v)
	}
}

func TestSharedRedis(t *testing.T) {
	for _, addr := range append(RedisGroupA(), RedisGroupB()...) {
		if err := Redis(t, addr).Ping(context.Background()).Err(); err != nil {
			t.Errorf("PING %s: %v", addr, err)
		}
	}
}

func TestEventually(t *testing.T) {
	calls := 0
	Eventually(t, time.Second, func() error {
		calls++
		if calls < 3 {
			return fmt.Errorf("call %d", calls)
		}
		return nil
	})
	if calls != 3 {
		t.Errorf("cond called %d times, want 3", calls)
	}
}

// recorder records how Require ended a test.
type recorder struct {
	testing.TB
	fatal, skip string
}

func (r *recorder) Helper()                           {}
func (r *recorder) Fatalf(format string, args ...any) { r.fatal = fmt.Sprintf(format, args...) }
func (r *recorder) Skipf(format string, args ...any)  { r.skip = fmt.Sprintf(format, args...) }

func TestRequire(t *testing.T) {
	down := errors.New("connection refused")
	for _, tc := range []struct {
		ci          string
		err         error
		fatal, skip bool
	}{
		{ci: "", err: nil},
		{ci: "true", err: nil},
		{ci: "", err: down, skip: true},
		{ci: "false", err: down, skip: true},
		{ci: "true", err: down, fatal: true},
	} {
		t.Setenv("CI", tc.ci)
		var r recorder
		Require(&r, "server", tc.err)
		if (r.fatal != "") != tc.fatal || (r.skip != "") != tc.skip {
			t.Errorf("CI=%q err=%v: fatal=%q skip=%q", tc.ci, tc.err, r.fatal, r.skip)
		}
	}
}

func TestRedisStartRetriesBusyPort(t *testing.T) {
	r := StartRedis(t)
	r.Stop()

	// Someone else holds the port for a moment.
	l, err := net.Listen("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(300*time.Millisecond, func() { l.Close() })

	r.Start()
	if err := pingRedis(r.Addr()); err != nil {
		t.Fatal(err)
	}
}

// cleanupRecorder records the errors and cleanups of a test.
type cleanupRecorder struct {
	testing.TB
	mu       sync.Mutex
	errors   []string
	cleanups []func()
}

func (r *cleanupRecorder) Helper()          {}
func (r *cleanupRecorder) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }
func (r *cleanupRecorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func TestRun(t *testing.T) {
	var r cleanupRecorder
	var returned atomic.Bool
	Run(&r, "loop", func(ctx context.Context) error {
		<-ctx.Done()
		returned.Store(true)
		return nil
	})
	if len(r.cleanups) != 1 {
		t.Fatalf("%d cleanups registered, want 1", len(r.cleanups))
	}
	r.cleanups[0]()
	if !returned.Load() || len(r.errors) != 0 {
		t.Errorf("after cleanup: returned %v, errors %q; want true and none", returned.Load(), r.errors)
	}

	// An error fails the test; stop waits for it and may be called again,
	// as cleanup does.
	r = cleanupRecorder{}
	stop := Run(&r, "failing", func(ctx context.Context) error { return errors.New("boom") })
	stop()
	r.cleanups[0]()
	if want := []string{"failing: boom"}; !slices.Equal(r.errors, want) {
		t.Errorf("errors %q, want %q", r.errors, want)
	}
}
