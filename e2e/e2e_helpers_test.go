//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/internal/route"
	"github.com/flashsync/flashsync/internal/stacktest"
)

// flashsyncBin and demoBin (cmd/flashsync-demo: the demo backend) are the
// binaries built once by TestMain.
var flashsyncBin, demoBin string

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	root, err := stacktest.ModuleRoot()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "flashsync-e2e-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	flashsyncBin, demoBin = filepath.Join(dir, "flashsync"), filepath.Join(dir, "flashsync-demo")
	// go test puts its own GOROOT/bin first in the PATH of the test binary.
	// With -o a directory, go build writes each command there under its name.
	build := exec.Command("go", "build", "-o", dir+string(filepath.Separator), "./cmd/flashsync", "./cmd/flashsync-demo")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build ./cmd/flashsync ./cmd/flashsync-demo: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// syncBuffer is an io.Writer safe for the goroutine exec copies output on.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// nonEmptyLines splits s into its lines that are not blank.
func nonEmptyLines(s string) []string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) != "" {
			lines = append(lines, sc.Text())
		}
	}
	return lines
}

// process is a flashsync child process. Its Wait is always called, by a
// goroutine that closes done when it has exited.
type process struct {
	name   string
	cmd    *exec.Cmd
	stderr *syncBuffer
	stdout *syncBuffer
	done   chan struct{}
	err    error // result of cmd.Wait, valid once done is closed
}

// command prepares a flashsync child; the kernel kills it if the test binary
// dies without stopping it, so no orphan keeps its ports.
func command(ctx context.Context, args ...string) *exec.Cmd {
	return binCommand(ctx, flashsyncBin, args...)
}

// binCommand is command for the binary bin (flashsyncBin or demoBin).
func binCommand(ctx context.Context, bin string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// startFlashsync starts flashsync with args. At cleanup it is stopped with
// SIGTERM (SIGKILL after 10 s, which fails the test) and, if the test failed,
// its output is logged.
func startFlashsync(t *testing.T, name string, args ...string) *process {
	t.Helper()
	return startBin(t, flashsyncBin, name, args...)
}

// startDemoBackend starts `flashsync-demo backend` with args, as
// startFlashsync does flashsync.
func startDemoBackend(t *testing.T, args ...string) *process {
	t.Helper()
	return startBin(t, demoBin, "demo-backend", append([]string{"backend"}, args...)...)
}

// startBin is startFlashsync for the binary bin.
func startBin(t *testing.T, bin, name string, args ...string) *process {
	t.Helper()
	return startProcess(t, bin, name, args, nil, func(p *process) {
		if t.Failed() {
			t.Logf("%s (%s) stderr:\n%s", p.name, strings.Join(args, " "), p.stderr.String())
			if out := p.stdout.String(); out != "" {
				t.Logf("%s stdout:\n%s", p.name, out)
			}
		}
	})
}

// startProcess starts the binary bin (flashsyncBin or demoBin) with args,
// its stderr also copied to logFile unless that is nil (logFile is closed
// once the process exited). At cleanup the process is stopped with SIGTERM
// (SIGKILL after 10 s, which fails the test), then report is called.
func startProcess(t *testing.T, bin, name string, args []string, logFile *os.File, report func(*process)) *process {
	t.Helper()
	p := &process{name: name, cmd: binCommand(context.Background(), bin, args...),
		stderr: new(syncBuffer), stdout: new(syncBuffer), done: make(chan struct{})}
	p.cmd.Stderr = p.stderr
	if logFile != nil {
		p.cmd.Stderr = io.MultiWriter(p.stderr, logFile)
	}
	p.cmd.Stdout = p.stdout
	if err := p.cmd.Start(); err != nil {
		if logFile != nil {
			logFile.Close()
		}
		t.Fatalf("start flashsync: %v", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		if logFile != nil {
			logFile.Close()
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			if err := p.stop(syscall.SIGTERM, 10*time.Second); err != nil {
				t.Errorf("%s: %v", p.name, err)
			}
		}
		report(p)
	})
	return p
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig and waits for the process to exit; after grace it kills it
// and reports that it did not exit in time.
func (p *process) stop(sig syscall.Signal, grace time.Duration) error {
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("did not exit within %v of %v; killed", grace, sig)
	}
}

// runFlashsync runs flashsync to completion, bounded by timeout, and returns
// its exit code and stderr.
func runFlashsync(t *testing.T, timeout time.Duration, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := command(ctx, args...)
	var stderr, stdout syncBuffer
	cmd.Stderr = &stderr
	cmd.Stdout = &stdout
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("flashsync %s did not exit within %v; stderr:\n%s", strings.Join(args, " "), timeout, stderr.String())
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stderr.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), stderr.String()
	default:
		t.Fatalf("run flashsync: %v", err)
		return 0, ""
	}
}

// Config is what the e2e tests vary in a flashsync configuration.
type Config struct {
	MySQLAddr    string
	ServerID     uint32
	PositionFile string
	DB           string // canal.include_tables is ["<DB>\\..*"], the rule table <DB>.item
	NSQDTCP      string
	NSQDHTTP     string
	HTTPAddr     string
	Groups       [][]string // replica addresses per group
	Keys         []string
}

// TOML renders the configuration.
func (c Config) TOML() string {
	var b strings.Builder
	quote := func(ss []string) string {
		q := make([]string, len(ss))
		for i, s := range ss {
			q[i] = strconv.Quote(s)
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	b.WriteString(preludeTOML(c.MySQLAddr, c.ServerID, c.PositionFile, c.DB, c.NSQDTCP, c.NSQDHTTP, c.HTTPAddr))
	for i, g := range c.Groups {
		fmt.Fprintf(&b, "[[redis_group]]\nname = \"g%d\"\nreplicas = %s\n\n", i, quote(g))
	}
	fmt.Fprintf(&b, "[[rule]]\ntable = %q\nkeys = %s\nroute_by = \"id\"\n", c.DB+".item", quote(c.Keys))
	return b.String()
}

// preludeTOML is the part every center configuration of these tests
// shares: [mysql] (root), [canal] reading the tables of db, [nsq] with one
// nsqd, [http], [purger].
func preludeTOML(mysqlAddr string, serverID uint32, position, db, nsqdTCP, nsqdHTTP, httpAddr string) string {
	return fmt.Sprintf(`[mysql]
addr = %q
user = "root"
password = ""
flavor = "mariadb"
server_id = %d

[canal]
position_file = %q
include_tables = [%q]
save_interval = "1s"

[nsq]
nsqd_tcp = [%q]
nsqd_http = [%q]
topic_prefix = "e2e"

[http]
addr = %q

[purger]
max_attempts = 10
timeout = "2s"

`, mysqlAddr, serverID, position, db+`\..*`, nsqdTCP, nsqdHTTP, httpAddr)
}

// itemDatabase creates a database on the shared MariaDB with the demo
// backend's table item, rows 1 to n (9.99, stock 10), and returns its name
// and a connection.
func itemDatabase(t *testing.T, n int) (string, *client.Conn) {
	t.Helper()
	db, conn := stacktest.NewDatabase(t), stacktest.MySQL(t)
	stacktest.Exec(t, conn, "CREATE TABLE "+db+".item (id BIGINT PRIMARY KEY, name VARCHAR(100), price DECIMAL(10,2), stock INT NOT NULL DEFAULT 0)")
	for id := 1; id <= n; id++ {
		stacktest.Exec(t, conn, "INSERT INTO "+db+".item (id, name, price, stock) VALUES (?, ?, ?, ?)", id, fmt.Sprintf("item %d", id), "9.99", 10)
	}
	return db, conn
}

// flashsyncVCL is the path of the shipped VCL, configs/varnish/flashsync.vcl.
func flashsyncVCL(t *testing.T) string {
	t.Helper()
	root, err := stacktest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, "configs", "varnish", "flashsync.vcl")
}

// writeFile writes data to a new file in t.TempDir() and returns its path.
func writeFile(t *testing.T, name, data string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

var (
	serverIDsMu sync.Mutex
	serverIDs   = map[uint32]bool{}
)

// newServerID returns a binlog reader id in 10000..60000 that no other test
// of this package uses: two readers with one id kick each other off.
func newServerID() uint32 {
	serverIDsMu.Lock()
	defer serverIDsMu.Unlock()
	for {
		id := uint32(10000 + rand.IntN(50001))
		if !serverIDs[id] {
			serverIDs[id] = true
			return id
		}
	}
}

const nGroups = 2

// groupOf is the Redis group flashsync routes row id to.
func groupOf(id int) int { return route.GroupFor([]byte(strconv.Itoa(id)), nGroups) }

// idsInGroup returns the n smallest ids >= from that route to group g.
func idsInGroup(g, from, n int) []int {
	var ids []int
	for id := from; len(ids) < n; id++ {
		if groupOf(id) == g {
			ids = append(ids, id)
		}
	}
	return ids
}

// keysOf is what the rule derives from row id.
func keysOf(id int) []string {
	return []string{fmt.Sprintf("item:%d", id), fmt.Sprintf("item:page:%d", id)}
}

// env is one test's world: its own database on the shared MariaDB, 2 Redis
// groups of 2 private replicas, a private nsqd, and a flashsync config.
type env struct {
	t        *testing.T
	db       string
	conn     *client.Conn
	redis    [nGroups][2]*stacktest.RedisServer
	clients  map[string]*redis.Client // by address
	nsqd     *stacktest.NSQD
	cfg      Config
	cfgPath  string
	sentinel [nGroups]int // rows the barrier updates, one per group
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, db: stacktest.NewDatabase(t), conn: stacktest.MySQL(t), clients: map[string]*redis.Client{}}
	e.exec("CREATE TABLE " + e.db + ".item (id BIGINT PRIMARY KEY, name VARCHAR(100), price DECIMAL(10,2), view_count INT NOT NULL DEFAULT 0)")
	var groups [][]string
	for g := range e.redis {
		var addrs []string
		for r := range e.redis[g] {
			s := stacktest.StartRedis(t)
			e.redis[g][r] = s
			c := redis.NewClient(&redis.Options{Addr: s.Addr()})
			t.Cleanup(func() { c.Close() })
			e.clients[s.Addr()] = c
			addrs = append(addrs, s.Addr())
		}
		groups = append(groups, addrs)
	}
	e.nsqd = stacktest.StartNSQD(t)
	for g := range e.sentinel {
		e.sentinel[g] = idsInGroup(g, 900000, 1)[0]
		e.insert(e.sentinel[g])
	}
	e.cfg = Config{
		MySQLAddr:    stacktest.MySQLAddr(),
		ServerID:     newServerID(),
		PositionFile: filepath.Join(t.TempDir(), "position"),
		DB:           e.db,
		NSQDTCP:      e.nsqd.TCPAddr(),
		NSQDHTTP:     e.nsqd.HTTPAddr(),
		HTTPAddr:     fmt.Sprintf("127.0.0.1:%d", stacktest.FreePort(t)),
		Groups:       groups,
		Keys:         []string{"item:{id}", "item:page:{id}"},
	}
	e.cfgPath = writeFile(t, "flashsync.toml", e.cfg.TOML())
	return e
}

func (e *env) exec(query string, args ...any) {
	e.t.Helper()
	stacktest.Exec(e.t, e.conn, query, args...)
}

// insert adds rows with the given ids.
func (e *env) insert(ids ...int) {
	e.t.Helper()
	for _, id := range ids {
		e.exec("INSERT INTO "+e.db+".item (id, name, price) VALUES (?, ?, ?)", id, fmt.Sprintf("item %d", id), "9.99")
	}
}

// start starts `flashsync all` and waits until it is ready.
func (e *env) start(name string) *process {
	e.t.Helper()
	p := startFlashsync(e.t, name, "all", "-config", e.cfgPath)
	e.waitReady(p)
	return p
}

// waitReady waits until /healthz answers 200 and the canal wrote its start
// position, the point from which it sees every change.
func (e *env) waitReady(p *process) {
	e.t.Helper()
	stacktest.Eventually(e.t, 20*time.Second, func() error {
		if p.exited() {
			e.t.Fatalf("%s exited before it was ready (%v); stderr:\n%s", p.name, p.err, p.stderr.String())
		}
		status, _, err := e.healthz()
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return fmt.Errorf("/healthz answered %d", status)
		}
		if _, err := os.Stat(e.cfg.PositionFile); err != nil {
			return err
		}
		return nil
	})
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

// httpOK GETs url and expects 200.
func httpOK(url string) error {
	resp, err := httpClient.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

func (e *env) get(path string) (int, string, error) {
	resp, err := httpClient.Get("http://" + e.cfg.HTTPAddr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

func (e *env) healthz() (int, string, error) { return e.get("/healthz") }

// metric returns the sum of the samples of the metric name whose labels
// include every label given as `key="value"`.
func (e *env) metric(name string, labels ...string) (float64, error) {
	status, body, err := e.get("/metrics")
	if err != nil {
		return 0, err
	}
	if status != http.StatusOK {
		return 0, fmt.Errorf("/metrics answered %d", status)
	}
	var sum float64
	found := false
lines:
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		series, value := line[:i], line[i+1:]
		for _, l := range labels {
			if !strings.Contains(series, l) {
				continue lines
			}
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %v", line, err)
		}
		sum += v
		found = true
	}
	if !found {
		return 0, fmt.Errorf("%w of %s with %v", errNoSample, name, labels)
	}
	return sum, nil
}

// metricOrZero is metric with an absent series read as 0.
func (e *env) metricOrZero(name string, labels ...string) float64 {
	e.t.Helper()
	v, err := e.metric(name, labels...)
	if errors.Is(err, errNoSample) {
		return 0
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

var errNoSample = errors.New("no sample")

func (e *env) replicas(g int) []string {
	return []string{e.redis[g][0].Addr(), e.redis[g][1].Addr()}
}

func (e *env) allReplicas() []string {
	var all []string
	for g := range e.redis {
		all = append(all, e.replicas(g)...)
	}
	return all
}

// seed writes the keys of ids on the given replicas (all of them if none)
// with a stale value, the way readers fill the cache.
func (e *env) seed(ids []int, addrs ...string) {
	e.t.Helper()
	if len(addrs) == 0 {
		addrs = e.allReplicas()
	}
	ctx := context.Background()
	for _, addr := range addrs {
		pipe := e.clients[addr].Pipeline()
		for _, id := range ids {
			for _, k := range keysOf(id) {
				pipe.Set(ctx, k, "stale", 0)
			}
		}
		if _, err := pipe.Exec(ctx); err != nil {
			e.t.Fatalf("seed redis %s: %v", addr, err)
		}
	}
}

// presence checks every key of ids on addr: it returns an error naming the
// first key whose existence is not want.
func (e *env) presence(addr string, want bool, ids ...int) error {
	ctx := context.Background()
	for _, id := range ids {
		for _, k := range keysOf(id) {
			n, err := e.clients[addr].Exists(ctx, k).Result()
			if err != nil {
				return fmt.Errorf("redis %s EXISTS %s: %w", addr, k, err)
			}
			if (n == 1) != want {
				if want {
					return fmt.Errorf("redis %s (group %d): %s is gone, want it kept", addr, e.groupOfAddr(addr), k)
				}
				return fmt.Errorf("redis %s (group %d): %s is still there, want it purged", addr, e.groupOfAddr(addr), k)
			}
		}
	}
	return nil
}

func (e *env) groupOfAddr(addr string) int {
	for g := range e.redis {
		for _, s := range e.redis[g] {
			if s.Addr() == addr {
				return g
			}
		}
	}
	return -1
}

// purgedError reports the first key of ids still present on a replica of
// the id's group.
func (e *env) purgedError(ids ...int) error {
	for _, id := range ids {
		for _, addr := range e.replicas(groupOf(id)) {
			if err := e.presence(addr, false, id); err != nil {
				return err
			}
		}
	}
	return nil
}

// waitPurged waits until the keys of every id are gone from both replicas of
// the id's group.
func (e *env) waitPurged(timeout time.Duration, ids ...int) {
	e.t.Helper()
	stacktest.Eventually(e.t, timeout, func() error { return e.purgedError(ids...) })
}

// checkControls checks that the keys of purged ids are still present in the
// group they do not route to, and the keys of untouched ids everywhere.
func (e *env) checkControls(purged, untouched []int) {
	e.t.Helper()
	for _, id := range purged {
		for _, addr := range e.replicas(1 - groupOf(id)) {
			if err := e.presence(addr, true, id); err != nil {
				e.t.Errorf("control in the other group of id %d: %v", id, err)
			}
		}
	}
	for _, addr := range e.allReplicas() {
		if err := e.presence(addr, true, untouched...); err != nil {
			e.t.Errorf("control of untouched ids: %v", err)
		}
	}
}

// barrier changes one sentinel row per group in a later transaction and
// waits for its purge on every replica, so that whatever was published
// before it has been applied.
func (e *env) barrier() {
	e.t.Helper()
	ids := e.sentinel[:]
	e.seed(ids)
	e.exec(fmt.Sprintf("UPDATE %s.item SET view_count = view_count + 1 WHERE id IN (%d, %d)", e.db, ids[0], ids[1]))
	e.waitPurged(5*time.Second, ids...)
}

// expectPurged waits until every key of purged ids is gone from both
// replicas of its group, then, once everything published so far has been
// applied (barrier), checks the controls.
func (e *env) expectPurged(timeout time.Duration, purged, untouched []int) {
	e.t.Helper()
	e.waitPurged(timeout, purged...)
	e.checkControls(purged, untouched)
	e.barrier()
	e.checkControls(purged, untouched)
	if e.t.Failed() {
		e.t.FailNow()
	}
}
