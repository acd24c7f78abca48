package admin

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"time"
)

// sqlTable is one of the admin role's tables, <database>.<name> (the
// audit, the approvals, the tasks), created on first use: New dials
// nothing, so the first request or the task runner creates it.
type sqlTable struct {
	db       *sql.DB
	database string
	name     string
	// what names the table in errors; ddl is its CREATE TABLE body.
	what, ddl string

	mu    sync.Mutex
	ready bool // the database and the table exist
}

func newSQLTable(db *sql.DB, database, name, what, ddl string) sqlTable {
	return sqlTable{db: db, database: database, name: name, what: what, ddl: ddl}
}

func (t *sqlTable) table() string { return quote(t.database) + "." + t.name }

// ensure creates the database and the table unless this process already
// did (IF NOT EXISTS: several processes may race to).
func (t *sqlTable) ensure(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ready {
		return nil
	}
	for _, q := range []string{
		"CREATE DATABASE IF NOT EXISTS " + quote(t.database),
		"CREATE TABLE IF NOT EXISTS " + t.table() + " (" + t.ddl + ") ENGINE=InnoDB",
	} {
		if _, err := t.db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s table %s: %w", t.what, t.table(), err)
		}
	}
	t.ready = true
	return nil
}

// sqlTime is how the tables' DATETIME(6) columns are written (UTC) and
// read back (the DSN has no parseTime: they come as text).
const (
	sqlTimeWrite = "2006-01-02 15:04:05.000000"
	sqlTimeRead  = "2006-01-02 15:04:05.999999"
)

func sqlTime(t time.Time) string { return t.UTC().Format(sqlTimeWrite) }
