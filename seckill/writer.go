package seckill

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/flashsync/flashsync/internal/nsqio"
	"github.com/go-sql-driver/mysql"
	"github.com/nsqio/go-nsq"
	"github.com/prometheus/client_golang/prometheus"
)

// WriterOptions configure a Writer.
type WriterOptions struct {
	// DB is the flash-sale database (tables of schema.sql).
	DB       *sql.DB
	Reserver *Reserver
	// NSQDTCP / LookupdHTTP: where the reservations topic is read.
	NSQDTCP     []string
	LookupdHTTP []string
	Topic       string
	// DeadTopic takes messages that are not reservations (default
	// Topic + ".dead"), published to the first nsqd of NSQDTCP that takes
	// them.
	DeadTopic string
	// Writers is the number of transactions in flight at once (default 4).
	Writers int
	// BatchMax bounds the reservations merged into one transaction
	// (default 500).
	BatchMax int
	// OrderTTL is how long an order may stay unpaid (default 15 min).
	OrderTTL time.Duration
	// MsgTimeout is how long nsqd waits for a message's answer before it
	// delivers it again (a killed writer's messages come back after it).
	MsgTimeout time.Duration
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// writerChannel is the channel every order writer shares: each reservation
// goes to one writer.
const writerChannel = "writers"

// delivery is one NSQ message and the reservations it carries.
type delivery struct {
	m  *nsq.Message
	rs []Reservation
}

// decodeReservations reads a message: a JSON array of reservations, or one.
func decodeReservations(body []byte) ([]Reservation, error) {
	var rs []Reservation
	var err error
	if len(body) > 0 && body[0] == '[' {
		err = json.Unmarshal(body, &rs)
	} else {
		var r Reservation
		err = json.Unmarshal(body, &r)
		rs = []Reservation{r}
	}
	if err != nil {
		return nil, err
	}
	if len(rs) == 0 {
		return nil, errors.New("no reservation")
	}
	for i, r := range rs {
		if r.Activity <= 0 || r.RequestID == "" || r.User == "" || r.Qty <= 0 {
			return nil, fmt.Errorf("reservation %d: activity, request id, user and qty are required", i)
		}
	}
	return rs, nil
}

// Writer turns queued reservations into orders: it merges the reservations
// of one activity into one transaction (one stock UPDATE guarded by
// available >= n, one multi-row INSERT), and answers each NSQ message (a
// batch of reservations) only after the transactions of all its
// reservations committed (FIN) or one failed (requeue).
type Writer struct {
	opts     WriterOptions
	in       chan delivery
	dead     *nsqio.ProducerPool
	deadN    prometheus.Counter
	batches  prometheus.Histogram
	results  *prometheus.CounterVec
	latency  prometheus.Histogram
	txErrors prometheus.Counter
}

// NewWriter checks the options; nothing connects before Run.
func NewWriter(opts WriterOptions) (*Writer, error) {
	if opts.DB == nil || opts.Reserver == nil {
		return nil, errors.New("seckill writer: DB and Reserver are required")
	}
	if len(opts.NSQDTCP) == 0 && len(opts.LookupdHTTP) == 0 {
		return nil, errors.New("seckill writer: no nsqd or nsqlookupd address")
	}
	opts.Topic = cmp.Or(opts.Topic, DefaultTopic)
	opts.DeadTopic = cmp.Or(opts.DeadTopic, opts.Topic+".dead")
	if opts.Writers <= 0 {
		opts.Writers = DefaultWriters
	}
	if opts.BatchMax <= 0 {
		opts.BatchMax = DefaultBatchMax
	}
	if opts.OrderTTL <= 0 {
		opts.OrderTTL = DefaultOrderTTL
	}
	if opts.MsgTimeout <= 0 {
		opts.MsgTimeout = DefaultMsgTimeout
	}
	opts.Logger = cmp.Or(opts.Logger, slog.Default())
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	w := &Writer{
		opts: opts,
		in:   make(chan delivery, opts.Writers*opts.BatchMax),
		dead: nsqio.NewProducerPool(2*time.Second, opts.Logger),
		deadN: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flashsync_seckill_writer_dead_letters_total",
			Help: "Messages that were not reservations, moved to the dead-letter topic.",
		}),
		batches: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flashsync_seckill_writer_batch_reservations",
			Help:    "Reservations merged into one order transaction.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashsync_seckill_writer_reservations_total",
			Help: "Reservations written, by result: ordered, rejected (MySQL refused: stock or quota; given back), duplicate (already ordered), given_back (skipped: the reconciler gave it back).",
		}, []string{"result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flashsync_seckill_accept_to_commit_seconds",
			Help:    "From a reservation accepted by the buy endpoint to its order committed in MySQL.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18),
		}),
		txErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flashsync_seckill_writer_tx_errors_total",
			Help: "Order transactions that failed (their reservations were requeued).",
		}),
	}
	for _, c := range []prometheus.Collector{w.batches, w.results, w.latency, w.txErrors, w.deadN} {
		if err := opts.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return w, nil
}

// Run consumes until ctx ends; messages in hand are finished or requeued
// before it returns.
func (w *Writer) Run(ctx context.Context) error {
	cfg := nsq.NewConfig()
	cfg.MaxInFlight = w.opts.Writers * w.opts.BatchMax
	cfg.MsgTimeout = w.opts.MsgTimeout
	cfg.MaxAttempts = 0
	cfg.DefaultRequeueDelay = 100 * time.Millisecond
	cfg.MaxBackoffDuration = time.Second
	// Latency over syscalls: nsqd sends each message at once.
	cfg.OutputBufferTimeout = -1
	cfg.OutputBufferSize = -1
	c, err := nsq.NewConsumer(w.opts.Topic, writerChannel, cfg)
	if err != nil {
		return fmt.Errorf("nsq consumer %s: %w", w.opts.Topic, err)
	}
	c.SetLogger(nsqio.NewConsumerLogger(w.opts.Logger, cfg.LookupdPollInterval), nsq.LogLevelError)
	c.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
		rs, err := decodeReservations(m.Body)
		if err != nil {
			// Not ours to write: set aside, visibly, never dropped.
			if derr := w.deadLetter(m, err); derr != nil {
				w.opts.Logger.Error("seckill writer: dead-letter publish failed; requeued", "err", derr)
				return derr
			}
			return nil
		}
		m.DisableAutoResponse()
		w.in <- delivery{m: m, rs: rs}
		return nil
	}))
	if len(w.opts.LookupdHTTP) > 0 {
		err = c.ConnectToNSQLookupds(w.opts.LookupdHTTP)
	} else {
		err = c.ConnectToNSQDs(w.opts.NSQDTCP)
	}
	if err != nil {
		c.Stop()
		return fmt.Errorf("nsq consumer %s: %w", w.opts.Topic, err)
	}
	done := make(chan struct{})
	loops := make(chan struct{}, w.opts.Writers)
	for range w.opts.Writers {
		go func() {
			defer func() { loops <- struct{}{} }()
			w.loop(done)
		}()
	}
	w.opts.Logger.Info("seckill order writers running", "writers", w.opts.Writers, "topic", w.opts.Topic)
	<-ctx.Done()
	c.Stop()
	<-c.StopChan
	close(done)
	for range w.opts.Writers {
		<-loops
	}
	w.dead.Close()
	// Messages delivered but not taken by a loop go back to nsqd.
	for {
		select {
		case d := <-w.in:
			d.m.RequeueWithoutBackoff(0)
		default:
			return nil
		}
	}
}

// deadLetter publishes a message that is not a batch of reservations to the
// dead-letter topic, with the reason.
func (w *Writer) deadLetter(m *nsq.Message, cause error) error {
	body, err := json.Marshal(map[string]any{"topic": w.opts.Topic, "channel": writerChannel, "error": cause.Error(),
		"attempts": m.Attempts, "body": m.Body, "at": time.Now().UTC().Format(time.RFC3339Nano)})
	if err != nil {
		return err
	}
	if _, err := w.dead.PublishFirst(w.opts.NSQDTCP, w.opts.DeadTopic, body); err != nil {
		return err
	}
	w.deadN.Inc()
	w.opts.Logger.Error("seckill writer: message is not a reservation batch; dead-lettered", "topic", w.opts.DeadTopic, "err", cause, "body", string(m.Body[:min(len(m.Body), 256)]))
	return nil
}

// loop takes what is queued (at least one message, up to BatchMax
// reservations) and writes it; while a transaction runs the next batch
// gathers.
func (w *Writer) loop(done <-chan struct{}) {
	batch := make([]delivery, 0, 64)
	for {
		select {
		case <-done:
			return
		case d := <-w.in:
			batch = append(batch[:0], d)
		}
		n := len(batch[0].rs)
	fill:
		for n < w.opts.BatchMax {
			select {
			case d := <-w.in:
				batch = append(batch, d)
				n += len(d.rs)
			default:
				break fill
			}
		}
		w.write(batch)
	}
}

// write writes each activity's reservations of a batch in one transaction
// and answers every message: FIN once all its reservations are written,
// requeue if one of their transactions failed.
func (w *Writer) write(batch []delivery) {
	byActivity := map[int64][]Reservation{}
	var order []int64
	for _, d := range batch {
		for _, r := range d.rs {
			if _, ok := byActivity[r.Activity]; !ok {
				order = append(order, r.Activity)
			}
			byActivity[r.Activity] = append(byActivity[r.Activity], r)
		}
	}
	failed := map[int64]bool{}
	for _, a := range order {
		ctx, cancel := context.WithTimeout(context.Background(), w.opts.MsgTimeout/2)
		err := w.writeActivity(ctx, a, byActivity[a])
		cancel()
		if err != nil {
			failed[a] = true
			w.txErrors.Inc()
			w.opts.Logger.Warn("seckill writer: reservations requeued", "activity", a, "n", len(byActivity[a]), "err", err)
		}
	}
	for _, d := range batch {
		requeue := false
		for _, r := range d.rs {
			requeue = requeue || failed[r.Activity]
		}
		if requeue {
			d.m.Requeue(-1)
		} else {
			d.m.Finish()
		}
	}
}

// writeActivity writes one activity's reservations: read their states in
// Redis (skipping any the reconciler gave back), then one transaction, then
// the outcome back to Redis. Any error leaves every step safe to repeat.
func (w *Writer) writeActivity(ctx context.Context, activity int64, rs []Reservation) error {
	w.batches.Observe(float64(len(rs)))
	rids := make([]string, len(rs))
	for i, r := range rs {
		rids[i] = r.RequestID
	}
	states, err := w.opts.Reserver.States(ctx, activity, rids)
	if err != nil {
		return err
	}
	var todo []Reservation
	seen := map[string]bool{}
	for i, r := range rs {
		if seen[r.RequestID] {
			continue // delivered twice in one batch
		}
		seen[r.RequestID] = true
		switch st := firstByte(states[i]); st {
		case StateGivenBack, StateExpired, StateRejected:
			// Given back or decided already: no order may be made of it.
			w.results.WithLabelValues("given_back").Inc()
			continue
		}
		todo = append(todo, r)
	}
	if len(todo) == 0 {
		return nil
	}
	ordered, rejected, dups, err := w.commit(ctx, activity, todo)
	if err != nil {
		return err
	}
	now := time.Now()
	for _, r := range ordered {
		w.latency.Observe(now.Sub(time.UnixMilli(r.AcceptedMS)).Seconds())
	}
	w.results.WithLabelValues("ordered").Add(float64(len(ordered)))
	w.results.WithLabelValues("rejected").Add(float64(len(rejected)))
	w.results.WithLabelValues("duplicate").Add(float64(len(dups)))
	return w.opts.Reserver.Settle(ctx, activity, append(ordered, dups...), rejected)
}

func firstByte(s string) string {
	if s == "" {
		return ""
	}
	return s[:1]
}

// commit runs the transaction of one batch: the activity's stock row is
// locked first, so the duplicate and quota reads below see every order
// committed before, then the reservations that fit (first come first
// served) are sold with one guarded UPDATE and one multi-row INSERT.
func (w *Writer) commit(ctx context.Context, activity int64, rs []Reservation) (ordered, rejected, dups []Reservation, err error) {
	return w.commitBatch(ctx, activity, rs, false)
}

// commitBatch is commit; slow also reads the orders of the batch's request
// ids (after the unique key said one was ordered by another user).
func (w *Writer) commitBatch(ctx context.Context, activity int64, rs []Reservation, slow bool) (ordered, rejected, dups []Reservation, err error) {
	// Plain BEGIN (REPEATABLE READ): the stock row's lock is taken first,
	// so the snapshot of the reads below starts after every order committed
	// before it.
	tx, err := w.opts.DB.BeginTx(ctx, nil)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback()

	var available, limit int
	err = tx.QueryRowContext(ctx, `SELECT s.available, a.per_user_limit FROM activity_stock s JOIN activity a ON a.id = s.activity_id
		WHERE s.activity_id = ? FOR UPDATE`, activity).Scan(&available, &limit)
	if errors.Is(err, sql.ErrNoRows) {
		// No such activity: nothing can be sold.
		return nil, rs, nil, nil
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("lock stock of activity %d: %w", activity, err)
	}

	// One read of the batch's users' orders gives their units held and the
	// request ids they already ordered (a redelivered reservation). A
	// request id ordered by another user is caught by the unique key.
	users := make([]any, 0, len(rs)+1)
	users = append(users, activity)
	seenUser := map[string]bool{}
	for _, r := range rs {
		if !seenUser[r.User] {
			seenUser[r.User] = true
			users = append(users, r.User)
		}
	}
	existing := map[string]string{} // request id → its order's user
	held := map[string]int{}
	query := "SELECT request_id, user_id, qty, status FROM orders WHERE activity_id = ? AND user_id IN (" + placeholders(len(users)-1) + ")"
	args := users
	if slow {
		query = "SELECT request_id, user_id, qty, status FROM orders WHERE activity_id = ? AND (user_id IN (" + placeholders(len(users)-1) + ") OR request_id IN (" + placeholders(len(rs)) + "))"
		for _, r := range rs {
			args = append(args, r.RequestID)
		}
	}
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read orders: %w", err)
	}
	for rows.Next() {
		var id, u, status string
		var n int
		if err := rows.Scan(&id, &u, &n, &status); err != nil {
			rows.Close()
			return nil, nil, nil, err
		}
		existing[id] = u
		if status != "expired" && seenUser[u] {
			held[u] += n
		}
	}
	if err := rows.Close(); err != nil {
		return nil, nil, nil, fmt.Errorf("read orders: %w", err)
	}

	total := 0
	for _, r := range rs {
		owner, done := existing[r.RequestID]
		switch {
		case done && owner == r.User:
			dups = append(dups, r)
		case done:
			// Another user's request id (possible only after Redis lost
			// its records): not this reservation's order.
			rejected = append(rejected, r)
		case held[r.User]+r.Qty > limit || available-total < r.Qty:
			rejected = append(rejected, r)
		default:
			held[r.User] += r.Qty
			total += r.Qty
			ordered = append(ordered, r)
		}
	}
	if total == 0 {
		return nil, rejected, dups, nil // nothing to write; rollback is fine
	}
	res, err := tx.ExecContext(ctx, "UPDATE activity_stock SET available = available - ?, sold = sold + ? WHERE activity_id = ? AND available >= ?",
		total, total, activity, total)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("update stock: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return nil, nil, nil, err
	} else if n == 0 {
		// The guard refused: explicit rejection of the whole batch, whose
		// units go back to Redis.
		w.opts.Logger.Warn("seckill writer: stock guard refused a batch", "activity", activity, "units", total)
		return nil, append(rejected, ordered...), dups, nil
	}
	var q strings.Builder
	q.WriteString("INSERT INTO orders (activity_id, user_id, qty, status, request_id, accepted_at, expires_at) VALUES ")
	args = make([]any, 0, 6*len(ordered))
	for i, r := range ordered {
		if i > 0 {
			q.WriteString(",")
		}
		q.WriteString("(?, ?, ?, 'reserved', ?, ?, ?)")
		acc := time.UnixMilli(r.AcceptedMS).UTC()
		args = append(args, activity, r.User, r.Qty, r.RequestID, acc, acc.Add(w.opts.OrderTTL))
	}
	if _, err := tx.ExecContext(ctx, q.String(), args...); err != nil {
		var me *mysql.MySQLError
		if errors.As(err, &me) && me.Number == 1062 && !slow {
			// A request id of this batch was ordered by another user: redo
			// the batch reading the request ids too.
			tx.Rollback()
			return w.commitBatch(ctx, activity, rs, true)
		}
		return nil, nil, nil, fmt.Errorf("insert %d orders: %w", len(ordered), err)
	}
	if err := tx.Commit(); err != nil {
		return nil, nil, nil, fmt.Errorf("commit: %w", err)
	}
	return ordered, rejected, dups, nil
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?,", n), ",")
}
