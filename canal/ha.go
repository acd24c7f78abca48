package canal

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sync"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
)

// Checkpoint stores the acknowledged position. A PositionFile keeps it on
// the canal's disk; a MySQLCheckpoint keeps it on the source server, where
// a standby canal on another machine finds it.
type Checkpoint interface {
	Load() (Position, bool, error)
	Save(Position) error
}

var (
	_ Checkpoint = (*PositionFile)(nil)
	_ Checkpoint = (*MySQLCheckpoint)(nil)
)

// ErrLeaseLost means another canal took over; this one must stop
// publishing and saving.
var ErrLeaseLost = errors.New("canal lease lost to another process")

var identRe = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)

// coordination owns one MySQL connection for the lease and the checkpoint:
// the go-mysql client is not safe for concurrent use.
type coordination struct {
	mu   sync.Mutex
	my   Source
	db   string
	conn *client.Conn
	// ready: the coordination tables exist (made on first use, not in
	// NewLease: nothing connects before Run).
	ready bool
}

// ensureLocked creates the database and tables once; c.mu is held and
// c.conn open.
func (c *coordination) ensureLocked() error {
	if c.ready {
		return nil
	}
	for _, q := range []string{
		"CREATE DATABASE IF NOT EXISTS " + c.db,
		"CREATE TABLE IF NOT EXISTS " + c.db + ".canal_lease (name VARCHAR(64) PRIMARY KEY, holder VARCHAR(255) NOT NULL, token BIGINT NOT NULL, expires_at DATETIME(6) NOT NULL) ENGINE=InnoDB",
		"CREATE TABLE IF NOT EXISTS " + c.db + ".canal_checkpoint (name VARCHAR(64) PRIMARY KEY, token BIGINT NOT NULL, position LONGTEXT NOT NULL, saved_at DATETIME(6) NOT NULL) ENGINE=InnoDB",
	} {
		if _, err := c.conn.Execute(q); err != nil {
			return fmt.Errorf("coordination tables: %w", err)
		}
	}
	c.ready = true
	return nil
}

func (c *coordination) exec(query string, args ...any) (rows [][]any, affected uint64, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for attempt := 0; attempt < 2; attempt++ {
		if c.conn == nil {
			if c.conn, err = connect(context.Background(), c.my); err != nil {
				return nil, 0, err
			}
		}
		if err = c.ensureLocked(); err != nil {
			c.conn.Close()
			c.conn = nil
			return nil, 0, err
		}
		r, err := c.conn.Execute(query, args...)
		if err == nil {
			defer r.Close()
			for i := range r.RowNumber() {
				row := make([]any, r.ColumnNumber())
				for j := range row {
					row[j], _ = r.GetValue(i, j)
				}
				rows = append(rows, row)
			}
			return rows, r.AffectedRows, nil
		}
		// A dropped connection is retried once on a new one.
		c.conn.Close()
		c.conn = nil
		if attempt == 1 {
			return nil, 0, err
		}
	}
	return nil, 0, nil
}

func (c *coordination) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// Lease is the right to be the active canal of one stream, held in a MySQL
// row with an expiry in the server's clock and a token that grows with
// every change of holder. The holder renews it every TTL/3 and considers it
// valid only until its last successful renewal plus TTL/2 in its own
// monotonic clock, so a paused holder stops itself before a standby can
// take over, and every checkpoint write is fenced by the token.
type Lease struct {
	coord  *coordination
	name   string
	holder string
	ttl    time.Duration

	closeOnce sync.Once

	mu         sync.Mutex
	token      int64
	validUntil time.Time
}

// Defaults of LeaseOptions (configs' defaults are these).
const (
	DefaultHAName     = "default"
	DefaultHADatabase = "flashsync"
	DefaultLeaseTTL   = 3 * time.Second
)

// LeaseOptions configure a Lease.
type LeaseOptions struct {
	MySQL    Source
	Database string // holds the lease and checkpoint tables
	Name     string // one per binlog source
	TTL      time.Duration
}

// NewLease checks the options; the first use connects and creates the
// coordination tables if missing.
func NewLease(opts LeaseOptions) (*Lease, *MySQLCheckpoint, error) {
	opts.Database = cmp.Or(opts.Database, DefaultHADatabase)
	opts.Name = cmp.Or(opts.Name, DefaultHAName)
	if opts.TTL == 0 {
		opts.TTL = DefaultLeaseTTL
	}
	if !identRe.MatchString(opts.Database) || !identRe.MatchString(opts.Name) {
		return nil, nil, fmt.Errorf("canal.ha_database %q and canal.ha_name %q must be 1-64 of [A-Za-z0-9_]", opts.Database, opts.Name)
	}
	if opts.TTL < 300*time.Millisecond {
		return nil, nil, fmt.Errorf("canal.lease_ttl %v is too short", opts.TTL)
	}
	host, _ := os.Hostname()
	coord := &coordination{my: opts.MySQL, db: opts.Database}
	l := &Lease{coord: coord, name: opts.Name, ttl: opts.TTL, holder: fmt.Sprintf("%s:%d:%d", host, os.Getpid(), time.Now().UnixNano())}
	return l, &MySQLCheckpoint{coord: coord, lease: l}, nil
}

// Holder identifies this process in the lease row.
func (l *Lease) Holder() string { return l.holder }

// Token is the fencing token of the current term.
func (l *Lease) Token() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.token
}

// Valid reports whether this process may act as the leader right now.
func (l *Lease) Valid() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.token != 0 && time.Now().Before(l.validUntil)
}

// TryAcquire takes the lease if it is free, expired or already ours.
func (l *Lease) TryAcquire() (bool, error) {
	start := time.Now()
	db := l.coord.db
	// One transaction on the coordination connection: lock the row,
	// decide, update.
	l.coord.mu.Lock()
	defer l.coord.mu.Unlock()
	if l.coord.conn == nil {
		var err error
		if l.coord.conn, err = connect(context.Background(), l.coord.my); err != nil {
			return false, err
		}
	}
	c := l.coord.conn
	fail := func(err error) (bool, error) {
		c.Execute("ROLLBACK")
		c.Close()
		l.coord.conn = nil
		return false, err
	}
	if err := l.coord.ensureLocked(); err != nil {
		return fail(err)
	}
	if _, err := c.Execute("BEGIN"); err != nil {
		return fail(err)
	}
	if _, err := c.Execute("INSERT IGNORE INTO "+db+".canal_lease (name, holder, token, expires_at) VALUES (?, '', 0, '1970-01-01 00:00:01')", l.name); err != nil {
		return fail(err)
	}
	r, err := c.Execute("SELECT holder, token, expires_at < NOW(6) FROM "+db+".canal_lease WHERE name = ? FOR UPDATE", l.name)
	if err != nil {
		return fail(err)
	}
	holder, _ := r.GetString(0, 0)
	token, _ := r.GetInt(0, 1)
	expired, _ := r.GetInt(0, 2)
	if holder != l.holder && expired != 1 {
		c.Execute("ROLLBACK")
		return false, nil
	}
	if holder != l.holder {
		token++ // a new term
	}
	if _, err := c.Execute("UPDATE "+db+".canal_lease SET holder = ?, token = ?, expires_at = NOW(6) + INTERVAL ? MICROSECOND WHERE name = ?",
		l.holder, token, l.ttl.Microseconds(), l.name); err != nil {
		return fail(err)
	}
	if _, err := c.Execute("COMMIT"); err != nil {
		return fail(err)
	}
	l.mu.Lock()
	l.token, l.validUntil = int64(token), start.Add(l.ttl/2)
	l.mu.Unlock()
	return true, nil
}

// Acquire waits until this process holds the lease or ctx ends.
func (l *Lease) Acquire(ctx context.Context) error {
	for {
		ok, err := l.TryAcquire()
		if ok {
			return nil
		}
		wait := l.ttl / 6
		if err != nil {
			wait = l.ttl / 3
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// Keep renews the lease every TTL/3 until ctx ends or the lease is lost;
// it returns ErrLeaseLost in the latter case.
func (l *Lease) Keep(ctx context.Context) error {
	tick := time.NewTicker(l.ttl / 3)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		start := time.Now()
		_, n, err := l.coord.exec("UPDATE "+l.coord.db+".canal_lease SET expires_at = NOW(6) + INTERVAL ? MICROSECOND WHERE name = ? AND holder = ? AND token = ?",
			l.ttl.Microseconds(), l.name, l.holder, l.Token())
		switch {
		case err == nil && n == 1:
			l.mu.Lock()
			l.validUntil = start.Add(l.ttl / 2)
			l.mu.Unlock()
		case err == nil:
			l.drop()
			return ErrLeaseLost
		case !l.Valid():
			return fmt.Errorf("%w: renewal failing: %v", ErrLeaseLost, err)
		}
	}
}

func (l *Lease) drop() {
	l.mu.Lock()
	l.validUntil = time.Time{}
	l.mu.Unlock()
}

// Release gives the lease up at once so a standby need not wait for expiry.
func (l *Lease) Release() {
	token := l.Token()
	l.drop()
	if token != 0 {
		l.coord.exec("UPDATE "+l.coord.db+".canal_lease SET expires_at = NOW(6) WHERE name = ? AND holder = ? AND token = ?", l.name, l.holder, token)
	}
}

// Close releases the lease and the connection.
func (l *Lease) Close() {
	// Once: a second Release would reconnect to MySQL only to release a
	// lease that is no longer ours.
	l.closeOnce.Do(func() {
		l.Release()
		l.coord.close()
	})
}

// MySQLCheckpoint keeps the position in the source server, written only by
// the lease holder of the current term.
type MySQLCheckpoint struct {
	coord *coordination
	lease *Lease
}

func (m *MySQLCheckpoint) Load() (Position, bool, error) {
	rows, _, err := m.coord.exec("SELECT position FROM "+m.coord.db+".canal_checkpoint WHERE name = ?", m.lease.name)
	if err != nil {
		return Position{}, false, fmt.Errorf("load checkpoint: %w", err)
	}
	if len(rows) == 0 {
		return Position{}, false, nil
	}
	var raw []byte
	switch v := rows[0][0].(type) {
	case []byte:
		raw = v
	case string:
		raw = []byte(v)
	}
	var p Position
	if err := json.Unmarshal(raw, &p); err != nil {
		return Position{}, false, fmt.Errorf("checkpoint %s: %w", m.lease.name, err)
	}
	return p, true, nil
}

// Save writes p if this process still holds the lease of its term: the
// write joins the lease row, so a deposed leader's save changes nothing.
func (m *MySQLCheckpoint) Save(p Position) error {
	if !m.lease.Valid() {
		return ErrLeaseLost
	}
	data, err := json.Marshal(p)
	if err != nil {
		return err
	}
	db, token := m.coord.db, m.lease.Token()
	if _, _, err := m.coord.exec("INSERT IGNORE INTO "+db+".canal_checkpoint (name, token, position, saved_at) SELECT name, token, ?, NOW(6) FROM "+db+".canal_lease WHERE name = ? AND holder = ? AND token = ?",
		string(data), m.lease.name, m.lease.holder, token); err != nil {
		return fmt.Errorf("save checkpoint: %w", err)
	}
	_, n, err := m.coord.exec("UPDATE "+db+".canal_checkpoint c JOIN "+db+".canal_lease l ON l.name = c.name SET c.position = ?, c.token = l.token, c.saved_at = NOW(6) WHERE c.name = ? AND l.holder = ? AND l.token = ?",
		string(data), m.lease.name, m.lease.holder, token)
	if err != nil {
		return fmt.Errorf("save checkpoint: %w", err)
	}
	if n == 0 {
		m.lease.drop()
		return ErrLeaseLost
	}
	return nil
}
