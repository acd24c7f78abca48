package canal_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/flashsync/flashsync/canal"
	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/prometheus/client_golang/prometheus"
)

func newLease(t *testing.T, addr, db string, ttl time.Duration) (*canal.Lease, *canal.MySQLCheckpoint) {
	t.Helper()
	l, cp, err := canal.NewLease(canal.LeaseOptions{MySQL: canal.Source{Addr: addr, User: "root"}, Database: db, Name: "test", TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l, cp
}

// One holder at a time; a holder that stops renewing (paused, partitioned)
// loses the lease to a standby after the TTL, stops considering itself
// valid before that, and its checkpoint writes are fenced off.
func TestLeaseTakeoverAndFencing(t *testing.T) {
	db := stacktest.NewDatabase(t)
	const ttl = 900 * time.Millisecond
	a, cpA := newLease(t, stacktest.MySQLAddr(), db, ttl)
	b, cpB := newLease(t, stacktest.MySQLAddr(), db, ttl)

	if ok, err := a.TryAcquire(); !ok || err != nil {
		t.Fatalf("a: %v %v", ok, err)
	}
	if ok, err := b.TryAcquire(); ok || err != nil {
		t.Fatalf("b took a held lease: %v %v", ok, err)
	}
	if err := cpA.Save(canal.Position{File: "f", Pos: 100}); err != nil {
		t.Fatal(err)
	}
	if err := cpB.Save(canal.Position{File: "f", Pos: 1}); err == nil {
		t.Fatal("a standby saved a checkpoint")
	}

	// a stops renewing, as if paused: b takes over after the TTL.
	start := time.Now()
	if err := b.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*ttl {
		t.Fatalf("takeover took %v with a %v TTL", took, ttl)
	}
	if b.Token() <= a.Token() {
		t.Fatalf("new term token %d not above the old %d", b.Token(), a.Token())
	}
	if a.Valid() {
		t.Fatal("the deposed holder still considers its lease valid")
	}
	if err := cpB.Save(canal.Position{File: "f", Pos: 200}); err != nil {
		t.Fatal(err)
	}
	// The deposed holder wakes up and tries to save an older position.
	if err := cpA.Save(canal.Position{File: "f", Pos: 150}); !errors.Is(err, canal.ErrLeaseLost) {
		t.Fatalf("deposed save: %v, want ErrLeaseLost", err)
	}
	if p, _, err := cpB.Load(); err != nil || p.Pos != 200 {
		t.Fatalf("checkpoint = %+v, %v; want pos 200", p, err)
	}
}

// Two canals on one source: one streams, the other waits; when the active
// one stops, the standby resumes from the shared checkpoint and nothing
// committed in between is missed. A deposed canal publishes nothing.
func TestStandbyResumesFromSharedCheckpoint(t *testing.T) {
	db := stacktest.NewDatabase(t)
	conn := stacktest.MySQL(t)
	stacktest.Exec(t, conn, "CREATE TABLE "+db+".item (id BIGINT PRIMARY KEY, name VARCHAR(50))")
	rules, err := invalidate.NewRules(rulesFor(db), []string{"g"})
	if err != nil {
		t.Fatal(err)
	}
	type node struct {
		pub  *gatedPublisher
		stop func()
	}
	startNode := func(serverID uint32) *node {
		l, cp := newLease(t, stacktest.MySQLAddr(), db+"_ha", time.Second)
		n := &node{pub: &gatedPublisher{}}
		c, err := canal.New(canal.Options{
			MySQL:         canal.Source{Addr: stacktest.MySQLAddr(), User: "root", Flavor: "mariadb", ServerID: serverID},
			IncludeTables: []string{db + `\..*`}, SaveInterval: 10 * time.Millisecond,
			Rules:      rules,
			Publisher:  n.pub,
			Registerer: prometheus.NewRegistry(),
			Lease:      l,
			Checkpoint: cp,
		})
		if err != nil {
			t.Fatal(err)
		}
		n.stop = stacktest.Run(t, fmt.Sprintf("canal %d", serverID), c.Run)
		return n
	}
	t.Cleanup(func() { stacktest.MySQL(t).Execute("DROP DATABASE IF EXISTS " + db + "_ha") })
	a := startNode(31001)
	b := startNode(31002)
	// The first leader saves its start position before streaming; changes
	// before that are not its to see.
	stacktest.Eventually(t, 10*time.Second, func() error {
		r, err := conn.Execute("SELECT COUNT(*) FROM " + db + "_ha.canal_checkpoint")
		if err != nil {
			return err
		}
		if n, _ := r.GetInt(0, 0); n == 0 {
			return errors.New("no checkpoint yet")
		}
		return nil
	})
	stacktest.Exec(t, conn, "INSERT INTO "+db+".item VALUES (1, 'one')")
	var active, standby *node
	stacktest.Eventually(t, 10*time.Second, func() error {
		_, ka := a.pub.snapshot()
		_, kb := b.pub.snapshot()
		switch {
		case len(ka) > 0 && len(kb) > 0:
			t.Fatalf("both canals published: %v / %v", ka, kb)
		case len(ka) > 0:
			active, standby = a, b
		case len(kb) > 0:
			active, standby = b, a
		default:
			return fmt.Errorf("nobody published item:1")
		}
		return nil
	})
	active.stop()
	if t.Failed() {
		t.FailNow()
	}
	stacktest.Exec(t, conn, "INSERT INTO "+db+".item VALUES (2, 'two')")
	stacktest.Eventually(t, 10*time.Second, func() error {
		_, keys := standby.pub.snapshot()
		for _, k := range []string{"item:2", "name:two"} {
			if !contains(keys, k) {
				return fmt.Errorf("standby has not published %s (has %v)", k, keys)
			}
		}
		return nil
	})
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
