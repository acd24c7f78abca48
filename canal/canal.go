// Package canal tails a MySQL or MariaDB binlog with go-mysql's canal and
// turns every row change of a ruled table into cache invalidations. The
// binlog position is checkpointed only after NSQ acknowledged every
// invalidation derived from the events before it.
package canal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	gocanal "github.com/go-mysql-org/go-mysql/canal"
	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/schema"
	pingcaperrors "github.com/pingcap/errors"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/invalidate"
)

// Publisher delivers a batch of invalidations and returns once they are
// durable in the queue.
type Publisher interface {
	Publish(ctx context.Context, b *invalidate.Batch, meta invalidate.Meta) error
}

var _ Publisher = (*invalidate.Publisher)(nil)

// Options configure a Canal.
type Options struct {
	MySQL     configs.MySQL
	Canal     configs.Canal
	Rules     *invalidate.Rules
	Publisher Publisher
	// DrainTimeout bounds how long shutdown waits for the transaction being
	// published; past it the transaction is replayed on the next start.
	DrainTimeout time.Duration
	Logger       *slog.Logger
	Registerer   prometheus.Registerer
}

// Canal is the binlog-reading role.
type Canal struct {
	opts  Options
	store *PositionFile
	log   *slog.Logger

	rowEvents    *prometheus.CounterVec
	transactions prometheus.Counter
	delay        prometheus.Gauge
	saves        prometheus.Counter

	mu       sync.Mutex // guards the fields below
	acked    Position   // last position whose invalidations NSQ acknowledged
	haveAck  bool
	dirty    bool
	lastSave time.Time
	running  bool
	closed   bool
	cancel   context.CancelFunc
}

// New checks the options and registers metrics; it does not connect.
func New(opts Options) (*Canal, error) {
	switch {
	case opts.MySQL.Addr == "":
		return nil, errors.New("canal: mysql.addr is missing")
	case opts.MySQL.ServerID == 0:
		return nil, errors.New("canal: mysql.server_id is missing")
	case opts.Canal.PositionFile == "":
		return nil, errors.New("canal: canal.position_file is missing")
	case opts.Rules == nil:
		return nil, errors.New("canal: no rules")
	case opts.Publisher == nil:
		return nil, errors.New("canal: no publisher")
	}
	if opts.MySQL.Flavor == "" {
		opts.MySQL.Flavor = mysql.MariaDBFlavor
	}
	if opts.Canal.SaveInterval <= 0 {
		opts.Canal.SaveInterval = time.Second
	}
	if opts.Canal.MaxBatchKeys <= 0 {
		opts.Canal.MaxBatchKeys = 10000
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	c := &Canal{
		opts:  opts,
		store: NewPositionFile(opts.Canal.PositionFile),
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
	}
	for _, col := range []prometheus.Collector{c.rowEvents, c.transactions, c.delay, c.saves} {
		if err := opts.Registerer.Register(col); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return c, nil
}

// Run checks the server, resumes from the saved position (or, on first
// start, the current one) and streams until ctx ends or the stream fails.
// On the way out it finishes the transaction being published (bounded by
// DrainTimeout) and saves the position.
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

	if err := Preflight(ctx, c.opts.MySQL); err != nil {
		return err
	}
	gc, err := gocanal.NewCanal(c.canalConfig())
	if err != nil {
		return fmt.Errorf("mysql %s: %w", c.opts.MySQL.Addr, err)
	}
	defer gc.Close()
	if err := c.checkRules(gc); err != nil {
		return err
	}
	start, err := c.startPosition(gc)
	if err != nil {
		return err
	}

	// Publishing outlives ctx by DrainTimeout so that a shutdown finishes the
	// transaction in hand instead of replaying it.
	pubCtx, cancelPub := context.WithCancel(context.Background())
	defer cancelPub()
	h := &handler{c: c, ctx: pubCtx, batch: invalidate.NewBatch(len(c.opts.Rules.Groups())), bound: map[string]boundTable{}}
	gc.SetEventHandler(h)

	done := make(chan error, 1)
	go func() {
		if start.GTID != "" {
			set, err := mysql.ParseGTIDSet(c.opts.MySQL.Flavor, start.GTID)
			if err != nil {
				done <- fmt.Errorf("saved gtid %q: %w", start.GTID, err)
				return
			}
			done <- gc.StartFromGTID(set)
			return
		}
		done <- gc.RunFrom(mysql.Position{Name: start.File, Pos: start.Pos})
	}()
	c.log.Info("canal streaming", "from", start.String(), "include", c.opts.Canal.IncludeTables)

	tick := time.NewTicker(c.opts.Canal.SaveInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			drain := time.AfterFunc(c.opts.DrainTimeout, cancelPub)
			gc.Close()
			<-done
			drain.Stop()
			if err := c.saveAcked(); err != nil {
				return err
			}
			c.log.Info("canal stopped", "position", c.lastAcked().String())
			return nil
		case err := <-done:
			gc.Close()
			saveErr := c.saveAcked()
			if err == nil {
				err = errors.New("binlog stream ended")
			}
			return errors.Join(fmt.Errorf("mysql %s: binlog stream: %w", c.opts.MySQL.Addr, pingcaperrors.Cause(err)), saveErr)
		case <-tick.C:
			if err := c.saveAcked(); err != nil {
				c.log.Error("save position", "err", err)
			}
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

// Position returns the last position whose invalidations NSQ acknowledged.
func (c *Canal) Position() Position { return c.lastAcked() }

func (c *Canal) lastAcked() Position {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.acked
}

func (c *Canal) canalConfig() *gocanal.Config {
	cfg := gocanal.NewDefaultConfig()
	cfg.Addr = c.opts.MySQL.Addr
	cfg.User = c.opts.MySQL.User
	cfg.Password = c.opts.MySQL.Password
	cfg.Flavor = c.opts.MySQL.Flavor
	cfg.ServerID = c.opts.MySQL.ServerID
	cfg.IncludeTableRegex = c.opts.Canal.IncludeTables
	cfg.ExcludeTableRegex = c.opts.Canal.ExcludeTables
	cfg.Dump.ExecutionPath = "" // binlog only: flashsync invalidates, it never copies data
	cfg.HeartbeatPeriod = time.Second
	cfg.ReadTimeout = 10 * time.Second
	// go-mysql logs every connection and rotation at info; keep its
	// warnings and errors unless debug logging is on.
	cfg.Logger = slog.New(minLevel{c.opts.Logger.Handler(), slog.LevelWarn}).With("component", "go-mysql")
	return cfg
}

// checkRules binds every rule to its table's current columns, so a rule that
// names a missing table or column fails the start, not the first row.
func (c *Canal) checkRules(gc *gocanal.Canal) error {
	for _, table := range c.opts.Rules.Tables() {
		db, name, _ := strings.Cut(table, ".")
		t, err := gc.GetTable(db, name)
		switch cause := pingcaperrors.Cause(err); {
		case cause == gocanal.ErrExcludedTable:
			return fmt.Errorf("rule table %s is not matched by canal.include_tables %q", table, c.opts.Canal.IncludeTables)
		case cause == schema.ErrTableNotExist:
			return fmt.Errorf("rule table %s does not exist on %s", table, c.opts.MySQL.Addr)
		case err != nil:
			return fmt.Errorf("rule table %s: %w", table, err)
		}
		if _, err := c.opts.Rules.Bind(table, columnNames(t)); err != nil {
			return err
		}
	}
	return nil
}

// startPosition returns the saved position or, on the first start, the
// server's current one, which it saves at once: a crash before the first
// commit must not move the start past changes made meanwhile.
func (c *Canal) startPosition(gc *gocanal.Canal) (Position, error) {
	pos, ok, err := c.store.Load()
	if err != nil {
		return Position{}, err
	}
	if ok {
		if pos.Flavor != "" && pos.Flavor != c.opts.MySQL.Flavor {
			return Position{}, fmt.Errorf("position file %s was written for flavor %s, config says %s", c.opts.Canal.PositionFile, pos.Flavor, c.opts.MySQL.Flavor)
		}
		c.setAcked(pos)
		c.log.Info("resuming from saved position", "position", pos.String())
		return pos, nil
	}
	mpos, err := gc.GetMasterPos()
	if err != nil {
		return Position{}, fmt.Errorf("mysql %s: current binlog position: %w", c.opts.MySQL.Addr, err)
	}
	pos = Position{File: mpos.Name, Pos: mpos.Pos, Flavor: c.opts.MySQL.Flavor}
	if set, err := gc.GetMasterGTIDSet(); err == nil && set != nil {
		pos.GTID = set.String()
	}
	c.setAcked(pos)
	if err := c.saveAcked(); err != nil {
		return Position{}, err
	}
	c.log.Info("first start: beginning at the current position", "position", pos.String())
	return pos, nil
}

func (c *Canal) setAcked(pos Position) {
	c.mu.Lock()
	c.acked, c.haveAck, c.dirty = pos, true, true
	c.mu.Unlock()
}

// ack records that everything up to pos is acknowledged and saves it when
// force is set or SaveInterval has passed since the last save.
func (c *Canal) ack(pos mysql.Position, set mysql.GTIDSet, force bool) error {
	p := Position{File: pos.Name, Pos: pos.Pos, Flavor: c.opts.MySQL.Flavor}
	if set != nil {
		p.GTID = set.String()
	}
	c.mu.Lock()
	c.acked, c.haveAck, c.dirty = p, true, true
	due := force || time.Since(c.lastSave) >= c.opts.Canal.SaveInterval
	c.mu.Unlock()
	if due {
		return c.saveAcked()
	}
	return nil
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

func columnNames(t *schema.Table) []string {
	names := make([]string, len(t.Columns))
	for i, col := range t.Columns {
		names[i] = col.Name
	}
	return names
}

// Preflight connects to the server and checks that its binlog can drive
// invalidation: on, ROW format, FULL row image. Each failure is one line
// naming the setting.
func Preflight(ctx context.Context, m configs.MySQL) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := client.ConnectWithContext(ctx, m.Addr, m.User, m.Password, "", 10*time.Second)
	if err != nil {
		return fmt.Errorf("mysql %s: connect: %w", m.Addr, pingcaperrors.Cause(err))
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
