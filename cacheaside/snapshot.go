package cacheaside

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/flashsync/flashsync/invalidate"
)

// LoadAtSnapshot reads a value for GetSynced: it runs read in a
// REPEATABLE READ transaction started WITH CONSISTENT SNAPSHOT on one
// connection of db, and returns the value with the binlog offset of that
// snapshot (MariaDB's Binlog_snapshot_file and Binlog_snapshot_position:
// every transaction in the binlog before it is in the snapshot, none after
// it). MariaDB only: MySQL has no such status.
func LoadAtSnapshot(ctx context.Context, db *sql.DB, read func(context.Context, *sql.Conn) ([]byte, error)) (v []byte, offset uint64, err error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("snapshot read: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"); err != nil {
		return nil, 0, fmt.Errorf("snapshot read: %w", err)
	}
	if _, err := conn.ExecContext(ctx, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"); err != nil {
		return nil, 0, fmt.Errorf("snapshot read: %w", err)
	}
	defer func() {
		if _, cerr := conn.ExecContext(context.WithoutCancel(ctx), "COMMIT"); cerr != nil && err == nil {
			err = fmt.Errorf("snapshot read: commit: %w", cerr)
		}
	}()
	if v, err = read(ctx, conn); err != nil {
		return nil, 0, err
	}
	rows, err := conn.QueryContext(ctx, "SHOW STATUS LIKE 'binlog_snapshot_%'")
	if err != nil {
		return nil, 0, fmt.Errorf("snapshot read: binlog position: %w", err)
	}
	defer rows.Close()
	var file, pos string
	for rows.Next() {
		var name, value string
		if err := rows.Scan(&name, &value); err != nil {
			return nil, 0, fmt.Errorf("snapshot read: binlog position: %w", err)
		}
		switch name {
		case "Binlog_snapshot_file":
			file = value
		case "Binlog_snapshot_position":
			pos = value
		}
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("snapshot read: binlog position: %w", err)
	}
	if file == "" {
		return nil, 0, errors.New("snapshot read: the server reports no Binlog_snapshot_file (MariaDB with log_bin needed)")
	}
	var p uint32
	if _, err := fmt.Sscan(pos, &p); err != nil {
		return nil, 0, fmt.Errorf("snapshot read: Binlog_snapshot_position %q: %w", pos, err)
	}
	off, ok := invalidate.BinlogOffset(file, p)
	if !ok {
		return nil, 0, fmt.Errorf("snapshot read: binlog file %q has no sequence number", file)
	}
	return v, off, nil
}
