package canal_test

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/canal"
	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
)

// freezer is a loopback TCP proxy to MariaDB that can go silent on the
// connections it holds, the way a server whose host hung or whose packets
// are dropped does: nothing arrives and nothing fails. New connections
// pass.
type freezer struct {
	ln     net.Listener
	frozen atomic.Bool // connections opened before freeze stay silent
	mu     sync.Mutex
	conns  []*frozenConn
	wg     sync.WaitGroup
}

type frozenConn struct{ silent atomic.Bool }

func newFreezer(t *testing.T, target string) *freezer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln}
	var open []net.Conn
	var openMu sync.Mutex
	t.Cleanup(func() {
		ln.Close()
		openMu.Lock()
		for _, c := range open {
			c.Close()
		}
		openMu.Unlock()
		f.wg.Wait()
	})
	f.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			openMu.Lock()
			open = append(open, c, s)
			openMu.Unlock()
			fc := &frozenConn{}
			f.mu.Lock()
			f.conns = append(f.conns, fc)
			f.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					if fc.silent.Load() {
						// Swallowed: the peer sees silence, not an error.
						if err != nil {
							return
						}
						continue
					}
					if n > 0 {
						if _, werr := dst.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						if err != io.EOF {
							dst.Close()
						}
						return
					}
				}
			}
			f.wg.Go(func() { pipe(s, c) })
			f.wg.Go(func() { pipe(c, s) })
		}
	})
	return f
}

// freeze silences every connection open now.
func (f *freezer) freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.silent.Store(true)
	}
}

// A binlog stream that goes silent without failing (no heartbeat, no
// error) is taken for dead and read again on a new connection: the canal
// does not hang on it. The canal sets no read deadline per packet (they
// cost 10% of a catch-up's CPU); its idle watch does this instead.
func TestSilentStreamIsReconnected(t *testing.T) {
	db := stacktest.NewDatabase(t)
	conn := stacktest.MySQL(t)
	stacktest.Exec(t, conn, fmt.Sprintf("CREATE TABLE %s.item (id BIGINT PRIMARY KEY, name VARCHAR(50))", db))
	rules, err := invalidate.NewRules([]invalidate.Rule{{Table: db + ".item", Keys: []string{"item:{id}"}, RouteBy: "id"}}, []string{"g"})
	if err != nil {
		t.Fatal(err)
	}
	proxy := newFreezer(t, stacktest.MySQLAddr())
	pub := &gatedPublisher{}
	posFile := filepath.Join(t.TempDir(), "position")
	c, err := canal.New(canal.Options{
		MySQL:        canal.Source{Addr: proxy.ln.Addr().String(), User: "root", Flavor: "mariadb", ServerID: uint32(20000 + rand.IntN(30000))},
		PositionFile: posFile, IncludeTables: []string{db + `\..*`}, SaveInterval: time.Millisecond,
		Rules: rules, Publisher: pub, Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	stacktest.Run(t, "canal.Run", c.Run)
	// A first start begins at the server's current position: write after it.
	stacktest.Eventually(t, 10*time.Second, func() error {
		if _, ok, err := canal.NewPositionFile(posFile).Load(); !ok {
			return fmt.Errorf("no start position saved yet (%v)", err)
		}
		return nil
	})
	published := func(key string) func() error {
		return func() error {
			if _, keys := pub.snapshot(); !slices.Contains(keys, key) {
				return fmt.Errorf("%s not published yet", key)
			}
			return nil
		}
	}
	stacktest.Exec(t, conn, fmt.Sprintf("INSERT INTO %s.item VALUES (1, 'a')", db))
	stacktest.Eventually(t, 10*time.Second, published("item:1"))

	proxy.freeze()
	frozeAt := time.Now()
	stacktest.Exec(t, conn, fmt.Sprintf("INSERT INTO %s.item VALUES (2, 'b')", db))
	// The idle limit is 10 s; the reconnect's backoff starts at 100 ms.
	stacktest.Eventually(t, 30*time.Second, published("item:2"))
	took := time.Since(frozeAt)
	t.Logf("published after the freeze in %v", took.Round(time.Millisecond))
	if took < 9*time.Second {
		t.Errorf("published %v after the freeze: the frozen stream cannot have carried it", took)
	}
}
