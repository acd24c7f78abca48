package canal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/flashsync/flashsync/internal/stacktest"
	"github.com/flashsync/flashsync/invalidate"
)

// Replay's binlog reader IDs: none is a canal's (the dev stack's is 1001,
// the canal tests pick 20000 and up), one per test.
const (
	replayIDPositions = 4101 + iota
	replayIDTimes
	replayIDTables
	replayIDBatches
	replayIDGone
	replayIDCancel
	replayIDDDL
	replayIDNoNames
)

// recorder is a Replay's Publish and Progress: it keeps every batch's keys
// (sorted) with its after position, and every progress call.
type recorder struct {
	batches  []recorded
	progress []progressCall
}

type recorded struct {
	keys  []string
	after Position
}

type progressCall struct {
	read, total int64
	at          time.Time
}

func (rec *recorder) publish(_ context.Context, b *invalidate.Batch, after Position) error {
	var keys []string
	for g := range b.NumGroups() {
		keys = append(keys, b.Keys(g)...)
	}
	slices.Sort(keys)
	rec.batches = append(rec.batches, recorded{keys: keys, after: after})
	return nil
}

func (rec *recorder) onProgress(read, total int64) {
	rec.progress = append(rec.progress, progressCall{read, total, time.Now()})
}

// keys is the union of every batch's keys, sorted.
func (rec *recorder) keys(from int) []string {
	var all []string
	for _, b := range rec.batches[min(from, len(rec.batches)):] {
		all = append(all, b.keys...)
	}
	slices.Sort(all)
	return slices.Compact(all)
}

// options replays with rec on addr as reader id.
func (rec *recorder) options(addr string, id uint32, rules *invalidate.Rules, from, to ReplayBound) ReplayOptions {
	return ReplayOptions{
		MySQL: Source{Addr: addr, User: "root", Flavor: mysql.MariaDBFlavor, ServerID: id},
		From:  from, To: to, Rules: rules,
		Publish: rec.publish, Progress: rec.onProgress,
	}
}

// checkDone checks what every complete replay must show: the last progress
// call reports the whole range read, as does the result.
func (rec *recorder) checkDone(t *testing.T, res ReplayResult) {
	t.Helper()
	if len(rec.progress) == 0 {
		t.Fatal("Progress never called")
	}
	last := rec.progress[len(rec.progress)-1]
	if last.read != last.total || last.total != res.BytesTotal || res.BytesRead != res.BytesTotal {
		t.Fatalf("last progress %d/%d, result %d/%d bytes: want all read", last.read, last.total, res.BytesRead, res.BytesTotal)
	}
	for i := 1; i < len(rec.progress)-1; i++ {
		if gap := rec.progress[i].at.Sub(rec.progress[i-1].at); gap < progressInterval {
			t.Fatalf("progress calls %d and %d %v apart, want at least %v", i-1, i, gap, progressInterval)
		}
	}
}

// replayRules makes rules keyed by table: its key templates, routed by id.
func replayRules(t *testing.T, keys map[string][]string) *invalidate.Rules {
	t.Helper()
	var specs []invalidate.Rule
	for table, k := range keys {
		specs = append(specs, invalidate.Rule{Table: table, Keys: k, RouteBy: "id"})
	}
	rules, err := invalidate.NewRules(specs, []string{"g"})
	if err != nil {
		t.Fatal(err)
	}
	return rules
}

func binlogStatus(t *testing.T, conn *client.Conn) Position {
	t.Helper()
	p, err := currentPosition(conn, mysql.MariaDBFlavor)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func samePlace(a, b Position) bool { return a.File == b.File && a.Pos == b.Pos }

func at(p Position) ReplayBound { return ReplayBound{File: p.File, Pos: p.Pos} }

func wantKeys(t *testing.T, got []string, want ...string) {
	t.Helper()
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("published %v, want %v", got, want)
	}
}

func wantCounts(t *testing.T, res ReplayResult, txns, rows int64) {
	t.Helper()
	if res.Transactions != txns || res.Rows != rows {
		t.Fatalf("result counts %d transactions, %d rows; want %d, %d", res.Transactions, res.Rows, txns, rows)
	}
}

// tableMapEnds returns where the table map events of table end in file
// between from and to: positions inside the transactions that changed it.
func tableMapEnds(t *testing.T, conn *client.Conn, file string, from, to uint32, table string) []uint32 {
	t.Helper()
	r := stacktest.Exec(t, conn, fmt.Sprintf("SHOW BINLOG EVENTS IN '%s' FROM %d", file, from))
	var ends []uint32
	for i := range r.RowNumber() {
		pos, _ := r.GetUint(i, 1)
		kind, _ := r.GetString(i, 2)
		end, _ := r.GetUint(i, 4)
		info, _ := r.GetString(i, 5)
		if pos >= uint64(to) {
			break
		}
		if kind == "Table_map" && strings.HasSuffix(info, "("+table+")") {
			ends = append(ends, uint32(end))
		}
	}
	return ends
}

// inFileFrom is where to look in file for what was written after p.
func inFileFrom(file string, p Position) uint32 {
	if p.File == file {
		return p.Pos
	}
	return 4
}

// A range between two positions replays exactly the transactions written
// between them; one cut by either end is left out.
func TestReplayPositionRange(t *testing.T) {
	conn := stacktest.MySQL(t)
	table := stacktest.NewDatabase(t) + ".item"
	stacktest.Exec(t, conn, "CREATE TABLE "+table+" (id BIGINT PRIMARY KEY, name VARCHAR(50))")
	rules := replayRules(t, map[string][]string{table: {"rt:{id}"}})

	stacktest.Exec(t, conn, "INSERT INTO "+table+" VALUES (1, 'a'), (2, 'a')") // A
	posA := binlogStatus(t, conn)
	stacktest.Exec(t, conn, "INSERT INTO "+table+" VALUES (10, 'b')") // B1
	posB1 := binlogStatus(t, conn)
	stacktest.Exec(t, conn, "INSERT INTO "+table+" VALUES (11, 'b'), (12, 'b')") // B2
	posB2 := binlogStatus(t, conn)
	stacktest.Exec(t, conn, "UPDATE "+table+" SET name = 'bb' WHERE id = 10") // B3
	posB := binlogStatus(t, conn)
	stacktest.Exec(t, conn, "INSERT INTO "+table+" VALUES (20, 'c')") // C

	t.Run("between positions", func(t *testing.T) {
		rec := &recorder{}
		res, err := Replay(t.Context(), rec.options(stacktest.MySQLAddr(), replayIDPositions, rules, at(posA), at(posB)))
		if err != nil {
			t.Fatal(err)
		}
		wantKeys(t, rec.keys(0), "rt:10", "rt:11", "rt:12")
		wantCounts(t, res, 3, 4)
		rec.checkDone(t, res)
		if len(rec.batches) != 1 || !samePlace(rec.batches[0].after, posB) || !samePlace(res.End, posB) {
			t.Fatalf("batches %v, end %v: want one batch, after and end at %v", rec.batches, res.End, posB)
		}
		if posA.File == posB.File && res.BytesTotal != int64(posB.Pos-posA.Pos) {
			t.Fatalf("%d bytes in range, want %d", res.BytesTotal, posB.Pos-posA.Pos)
		}
		t.Logf("%s to %s: %d bytes, %d transactions, %d rows", posA, posB, res.BytesTotal, res.Transactions, res.Rows)
	})

	t.Run("to the current position", func(t *testing.T) {
		rec := &recorder{}
		res, err := Replay(t.Context(), rec.options(stacktest.MySQLAddr(), replayIDPositions, rules, at(posA), ReplayBound{}))
		if err != nil {
			t.Fatal(err)
		}
		wantKeys(t, rec.keys(0), "rt:10", "rt:11", "rt:12", "rt:20")
		wantCounts(t, res, 4, 5)
		rec.checkDone(t, res)
	})

	t.Run("inside transactions", func(t *testing.T) {
		// From inside B1 (after its table map), to inside B3 (after its
		// table map, before its rows and commit): only B2 is whole.
		in1 := tableMapEnds(t, conn, posB1.File, inFileFrom(posB1.File, posA), posB1.Pos, table)
		in3 := tableMapEnds(t, conn, posB.File, inFileFrom(posB.File, posB2), posB.Pos, table)
		if len(in1) != 1 || len(in3) != 1 {
			t.Fatalf("table maps of %s: %v in B1, %v in B3; want one each", table, in1, in3)
		}
		rec := &recorder{}
		from, to := ReplayBound{File: posB1.File, Pos: in1[0]}, ReplayBound{File: posB.File, Pos: in3[0]}
		res, err := Replay(t.Context(), rec.options(stacktest.MySQLAddr(), replayIDPositions, rules, from, to))
		if err != nil {
			t.Fatal(err)
		}
		wantKeys(t, rec.keys(0), "rt:11", "rt:12")
		wantCounts(t, res, 1, 2)
		rec.checkDone(t, res)
		if res.End.File != posB.File || res.End.Pos > in3[0] || !samePlace(rec.batches[0].after, res.End) {
			t.Fatalf("end %v (batch after %v), want at or before %s:%d where the range cuts B3", res.End, rec.batches[0].after, posB.File, in3[0])
		}
	})

	t.Run("from after to", func(t *testing.T) {
		rec := &recorder{}
		_, err := Replay(t.Context(), rec.options(stacktest.MySQLAddr(), replayIDPositions, rules, at(posB), at(posA)))
		if err == nil || !strings.Contains(err.Error(), "is after") {
			t.Fatalf("err = %v, want from is after to", err)
		}
	})
}

// Time bounds select transactions by their stamp (from inclusive, to
// exclusive), read on ReplayTimeSlack past to for statements that ran
// across it, and start at the newest binlog created at or before from. A
// private server: its binlogs hold only this test's transactions, stamped
// with SET timestamp, and FLUSH BINARY LOGS under SET timestamp stamps the
// new file's start with it, so the files' starts are known too.
func TestReplayTimeRange(t *testing.T) {
	m := stacktest.StartMariaDB(t, "--binlog-row-metadata=FULL")
	conn := m.Conn(t)
	stacktest.Exec(t, conn, "CREATE DATABASE shop")
	stacktest.Exec(t, conn, "CREATE TABLE shop.item (id BIGINT PRIMARY KEY, name VARCHAR(50))")
	stacktest.Exec(t, conn, "CREATE TABLE shop.other (id BIGINT PRIMARY KEY)")
	rules := replayRules(t, map[string][]string{"shop.item": {"rt:{id}"}})
	base := time.Now().Unix() + 1000
	stamped := func(offset int64, query string) {
		t.Helper()
		stacktest.Exec(t, conn, fmt.Sprintf("SET timestamp = %d", base+offset))
		stacktest.Exec(t, conn, query)
	}
	insert := func(offset int64, id int) {
		t.Helper()
		stamped(offset, fmt.Sprintf("INSERT INTO shop.item VALUES (%d, 'x')", id))
	}
	// MariaDB writes a new binlog's checkpoint event in the background
	// once the older one's transactions are durable: waiting for it keeps
	// the positions the test takes from moving under it.
	flush := func(offset int64) {
		t.Helper()
		stamped(offset, "FLUSH BINARY LOGS")
		file := binlogStatus(t, conn).File
		stacktest.Eventually(t, 10*time.Second, func() error {
			r := stacktest.Exec(t, conn, "SHOW BINLOG EVENTS IN '"+file+"'")
			for i := range r.RowNumber() {
				kind, _ := r.GetString(i, 2)
				info, _ := r.GetString(i, 5)
				if kind == "Binlog_checkpoint" && info == file {
					return nil
				}
			}
			return fmt.Errorf("no checkpoint of %s in it yet", file)
		})
	}
	flush(0)       // mysql-bin.000002 starts at base
	insert(149, 1) // before from
	insert(150, 2) // at from: in
	flush(160)
	stamped(5000, "INSERT INTO shop.other VALUES (1)") // far past to, but no replayed table: the range goes on
	insert(299, 3)                                     // in
	insert(300, 4)                                     // at to: out
	insert(200, 5)                                     // in, though after one past to
	flush(310)
	insert(359, 6) // out, and less than the slack past to
	beforeStop := binlogStatus(t, conn)
	insert(360, 7) // to + slack: the range ends before it
	insert(250, 8) // stamped in range, but after the end
	stacktest.Exec(t, conn, "SET timestamp = DEFAULT")
	end := binlogStatus(t, conn)
	files, err := listBinlogs(conn)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 4 || end.File != files[3].name {
		t.Fatalf("binlogs %v, current %v: want 4, the last current", files, end)
	}
	from := ReplayBound{Time: time.Unix(base+150, 0)}
	// From file 2's start, where from is.
	fromFile2 := files[1].size - 4 + files[2].size

	t.Run("from and to", func(t *testing.T) {
		rec := &recorder{}
		res, err := Replay(t.Context(), rec.options(m.Addr(), replayIDTimes, rules, from, ReplayBound{Time: time.Unix(base+300, 0)}))
		if err != nil {
			t.Fatal(err)
		}
		wantKeys(t, rec.keys(0), "rt:2", "rt:3", "rt:5")
		wantCounts(t, res, 3, 3)
		rec.checkDone(t, res)
		if !samePlace(res.End, beforeStop) || res.BytesTotal != fromFile2+int64(beforeStop.Pos) {
			t.Fatalf("end %v after %d bytes, want %v after %d (the first transaction stamped to+%v ends the range)",
				res.End, res.BytesTotal, beforeStop, fromFile2+int64(beforeStop.Pos), ReplayTimeSlack)
		}
	})

	t.Run("from only", func(t *testing.T) {
		rec := &recorder{}
		res, err := Replay(t.Context(), rec.options(m.Addr(), replayIDTimes, rules, from, ReplayBound{}))
		if err != nil {
			t.Fatal(err)
		}
		wantKeys(t, rec.keys(0), "rt:2", "rt:3", "rt:4", "rt:5", "rt:6", "rt:7", "rt:8")
		wantCounts(t, res, 7, 7)
		rec.checkDone(t, res)
		if !samePlace(res.End, end) || res.BytesTotal != fromFile2+int64(end.Pos) {
			t.Fatalf("end %v after %d bytes, want %v after %d (from the start of %s)", res.End, res.BytesTotal, end, fromFile2+int64(end.Pos), files[1].name)
		}
	})

	t.Run("position to time", func(t *testing.T) {
		rec := &recorder{}
		res, err := Replay(t.Context(), rec.options(m.Addr(), replayIDTimes, rules, ReplayBound{File: files[2].name}, ReplayBound{Time: time.Unix(base+300, 0)}))
		if err != nil {
			t.Fatal(err)
		}
		wantKeys(t, rec.keys(0), "rt:3", "rt:5")
		wantCounts(t, res, 2, 2)
		rec.checkDone(t, res)
	})
}

// Tables limits a replay to some of the ruled tables, inside transactions
// that change several.
func TestReplayTables(t *testing.T) {
	conn := stacktest.MySQL(t)
	db := stacktest.NewDatabase(t)
	t1, t2 := db+".one", db+".two"
	for _, table := range []string{t1, t2} {
		stacktest.Exec(t, conn, "CREATE TABLE "+table+" (id BIGINT PRIMARY KEY)")
	}
	rules := replayRules(t, map[string][]string{t1: {"one:{id}"}, t2: {"two:{id}"}})
	from := binlogStatus(t, conn)
	stacktest.Exec(t, conn, "INSERT INTO "+t1+" VALUES (1)")
	stacktest.Exec(t, conn, "INSERT INTO "+t2+" VALUES (1)")
	stacktest.Exec(t, conn, "BEGIN")
	stacktest.Exec(t, conn, "INSERT INTO "+t1+" VALUES (2)")
	stacktest.Exec(t, conn, "INSERT INTO "+t2+" VALUES (2), (3)")
	stacktest.Exec(t, conn, "COMMIT")
	to := binlogStatus(t, conn)

	for _, c := range []struct {
		tables     []string
		keys       []string
		txns, rows int64
	}{
		{[]string{t1}, []string{"one:1", "one:2"}, 2, 2},
		{[]string{t2}, []string{"two:1", "two:2", "two:3"}, 2, 3},
		{nil, []string{"one:1", "one:2", "two:1", "two:2", "two:3"}, 3, 5},
	} {
		t.Run(fmt.Sprint(c.tables), func(t *testing.T) {
			rec := &recorder{}
			opts := rec.options(stacktest.MySQLAddr(), replayIDTables, rules, at(from), at(to))
			opts.Tables = c.tables
			res, err := Replay(t.Context(), opts)
			if err != nil {
				t.Fatal(err)
			}
			wantKeys(t, rec.keys(0), c.keys...)
			wantCounts(t, res, c.txns, c.rows)
		})
	}

	rec := &recorder{}
	opts := rec.options(stacktest.MySQLAddr(), replayIDTables, rules, at(from), at(to))
	opts.Tables = []string{t1, db + ".three"}
	if _, err := Replay(t.Context(), opts); err == nil || !strings.Contains(err.Error(), db+".three has no rules") {
		t.Fatalf("err = %v, want the table without rules named", err)
	}
}

// Batches end on transaction boundaries once they reach MaxBatchKeys, and a
// replay resumed from one's after position publishes the rest.
func TestReplayBatches(t *testing.T) {
	conn := stacktest.MySQL(t)
	table := stacktest.NewDatabase(t) + ".item"
	stacktest.Exec(t, conn, "CREATE TABLE "+table+" (id BIGINT PRIMARY KEY)")
	rules := replayRules(t, map[string][]string{table: {"rt:{id}"}})
	const txns, perTxn, maxKeys = 30, 3, 10
	from := binlogStatus(t, conn)
	var all []string
	for i := range txns {
		var values []string
		for j := range perTxn {
			id := i*perTxn + j
			values = append(values, fmt.Sprintf("(%d)", id))
			all = append(all, fmt.Sprintf("rt:%d", id))
		}
		stacktest.Exec(t, conn, "INSERT INTO "+table+" VALUES "+strings.Join(values, ","))
	}
	to := binlogStatus(t, conn)

	rec := &recorder{}
	opts := rec.options(stacktest.MySQLAddr(), replayIDBatches, rules, at(from), at(to))
	opts.MaxBatchKeys = maxKeys
	res, err := Replay(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	wantKeys(t, rec.keys(0), all...)
	wantCounts(t, res, txns, txns*perTxn)
	rec.checkDone(t, res)
	// A transaction's keys would take a batch of 9 past 10: each batch is
	// three whole transactions.
	if len(rec.batches) != txns/3 {
		t.Fatalf("%d publishes, want %d", len(rec.batches), txns/3)
	}
	for i, b := range rec.batches {
		ids := map[int]int{}
		for _, k := range b.keys {
			var id int
			fmt.Sscanf(k, "rt:%d", &id)
			ids[id/perTxn]++
		}
		for txn, n := range ids {
			if n != perTxn {
				t.Fatalf("batch %d has %d of transaction %d's %d keys: %v", i, n, txn, perTxn, b.keys)
			}
		}
		if len(b.keys) > maxKeys {
			t.Fatalf("batch %d has %d keys, more than %d", i, len(b.keys), maxKeys)
		}
		if i > 0 && !placeAfter(b.after, rec.batches[i-1].after) {
			t.Fatalf("batch %d after %v, not past batch %d's %v", i, b.after, i-1, rec.batches[i-1].after)
		}
	}
	if last := rec.batches[len(rec.batches)-1].after; !samePlace(last, to) || !samePlace(res.End, to) {
		t.Fatalf("last after %v, end %v: want %v", last, res.End, to)
	}

	const k = 3
	resumed := &recorder{}
	opts = resumed.options(stacktest.MySQLAddr(), replayIDBatches, rules, at(rec.batches[k].after), at(to))
	opts.MaxBatchKeys = maxKeys
	if _, err := Replay(t.Context(), opts); err != nil {
		t.Fatal(err)
	}
	wantKeys(t, resumed.keys(0), rec.keys(k+1)...)
}

// placeAfter compares positions of one server's binlogs, whose names
// differ only in their fixed-width sequence number.
func placeAfter(a, b Position) bool {
	return a.File > b.File || (a.File == b.File && a.Pos > b.Pos)
}

// A range starting before the oldest binlog fails with ErrStartGone naming
// the oldest binlog and its start.
func TestReplayStartGone(t *testing.T) {
	conn := stacktest.MySQL(t)
	files, err := listBinlogs(conn)
	if err != nil {
		t.Fatal(err)
	}
	oldest := files[0].name
	rules := replayRules(t, map[string][]string{"nodb.item": {"rt:{id}"}})
	start := binlogStart(t, stacktest.MySQLAddr(), oldest)
	before := oldest[:strings.LastIndexByte(oldest, '.')] + ".000000"
	for name, from := range map[string]ReplayBound{
		"another name":            {File: "mariadb-bin.000000"},
		"before the oldest":       {File: before, Pos: 4},
		"a year before its start": {Time: start.AddDate(-1, 0, 0)},
	} {
		t.Run(name, func(t *testing.T) {
			rec := &recorder{}
			_, err := Replay(t.Context(), rec.options(stacktest.MySQLAddr(), replayIDGone, rules, from, ReplayBound{}))
			if !errors.Is(err, ErrStartGone) || !strings.Contains(err.Error(), oldest) || !strings.Contains(err.Error(), start.UTC().Format(time.RFC3339)) {
				t.Fatalf("err = %v, want ErrStartGone naming %s started %s", err, oldest, start.UTC().Format(time.RFC3339))
			}
			t.Log(err)
		})
	}
}

// binlogStart reads when the server's binlog file was created, as Replay
// does.
func binlogStart(t *testing.T, addr, file string) time.Time {
	t.Helper()
	r := &replay{
		opts:   ReplayOptions{MySQL: Source{Addr: addr, User: "root", Flavor: mysql.MariaDBFlavor, ServerID: replayIDGone}},
		files:  []binlogFile{{name: file}},
		starts: map[int]time.Time{},
	}
	var err error
	if r.cfg, err = newSyncerConfig(r.opts.MySQL, goMySQLLogger(slog.Default()), r.decodeRows); err != nil {
		t.Fatal(err)
	}
	start, err := r.fileStart(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	return start
}

// Cancelling ends a replay at once, while it publishes or reads, and
// nothing is published after.
func TestReplayCancel(t *testing.T) {
	conn := stacktest.MySQL(t)
	table := stacktest.NewDatabase(t) + ".item"
	stacktest.Exec(t, conn, "CREATE TABLE "+table+" (id BIGINT PRIMARY KEY)")
	rules := replayRules(t, map[string][]string{table: {"rt:{id}"}})
	from := binlogStatus(t, conn)
	for i := range 50 {
		var values []string
		for j := range 10 {
			values = append(values, fmt.Sprintf("(%d)", i*10+j))
		}
		stacktest.Exec(t, conn, "INSERT INTO "+table+" VALUES "+strings.Join(values, ","))
	}

	run := func(t *testing.T, ctx context.Context, opts ReplayOptions) (ReplayResult, error) {
		t.Helper()
		type result struct {
			res ReplayResult
			err error
		}
		done := make(chan result, 1)
		go func() {
			res, err := Replay(ctx, opts)
			done <- result{res, err}
		}()
		select {
		case r := <-done:
			return r.res, r.err
		case <-time.After(10 * time.Second):
			t.Fatal("Replay still running 10 s after its context was cancelled")
			return ReplayResult{}, nil
		}
	}

	t.Run("while publishing", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		publishes := 0
		opts := (&recorder{}).options(stacktest.MySQLAddr(), replayIDCancel, rules, at(from), ReplayBound{})
		opts.MaxBatchKeys = 10
		opts.Publish = func(ctx context.Context, _ *invalidate.Batch, _ Position) error {
			publishes++
			cancel()
			<-ctx.Done() // a publish that waits for nsqd until cancelled
			return ctx.Err()
		}
		res, err := run(t, ctx, opts)
		if !errors.Is(err, context.Canceled) || publishes != 1 || !samePlace(res.End, from) {
			t.Fatalf("err = %v after %d publishes, end %v: want context.Canceled after 1, end %v (nothing published)", err, publishes, res.End, from)
		}
	})

	t.Run("while reading", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		rec := &recorder{}
		opts := rec.options(stacktest.MySQLAddr(), replayIDCancel, rules, at(from), ReplayBound{})
		opts.MaxBatchKeys = 10
		opts.Progress = func(read, total int64) { cancel() } // at the first event
		res, err := run(t, ctx, opts)
		if !errors.Is(err, context.Canceled) || len(rec.batches) != 0 || res.Transactions != 0 {
			t.Fatalf("err = %v after %d publishes (result %+v): want context.Canceled, nothing published", err, len(rec.batches), res)
		}
	})
}

// With the binlog naming every row's columns, rows are mapped right on
// either side of a DDL that adds and moves columns.
func TestReplayAcrossDDL(t *testing.T) {
	conn := stacktest.MySQL(t)
	table := stacktest.NewDatabase(t) + ".item"
	stacktest.Exec(t, conn, "CREATE TABLE "+table+" (id BIGINT PRIMARY KEY, name VARCHAR(50))")
	rules := replayRules(t, map[string][]string{table: {"rt:{id}", "n:{name}"}})
	from := binlogStatus(t, conn)
	for _, q := range []string{
		"INSERT INTO %s VALUES (1, 'one')",
		"ALTER TABLE %s ADD COLUMN sku VARCHAR(20) FIRST",
		"INSERT INTO %s VALUES ('s2', 2, 'two')",
		"ALTER TABLE %s MODIFY name VARCHAR(50) FIRST",
		"INSERT INTO %s VALUES ('three', 's3', 3)",
	} {
		stacktest.Exec(t, conn, fmt.Sprintf(q, table))
	}
	to := binlogStatus(t, conn)
	rec := &recorder{}
	res, err := Replay(t.Context(), rec.options(stacktest.MySQLAddr(), replayIDDDL, rules, at(from), at(to)))
	if err != nil {
		t.Fatal(err)
	}
	wantKeys(t, rec.keys(0), "rt:1", "n:one", "rt:2", "n:two", "rt:3", "n:three")
	wantCounts(t, res, 3, 3)
}

// Without column names in the binlog, rows take the table's current
// columns if there are as many, and the replay fails naming the table and
// position if not.
func TestReplayWithoutColumnNames(t *testing.T) {
	m := stacktest.StartMariaDB(t, "--binlog-row-metadata=NO_LOG")
	conn := m.Conn(t)
	stacktest.Exec(t, conn, "CREATE DATABASE shop")
	stacktest.Exec(t, conn, "CREATE TABLE shop.item (id BIGINT PRIMARY KEY, name VARCHAR(50))")
	rules := replayRules(t, map[string][]string{"shop.item": {"rt:{id}", "n:{name}"}})
	from := binlogStatus(t, conn)
	stacktest.Exec(t, conn, "INSERT INTO shop.item VALUES (1, 'one'), (2, 'two')")
	stacktest.Exec(t, conn, "DELETE FROM shop.item WHERE id = 2")
	to := binlogStatus(t, conn)

	rec := &recorder{}
	res, err := Replay(t.Context(), rec.options(m.Addr(), replayIDNoNames, rules, at(from), at(to)))
	if err != nil {
		t.Fatal(err)
	}
	wantKeys(t, rec.keys(0), "rt:1", "n:one", "rt:2", "n:two")
	wantCounts(t, res, 2, 3)

	stacktest.Exec(t, conn, "ALTER TABLE shop.item ADD COLUMN price INT")
	rec = &recorder{}
	_, err = Replay(t.Context(), rec.options(m.Addr(), replayIDNoNames, rules, at(from), at(to)))
	if err == nil || !strings.Contains(err.Error(), "rows of shop.item at "+from.File+":") || !strings.Contains(err.Error(), "binlog_row_metadata=FULL") {
		t.Fatalf("err = %v, want the table, its position and binlog_row_metadata=FULL named", err)
	}
	if len(rec.batches) != 0 {
		t.Fatalf("published %v from rows whose columns are unknown", rec.batches)
	}
	t.Log(err)
}

// Options are checked before anything is dialed.
func TestReplayOptions(t *testing.T) {
	rules := replayRules(t, map[string][]string{"db.item": {"rt:{id}"}})
	ok := func() ReplayOptions {
		return (&recorder{}).options("127.0.0.1:1", 4199, rules, ReplayBound{File: "mysql-bin.000001"}, ReplayBound{})
	}
	now := time.Now()
	for _, c := range []struct {
		name string
		edit func(*ReplayOptions)
		want string
	}{
		{"no addr", func(o *ReplayOptions) { o.MySQL.Addr = "" }, "mysql addr is missing"},
		{"no server id", func(o *ReplayOptions) { o.MySQL.ServerID = 0 }, "server id is missing"},
		{"no rules", func(o *ReplayOptions) { o.Rules = nil }, "no rules"},
		{"no publish", func(o *ReplayOptions) { o.Publish = nil }, "no publish"},
		{"no from", func(o *ReplayOptions) { o.From = ReplayBound{} }, "from is required"},
		{"from file and time", func(o *ReplayOptions) { o.From.Time = now }, "from has a file and a time"},
		{"to pos without file", func(o *ReplayOptions) { o.To.Pos = 4 }, "to has a position without a file"},
		{"to before from", func(o *ReplayOptions) {
			o.From, o.To = ReplayBound{Time: now}, ReplayBound{Time: now.Add(-time.Second)}
		}, "is not after from"},
		{"to at from", func(o *ReplayOptions) { o.From, o.To = ReplayBound{Time: now}, ReplayBound{Time: now} }, "is not after from"},
		{"table without rules", func(o *ReplayOptions) { o.Tables = []string{"db.other"} }, "db.other has no rules"},
	} {
		t.Run(c.name, func(t *testing.T) {
			opts := ok()
			c.edit(&opts)
			_, err := Replay(t.Context(), opts)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
}

func TestBinlogSpan(t *testing.T) {
	files := []binlogFile{{"b.1", 1000}, {"b.2", 500}, {"b.3", 300}}
	type probe struct {
		at   place
		want int64
	}
	for _, c := range []struct {
		name       string
		start, end place
		total      int64
		probes     []probe
	}{
		{"one file", place{0, 100}, place{0, 400}, 300, []probe{
			{place{0, 50}, 0}, {place{0, 100}, 0}, {place{0, 250}, 150}, {place{0, 400}, 300}, {place{0, 900}, 300}, {place{1, 10}, 300},
		}},
		{"three files", place{0, 100}, place{2, 200}, 900 + 500 + 200, []probe{
			{place{0, 1000}, 900}, {place{1, 4}, 904}, {place{1, 500}, 1400}, {place{2, 4}, 1404}, {place{2, 200}, 1600}, {place{3, 4}, 1600},
		}},
		{"from a file's start", place{1, 4}, place{2, 300}, 496 + 300, []probe{{place{1, 256}, 252}, {place{2, 100}, 596}}},
		{"empty", place{1, 300}, place{1, 300}, 0, []probe{{place{1, 300}, 0}, {place{2, 4}, 0}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newSpan(files, c.start, c.end)
			if got := s.total(); got != c.total {
				t.Fatalf("total %d, want %d", got, c.total)
			}
			for _, p := range c.probes {
				if got := s.offset(p.at); got != p.want {
					t.Errorf("offset(%v) = %d, want %d", p.at, got, p.want)
				}
			}
		})
	}
}
