package cacheaside_test

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/cacheaside"
	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
)

// masterOffset is the server's binlog end as an offset.
func masterOffset(t *testing.T, db *sql.DB) uint64 {
	t.Helper()
	var file, pos string
	var doDB, ignoreDB []byte
	if err := db.QueryRow("SHOW MASTER STATUS").Scan(&file, &pos, &doDB, &ignoreDB); err != nil {
		t.Fatal(err)
	}
	var p uint32
	if _, err := fmt.Sscan(pos, &p); err != nil {
		t.Fatal(err)
	}
	off, ok := invalidate.BinlogOffset(file, p)
	if !ok {
		t.Fatalf("binlog file %q", file)
	}
	return off
}

// A snapshot read returns the binlog offset its snapshot stands at: after
// every commit before it, before every commit after it.
func TestLoadAtSnapshot(t *testing.T) {
	dbName := stacktest.NewDatabase(t)
	db := stacktest.SQLDB(t, dbName)
	if _, err := db.Exec("CREATE TABLE item (id INT PRIMARY KEY, price INT)"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("INSERT INTO item VALUES (1, 10)"); err != nil {
		t.Fatal(err)
	}
	before := masterOffset(t, db)
	ctx := context.Background()
	var after uint64
	v, off, err := cacheaside.LoadAtSnapshot(ctx, db, func(ctx context.Context, c *sql.Conn) ([]byte, error) {
		// A commit after the snapshot began is neither seen nor counted.
		if _, err := db.Exec("UPDATE item SET price = 11 WHERE id = 1"); err != nil {
			return nil, err
		}
		after = masterOffset(t, db)
		var price int
		if err := c.QueryRowContext(ctx, "SELECT price FROM item WHERE id = 1").Scan(&price); err != nil {
			return nil, err
		}
		return []byte(fmt.Sprint(price)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if string(v) != "10" || off != before || after <= off {
		t.Errorf("read %q at offset %d; the binlog was at %d before and %d after the update, want 10 at %d", v, off, before, after, before)
	}
}

// GetSynced fills a synced key with its version at the read's offset, in
// the replica's sync epoch; Get serves such a key from MySQL and fills
// nothing; without an epoch or version, GetSynced fills the value alone.
func TestGetSyncedFillsWithTheReadsVersion(t *testing.T) {
	_, g := group(t, 1)
	c := g.Replicas[0]
	r := newReader(t, cacheaside.Options{Groups: []cacheaside.Group{g}})
	ctx := context.Background()
	const off = 1<<32 | 777
	loads := 0
	at := func(context.Context) ([]byte, uint64, error) { loads++; return []byte("row"), off, nil }
	plain := func(context.Context) ([]byte, error) { loads++; return []byte("row"), nil }

	// No sync write has reached the replica: the value alone.
	if v, res, err := r.GetSynced(ctx, "k0", "1", at); err != nil || string(v) != "row" || res != cacheaside.Filled {
		t.Fatalf("GetSynced k0 = %q, %v, %v", v, res, err)
	}
	if n := c.Exists(ctx, invalidate.SyncVersionPrefix+"k0").Val(); n != 0 {
		t.Errorf("version written without an epoch")
	}

	// A tombstoned key (version, no value), epoch 7 in the replica.
	tomb := invalidate.SyncVersion{Epoch: 7, Offset: 1<<32 | 500}
	for k, v := range map[string]string{invalidate.SyncEpochKey: "0000000008", invalidate.SyncVersionPrefix + "k1": tomb.String()} {
		if err := c.Set(ctx, k, v, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if v, res, err := r.Get(ctx, "k1", "1", plain); err != nil || string(v) != "row" || res != cacheaside.Loaded {
		t.Fatalf("Get of a synced key = %q, %v, %v; want loaded", v, res, err)
	}
	if stored(t, c, "k1") != "" {
		t.Fatal("Get filled a synced key")
	}
	if v, res, err := r.GetSynced(ctx, "k1", "1", at); err != nil || string(v) != "row" || res != cacheaside.Filled {
		t.Fatalf("GetSynced k1 = %q, %v, %v", v, res, err)
	}
	want := invalidate.SyncVersion{Epoch: 8, Offset: off, Row: 1<<32 - 1}.String()
	if got := c.Get(ctx, invalidate.SyncVersionPrefix+"k1").Val(); got != want {
		t.Errorf("version after the fill %q, want %q (the replica's epoch, the read's offset, every row)", got, want)
	}
	if stored(t, c, "k1") != "row" {
		t.Errorf("k1 holds %q", stored(t, c, "k1"))
	}
	// A hit: no load.
	n := loads
	if _, res, err := r.GetSynced(ctx, "k1", "1", at); err != nil || res != cacheaside.Hit || loads != n {
		t.Errorf("second GetSynced: %v, %v, %d loads", res, err, loads-n)
	}
}

// Reads that would each load MySQL without filling (here: no replica has
// a watermark, so every read bypasses) share one load of a key while it
// runs: when a hot key's replicas all stall, its readers cost MySQL one
// read, not one each. Every read either ran a load or took a running one.
func TestBypassedReadsShareALoad(t *testing.T) {
	_, g := bareGroup(t, 2)
	reg := prometheus.NewRegistry()
	r := newReader(t, cacheaside.Options{Groups: []cacheaside.Group{g}, Registerer: reg})
	const readers = 20
	skipped := func() float64 {
		return stacktest.MetricValue(t, reg, "flashsync_cacheaside_replica_skips_total", map[string]string{"reason": "no_watermark"})
	}
	var loads atomic.Int64
	load := func(ctx context.Context) ([]byte, error) {
		loads.Add(1)
		// Hold the load until every reader has given up on the replicas
		// (2 skips each): they are then joining it, or about to.
		deadline := time.Now().Add(10 * time.Second)
		for skipped() < 2*readers && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		return []byte("row"), nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, res, err := r.Get(context.Background(), "hot", "1", load)
			if err == nil && (string(v) != "row" || res != cacheaside.Bypassed) {
				err = fmt.Errorf("read %q, %v; want row, bypassed", v, res)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	shared := stacktest.MetricValue(t, reg, "flashsync_cacheaside_shared_loads_total", nil)
	if n := loads.Load(); n+int64(shared) != readers || n >= readers {
		t.Errorf("%d loads and %v shared for %d reads: want every read to load or share, and fewer loads than reads", n, shared, readers)
	}
}
