package seckill_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/seckill"
)

// The order writer can run in a child process (the test binary itself), so
// a test can SIGKILL it mid-stream: TestMain runs it when these are set.
const (
	envWriterDSN   = "SECKILL_TEST_WRITER_DSN"
	envWriterRedis = "SECKILL_TEST_WRITER_REDIS"
	envWriterNSQD  = "SECKILL_TEST_WRITER_NSQD"
	envWriterTopic = "SECKILL_TEST_WRITER_TOPIC"
)

func TestMain(m *testing.M) {
	if dsn := os.Getenv(envWriterDSN); dsn != "" {
		os.Exit(runChildWriter(dsn))
	}
	os.Exit(m.Run())
}

func runChildWriter(dsn string) int {
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	rdb := redis.NewClient(&redis.Options{Addr: os.Getenv(envWriterRedis)})
	w, err := seckill.NewWriter(seckill.WriterOptions{
		DB: db, Reserver: seckill.NewReserver(rdb), NSQDTCP: []string{os.Getenv(envWriterNSQD)},
		Topic: os.Getenv(envWriterTopic), MsgTimeout: 2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := w.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// world is a flash sale on real servers: a private database on the shared
// MariaDB, a private redis-server for the reservations, a private nsqd.
type world struct {
	t     *testing.T
	mysql string
	dbn   string
	db    *sql.DB
	redis *stacktest.RedisServer
	rdb   *redis.Client
	nsqd  *stacktest.NSQD
	topic string
	svc   *seckill.Service
	base  string
	key   []byte
	now   func() time.Time
	http  *http.Client
}

type worldOpts struct {
	writer     bool // run the writers in-process
	expirer    bool
	orderTTL   time.Duration
	grace      time.Duration
	now        func() time.Time
	rateIP     float64
	rateUser   float64
	burstUser  int
	itemTable  string
	activities []seckill.Activity
	// mysql is a private server's address (default: the shared MariaDB).
	mysql string
}

// openActivity is an activity of item 1 at 1.00, open from a minute ago
// for an hour.
func openActivity(id int64, title string, stock, perUser int) seckill.Activity {
	return seckill.Activity{ID: id, ItemID: 1, Title: title, Price: "1.00",
		StartAt: time.Now().Add(-time.Minute), EndAt: time.Now().Add(time.Hour), TotalStock: stock, PerUserLimit: perUser}
}

func newWorld(t *testing.T, o worldOpts) *world {
	t.Helper()
	w := &world{t: t, key: []byte("test-token-key-0123456789abcdef"), now: o.now, mysql: o.mysql}
	if w.now == nil {
		w.now = time.Now
	}
	if o.mysql == "" {
		w.mysql = stacktest.MySQLAddr()
		w.dbn = stacktest.NewDatabase(t)
		w.db = stacktest.SQLDB(t, w.dbn)
	} else {
		w.dbn = "seckill_test"
		root, err := sql.Open("mysql", stacktest.DSN(o.mysql, ""))
		if err == nil {
			_, err = root.Exec("CREATE DATABASE " + w.dbn)
			root.Close()
		}
		if err != nil {
			t.Fatal(err)
		}
		if w.db, err = sql.Open("mysql", stacktest.DSN(o.mysql, w.dbn)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.db.Close() })
	}
	ctx := context.Background()
	if err := seckill.Migrate(ctx, w.db); err != nil {
		t.Fatal(err)
	}
	// Migrations are idempotent.
	if err := seckill.Migrate(ctx, w.db); err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	for _, a := range o.activities {
		if err := seckill.CreateActivity(ctx, w.db, a); err != nil {
			t.Fatal(err)
		}
	}
	w.redis = stacktest.StartRedis(t)
	w.rdb = redis.NewClient(&redis.Options{Addr: w.redis.Addr(), MaxRetries: -1})
	t.Cleanup(func() { w.rdb.Close() })
	w.nsqd = stacktest.StartNSQD(t)
	w.topic = "seckill-" + w.dbn
	if o.itemTable == "" {
		o.itemTable = w.dbn + ".item"
	}
	svc, err := seckill.New(seckill.Options{
		Addr: "127.0.0.1:0", DB: w.db, Reservations: w.rdb, ItemTable: o.itemTable,
		NSQDTCP: []string{w.nsqd.TCPAddr()}, NSQDHTTP: []string{w.nsqd.HTTPAddr()}, Topic: w.topic, TokenKey: w.key,
		RateIP: o.rateIP, RateUser: o.rateUser, BurstUser: o.burstUser, BurstIP: 100,
		OrderTTL: o.orderTTL, MsgTimeout: 2 * time.Second, ReconcileGrace: o.grace,
		ExpireInterval: 50 * time.Millisecond,
		API:            true, Writer: o.writer, Expirer: o.expirer,
		Now:    w.now,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	w.svc = svc
	w.base = "http://" + svc.Addr()
	stacktest.RunAndClose(t, "service", svc)
	w.http = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 256}}
	t.Cleanup(w.http.CloseIdleConnections)
	return w
}

// childWriter starts the order writer in a child process.
func (w *world) childWriter() *exec.Cmd {
	w.t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		envWriterDSN+"="+stacktest.DSN(w.mysql, w.dbn),
		envWriterRedis+"="+w.redis.Addr(), envWriterNSQD+"="+w.nsqd.TCPAddr(), envWriterTopic+"="+w.topic)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	w.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if w.t.Failed() {
			w.t.Logf("child writer stderr:\n%s", stderr.String())
		}
	})
	return cmd
}

type answer struct {
	Status     int
	Code       string `json:"code"`
	State      string `json:"state"`
	Error      string `json:"error"`
	RetryAfter int    `json:"retry_after_s"`
	Duplicate  bool   `json:"duplicate"`
	BuyURL     string `json:"buy_url"`
	Open       bool   `json:"open"`
	OpensIn    int    `json:"opens_in_s"`
	Order      *seckill.Order
}

// do sends body as JSON (nothing when nil) and decodes the answer, JSON or
// buy.js's script.
func (w *world) do(method, path string, body any) (answer, error) {
	var b []byte
	if body != nil {
		b, _ = json.Marshal(body)
	}
	r, err := w.call(method, path, string(b))
	if err != nil {
		return answer{}, err
	}
	a := answer{Status: r.status}
	if strings.HasPrefix(r.header.Get("Content-Type"), "application/javascript") {
		// window.flashsale = {...};
		js := strings.TrimPrefix(string(r.body), "window.flashsale = ")
		js = js[:strings.Index(js, ";\n")]
		err = json.Unmarshal([]byte(js), &a)
	} else {
		err = json.Unmarshal(r.body, &a)
	}
	if err != nil {
		return a, fmt.Errorf("%s %s: %d %q: %w", method, path, r.status, r.body, err)
	}
	return a, nil
}

// buyURL gets the order URL of user from the dynamic script.
func (w *world) buyURL(activity int64, user string) (string, error) {
	a, err := w.do("GET", fmt.Sprintf("/activities/%d/buy.js?user=%s", activity, user), nil)
	if err != nil {
		return "", err
	}
	if !a.Open || a.BuyURL == "" {
		return "", fmt.Errorf("buy.js for %s: not open (%+v)", user, a)
	}
	return a.BuyURL, nil
}

func (w *world) buy(url, rid string, qty int) (answer, error) {
	return w.do("POST", url, map[string]any{"request_id": rid, "qty": qty})
}

// pendingInRedis counts reservations not yet decided (reserved or being
// written).
func (w *world) pendingInRedis(activity int64) int {
	recs, err := w.rdb.HGetAll(context.Background(), fmt.Sprintf("sk:{%d}:req", activity)).Result()
	if err != nil {
		w.t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if r[0] == 'R' || r[0] == 'W' {
			n++
		}
	}
	return n
}

// waitDecided waits until no reservation of activity is undecided in Redis.
func (w *world) waitDecided(activity int64, timeout time.Duration) {
	w.t.Helper()
	stacktest.Eventually(w.t, timeout, func() error {
		if n := w.pendingInRedis(activity); n > 0 {
			return fmt.Errorf("%d reservations not yet written", n)
		}
		return nil
	})
}

// stockRow reads MySQL's stock row.
func (w *world) stockRow(activity int64) (available, sold int) {
	if err := w.db.QueryRow("SELECT available, sold FROM activity_stock WHERE activity_id = ?", activity).Scan(&available, &sold); err != nil {
		w.t.Fatal(err)
	}
	return
}

func (w *world) exec(q string, args ...any) {
	w.t.Helper()
	if _, err := w.db.Exec(q, args...); err != nil {
		w.t.Fatalf("%s: %v", q, err)
	}
}

func (w *world) queryInt(q string, args ...any) int {
	w.t.Helper()
	var n sql.NullInt64
	if err := w.db.QueryRow(q, args...).Scan(&n); err != nil {
		w.t.Fatalf("%s: %v", q, err)
	}
	return int(n.Int64)
}
