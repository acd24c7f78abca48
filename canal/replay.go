package canal

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/flashsync/flashsync/invalidate"
)

// ErrStartGone is wrapped by Replay's error when the range starts before the
// oldest binlog the server still has (purged, or never written).
var ErrStartGone = errors.New("replay start is no longer on the server")

// ReplayTimeSlack is how far past a time To a replay keeps reading. A
// transaction's binlog timestamp is when the statement that committed it
// started (MariaDB stamps the GTID event with it: the COMMIT of an explicit
// transaction, the statement itself in autocommit), so a statement that ran
// across To commits after transactions stamped at or after To. Reading on
// until the first transaction of a replayed table stamped at or after
// To+ReplayTimeSlack finds every such statement that ran for less than the
// slack.
const ReplayTimeSlack = time.Minute

// progressInterval bounds how often Replay calls Progress.
const progressInterval = 100 * time.Millisecond

// ReplayBound is one end of a replay range: a binlog position (File set),
// or a time (Time set), never both.
type ReplayBound struct {
	// File and Pos: From starts reading there, To stops there (a Pos of 0
	// or 4 is the file's start). The range holds the transactions that
	// begin at or after From and end at or before To: one that From or To
	// cuts is left out.
	File string
	Pos  uint32
	// Time selects transactions by their binlog timestamp (whole seconds:
	// the start of the statement that committed them, see ReplayTimeSlack):
	// From takes those stamped at or after it, To those stamped before it
	// (a fraction of a second rounds either up). A time From starts reading
	// at the newest binlog created at or before it; a time To reads until
	// the first transaction that changes a replayed table stamped at or
	// after To+ReplayTimeSlack, or the server's position when Replay
	// started, whichever comes first.
	Time time.Time
}

// ReplayOptions configure Replay.
type ReplayOptions struct {
	// MySQL is the server; its ServerID must be no canal's (two binlog
	// readers with one ID kick each other off).
	MySQL Source
	// From is required; a zero To is the server's position when Replay
	// starts.
	From, To ReplayBound
	// Tables limits the replay to some "db.table"s that have rules; empty:
	// every table with rules.
	Tables []string
	Rules  *invalidate.Rules
	// MaxBatchKeys bounds the keys (and URLs, tags) of one Publish (default
	// DefaultMaxBatchKeys); a batch ends on a transaction boundary, so a
	// transaction with more targets than that goes out whole, alone.
	MaxBatchKeys int
	// Publish publishes the targets of the whole transactions read since
	// the last call; after is the position past the last transaction read
	// (everything before it is published), where a replay resumes (From) to
	// continue. An error ends the replay. b is not used after Publish
	// returns.
	Publish func(ctx context.Context, b *invalidate.Batch, after Position) error
	// Progress, set, is told the bytes of the range read and its total, at
	// most every 100 ms, and once more when the range is read, with read ==
	// total. The total comes from the sizes of the server's binlogs; when a
	// time To ends the range before the end position, the last call's total
	// is the bytes up to End.
	Progress func(read, total int64)
	Logger   *slog.Logger
}

// ReplayResult summarises a replay.
type ReplayResult struct {
	// Transactions and Rows count the transactions in range that changed
	// rows of the replayed tables, and those row changes (an update is one).
	// With an error they count what was published.
	Transactions, Rows    int64
	BytesRead, BytesTotal int64
	// End is the position past the last transaction read; with an error,
	// past the last one published, where a replay resumes.
	End Position
}

// Replay re-reads the binlog between From and To with the current rules and
// publishes what they render, as the canal would have; it returns when the
// range is read, ctx ends, or Publish fails.
//
// Rows are mapped to columns by the names the binlog carries
// (binlog_row_metadata=FULL), so a DDL inside the range is no problem.
// Without them the table's current columns are used when their number
// matches the row's; otherwise Replay fails naming the table and position.
func Replay(ctx context.Context, opts ReplayOptions) (ReplayResult, error) {
	r, err := newReplay(opts)
	if err != nil {
		return ReplayResult{}, fmt.Errorf("replay: %w", err)
	}
	if err := r.plan(ctx); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("stopped: %w", ctx.Err())
		}
		return ReplayResult{}, fmt.Errorf("replay: %w", err)
	}
	res, err := r.read(ctx)
	if err != nil {
		return res, fmt.Errorf("replay from %s to %s: %w", r.from, r.to, err)
	}
	return res, nil
}

// replay is one Replay call: its checked options, then its plan.
type replay struct {
	opts ReplayOptions
	log  *slog.Logger
	want map[string]bool // the replayed tables

	// Set by plan.
	cfg      replication.BinlogSyncerConfig
	files    []binlogFile
	index    map[string]int // file name to its index in files
	starts   map[int]time.Time
	current  map[string][]string // replayed tables' columns now
	span     binlogSpan
	from, to Position
	warned   map[string]bool // tables mapped with their current columns
}

func newReplay(opts ReplayOptions) (*replay, error) {
	switch {
	case opts.MySQL.Addr == "":
		return nil, errors.New("mysql addr is missing")
	case opts.MySQL.ServerID == 0:
		return nil, errors.New("mysql server id is missing (the replay needs one no canal uses)")
	case opts.Rules == nil:
		return nil, errors.New("no rules")
	case opts.Publish == nil:
		return nil, errors.New("no publish func")
	}
	if err := opts.From.check("from", true); err != nil {
		return nil, err
	}
	if err := opts.To.check("to", false); err != nil {
		return nil, err
	}
	if f, t := opts.From.Time, opts.To.Time; !f.IsZero() && !t.IsZero() && !t.After(f) {
		return nil, fmt.Errorf("to %s is not after from %s", t.Format(time.RFC3339), f.Format(time.RFC3339))
	}
	want := map[string]bool{}
	ruled := opts.Rules.Tables()
	for _, t := range opts.Tables {
		if !slices.Contains(ruled, t) {
			return nil, fmt.Errorf("table %s has no rules (tables with rules: %s)", t, strings.Join(ruled, ", "))
		}
		want[t] = true
	}
	if len(want) == 0 {
		for _, t := range ruled {
			want[t] = true
		}
	}
	opts.MySQL.Flavor = cmp.Or(opts.MySQL.Flavor, DefaultFlavor)
	if opts.MaxBatchKeys <= 0 {
		opts.MaxBatchKeys = DefaultMaxBatchKeys
	}
	opts.Logger = cmp.Or(opts.Logger, slog.Default())
	return &replay{
		opts: opts, want: want,
		log:    opts.Logger.With("role", "replay", "mysql", opts.MySQL.Addr),
		starts: map[int]time.Time{}, warned: map[string]bool{},
	}, nil
}

func (b ReplayBound) check(name string, required bool) error {
	switch {
	case b.File != "" && !b.Time.IsZero():
		return fmt.Errorf("%s has a file and a time: give one", name)
	case b.File == "" && b.Time.IsZero() && b.Pos != 0:
		return fmt.Errorf("%s has a position without a file", name)
	case required && b.File == "" && b.Time.IsZero():
		return fmt.Errorf("%s is required", name)
	}
	return nil
}

// binlogFile is one row of SHOW BINARY LOGS.
type binlogFile struct {
	name string
	size int64
}

// place is a position in the server's binlogs: file is an index into the
// list SHOW BINARY LOGS returned, which is in the order they were written.
type place struct {
	file int
	pos  uint32
}

func (p place) after(q place) bool {
	return p.file > q.file || (p.file == q.file && p.pos > q.pos)
}

// binlogSpan measures a range of binlog files in bytes, for progress.
type binlogSpan struct {
	start, end place
	// before[i] is the range's bytes in the files before start.file+i.
	before []int64
}

func newSpan(files []binlogFile, start, end place) binlogSpan {
	s := binlogSpan{start: start, end: end}
	var n int64
	for i := start.file; i <= end.file && i < len(files); i++ {
		s.before = append(s.before, n)
		n += files[i].size
		if i == start.file {
			n -= int64(start.pos)
		}
	}
	return s
}

// offset is the range's bytes before p, between 0 and the total.
func (s binlogSpan) offset(p place) int64 {
	switch {
	case !p.after(s.start):
		return 0
	case !s.end.after(p):
		return s.total()
	}
	n := s.before[p.file-s.start.file] + int64(p.pos)
	if p.file == s.start.file {
		n -= int64(s.start.pos)
	}
	return min(n, s.total())
}

func (s binlogSpan) total() int64 {
	if s.end.file < s.start.file || len(s.before) == 0 {
		return 0
	}
	n := s.before[len(s.before)-1] + int64(s.end.pos)
	if s.end.file == s.start.file {
		n -= int64(s.start.pos)
	}
	return max(n, 0)
}

// plan finds the range on the server: both ends as places, the bytes
// between them, the tables' current columns.
func (r *replay) plan(ctx context.Context) error {
	conn, err := connect(ctx, r.opts.MySQL)
	if err != nil {
		return err
	}
	defer conn.Close()
	// The end first: the list read after it has its file.
	current, err := currentPosition(conn, r.opts.MySQL.Flavor)
	if err != nil {
		return err
	}
	if r.files, err = listBinlogs(conn); err != nil {
		return err
	}
	r.index = map[string]int{}
	for i, f := range r.files {
		r.index[f.name] = i
	}
	schema, err := LoadSchema(conn, func(t string) bool { return r.want[t] })
	if err != nil {
		return err
	}
	r.current = schema.Tables
	r.cfg, err = newSyncerConfig(r.opts.MySQL, goMySQLLogger(r.opts.Logger), r.decodeRows)
	if err != nil {
		return err
	}

	end, ok := r.index[current.File]
	endPos := current.Pos
	if f := r.opts.To.File; f != "" {
		if end, ok = r.index[f]; !ok {
			return fmt.Errorf("to %s is not among the server's binlogs (%s to %s)", f, r.files[0].name, r.files[len(r.files)-1].name)
		}
		endPos = max(r.opts.To.Pos, 4)
	} else if !ok {
		return fmt.Errorf("the server's position %s is not among its binlogs", current)
	}
	if int64(endPos) > r.files[end].size {
		return fmt.Errorf("to %s:%d is past the end of the file (%d bytes)", r.files[end].name, endPos, r.files[end].size)
	}
	var start place
	if f := r.opts.From.File; f != "" {
		i, ok := r.index[f]
		if !ok {
			return r.startGone(ctx, fmt.Sprintf("from %s is not among the server's binlogs", f))
		}
		start = place{i, max(r.opts.From.Pos, 4)}
		if int64(start.pos) > r.files[i].size {
			return fmt.Errorf("from %s:%d is past the end of the file (%d bytes)", f, start.pos, r.files[i].size)
		}
	} else if start, err = r.startAt(ctx, r.opts.From.Time); err != nil {
		return err
	}
	r.from, r.to = r.position(start), r.position(place{end, endPos})
	if start.after(place{end, endPos}) {
		return fmt.Errorf("from %s is after to %s", r.from, r.to)
	}
	r.span = newSpan(r.files, start, place{end, endPos})
	return nil
}

func (r *replay) position(p place) Position {
	return Position{File: r.files[p.file].name, Pos: p.pos, Flavor: r.opts.MySQL.Flavor}
}

func listBinlogs(conn *client.Conn) ([]binlogFile, error) {
	res, err := conn.Execute("SHOW BINARY LOGS")
	if err != nil {
		return nil, fmt.Errorf("list binary logs: %w", err)
	}
	files := make([]binlogFile, res.RowNumber())
	for i := range files {
		files[i].name, _ = res.GetString(i, 0)
		size, _ := res.GetInt(i, 1)
		files[i].size = size
	}
	if len(files) == 0 {
		return nil, errors.New("list binary logs: none (is log_bin on?)")
	}
	return files, nil
}

// startAt finds where a time From starts: the newest binlog created at or
// before t. A transaction stamped at or after t commits after t, so it is
// in that file or a later one.
func (r *replay) startAt(ctx context.Context, t time.Time) (place, error) {
	oldest, err := r.fileStart(ctx, 0)
	if err != nil {
		return place{}, err
	}
	if t.Before(oldest) {
		return place{}, r.startGone(ctx, "from "+t.UTC().Format(time.RFC3339)+" is before the oldest binlog")
	}
	// Files are created in order: binary search for the last one started
	// at or before t.
	lo, hi := 0, len(r.files)-1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		s, err := r.fileStart(ctx, mid)
		if err != nil {
			return place{}, err
		}
		if s.After(t) {
			hi = mid - 1
		} else {
			lo = mid
		}
	}
	return place{lo, 4}, nil
}

// startGone is the ErrStartGone error, naming the oldest binlog and when it
// starts.
func (r *replay) startGone(ctx context.Context, why string) error {
	oldest := r.files[0].name
	t, err := r.fileStart(ctx, 0)
	if err != nil {
		return fmt.Errorf("%w: %s (the oldest is %s, whose start could not be read: %v)", ErrStartGone, why, oldest, err)
	}
	return fmt.Errorf("%w: %s (the oldest is %s, started %s)", ErrStartGone, why, oldest, t.UTC().Format(time.RFC3339))
}

// fileStart is when binlog i was created: the timestamp of its format
// description event, its first.
func (r *replay) fileStart(ctx context.Context, i int) (time.Time, error) {
	if t, ok := r.starts[i]; ok {
		return t, nil
	}
	name := r.files[i].name
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cfg := r.cfg
	cfg.RowsEventDecodeFunc = func(*replication.RowsEvent, []byte) error { return nil } // only the first event matters
	syncer := replication.NewBinlogSyncer(cfg)
	defer syncer.Close()
	streamer, err := syncer.StartSync(mysql.Position{Name: name, Pos: 4})
	if err != nil {
		return time.Time{}, fmt.Errorf("read the start of %s: %w", name, r.serverError(err))
	}
	for {
		ev, err := streamer.GetEvent(ctx)
		if err != nil {
			return time.Time{}, fmt.Errorf("read the start of %s: %w", name, r.serverError(err))
		}
		if _, ok := ev.Event.(*replication.FormatDescriptionEvent); ok {
			t := time.Unix(int64(ev.Header.Timestamp), 0)
			r.starts[i] = t
			return t, nil
		}
	}
}

// decodeRows decodes only the rows of replayed tables, and skips a rows
// event whose table map is before the start (From inside a transaction).
func (r *replay) decodeRows(e *replication.RowsEvent, data []byte) error {
	pos, err := e.DecodeHeader(data)
	if err != nil {
		if e.Table == nil {
			return nil
		}
		return err
	}
	if !r.want[string(e.Table.Schema)+"."+string(e.Table.Table)] {
		return nil
	}
	return e.DecodeData(pos, data)
}

func (r *replay) serverError(err error) error {
	var myErr *mysql.MyError
	if errors.As(err, &myErr) {
		switch {
		case myErr.Code == 4052: // ER_SLAVE_SAME_ID (MariaDB)
			return fmt.Errorf("another binlog reader uses server id %d: give the replay its own (%s)", r.opts.MySQL.ServerID, myErr.Message)
		case myErr.Code == mysql.ER_MASTER_FATAL_ERROR_READING_BINLOG && strings.Contains(myErr.Message, "Could not find first log file"):
			// Purged between the plan and the read.
			return fmt.Errorf("%w: %s", ErrStartGone, myErr.Message)
		}
	}
	return err
}

// reading is the state of one read of the range.
type reading struct {
	r        *replay
	binder   binder
	unsigned unsignedCache
	file     string
	at       int      // index of file; len(files) for one newer than the plan
	last     Position // of the last event read
	lastAt   place
	// boundary is past the last event read outside a transaction: a
	// replay resumed there misses nothing.
	boundary   Position
	boundaryAt place
	published  Position // after of the last Publish, or the start
	txn        txnState
	cur        *invalidate.Batch // targets of whole transactions not yet published
	curTxns    int64
	curRows    int64
	res        ReplayResult
	read       int64
	reported   time.Time // of the last Progress
	done       bool
	early      bool // a time To ended the range before the end position
}

// txnState is the transaction being read.
type txnState struct {
	open       bool
	inRange    bool
	pastEnd    bool // stamped ReplayTimeSlack or more past a time To
	standalone bool // MariaDB: no COMMIT or XID ends it, its query does
	rows       int64
	targets    *invalidate.Batch
}

func (r *replay) read(ctx context.Context) (ReplayResult, error) {
	s := &reading{
		r: r, binder: newBinder(r.opts.Rules), unsigned: unsignedCache{}, file: r.from.File, at: r.span.start.file,
		last: r.from, boundary: r.from, published: r.from, lastAt: r.span.start, boundaryAt: r.span.start,
		cur: r.opts.Rules.NewBatch(),
		txn: txnState{targets: r.opts.Rules.NewBatch()},
	}
	s.res.BytesTotal = r.span.total()
	fail := func(err error) (ReplayResult, error) {
		if ctx.Err() != nil {
			err = fmt.Errorf("stopped: %w", ctx.Err())
		}
		s.res.End = s.published
		return s.res, err
	}
	r.log.Info("replay reading", "from", r.from.String(), "to", r.to.String(), "bytes", s.res.BytesTotal, "tables", len(r.want))
	if r.span.start != r.span.end {
		if err := s.stream(ctx); err != nil {
			return fail(err)
		}
	}
	if s.txn.open && !s.early {
		r.log.Info("replay range ends inside a transaction: left out", "at", s.last.String())
	}
	if err := s.flush(ctx, s.boundary); err != nil {
		return fail(err)
	}
	s.res.End = s.boundary
	if s.early {
		// The range ended at End: that is its size.
		s.res.BytesTotal = s.r.span.offset(s.boundaryAt)
	}
	s.read = s.res.BytesTotal
	s.res.BytesRead = s.read
	s.progress(true)
	r.log.Info("replay done", "end", s.res.End.String(), "transactions", s.res.Transactions, "rows", s.res.Rows, "bytes", s.res.BytesRead)
	return s.res, nil
}

func (s *reading) stream(ctx context.Context) error {
	syncer := replication.NewBinlogSyncer(s.r.cfg)
	defer syncer.Close()
	streamer, err := syncer.StartSync(mysql.Position{Name: s.r.from.File, Pos: s.r.from.Pos})
	if err != nil {
		return s.r.serverError(err)
	}
	for !s.done {
		// GetEvent picks at random between an event in hand and ctx.
		if err := ctx.Err(); err != nil {
			return err
		}
		ev, err := streamer.GetEvent(ctx)
		if err != nil {
			return s.r.serverError(err)
		}
		if err := s.handle(ctx, ev); err != nil {
			s.res.BytesRead = s.read
			return err
		}
	}
	return nil
}

func (s *reading) handle(ctx context.Context, ev *replication.BinlogEvent) error {
	h := ev.Header
	if _, ok := ev.Event.(*replication.HeartbeatEvent); ok {
		return nil
	}
	// Artificial events (the rotate and format description the server
	// sends first) are at no position of the file.
	positioned := h.LogPos > 0 && h.Flags&replication.LOG_EVENT_ARTIFICIAL_F == 0
	here := place{s.at, h.LogPos}
	pos := s.here(h) // before a rotate changes the file
	if positioned {
		if here.after(s.r.span.end) {
			s.done = true // this event ends past the range
			return nil
		}
		s.read = s.r.span.offset(here)
		s.res.BytesRead = s.read
		s.progress(false)
	}
	switch e := ev.Event.(type) {
	case *replication.RotateEvent:
		s.file = string(e.NextLogName)
		var ok bool
		if s.at, ok = s.r.index[s.file]; !ok {
			s.at = len(s.r.files) // newer than the range's end
		}
	case *replication.MariadbGTIDEvent:
		if err := s.begin(ctx, h, e.IsStandalone()); err != nil || s.done {
			return err
		}
	case *replication.GTIDEvent:
		if err := s.begin(ctx, h, false); err != nil || s.done {
			return err
		}
	case *replication.QueryEvent:
		q := strings.TrimSpace(string(e.Query))
		switch strings.ToUpper(q) {
		case "BEGIN":
			if !s.txn.open { // no GTID event before it
				if err := s.begin(ctx, h, false); err != nil || s.done {
					return err
				}
			}
		case "COMMIT", "ROLLBACK":
			// MariaDB logs the changes a rolled back transaction made to
			// non-transactional tables, ended by ROLLBACK: they happened.
			if err := s.commit(ctx, pos); err != nil {
				return err
			}
		default:
			if s.txn.standalone || ddlStart.MatchString(q) { // DDL commits implicitly
				if err := s.commit(ctx, pos); err != nil {
					return err
				}
			}
		}
	case *replication.XIDEvent:
		if err := s.commit(ctx, pos); err != nil {
			return err
		}
	case *replication.RowsEvent:
		if err := s.rows(h, e); err != nil {
			return err
		}
	}
	if positioned {
		s.last, s.lastAt = pos, here
		if !s.txn.open {
			s.boundary, s.boundaryAt = pos, here
		}
		if here == s.r.span.end {
			s.done = true
		}
	}
	return nil
}

func (s *reading) here(h *replication.EventHeader) Position {
	return Position{File: s.file, Pos: h.LogPos, Flavor: s.r.opts.MySQL.Flavor}
}

// begin starts a transaction at its first event, whose timestamp is the
// transaction's. A time To ends the range at the first transaction of a
// replayed table stamped ReplayTimeSlack or more past it (rows).
func (s *reading) begin(ctx context.Context, h *replication.EventHeader, standalone bool) error {
	if s.txn.open {
		// The previous one had no terminating event: it ended where this
		// one starts.
		if err := s.commit(ctx, s.last); err != nil {
			return err
		}
		s.boundary, s.boundaryAt = s.last, s.lastAt
	}
	stamp := time.Unix(int64(h.Timestamp), 0)
	from, to := s.r.opts.From.Time, s.r.opts.To.Time
	s.txn.open, s.txn.standalone, s.txn.rows = true, standalone, 0
	s.txn.inRange = (from.IsZero() || !stamp.Before(from)) && (to.IsZero() || stamp.Before(to))
	s.txn.pastEnd = !to.IsZero() && !stamp.Before(to.Add(ReplayTimeSlack))
	return nil
}

func (s *reading) rows(h *replication.EventHeader, e *replication.RowsEvent) error {
	if s.txn.open && s.txn.pastEnd && e.Rows != nil {
		// A change of a replayed table stamped ReplayTimeSlack past a time
		// To ends the range. Other tables' stamps do not: a client that set
		// its session's timestamp elsewhere must not cut this range short.
		s.done, s.early = true, true
		return nil
	}
	if !s.txn.open || !s.txn.inRange || e.Rows == nil {
		return nil // before the first transaction, out of range, or not a replayed table
	}
	table := string(e.Table.Schema) + "." + string(e.Table.Table)
	at := fmt.Sprintf("%s:%d", s.file, h.LogPos)
	action, ok := rowsAction(e)
	if !ok {
		return fmt.Errorf("%s at %s: unsupported rows event %s", table, at, h.EventType)
	}
	cols := e.Table.ColumnNameString()
	if cols == nil {
		var err error
		if cols, err = s.r.columnsNow(table, e, at); err != nil {
			return err
		}
	}
	bound, err := s.binder.bind(table, cols)
	if err != nil {
		return fmt.Errorf("rows of %s at %s: %w", table, at, err)
	}
	if unsigned := s.unsigned.columns(e.Table); unsigned != nil {
		for _, row := range e.Rows {
			fixUnsigned(row, unsigned)
		}
	}
	applyRows(bound, nil, action, e.Rows, s.txn.targets)
	s.txn.rows += int64(rowChanges(action, e.Rows))
	return nil
}

// columnsNow names the columns of rows the binlog does not name
// (binlog_row_metadata below FULL) with the table's current ones, when
// there are as many.
func (r *replay) columnsNow(table string, e *replication.RowsEvent, at string) ([]string, error) {
	cols, ok := r.current[table]
	if !ok {
		return nil, fmt.Errorf("rows of %s at %s name no columns (set binlog_row_metadata=FULL) and the table no longer exists to take them from", table, at)
	}
	if len(cols) != int(e.ColumnCount) {
		return nil, fmt.Errorf("rows of %s at %s have %d columns and name none (set binlog_row_metadata=FULL); the table has %d now (%s), so the replay stops rather than guess",
			table, at, e.ColumnCount, len(cols), strings.Join(cols, ", "))
	}
	if !r.warned[table] {
		r.warned[table] = true
		r.log.Warn("binlog rows name no columns: mapping them with the table's current ones, as many (a reorder since would map them wrong; set binlog_row_metadata=FULL)", "table", table, "at", at)
	}
	return cols, nil
}

// commit ends the transaction being read at pos. Its targets join the
// batch, which is published first if they would take it past MaxBatchKeys,
// and after if it reached it.
func (s *reading) commit(ctx context.Context, pos Position) error {
	t := &s.txn
	if !t.open {
		return nil // the end of one that began before the start
	}
	t.open = false
	if !t.inRange || t.rows == 0 {
		t.targets.Reset()
		return nil
	}
	limit := s.r.opts.MaxBatchKeys
	if s.cur.Len() > 0 && s.cur.Len()+t.targets.Len() > limit {
		if err := s.flush(ctx, s.boundary); err != nil {
			return err
		}
	}
	mergeTargets(s.cur, t.targets)
	t.targets.Reset()
	s.curTxns++
	s.curRows += t.rows
	if s.cur.Len() >= limit {
		return s.flush(ctx, pos)
	}
	return nil
}

// flush publishes the batch of whole transactions; after is past the last
// transaction read.
func (s *reading) flush(ctx context.Context, after Position) error {
	if s.cur.Len() > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.r.opts.Publish(ctx, s.cur, after); err != nil {
			return fmt.Errorf("publish up to %s: %w", after, err)
		}
		s.cur = s.r.opts.Rules.NewBatch() // Publish may not keep it, but a fresh one costs little
	}
	s.res.Transactions += s.curTxns
	s.res.Rows += s.curRows
	s.curTxns, s.curRows = 0, 0
	s.published = after
	return nil
}

func (s *reading) progress(final bool) {
	if s.r.opts.Progress == nil {
		return
	}
	now := time.Now()
	if !final && now.Sub(s.reported) < progressInterval {
		return
	}
	s.reported = now
	s.r.opts.Progress(s.read, s.res.BytesTotal)
}

// mergeTargets adds src's keys, URLs and tags to dst: the kinds rules
// render (patterns, bans and flushes are the admin's own).
func mergeTargets(dst, src *invalidate.Batch) {
	for g := range src.NumGroups() {
		for _, k := range src.Keys(g) {
			dst.Add(g, k)
		}
	}
	for g := range src.NumHTTPGroups() {
		for _, u := range src.URLs(g) {
			dst.AddURL(g, u)
		}
		for _, t := range src.Tags(g) {
			dst.AddTag(g, t)
		}
	}
}
