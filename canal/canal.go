// Package canal tails a MySQL or MariaDB binlog with go-mysql's canal and
// turns every row change of a ruled table into cache invalidations. The
// binlog position is checkpointed only after NSQ acknowledged every
// invalidation derived from the events before it.
package canal

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
	pingcaperrors "github.com/pingcap/errors"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/internal/retry"
	"github.com/flashsync/flashsync/invalidate"
)

// Publisher delivers a batch of invalidations and returns once they are
// durable in the queue.
type Publisher interface {
	Publish(ctx context.Context, b *invalidate.Batch, meta invalidate.Meta) error
}

var _ Publisher = (*invalidate.Publisher)(nil)

// Source is the MySQL or MariaDB server whose binlog a canal reads.
type Source struct {
	Addr     string
	User     string
	Password string
	// Flavor is mysql.MariaDBFlavor (default) or mysql.MySQLFlavor.
	Flavor string
	// ServerID identifies the reader to the server: two readers with one
	// ID kick each other off (error 4052).
	ServerID uint32
}

// Defaults of Options (configs' defaults are these).
const (
	DefaultFlavor         = mysql.MariaDBFlavor
	DefaultSaveInterval   = time.Second
	DefaultMaxBatchKeys   = 10000
	DefaultMaxBatchBytes  = 1 << 20
	DefaultCoalesceWindow = 2 * time.Millisecond
	// DefaultHeartbeatInterval is how often the canal reads the server's
	// binlog end and sends heartbeats: the granularity of the replicas'
	// watermarks (package purge).
	DefaultHeartbeatInterval = 100 * time.Millisecond
)

// Options configure a Canal.
type Options struct {
	MySQL Source
	// PositionFile is where the acknowledged position is saved unless
	// Checkpoint is set.
	PositionFile string
	// IncludeTables and ExcludeTables are regular expressions over
	// "db.table".
	IncludeTables, ExcludeTables []string
	// SaveInterval bounds how often the position is saved (default
	// DefaultSaveInterval); it is also saved on rotation, DDL and shutdown.
	SaveInterval time.Duration
	// MaxBatchKeys and MaxBatchBytes flush a large transaction's targets
	// before its commit (defaults DefaultMaxBatchKeys, DefaultMaxBatchBytes).
	MaxBatchKeys, MaxBatchBytes int
	// CoalesceWindow bounds how long commits gather in one batch while a
	// publish is in flight; 0 publishes each transaction on its own. It has
	// no default here (0 is meaningful): configs sets DefaultCoalesceWindow.
	CoalesceWindow time.Duration
	// HeartbeatInterval is how often the canal reads the server's binlog
	// end (SHOW MASTER STATUS, on a connection of its own) and sends every
	// Redis group a heartbeat: how far the binlog is read, and a time
	// before which every commit is read (default DefaultHeartbeatInterval).
	HeartbeatInterval time.Duration
	Rules             *invalidate.Rules
	Publisher         Publisher
	// DrainTimeout bounds how long shutdown waits for the batches being
	// published; past it they are replayed on the next start.
	DrainTimeout time.Duration
	// ResetToCurrent ignores the saved position and starts at the server's
	// current one: the recovery when the saved position is gone (error 1236).
	// OnReset runs after the current position is taken and before anything
	// is saved or read; it is where caches are flushed, so nothing changed
	// after that position can survive in them.
	ResetToCurrent bool
	OnReset        func(context.Context) error
	// Checkpoint stores the position; nil means the canal.position_file.
	Checkpoint Checkpoint
	// Lease, when set, makes this canal one of several for the source:
	// it streams only while it holds the lease, publishes only while the
	// lease is valid, and Checkpoint must be shared (a MySQLCheckpoint).
	Lease      *Lease
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Canal is the binlog-reading role.
type Canal struct {
	opts    Options
	store   Checkpoint
	log     *slog.Logger
	include []*regexp.Regexp
	exclude []*regexp.Regexp
	ruled   map[string]bool // tables with rules: only their rows are decoded

	rowEvents    *prometheus.CounterVec
	transactions prometheus.Counter
	delay        prometheus.Gauge
	saves        prometheus.Counter
	heartbeats   prometheus.Counter

	mu       sync.Mutex // guards the fields below
	acked    Position   // last position whose invalidations NSQ acknowledged
	haveAck  bool
	dirty    bool
	lastSave time.Time
	running  bool
	closed   bool
	state    string // standby, active, stopped
	cancel   context.CancelFunc
}

// New checks the options and registers metrics; it does not connect.
func New(opts Options) (*Canal, error) {
	switch {
	case opts.MySQL.Addr == "":
		return nil, errors.New("canal: mysql.addr is missing")
	case opts.MySQL.ServerID == 0:
		return nil, errors.New("canal: mysql.server_id is missing")
	case opts.PositionFile == "" && opts.Checkpoint == nil:
		return nil, errors.New("canal: canal.position_file is missing")
	case opts.Rules == nil:
		return nil, errors.New("canal: no rules")
	case opts.Publisher == nil:
		return nil, errors.New("canal: no publisher")
	}
	opts.MySQL.Flavor = cmp.Or(opts.MySQL.Flavor, DefaultFlavor)
	if opts.Checkpoint == nil {
		opts.Checkpoint = NewPositionFile(opts.PositionFile)
	}
	if opts.SaveInterval <= 0 {
		opts.SaveInterval = DefaultSaveInterval
	}
	if opts.MaxBatchKeys <= 0 {
		opts.MaxBatchKeys = DefaultMaxBatchKeys
	}
	if opts.MaxBatchBytes <= 0 {
		opts.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 5 * time.Second
	}
	if opts.HeartbeatInterval <= 0 {
		opts.HeartbeatInterval = DefaultHeartbeatInterval
	}
	opts.Logger = cmp.Or(opts.Logger, slog.Default())
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	c := &Canal{
		opts:  opts,
		store: opts.Checkpoint,
		log:   opts.Logger.With("role", "canal", "mysql", opts.MySQL.Addr),
		rowEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashsync_canal_row_events_total",
			Help: "Row changes read from the binlog for included tables, by action.",
		}, []string{"action"}),
		transactions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flashsync_canal_transactions_total",
			Help: "Transactions (XID events) read from the binlog.",
		}),
		delay: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flashsync_canal_binlog_delay_seconds",
			Help: "Now minus the timestamp of the last commit read (server clock, 1 s resolution).",
		}),
		saves: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flashsync_canal_position_saves_total",
			Help: "Binlog positions written to the position file.",
		}),
		heartbeats: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flashsync_canal_heartbeats_total",
			Help: "Heartbeat ticks: the server's binlog end read and a heartbeat handed to the Redis groups' watermarks.",
		}),
	}
	for _, expr := range opts.IncludeTables {
		re, err := regexp.Compile("^(?:" + expr + ")$")
		if err != nil {
			return nil, fmt.Errorf("canal.include_tables: %w", err)
		}
		c.include = append(c.include, re)
	}
	for _, expr := range opts.ExcludeTables {
		re, err := regexp.Compile("^(?:" + expr + ")$")
		if err != nil {
			return nil, fmt.Errorf("canal.exclude_tables: %w", err)
		}
		c.exclude = append(c.exclude, re)
	}
	c.ruled = map[string]bool{}
	for _, t := range opts.Rules.Tables() {
		if !c.accepts(t) {
			return nil, fmt.Errorf("rule table %s is not matched by canal.include_tables %q", t, opts.IncludeTables)
		}
		c.ruled[t] = true
	}
	for _, col := range []prometheus.Collector{c.rowEvents, c.transactions, c.delay, c.saves, c.heartbeats} {
		if err := opts.Registerer.Register(col); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return c, nil
}

// accepts reports whether the canal follows table ("db.table").
func (c *Canal) accepts(table string) bool {
	in := len(c.include) == 0
	for _, re := range c.include {
		if re.MatchString(table) {
			in = true
			break
		}
	}
	for _, re := range c.exclude {
		if re.MatchString(table) {
			return false
		}
	}
	return in
}

// Run checks the server, resumes from the saved position (or, on first
// start, the current one) and streams until ctx ends or a fatal error. A
// lost connection (the server restarting, say) is retried with backoff from
// the last acknowledged position. On the way out it finishes the batches
// being published (bounded by DrainTimeout) and saves the position.
//
// With a Lease, Run waits as a standby until it holds the lease, streams for
// as long as it keeps it, and goes back to standby when it loses it.
func (c *Canal) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.closed || c.running {
		c.mu.Unlock()
		return errors.New("canal: Run called twice or after Close")
	}
	c.running = true
	ctx, cancel := context.WithCancel(ctx)
	c.cancel = cancel
	c.mu.Unlock()
	defer cancel()

	defer c.setState("stopped")
	l := c.opts.Lease
	if l == nil {
		c.setState("active")
		return c.term(ctx)
	}
	defer l.Release()
	for {
		c.setState("standby")
		c.log.Info("canal standby: waiting for the lease", "holder", l.Holder())
		if err := l.Acquire(ctx); err != nil {
			return nil // ctx ended
		}
		c.setState("active")
		c.log.Info("canal lease acquired: active", "token", l.Token())
		termCtx, endTerm := context.WithCancelCause(ctx)
		kept := make(chan struct{})
		go func() {
			defer close(kept)
			if err := l.Keep(termCtx); err != nil {
				endTerm(err)
			}
		}()
		err := c.term(termCtx)
		lost := context.Cause(termCtx)
		endTerm(nil)
		<-kept
		l.Release()
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, ErrLeaseLost) || errors.Is(lost, ErrLeaseLost):
			c.log.Warn("canal lease lost: back to standby", "err", errors.Join(err, lost))
			c.mu.Lock()
			c.haveAck, c.dirty = false, false // the next term loads the shared checkpoint
			c.mu.Unlock()
		case err != nil:
			return err
		}
	}
}

// term is one stretch of streaming: Run without a lease, or one leadership
// term with it.
func (c *Canal) term(ctx context.Context) error {
	if err := Preflight(ctx, c.opts.MySQL); err != nil {
		return err
	}
	if err := c.start(ctx); err != nil {
		return err
	}
	saverCtx, stopSaver := context.WithCancel(ctx)
	saverDone := make(chan struct{})
	go func() {
		defer close(saverDone)
		tick := time.NewTicker(c.opts.SaveInterval)
		defer tick.Stop()
		for {
			select {
			case <-saverCtx.Done():
				return
			case <-tick.C:
				if err := c.saveAcked(); err != nil {
					c.log.Error("save position", "err", err)
				}
			}
		}
	}()
	defer func() { stopSaver(); <-saverDone }()

	// Exact delays (no jitter): one canal streams at a time, so there is no
	// herd to spread, and the restart tests allow 10 s for the reconnect.
	reconnect := retry.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}.New()
	for {
		from := c.lastAcked()
		c.log.Info("canal streaming", "from", from.String())
		began := time.Now()
		err := c.stream(ctx, from)
		saveErr := c.saveAcked()
		if ctx.Err() != nil {
			c.log.Info("canal stopped", "position", c.lastAcked().String())
			return saveErr
		}
		var fe *fatalError
		if errors.As(err, &fe) {
			if errors.Is(err, ErrPositionGone) {
				return fmt.Errorf("mysql %s: %w; recover with `flashsync canal -config <file> --reset-to-current --flush-all` (flushes every configured cache group, then continues from the current position)", c.opts.MySQL.Addr, err)
			}
			return fmt.Errorf("mysql %s: %w", c.opts.MySQL.Addr, err)
		}
		if time.Since(began) > time.Minute {
			reconnect.Reset() // the stream was good: a new outage starts over
		}
		next := reconnect.NextBackOff()
		c.log.Warn("binlog stream interrupted; reconnecting from the acknowledged position", "err", pingcaperrors.Cause(err), "backoff", next)
		select {
		case <-ctx.Done():
			return c.saveAcked()
		case <-time.After(next):
		}
	}
}

// Close stops a running canal; it is safe to call more than once.
func (c *Canal) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.cancel != nil {
		c.cancel()
	}
	return nil
}

func (c *Canal) setState(s string) {
	c.mu.Lock()
	c.state = s
	c.mu.Unlock()
}

// State is "active" while streaming, "standby" while waiting for the HA
// lease, "stopped" otherwise.
func (c *Canal) State() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == "" {
		return "stopped"
	}
	return c.state
}

// Position returns the last position whose invalidations NSQ acknowledged.
func (c *Canal) Position() Position { return c.lastAcked() }

func (c *Canal) lastAcked() Position {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.acked
}

// start sets the position to resume from: the saved one, or the server's
// current one on a first start or a reset, saved at once so that a crash
// before the first commit cannot move the start past changes made meanwhile.
// It also checks every rule against its table's current columns.
func (c *Canal) start(ctx context.Context) error {
	conn, err := connect(ctx, c.opts.MySQL)
	if err != nil {
		return err
	}
	defer conn.Close()
	current, err := LoadSchema(conn, c.accepts)
	if err != nil {
		return fmt.Errorf("mysql %s: %w", c.opts.MySQL.Addr, err)
	}
	if err := c.checkRules(current); err != nil {
		return err
	}
	pos, ok, err := c.store.Load()
	if err != nil {
		return err
	}
	if ok && !c.opts.ResetToCurrent {
		if pos.Flavor != "" && pos.Flavor != c.opts.MySQL.Flavor {
			return fmt.Errorf("position file %s was written for flavor %s, config says %s", c.opts.PositionFile, pos.Flavor, c.opts.MySQL.Flavor)
		}
		if err := checkStillThere(conn, pos); err != nil {
			return fmt.Errorf("mysql %s: %w; recover with `flashsync canal -config <file> --reset-to-current --flush-all` (flushes every configured cache group, then continues from the current position)", c.opts.MySQL.Addr, err)
		}
		if pos.Schema == nil {
			c.log.Warn("saved position has no schema history; using the current schema (tables altered since that position need binlog_row_metadata=FULL)")
			pos.Schema = current
		}
		if pos.Epoch == 0 { // saved before sync mode: no version was written yet
			pos.Epoch = newEpoch(time.Now(), 0)
		}
		c.setAcked(pos)
		c.log.Info("resuming from saved position", "position", pos.String())
		return nil
	}
	prev := pos.Epoch
	pos, err = currentPosition(conn, c.opts.MySQL.Flavor)
	if err != nil {
		return err
	}
	pos.Schema = current
	pos.Epoch = newEpoch(time.Now(), prev)
	if c.opts.ResetToCurrent && c.opts.OnReset != nil {
		if err := c.opts.OnReset(ctx); err != nil {
			return fmt.Errorf("reset: %w", err)
		}
	}
	c.setAcked(pos)
	if err := c.saveAcked(); err != nil {
		return err
	}
	if c.opts.ResetToCurrent {
		c.log.Warn("position reset to the server's current position", "position", pos.String())
	} else {
		c.log.Info("first start: beginning at the current position", "position", pos.String())
	}
	return nil
}

// checkRules binds every rule to its table's current columns, so a rule that
// names a missing table or column fails the start, not the first row.
func (c *Canal) checkRules(schema *Schema) error {
	for _, table := range c.opts.Rules.Tables() {
		cols, ok := schema.Tables[table]
		if !ok {
			return fmt.Errorf("rule table %s does not exist on %s", table, c.opts.MySQL.Addr)
		}
		if _, err := c.opts.Rules.Bind(table, cols); err != nil {
			return err
		}
	}
	return nil
}

func connect(ctx context.Context, m Source) (*client.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := client.ConnectWithContext(ctx, m.Addr, m.User, m.Password, "", 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("mysql %s: connect: %w", m.Addr, pingcaperrors.Cause(err))
	}
	return conn, nil
}

// checkStillThere catches a saved position the server cannot resume from
// but would accept without an error: after RESET MASTER or a restore from
// an older backup, MariaDB takes a GTID it has not reached yet and waits,
// while new transactions reuse lower sequence numbers and are skipped.
func checkStillThere(conn *client.Conn, pos Position) error {
	if pos.GTID != "" && pos.Flavor == mysql.MariaDBFlavor {
		r, err := conn.Execute("SELECT @@GLOBAL.gtid_binlog_pos")
		if err != nil {
			return fmt.Errorf("read gtid_binlog_pos: %w", err)
		}
		have, _ := r.GetString(0, 0)
		serverSeq := map[string]uint64{}
		for _, g := range strings.Split(have, ",") {
			if d, n, ok := splitGTID(g); ok {
				serverSeq[d] = n
			}
		}
		for _, g := range strings.Split(pos.GTID, ",") {
			d, n, ok := splitGTID(g)
			if ok && serverSeq[d] < n {
				return fmt.Errorf("%w: %s (the server's binlog ends at gtid %q: reset or restored)", ErrPositionGone, pos, have)
			}
		}
		return nil
	}
	if pos.GTID != "" {
		r, err := conn.Execute("SELECT GTID_SUBSET(?, @@GLOBAL.gtid_executed)", pos.GTID)
		if err != nil {
			return fmt.Errorf("check gtid: %w", err)
		}
		if ok, _ := r.GetInt(0, 0); ok != 1 {
			return fmt.Errorf("%w: %s (not in the server's gtid_executed: reset or restored)", ErrPositionGone, pos)
		}
		return nil
	}
	r, err := conn.Execute("SHOW BINARY LOGS")
	if err != nil {
		return fmt.Errorf("list binary logs: %w", err)
	}
	for i := range r.RowNumber() {
		name, _ := r.GetString(i, 0)
		size, _ := r.GetUint(i, 1)
		if name == pos.File {
			if uint64(pos.Pos) > size {
				return fmt.Errorf("%w: %s (the file is only %d bytes: reset or restored)", ErrPositionGone, pos, size)
			}
			return nil
		}
	}
	return fmt.Errorf("%w: %s (the file is no longer on the server)", ErrPositionGone, pos)
}

// splitGTID splits a MariaDB GTID "domain-server-seq" into domain and seq.
func splitGTID(g string) (domain string, seq uint64, ok bool) {
	parts := strings.Split(strings.TrimSpace(g), "-")
	if len(parts) != 3 {
		return "", 0, false
	}
	n, err := strconv.ParseUint(parts[2], 10, 64)
	return parts[0], n, err == nil
}

// currentPosition reads the server's binlog file, position and GTID set.
func currentPosition(conn *client.Conn, flavor string) (Position, error) {
	query := "SHOW MASTER STATUS"
	if flavor == mysql.MariaDBFlavor {
		query = "SHOW BINLOG STATUS"
	} else if cmp, err := mysql.CompareServerVersions(conn.GetServerVersion(), "8.4.0"); err == nil && cmp >= 0 {
		query = "SHOW BINARY LOG STATUS"
	}
	r, err := conn.Execute(query)
	if err != nil {
		return Position{}, fmt.Errorf("current binlog position: %w", err)
	}
	if r.RowNumber() == 0 {
		return Position{}, errors.New("current binlog position: the server reports none (is log_bin on?)")
	}
	file, _ := r.GetString(0, 0)
	pos, _ := r.GetInt(0, 1)
	p := Position{File: file, Pos: uint32(pos), Flavor: flavor}
	gq := "SELECT @@GLOBAL.gtid_executed"
	if flavor == mysql.MariaDBFlavor {
		gq = "SELECT @@GLOBAL.gtid_binlog_pos"
	}
	if g, err := conn.Execute(gq); err == nil {
		p.GTID, _ = g.GetString(0, 0)
	}
	if r, err := conn.Execute("SELECT @@GLOBAL.server_id"); err == nil {
		id, _ := r.GetUint(0, 0)
		p.ServerID = uint32(id)
	}
	return p, nil
}

func (c *Canal) setAcked(pos Position) {
	c.mu.Lock()
	c.acked, c.haveAck, c.dirty = pos, true, true
	c.mu.Unlock()
}

// ack records that everything up to p is acknowledged by NSQ; the saver
// writes it within SaveInterval.
func (c *Canal) ack(p Position) {
	c.mu.Lock()
	c.acked, c.haveAck, c.dirty = p, true, true
	c.mu.Unlock()
}

// saveAcked writes the acknowledged position if it changed.
func (c *Canal) saveAcked() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.haveAck || !c.dirty {
		return nil
	}
	p := c.acked
	p.SavedAt = time.Now().UTC()
	if err := c.store.Save(p); err != nil {
		return err
	}
	c.dirty = false
	c.lastSave = time.Now()
	c.saves.Inc()
	return nil
}

// Preflight connects to the server and checks that its binlog can drive
// invalidation: on, ROW format, FULL row image. Each failure is one line
// naming the setting.
func Preflight(ctx context.Context, m Source) error {
	conn, err := connect(ctx, m)
	if err != nil {
		return err
	}
	defer conn.Close()
	r, err := conn.Execute("SELECT @@GLOBAL.log_bin, @@GLOBAL.binlog_format, @@GLOBAL.binlog_row_image")
	if err != nil {
		return fmt.Errorf("mysql %s: read binlog settings: %w", m.Addr, pingcaperrors.Cause(err))
	}
	logBin, _ := r.GetInt(0, 0)
	format, _ := r.GetString(0, 1)
	image, _ := r.GetString(0, 2)
	switch {
	case logBin != 1:
		return fmt.Errorf("mysql %s: the binary log is off; start the server with log_bin (and binlog_format=ROW, binlog_row_image=FULL)", m.Addr)
	case !strings.EqualFold(format, "ROW"):
		return fmt.Errorf("mysql %s: binlog_format is %s; flashsync needs ROW (set binlog_format=ROW on the server)", m.Addr, format)
	case !strings.EqualFold(image, "FULL"):
		return fmt.Errorf("mysql %s: binlog_row_image is %s; flashsync needs FULL so updates carry whole before images (set binlog_row_image=FULL)", m.Addr, image)
	}
	return nil
}

// goMySQLLogger keeps go-mysql's warnings and errors; its info lines (every
// connection and rotation) only with debug logging.
func goMySQLLogger(l *slog.Logger) *slog.Logger {
	return slog.New(minLevel{l.Handler(), slog.LevelWarn}).With("component", "go-mysql")
}

// minLevel drops records below min, unless the wrapped handler wants debug.
type minLevel struct {
	slog.Handler
	min slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	if h.Handler.Enabled(ctx, slog.LevelDebug) {
		return true
	}
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{h.Handler.WithAttrs(as), h.min}
}

func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{h.Handler.WithGroup(name), h.min}
}
