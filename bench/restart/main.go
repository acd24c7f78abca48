// Command restart measures how long flashsync takes, after a restart deep
// into a large binlog file, from its process start to the first purge of a
// change committed right after the start: resuming by file:pos (a position
// this server wrote, the default since a9ed075) against resuming by GTID
// (the same position without its server id, as positions of other servers
// and older ones are), alternating over rounds in one run. MariaDB finds a
// GTID by reading the binlog file from its start; a file:pos it opens at
// once.
//
// It writes -filler-mb of binlog into a fresh file (large rows of a table no
// rule reads), starts the real binary once so that it saves its position
// at the end of that, and then restarts it from a copy of that position per
// round. Everything runs on loopback against the stack's MariaDB and nsqd,
// with one private redis-server; every loop is bounded in count and time.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/bench/internal/child"
	"github.com/flashsync/flashsync/bench/internal/loopback"
	"github.com/flashsync/flashsync/bench/internal/redisproc"
)

const (
	db     = "restart_bench"
	prefix = "flashsync-bench-restart"
	group  = "rs"
)

type flags struct {
	mysql, nsqdTCP, nsqdHTTP, binary string
	fillerMB, rounds                 int
	timeout                          time.Duration
}

func main() {
	var f flags
	flag.StringVar(&f.mysql, "mysql", "127.0.0.1:13306", "MariaDB address (root, no password)")
	flag.StringVar(&f.nsqdTCP, "nsqd-tcp", "127.0.0.1:14150", "nsqd TCP address")
	flag.StringVar(&f.nsqdHTTP, "nsqd-http", "127.0.0.1:14151", "nsqd HTTP address")
	flag.StringVar(&f.binary, "flashsync", "bin/flashsync", "flashsync binary (`make build`)")
	flag.IntVar(&f.fillerMB, "filler-mb", 900, "binlog written before the saved position, MB (max 1000: one binlog file of the default 1 GiB)")
	flag.IntVar(&f.rounds, "rounds", 3, "rounds of both resumes (max 10)")
	flag.DurationVar(&f.timeout, "timeout", 10*time.Minute, "give up after this long")
	flag.Parse()
	f.fillerMB = min(max(f.fillerMB, 1), 1000)
	f.rounds = min(max(f.rounds, 1), 10)
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	if err := run(ctx, f); err != nil {
		fmt.Fprintln(os.Stderr, "restart bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, f flags) error {
	conn, err := client.ConnectWithContext(ctx, f.mysql, "root", "", "", 10*time.Second)
	if err != nil {
		return fmt.Errorf("mysql %s (run `make stack-up`): %w", f.mysql, err)
	}
	defer conn.Close()
	for _, q := range []string{
		"DROP DATABASE IF EXISTS " + db, "CREATE DATABASE " + db,
		"CREATE TABLE " + db + ".item (id INT PRIMARY KEY, v INT)", "INSERT INTO " + db + ".item VALUES (1, 0)",
		"CREATE DATABASE IF NOT EXISTS " + db + "_filler", "CREATE TABLE IF NOT EXISTS " + db + "_filler.b (id INT AUTO_INCREMENT PRIMARY KEY, v LONGBLOB)",
		"FLUSH BINARY LOGS",
	} {
		if _, err := conn.Execute(q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	defer conn.Execute("DROP DATABASE IF EXISTS " + db)
	defer conn.Execute("DROP DATABASE IF EXISTS " + db + "_filler")
	start := time.Now()
	for i := 0; i < f.fillerMB; i += 10 { // ten 1 MB rows a statement
		if _, err := conn.Execute("INSERT INTO " + db + "_filler.b (v) SELECT REPEAT('x', 1000000) FROM " + db + "_filler.seq_1_to_10"); err != nil {
			return fmt.Errorf("filler: %w", err)
		}
	}
	r, err := conn.Execute("SHOW MASTER STATUS")
	if err != nil {
		return err
	}
	file, _ := r.GetString(0, 0)
	pos, _ := r.GetInt(0, 1)
	fmt.Printf("flashsync restart bench: %d MB of binlog written in %v; the saved position will be %s:%d\n", f.fillerMB, time.Since(start).Round(time.Millisecond), file, pos)

	rs, err := redisproc.Start(ctx, "")
	if err != nil {
		return err
	}
	defer rs.Stop()
	rc := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rc.Close()
	if err := loopback.DeleteTopics(ctx, f.nsqdHTTP, loopback.FlashsyncTopics(prefix, group)...); err != nil {
		return err
	}
	defer loopback.DeleteTopics(context.WithoutCancel(ctx), f.nsqdHTTP, loopback.FlashsyncTopics(prefix, group)...)
	tmp, err := os.MkdirTemp("", "flashsync-bench-restart-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	posFile := filepath.Join(tmp, "position")

	// The first start saves the position at the binlog's end, with the
	// server's id, and stops.
	ch, err := start1(ctx, f, tmp, posFile, rs.Addr())
	if err != nil {
		return err
	}
	if err := loopback.WaitFor(ctx, 30*time.Second, 10*time.Millisecond, func() bool { _, err := os.Stat(posFile); return err == nil }); err != nil {
		ch.Stop(stopGrace)
		return fmt.Errorf("first start saved no position: %w", err)
	}
	if err := ch.Stop(stopGrace); err != nil {
		return err
	}
	saved, err := os.ReadFile(posFile)
	if err != nil {
		return err
	}
	var p map[string]any
	if err := json.Unmarshal(saved, &p); err != nil {
		return err
	}
	if _, ok := p["server_id"]; !ok {
		return errors.New("the saved position has no server_id: the binary predates a9ed075")
	}
	delete(p, "server_id")
	noID, err := json.Marshal(p)
	if err != nil {
		return err
	}

	times := map[string][]time.Duration{}
	for round := 1; round <= f.rounds; round++ {
		for _, m := range []struct {
			name string
			pos  []byte
		}{{"file:pos", saved}, {"gtid", noID}} {
			if err := os.WriteFile(posFile, m.pos, 0o644); err != nil {
				return err
			}
			d, err := firstPurge(ctx, f, conn, tmp, posFile, rs.Addr(), rc, round)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", round, m.name, err)
			}
			times[m.name] = append(times[m.name], d)
			fmt.Printf("round %d: resume by %-8s first purge %v after the process started\n", round, m.name, d.Round(time.Millisecond))
		}
	}
	med := func(ds []time.Duration) time.Duration { s := slices.Clone(ds); slices.Sort(s); return s[len(s)/2] }
	fmt.Printf("median: file:pos %v, gtid %v (file:pos / gtid %.2fx)\n", med(times["file:pos"]).Round(time.Millisecond), med(times["gtid"]).Round(time.Millisecond),
		float64(med(times["file:pos"]))/float64(med(times["gtid"])))
	return nil
}

// firstPurge starts flashsync from posFile, commits a change at once and
// returns the time from the process start to that change's key deleted.
func firstPurge(ctx context.Context, f flags, conn *client.Conn, tmp, posFile, redisAddr string, rc *redis.Client, round int) (time.Duration, error) {
	key := "rs:item:1"
	if err := rc.Set(ctx, key, "stale", 0).Err(); err != nil {
		return 0, err
	}
	began := time.Now()
	ch, err := start1(ctx, f, tmp, posFile, redisAddr)
	if err != nil {
		return 0, err
	}
	defer ch.Stop(stopGrace)
	if _, err := conn.Execute(fmt.Sprintf("UPDATE %s.item SET v = %d WHERE id = 1", db, round)); err != nil {
		return 0, err
	}
	var gone time.Time
	if err := loopback.WaitFor(ctx, 60*time.Second, time.Millisecond, func() bool {
		if n, err := rc.Exists(ctx, key).Result(); err == nil && n == 0 {
			gone = time.Now()
			return true
		}
		return false
	}); err != nil {
		return 0, fmt.Errorf("the change's key was not purged: %w", err)
	}
	return gone.Sub(began), ch.Stop(stopGrace)
}

// start1 starts `flashsync all` with the bench's config (canal and purger).
func start1(ctx context.Context, f flags, tmp, posFile, redisAddr string) (*child.Process, error) {
	httpAddr, err := loopback.FreeAddr()
	if err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`[mysql]
addr = %q
user = "root"
flavor = "mariadb"
server_id = 4311

[canal]
position_file = %q
include_tables = ["%s\\.item"]

[nsq]
nsqd_tcp = [%q]
nsqd_http = [%q]
topic_prefix = %q

[http]
addr = %q

[[redis_group]]
name = %q
replicas = [%q]

[[rule]]
table = "%s.item"
route_by = "id"
keys = ["rs:item:{id}"]
`, f.mysql, posFile, db, f.nsqdTCP, f.nsqdHTTP, prefix, httpAddr, group, redisAddr, db)
	path := filepath.Join(tmp, "flashsync.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	logPath := filepath.Join(tmp, "flashsync.log")
	c, err := child.Start(f.binary, []string{"all", "-config", path}, logPath)
	if err != nil {
		return nil, err
	}
	// Ready when it answers /healthz at all (200 or 503): its listener is
	// up; the clock runs from the process start either way.
	if err := loopback.WaitFor(ctx, 30*time.Second, 5*time.Millisecond, func() bool {
		resp, err := http.Get("http://" + httpAddr + "/healthz")
		if err != nil {
			return false
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return true
	}); err != nil {
		c.Stop(stopGrace)
		return nil, fmt.Errorf("flashsync did not serve /healthz: %w (log %s)", err, logPath)
	}
	return c, nil
}

// stopGrace is how long a child may take to exit on SIGTERM.
const stopGrace = 15 * time.Second
