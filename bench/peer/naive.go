package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/redis/go-redis/v9"
)

// runNaive is the baseline daemon, run as a child of the bench (-naive-child)
// so that its CPU is read from /proc the same way as flashsync's: a bare
// go-mysql BinlogSyncer from file:pos, and per transaction (XID event) one
// pipeline of DELs of its rows' keys to each replica, one replica after the
// other. No NSQ, no acks, no position file: what a user writes in an
// afternoon, and the floor flashsync is compared with.
func runNaive(ctx context.Context, f flags) error {
	file, p, ok := strings.Cut(f.from, ":")
	pos, err := strconv.ParseUint(p, 10, 32)
	if !ok || err != nil {
		return fmt.Errorf("-from %q: want file:pos", f.from)
	}
	host, port, err := net.SplitHostPort(f.mysql)
	if err != nil {
		return fmt.Errorf("-mysql %s: %w", f.mysql, err)
	}
	portN, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return fmt.Errorf("-mysql %s: %w", f.mysql, err)
	}
	var rcs []*redis.Client
	for _, addr := range strings.Split(f.replicas, ",") {
		rc := redis.NewClient(&redis.Options{Addr: addr})
		defer rc.Close()
		rcs = append(rcs, rc)
	}
	syncer := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID: uint32(f.serverID),
		Flavor:   mysql.MariaDBFlavor,
		Host:     host,
		Port:     uint16(portN),
		User:     "root",
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	defer syncer.Close()
	streamer, err := syncer.StartSync(mysql.Position{Name: file, Pos: uint32(pos)})
	if err != nil {
		return fmt.Errorf("start sync at %s: %w", f.from, err)
	}
	// A row's before and after images name the same key: one DEL per key
	// and transaction, so that both daemons send rows x replicas DELs.
	keys := map[string]struct{}{}
	prefix := keyPrefix
	for {
		ev, err := streamer.GetEvent(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("binlog event: %w", err)
		}
		switch e := ev.Event.(type) {
		case *replication.RowsEvent:
			if string(e.Table.Schema) != f.db || string(e.Table.Table) != "item" {
				continue
			}
			for _, row := range e.Rows {
				if len(row) > 0 {
					keys[prefix+fmt.Sprint(row[0])] = struct{}{}
				}
			}
		case *replication.XIDEvent:
			if len(keys) == 0 {
				continue
			}
			for _, rc := range rcs {
				pipe := rc.Pipeline()
				for k := range keys {
					pipe.Del(ctx, k)
				}
				if _, err := pipe.Exec(ctx); err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return fmt.Errorf("del on %s: %w", rc.Options().Addr, err)
				}
			}
			clear(keys)
		}
	}
}
