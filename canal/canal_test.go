package canal_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/canal"
	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
)

// gatedPublisher stands in front of delivery: it records every batch of
// targets and, while closed, holds Publish the way a slow nsqd would, so the
// test can look at the position file between "publish started" and
// "publish acknowledged".
type gatedPublisher struct {
	mu        sync.Mutex
	calls     int
	keys      []string
	positions []string      // Meta.Pos of each batch
	gate      chan struct{} // nil: open
	entered   chan struct{}
}

func (p *gatedPublisher) Publish(ctx context.Context, b *invalidate.Batch, m invalidate.Meta) error {
	if b.Len() == 0 {
		return nil // a heartbeat: the tests here count and hold batches of targets
	}
	p.mu.Lock()
	gate := p.gate
	p.calls++
	p.positions = append(p.positions, m.Pos)
	for g := 0; g < b.NumGroups(); g++ {
		p.keys = append(p.keys, b.Keys(g)...)
	}
	p.mu.Unlock()
	if gate != nil {
		select {
		case p.entered <- struct{}{}:
		default:
		}
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (p *gatedPublisher) snapshot() (int, []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls, slices.Clone(p.keys)
}

type fixture struct {
	db      string
	posFile string
	pub     *gatedPublisher
	canal   *canal.Canal
}

func start(t *testing.T, pub *gatedPublisher, maxBatchKeys int, engine string) *fixture {
	t.Helper()
	f := &fixture{db: stacktest.NewDatabase(t), posFile: filepath.Join(t.TempDir(), "position"), pub: pub}
	conn := stacktest.MySQL(t)
	stacktest.Exec(t, conn, fmt.Sprintf("CREATE TABLE %s.item (id BIGINT PRIMARY KEY, name VARCHAR(50)) ENGINE=%s", f.db, engine))
	rules, err := invalidate.NewRules([]invalidate.Rule{{Table: f.db + ".item", Keys: []string{"item:{id}"}, RouteBy: "id"}}, []string{"g"})
	if err != nil {
		t.Fatal(err)
	}
	f.canal, err = canal.New(canal.Options{
		MySQL:        canal.Source{Addr: stacktest.MySQLAddr(), User: "root", Flavor: "mariadb", ServerID: uint32(20000 + rand.IntN(30000))},
		PositionFile: f.posFile, IncludeTables: []string{f.db + `\..*`}, SaveInterval: time.Millisecond, MaxBatchKeys: maxBatchKeys,
		Rules:      rules,
		Publisher:  pub,
		Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	stacktest.Run(t, "canal.Run", f.canal.Run)
	stacktest.Eventually(t, 10*time.Second, func() error {
		if _, ok, err := canal.NewPositionFile(f.posFile).Load(); !ok {
			return fmt.Errorf("no start position saved yet (%v)", err)
		}
		return nil
	})
	return f
}

func (f *fixture) saved(t *testing.T) canal.Position {
	t.Helper()
	p, _, err := canal.NewPositionFile(f.posFile).Load()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The contract everything else rests on: the saved position never passes a
// transaction whose invalidations were not acknowledged.
func TestPositionMovesOnlyAfterPublishAcknowledged(t *testing.T) {
	pub := &gatedPublisher{gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	f := start(t, pub, 1000, "InnoDB")
	before := f.saved(t)
	conn := stacktest.MySQL(t)
	stacktest.Exec(t, conn, fmt.Sprintf("INSERT INTO %s.item VALUES (1,'a'),(2,'b')", f.db))
	select {
	case <-pub.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("publish never called")
	}
	// Publish is in progress and not acknowledged: give the canal every
	// chance to save (save_interval is 1 ms) and check it did not reach the
	// transaction. (Other clients of the shared server may commit before
	// it: those commits have no targets here, and the position may pass
	// them.)
	stacktest.Exec(t, conn, "SELECT 1")
	pub.mu.Lock()
	commit := pub.positions[0]
	pub.mu.Unlock()
	if got := f.saved(t); offset(t, got.File+":"+strconv.FormatUint(uint64(got.Pos), 10)) >= offset(t, commit) {
		t.Fatalf("position moved to %v while the publish of the transaction committed at %s was unacknowledged (was %v)", got, commit, before)
	}
	close(pub.gate)
	stacktest.Eventually(t, 5*time.Second, func() error {
		if got := f.saved(t); got.GTID == before.GTID && got.Pos == before.Pos {
			return fmt.Errorf("position still %v after the acknowledgement", got)
		}
		return nil
	})
	if _, keys := pub.snapshot(); !slices.Equal(keys, []string{"item:1", "item:2"}) {
		t.Fatalf("published %v, want item:1 item:2", keys)
	}
}

// A transaction bigger than max_batch_keys goes out in parts, and the
// position moves only once, after its last part.
func TestLargeTransactionFlushesInBoundedBatches(t *testing.T) {
	pub := &gatedPublisher{}
	f := start(t, pub, 10, "InnoDB")
	conn := stacktest.MySQL(t)
	stacktest.Exec(t, conn, "BEGIN")
	for i := 0; i < 10; i++ {
		var values string
		for j := 0; j < 10; j++ {
			if j > 0 {
				values += ","
			}
			values += fmt.Sprintf("(%d,'x')", i*10+j)
		}
		stacktest.Exec(t, conn, fmt.Sprintf("INSERT INTO %s.item VALUES %s", f.db, values))
	}
	stacktest.Exec(t, conn, "COMMIT")
	stacktest.Eventually(t, 5*time.Second, func() error {
		if _, keys := pub.snapshot(); len(keys) < 100 {
			return fmt.Errorf("%d of 100 keys published", len(keys))
		}
		return nil
	})
	calls, keys := pub.snapshot()
	if calls < 10 {
		t.Fatalf("100 keys went out in %d publishes, want at least 10 with max_batch_keys=10", calls)
	}
	slices.Sort(keys)
	if keys = slices.Compact(keys); len(keys) != 100 {
		t.Fatalf("%d distinct keys, want 100", len(keys))
	}
}

// A non-transactional table's transaction ends with a COMMIT query event,
// not an XID; its rows must still be published.
func TestNonTransactionalTableIsPublished(t *testing.T) {
	pub := &gatedPublisher{}
	f := start(t, pub, 1000, "MyISAM")
	conn := stacktest.MySQL(t)
	stacktest.Exec(t, conn, fmt.Sprintf("INSERT INTO %s.item VALUES (7,'m')", f.db))
	stacktest.Eventually(t, 5*time.Second, func() error {
		if _, keys := pub.snapshot(); !slices.Contains(keys, "item:7") {
			return fmt.Errorf("published %v, want item:7", keys)
		}
		return nil
	})
}

// offset is the binlog offset of "file:pos".
func offset(t *testing.T, pos string) uint64 {
	t.Helper()
	file, p, _ := strings.Cut(pos, ":")
	n, err := strconv.ParseUint(p, 10, 32)
	off, ok := invalidate.BinlogOffset(file, uint32(n))
	if err != nil || !ok {
		t.Fatalf("position %q is not file:pos", pos)
	}
	return off
}
