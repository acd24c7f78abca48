package canal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/pingcap/tidb/pkg/parser"

	"github.com/flashsync/flashsync/invalidate"
)

// fatalError ends Run instead of reconnecting: retrying cannot fix it.
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }
func (e *fatalError) Unwrap() error { return e.err }

func fatal(format string, args ...any) error { return &fatalError{fmt.Errorf(format, args...)} }

// ErrPositionGone means the saved binlog position is no longer on the server.
var ErrPositionGone = errors.New("saved binlog position is no longer on the server")

// session is one connection's worth of streaming, from a saved position to
// an error or shutdown. Every new connection starts from the last
// acknowledged position with the schema saved with it, so a reconnect never
// needs the half-read transaction it dropped.
type session struct {
	c      *Canal
	pipe   *pipeline
	parser *parser.Parser
	schema *Schema
	file   string // current binlog file (setFile)
	// fileBase is file's binlog offset at position 0, parsed once per file
	// (fileOK: its name has a sequence number) rather than per event.
	fileBase uint64
	fileOK   bool
	gtid     string // GTID of the transaction being read
	// gset and pending, when the stream started from file:pos on MariaDB
	// (go-mysql tracks the executed set only from a GTID start): the set
	// at the last commit, and the GTID of the transaction being read.
	gset     *mysql.MariadbGTIDSet
	pending  *mysql.MariadbGTID
	serverID uint32 // the server's @@server_id, 0 if unknown
	epoch    uint32 // of the start position: every sync version's first field
	binder   binder
	unsigned unsignedCache
	// read is the binlog offset (invalidate.BinlogOffset) of the end of the
	// last event handled; the prober's heartbeats read it.
	read atomic.Uint64
}

// binder keeps each table's rules bound to the columns they were last bound
// to: a row event's column list rebinds only when it differs (DDL).
type binder struct {
	rules *invalidate.Rules
	bound map[string]boundTable
}

type boundTable struct {
	columns []string
	rules   *invalidate.Bound // nil: no rule for the table
}

func newBinder(rules *invalidate.Rules) binder {
	return binder{rules: rules, bound: map[string]boundTable{}}
}

func (b *binder) bind(table string, cols []string) (*invalidate.Bound, error) {
	if bt, ok := b.bound[table]; ok && slices.Equal(bt.columns, cols) {
		return bt.rules, nil
	}
	rules, err := b.rules.Bind(table, cols)
	if err != nil {
		return nil, err
	}
	b.bound[table] = boundTable{columns: cols, rules: rules}
	return rules, nil
}

// forget drops a table's binding (its schema changed).
func (b *binder) forget(table string) { delete(b.bound, table) }

func (c *Canal) syncerConfig() (replication.BinlogSyncerConfig, error) {
	// Decode rows only of tables that have rules: other rows cost one
	// header parse.
	cfg, err := newSyncerConfig(c.opts.MySQL, goMySQLLogger(c.opts.Logger), func(e *replication.RowsEvent, data []byte) error {
		pos, err := e.DecodeHeader(data)
		if err != nil {
			return err
		}
		if !c.ruled[string(e.Table.Schema)+"."+string(e.Table.Table)] {
			return nil
		}
		return e.DecodeData(pos, data)
	})
	// go-mysql's ReadTimeout sets a deadline on the socket before every
	// packet: 10% of the canal's CPU in a catch-up of single-row
	// statements, each two packets (table map and rows). The stream's
	// watchIdle finds a dead server instead, at one check a second.
	cfg.ReadTimeout = 0
	return cfg, err
}

// heartbeatPeriod is how often the server sends a heartbeat event on an
// idle stream.
const heartbeatPeriod = time.Second

// streamIdleLimit is how long a stream may bring no event, the server's
// heartbeats included, while the reader waits for one, before it is taken
// for dead and reconnected.
const streamIdleLimit = 10 * time.Second

// idleWatch tells a dead stream from a quiet one: the reader has waited
// (waiting) through limit of ticks without an event arriving (received). A
// reader that is busy, not waiting (the pipeline is full while NSQ is
// down, say), is not idle: the server is not asked for anything then.
type idleWatch struct {
	limit time.Duration
	last  uint64
	idle  time.Duration
}

// tick adds a tick's worth of time and says whether the stream is dead.
func (w *idleWatch) tick(d time.Duration, waiting bool, received uint64) bool {
	if received != w.last || !waiting {
		w.last, w.idle = received, 0
		return false
	}
	w.idle += d
	return w.idle >= w.limit
}

// watchIdle calls stop once w says the stream is dead, checking every tick.
func watchIdle(done <-chan struct{}, tick time.Duration, waiting *atomic.Bool, received *atomic.Uint64, stop func(error)) {
	w := idleWatch{limit: streamIdleLimit, last: received.Load()}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		if w.tick(tick, waiting.Load(), received.Load()) {
			stop(fmt.Errorf("binlog stream: no event for %v while waiting (the server sends a heartbeat every %v)", w.limit, heartbeatPeriod))
			return
		}
	}
}

// newSyncerConfig is the binlog client of the canal and of Replay: m's
// server and reader ID, decodeRows deciding which rows events are decoded.
func newSyncerConfig(m Source, logger *slog.Logger, decodeRows func(*replication.RowsEvent, []byte) error) (replication.BinlogSyncerConfig, error) {
	host, port, err := net.SplitHostPort(m.Addr)
	if err != nil {
		return replication.BinlogSyncerConfig{}, fmt.Errorf("mysql.addr: %w", err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return replication.BinlogSyncerConfig{}, fmt.Errorf("mysql.addr port: %w", err)
	}
	return replication.BinlogSyncerConfig{
		ServerID:        m.ServerID,
		Flavor:          m.Flavor,
		Host:            host,
		Port:            uint16(p),
		User:            m.User,
		Password:        m.Password,
		Charset:         "utf8mb4",
		HeartbeatPeriod: heartbeatPeriod,
		ReadTimeout:     streamIdleLimit,
		// Reconnects start over from the acknowledged position (Run).
		DisableRetrySync: true,
		// Events decoded ahead of the handler; with backpressure from the
		// pipeline this bounds what a huge transaction can hold in memory.
		EventCacheCount:     256,
		Logger:              logger,
		RowsEventDecodeFunc: decodeRows,
	}, nil
}

// stream reads from start until ctx ends or the stream fails, publishing
// through a fresh pipeline. It returns nil only when ctx ended.
func (c *Canal) stream(ctx context.Context, start Position) error {
	cfg, err := c.syncerConfig()
	if err != nil {
		return &fatalError{err}
	}
	syncer := replication.NewBinlogSyncer(cfg)
	defer syncer.Close()
	var streamer *replication.BinlogStreamer
	serverID, byPos := c.resumeByPosition(ctx, start)
	var gset *mysql.MariadbGTIDSet
	switch {
	case start.GTID != "" && byPos:
		set, perr := mysql.ParseMariadbGTIDSet(start.GTID)
		if perr != nil {
			return fatal("saved gtid %q: %w", start.GTID, perr)
		}
		gset = set.(*mysql.MariadbGTIDSet)
		c.log.Info("resuming by file:pos on the server that wrote it, not by gtid (which MariaDB finds by reading the binlog file from its start)", "server_id", serverID, "file", start.File, "pos", start.Pos)
		streamer, err = syncer.StartSync(mysql.Position{Name: start.File, Pos: start.Pos})
	case start.GTID != "":
		set, perr := mysql.ParseGTIDSet(c.opts.MySQL.Flavor, start.GTID)
		if perr != nil {
			return fatal("saved gtid %q: %w", start.GTID, perr)
		}
		streamer, err = syncer.StartSyncGTID(set)
	default:
		streamer, err = syncer.StartSync(mysql.Position{Name: start.File, Pos: start.Pos})
	}
	if err != nil {
		return classify(err, start)
	}

	// Publishing outlives ctx by DrainTimeout, so shutdown finishes the
	// batches in hand instead of replaying them.
	readCtx, stopReading := context.WithCancelCause(ctx)
	defer stopReading(nil)
	pubCtx, cancelPub := context.WithCancel(context.Background())
	defer cancelPub()
	stopDrain := context.AfterFunc(ctx, func() { time.AfterFunc(c.opts.DrainTimeout, cancelPub) })
	defer stopDrain()

	publish := c.opts.Publisher.Publish
	if l := c.opts.Lease; l != nil {
		// Fencing: a leader that was paused past its lease must not publish
		// after a standby took over.
		publish = func(ctx context.Context, b *invalidate.Batch, m invalidate.Meta) error {
			if !l.Valid() {
				return ErrLeaseLost
			}
			return c.opts.Publisher.Publish(ctx, b, m)
		}
	}
	s := &session{c: c, parser: parser.New(), schema: start.Schema, epoch: start.Epoch, binder: newBinder(c.opts.Rules), unsigned: unsignedCache{}, gset: gset, serverID: serverID}
	s.setFile(start.File)
	// Coverage starts at the checkpoint: every change before it was
	// published (and acknowledged) by an earlier session.
	var stream *invalidate.Stream
	startOffset, ok := invalidate.BinlogOffset(start.File, start.Pos)
	if start.Covered > 0 && start.Covered < startOffset {
		startOffset = start.Covered
	}
	if groups := len(c.opts.Rules.RedisGroups()); ok && groups > 0 {
		stream = invalidate.NewStream(groups, startOffset)
		s.read.Store(startOffset)
	} else if groups > 0 {
		c.log.Warn("binlog file name has no sequence number: no watermarks for the replicas", "file", start.File)
	}
	s.pipe = newPipeline(pubCtx, c.opts.Rules.NewBatch, c.opts.CoalesceWindow, c.opts.MaxBatchKeys, c.opts.MaxBatchBytes, stream,
		publish, c.ack, func(err error) { stopReading(err) })
	if stream != nil {
		probeCtx, stopProbe := context.WithCancel(readCtx)
		probed := make(chan struct{})
		defer func() { stopProbe(); <-probed }()
		go func() {
			defer close(probed)
			c.probe(probeCtx, s)
		}()
	}

	var waiting atomic.Bool
	var received atomic.Uint64
	watched := make(chan struct{})
	defer func() { stopReading(nil); <-watched }()
	go func() {
		defer close(watched)
		watchIdle(readCtx.Done(), time.Second, &waiting, &received, stopReading)
	}()

	var readErr error
	for {
		waiting.Store(true)
		ev, err := streamer.GetEvent(readCtx)
		waiting.Store(false)
		received.Add(1)
		if err != nil {
			readErr = err
			if cause := context.Cause(readCtx); cause != nil && ctx.Err() == nil {
				readErr = cause
			}
			break
		}
		if err := s.handle(ev); err != nil {
			readErr = err
			break
		}
	}
	pubErr := s.pipe.close()
	switch {
	case errors.Is(pubErr, ErrLeaseLost):
		return &fatalError{pubErr}
	case pubErr != nil && ctx.Err() == nil:
		return fmt.Errorf("publish: %w", pubErr)
	case ctx.Err() != nil:
		return nil
	}
	return classify(readErr, start)
}

// classify turns a server error into what Run should do with it.
func classify(err error, start Position) error {
	var myErr *mysql.MyError
	if errors.As(err, &myErr) {
		switch myErr.Code {
		case mysql.ER_MASTER_FATAL_ERROR_READING_BINLOG:
			return &fatalError{fmt.Errorf("%w: %s (server: %s)", ErrPositionGone, start, myErr.Message)}
		case 4052: // ER_SLAVE_SAME_ID (MariaDB)
			return fatal("another binlog reader uses this mysql.server_id: give every canal its own (%s)", myErr.Message)
		}
	}
	return err
}

func (s *session) handle(ev *replication.BinlogEvent) error {
	if err := s.event(ev); err != nil {
		return err
	}
	var off uint64
	var ok bool
	switch e := ev.Event.(type) {
	case *replication.RotateEvent:
		off, ok = s.offsetAt(uint32(e.Position)) // the next file's start
	case *replication.HeartbeatEvent, *replication.GenericEvent:
		return nil // no place in the stream
	default:
		if ev.Header.Timestamp == 0 || ev.Header.LogPos == 0 {
			return nil // the server's own announcements at the stream's start
		}
		off, ok = s.offsetAt(ev.Header.LogPos)
	}
	if ok && off > s.read.Load() {
		s.read.Store(off)
	}
	return nil
}

// setFile makes name the current binlog file.
func (s *session) setFile(name string) {
	s.file = name
	s.fileBase, s.fileOK = invalidate.BinlogOffset(name, 0)
}

// offsetAt is the binlog offset of pos in the current file, as
// invalidate.BinlogOffset has it.
func (s *session) offsetAt(pos uint32) (uint64, bool) {
	return s.fileBase | uint64(pos), s.fileOK
}

// offset is the binlog offset of the end of the event of h in the current
// file (0 when the file name has no sequence number: no coverage then).
func (s *session) offset(h *replication.EventHeader) uint64 {
	off, ok := s.offsetAt(h.LogPos)
	if !ok {
		return 0
	}
	return off
}

func (s *session) event(ev *replication.BinlogEvent) error {
	h := ev.Header
	switch e := ev.Event.(type) {
	case *replication.RotateEvent:
		// A rotate event with timestamp 0 is the server telling where the
		// stream starts; it carries no data.
		s.setFile(string(e.NextLogName))
	case *replication.MariadbGTIDEvent:
		s.gtid = e.GTID.String()
		if s.gset != nil {
			g := e.GTID
			s.pending = &g
		}
	case *replication.GTIDEvent:
		if next, err := e.GTIDNext(); err == nil {
			s.gtid = next.String()
		}
	case *replication.RowsEvent:
		return s.rows(h, e)
	case *replication.XIDEvent:
		s.commit(h, e.GSet)
	case *replication.QueryEvent:
		return s.query(h, e)
	}
	return nil
}

func (s *session) query(h *replication.EventHeader, e *replication.QueryEvent) error {
	q := strings.TrimSpace(string(e.Query))
	switch strings.ToUpper(q) {
	case "BEGIN", "ROLLBACK":
		return nil
	case "COMMIT":
		// Transactions on non-transactional tables end here, not with XID.
		s.commit(h, e.GSet)
		return nil
	}
	if !ddlStart.MatchString(q) {
		return nil
	}
	next, touched := s.schema.ApplyDDL(s.parser, string(e.Schema), q, s.c.accepts)
	if len(touched) > 0 {
		s.schema = next
		for _, t := range touched {
			s.binder.forget(t)
			if _, why := next.Columns(t); why != "" && s.c.ruled[t] {
				s.c.log.Warn("schema of a ruled table is uncertain after DDL; its rows need binlog column metadata", "table", t, "why", why)
			}
		}
		s.c.log.Info("schema change replayed", "tables", touched, "at", fmt.Sprintf("%s:%d", s.file, h.LogPos))
	}
	s.commit(h, e.GSet) // DDL commits implicitly
	return nil
}

func (s *session) commit(h *replication.EventHeader, gset mysql.GTIDSet) {
	pos := Position{File: s.file, Pos: h.LogPos, Flavor: s.c.opts.MySQL.Flavor, Schema: s.schema, Epoch: s.epoch, ServerID: s.serverID}
	if gset == nil && s.gset != nil {
		if s.pending != nil {
			// MariaDB's set holds each domain's last sequence, so adding
			// the committed transaction's GTID is the set after it.
			if err := s.gset.AddSet(s.pending); err != nil {
				s.c.log.Warn("gtid not added to the position's set", "gtid", s.pending.String(), "err", err)
			}
			s.pending = nil
		}
		gset = s.gset
	}
	if gset != nil {
		pos.GTID = gset.String()
	}
	s.c.transactions.Inc()
	if d := time.Now().Unix() - int64(h.Timestamp); d >= 0 {
		s.c.delay.Set(float64(d))
	}
	s.pipe.commitAt(pos, s.offset(h), invalidate.Meta{Pos: fmt.Sprintf("%s:%d", s.file, h.LogPos), GTID: s.gtid, CommitUnix: int64(h.Timestamp), Seen: time.Now()})
}

func (s *session) rows(h *replication.EventHeader, e *replication.RowsEvent) error {
	if e.Rows == nil {
		return nil // not decoded: the table has no rules
	}
	table := string(e.Table.Schema) + "." + string(e.Table.Table)
	action, ok := rowsAction(e)
	if !ok {
		return fatal("%s at %s:%d: unsupported rows event %s", table, s.file, h.LogPos, h.EventType)
	}
	cols := e.Table.ColumnNameString()
	if cols != nil {
		// binlog_row_metadata=FULL: the event names its columns; that is
		// certain, and it corrects the schema history.
		if known, why := s.schema.Columns(table); why != "" || !slices.Equal(known, cols) {
			s.schema = s.schema.withColumns(table, cols)
		}
	} else {
		var why string
		if cols, why = s.schema.Columns(table); why != "" {
			return fatal("rows of %s at %s:%d cannot be mapped to columns: %s; the binlog has no column names (set binlog_row_metadata=FULL), so flashsync stops rather than guess", table, s.file, h.LogPos, why)
		}
		if len(cols) != int(e.ColumnCount) {
			return fatal("rows of %s at %s:%d have %d columns but the schema history has %d (%s); stopping rather than guess (set binlog_row_metadata=FULL)", table, s.file, h.LogPos, e.ColumnCount, len(cols), strings.Join(cols, ", "))
		}
	}
	bound, err := s.binder.bind(table, cols)
	if err != nil {
		return &fatalError{err}
	}
	s.c.rowEvents.WithLabelValues(action.String()).Add(float64(rowChanges(action, e.Rows)))
	if bound == nil {
		return nil
	}
	if unsigned := s.unsigned.columns(e.Table); unsigned != nil {
		for _, row := range e.Rows {
			fixUnsigned(row, unsigned)
		}
	}
	offset := s.offset(h)
	version := &invalidate.SyncVersion{Epoch: s.epoch, Offset: offset}
	s.pipe.apply(offset, func(b *invalidate.Batch) { applyRows(bound, version, action, e.Rows, b) })
	return nil
}

// rowsAction is the action of a rows event; ok is false for a kind of rows
// event flashsync does not know.
func rowsAction(e *replication.RowsEvent) (a invalidate.Action, ok bool) {
	switch e.Type() {
	case replication.EnumRowsEventTypeInsert:
		return invalidate.Insert, true
	case replication.EnumRowsEventTypeUpdate:
		return invalidate.Update, true
	case replication.EnumRowsEventTypeDelete:
		return invalidate.Delete, true
	}
	return 0, false
}

// rowChanges is how many rows a rows event changes: an update's rows come
// in before/after pairs.
func rowChanges(action invalidate.Action, rows [][]any) int {
	if action == invalidate.Update {
		return len(rows) / 2
	}
	return len(rows)
}

// applyRows adds the targets of one rows event's rows to out. With a
// version (the event's; its Row is set here to the row's index in the
// event), sync targets write the rows; without (a replay of an old range,
// whose versions may predate a reset), they delete their keys.
func applyRows(bound *invalidate.Bound, version *invalidate.SyncVersion, action invalidate.Action, rows [][]any, out *invalidate.Batch) {
	apply := func(row int, before, after []any) {
		if version == nil {
			bound.ApplyRow(action, before, after, out)
			return
		}
		v := *version
		v.Row = uint32(row)
		bound.ApplyRowAt(v, action, before, after, out)
	}
	if action == invalidate.Update {
		for i := 0; i+1 < len(rows); i += 2 {
			apply(i/2, rows[i], rows[i+1])
		}
		return
	}
	for i, row := range rows {
		if action == invalidate.Insert {
			apply(i, nil, row)
		} else {
			apply(i, row, nil)
		}
	}
}

// unsignedCache keeps, per table map, the indexes of its unsigned integer
// columns: go-mysql's UnsignedMap builds a map for every rows event (6% of
// a catch-up's CPU, docs/BENCHMARKS.md), and the rows events of a table
// share its table map.
type unsignedCache map[uint64]*unsignedColumns

type unsignedColumns struct {
	types, signedness string // the table map's column types and signedness bitmap
	cols              []int
}

// columns returns t's unsigned columns, in order.
func (c unsignedCache) columns(t *replication.TableMapEvent) []int {
	if u := c[t.TableID]; u != nil && u.types == string(t.ColumnType) && u.signedness == string(t.SignednessBitmap) {
		return u.cols
	}
	var cols []int
	for i, unsigned := range t.UnsignedMap() {
		if unsigned {
			cols = append(cols, i)
		}
	}
	slices.Sort(cols)
	if len(c) >= 1024 { // table ids a long run of DDL left behind
		clear(c)
	}
	c[t.TableID] = &unsignedColumns{types: string(t.ColumnType), signedness: string(t.SignednessBitmap), cols: cols}
	return cols
}

// fixUnsigned reinterprets the signed integers go-mysql decodes for the
// unsigned columns cols, so ids above the signed range render right.
func fixUnsigned(row []any, cols []int) {
	for _, i := range cols {
		if i >= len(row) {
			continue
		}
		switch v := row[i].(type) {
		case int8:
			row[i] = uint8(v)
		case int16:
			row[i] = uint16(v)
		case int32:
			row[i] = uint32(v)
		case int64:
			row[i] = uint64(v)
		}
	}
}

// probe reads the server's binlog end every heartbeat interval and hands
// it to the pipeline with the time it was read: once the reader passes
// that end, every commit made before that time has been read, which is
// what the purgers' watermarks need to bound staleness. Each tick is also
// a heartbeat, so the watermarks of quiet groups move. A failed read is
// logged and retried on the next tick: the stream does not depend on it.
func (c *Canal) probe(ctx context.Context, s *session) {
	tick := time.NewTicker(c.opts.HeartbeatInterval)
	defer tick.Stop()
	var conn *client.Conn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	var lastErr string
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		at := time.Now()
		end, err := func() (uint64, error) {
			if conn == nil {
				var err error
				if conn, err = connect(ctx, c.opts.MySQL); err != nil {
					return 0, err
				}
			}
			end, err := binlogEnd(conn)
			if err != nil {
				conn.Close()
				conn = nil
			}
			return end, err
		}()
		if err != nil {
			if msg := err.Error(); msg != lastErr && ctx.Err() == nil {
				c.log.Warn("heartbeat: read the binlog end; watermarks hold until it answers", "err", err)
				lastErr = msg
			}
			continue
		}
		lastErr = ""
		c.heartbeats.Inc()
		s.pipe.beat(at, end, s.read.Load())
	}
}

// binlogEnd is the offset of the end of the server's binlog.
func binlogEnd(conn *client.Conn) (uint64, error) {
	r, err := conn.Execute("SHOW MASTER STATUS")
	if err != nil {
		return 0, fmt.Errorf("show master status: %w", err)
	}
	if r.RowNumber() == 0 {
		return 0, errors.New("show master status: no binlog (log_bin is off)")
	}
	file, err := r.GetString(0, 0)
	if err != nil {
		return 0, fmt.Errorf("show master status: %w", err)
	}
	pos, err := r.GetUint(0, 1)
	if err != nil {
		return 0, fmt.Errorf("show master status: %w", err)
	}
	off, ok := invalidate.BinlogOffset(file, uint32(pos))
	if !ok {
		return 0, fmt.Errorf("show master status: binlog file %q has no sequence number", file)
	}
	return off, nil
}

// resumeByPosition tells whether the stream from start may begin at its
// file:pos although it has a GTID, and the server's @@server_id (0 if it
// could not be read). It may on MariaDB when the position was saved
// reading this very server (its server_id) and the server still has the
// file, at least pos long: file:pos is then the same place as the GTID,
// found without MariaDB reading the file from its start. Anything else —
// another server (a failover), the file gone or shorter (a restore), the
// checks failing — resumes by GTID, as before.
func (c *Canal) resumeByPosition(ctx context.Context, start Position) (serverID uint32, ok bool) {
	if c.opts.MySQL.Flavor != mysql.MariaDBFlavor {
		return 0, false
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := connect(cctx, c.opts.MySQL)
	if err != nil {
		return 0, false
	}
	defer conn.Close()
	r, err := conn.Execute("SELECT @@GLOBAL.server_id")
	if err != nil {
		return 0, false
	}
	id, _ := r.GetUint(0, 0)
	serverID = uint32(id)
	if start.GTID == "" || start.ServerID == 0 || start.ServerID != serverID {
		return serverID, false
	}
	logs, err := conn.Execute("SHOW BINARY LOGS")
	if err != nil {
		return serverID, false
	}
	for i := range logs.RowNumber() {
		name, _ := logs.GetString(i, 0)
		size, _ := logs.GetUint(i, 1)
		if name == start.File {
			return serverID, size >= uint64(start.Pos)
		}
	}
	return serverID, false
}
