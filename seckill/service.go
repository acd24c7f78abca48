// Package seckill is the flash-sale core: a buy endpoint that decides in
// one Redis Lua step (stock, per-user quota, request id) and queues
// reservations in NSQ; order writers that merge them into guarded MySQL
// transactions; expiry, payment and a reconciler between Redis and MySQL.
// Its reads (item detail, activity status) go through the caches flashsync
// keeps consistent with MySQL.
package seckill

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"github.com/flashsync/flashsync/cacheaside"
	"github.com/flashsync/flashsync/internal/nsqio"
)

// Defaults of Options and WriterOptions (configs' defaults are these).
const (
	// DefaultTopic is "<topic prefix>.seckill" with the default prefix.
	DefaultTopic             = "flashsync.seckill"
	DefaultItemTable         = "shop.item"
	DefaultWriters           = 4
	DefaultBatchMax          = 500
	DefaultOrderTTL          = 15 * time.Minute
	DefaultMsgTimeout        = 10 * time.Second
	DefaultExpireInterval    = time.Second
	DefaultReconcileInterval = 30 * time.Second
	DefaultReconcileGrace    = time.Minute
)

// CheckReconcileGrace refuses a grace that would let the reconciler give
// back reservations still on their way to a writer. A reservation whose
// writer died is redelivered by nsqd only when its message times out
// (msgTimeout), and then waits for a writer's batch and possibly one more
// attempt: a grace shorter than three message timeouts gives back stock
// that was sold (seen: 166 reservations given back after one of two
// seckill processes was SIGKILLed with a 3 s grace).
func CheckReconcileGrace(grace, msgTimeout time.Duration) error {
	if floor := 3 * msgTimeout; grace < floor {
		return fmt.Errorf("reconcile grace %v is shorter than 3 NSQ message timeouts (%v): a reservation whose writer died is redelivered only after its message times out, and would be given back while its order is still coming", grace, floor)
	}
	return nil
}

// Options configure a Service. Parts choose what runs: the buy API, the
// order writers, the expirer and the reconciler.
type Options struct {
	// Addr is the API's listen address (API part).
	Addr string
	// DB is the flash-sale database (schema.sql).
	DB *sql.DB
	// Reservations is the Redis of the reservation counters: never one of
	// the cache groups the binlog path purges.
	Reservations redis.UniversalClient
	// Cache reads item and activity display data (nil: straight from MySQL).
	Cache *cacheaside.Reader
	// ItemTable is the db.table of the items (GET /items/{id}).
	ItemTable string

	NSQDTCP []string
	// NSQDHTTP: the topic and the writers' channel are created there at
	// start, so reservations published before a writer connects wait in
	// the channel and nsqlookupd knows the topic at once.
	NSQDHTTP    []string
	LookupdHTTP []string
	// Topic carries reservations to the writers.
	Topic string

	// TokenKey signs order tokens.
	TokenKey []byte
	// Per-IP and per-user request rates on the buy endpoint (0: no limit).
	RateIP, RateUser   float64
	BurstIP, BurstUser int

	Writers    int
	BatchMax   int
	OrderTTL   time.Duration
	MsgTimeout time.Duration

	ExpireInterval    time.Duration
	ReconcileInterval time.Duration
	// ReconcileGrace is how long a reservation may stay unwritten before
	// the reconciler gives it back.
	ReconcileGrace time.Duration

	API, Writer, Expirer, Reconciler bool

	// Now is the clock (tests); default time.Now.
	Now        func() time.Time
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Service runs the chosen parts.
type Service struct {
	opts     Options
	reserver *Reserver
	writer   *Writer
	pub      *publisher
	batch    *reserveBatcher
	limits   *limiters
	ln       net.Listener

	actMu    sync.Mutex
	acts     map[int64]cachedActivity
	actLoads map[int64]*activityLoad

	requests   *prometheus.CounterVec
	accepted   prometheus.Counter
	cacheReads *prometheus.CounterVec
	reconciles *prometheus.CounterVec
	fixed      *prometheus.CounterVec
	expired    prometheus.Counter

	closeOnce sync.Once
}

type cachedActivity struct {
	a    *Activity
	read time.Time
}

// activityTTL bounds how long the buy path uses its in-process copy of an
// activity's times and quota (hot path: no read per request).
const activityTTL = time.Second

// New checks the options and, for the API, listens (so Addr may be ":0").
func New(opts Options) (*Service, error) {
	if opts.DB == nil || opts.Reservations == nil {
		return nil, errors.New("seckill: DB and Reservations are required")
	}
	if !(opts.API || opts.Writer || opts.Expirer || opts.Reconciler) {
		return nil, errors.New("seckill: no part to run (api, writer, expirer, reconciler)")
	}
	opts.Topic = cmp.Or(opts.Topic, DefaultTopic)
	opts.ItemTable = cmp.Or(opts.ItemTable, DefaultItemTable)
	if opts.ExpireInterval <= 0 {
		opts.ExpireInterval = DefaultExpireInterval
	}
	if opts.ReconcileInterval <= 0 {
		opts.ReconcileInterval = DefaultReconcileInterval
	}
	if opts.ReconcileGrace <= 0 {
		opts.ReconcileGrace = DefaultReconcileGrace
	}
	if opts.MsgTimeout <= 0 {
		opts.MsgTimeout = DefaultMsgTimeout
	}
	if err := CheckReconcileGrace(opts.ReconcileGrace, opts.MsgTimeout); err != nil {
		return nil, fmt.Errorf("seckill: %w", err)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	opts.Logger = cmp.Or(opts.Logger, slog.Default())
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	if opts.API && len(opts.TokenKey) < 16 {
		return nil, errors.New("seckill: token key must be at least 16 bytes")
	}
	if (opts.API || opts.Writer) && len(opts.NSQDTCP) == 0 && len(opts.LookupdHTTP) == 0 {
		return nil, errors.New("seckill: no nsqd address")
	}
	if opts.API && len(opts.NSQDTCP) == 0 {
		return nil, errors.New("seckill: the api publishes reservations: nsqd_tcp is required")
	}
	s := &Service{
		opts:     opts,
		reserver: NewReserver(opts.Reservations),
		acts:     map[int64]cachedActivity{},
		actLoads: map[int64]*activityLoad{},
		limits: &limiters{ipRate: rate.Limit(opts.RateIP), userRate: rate.Limit(opts.RateUser),
			ipBurst: max(opts.BurstIP, 1), userBurst: max(opts.BurstUser, 1),
			ip: map[string]*limiter{}, user: map[string]*limiter{}},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashsync_seckill_requests_total",
			Help: "API requests by endpoint and result (ok or the refusal code).",
		}, []string{"endpoint", "result"}),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flashsync_seckill_reservations_accepted_total",
			Help: "Reservations taken in Redis and queued for the order writers.",
		}),
		cacheReads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashsync_seckill_cache_reads_total",
			Help: "Display reads by result: hit, filled (loaded and cached), loaded (not cached: raced an invalidation or another filler), bypassed (no cache replica fresh enough or up: read from MySQL).",
		}, []string{"result"}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashsync_seckill_reconciles_total",
			Help: "Reconciliation passes, by result (applied, busy: Redis changed during the pass).",
		}, []string{"result"}),
		fixed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashsync_seckill_reconcile_fixed_total",
			Help: "What reconciliations repaired: ordered, expired and given_back records, users' units, stock counters.",
		}, []string{"what"}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flashsync_seckill_orders_expired_total",
			Help: "Unpaid orders expired; their stock given back.",
		}),
	}
	for _, c := range []prometheus.Collector{s.requests, s.accepted, s.cacheReads, s.reconciles, s.fixed, s.expired} {
		if err := opts.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	if opts.Writer {
		w, err := NewWriter(WriterOptions{DB: opts.DB, Reserver: s.reserver, NSQDTCP: opts.NSQDTCP, LookupdHTTP: opts.LookupdHTTP,
			Topic: opts.Topic, Writers: opts.Writers, BatchMax: opts.BatchMax, OrderTTL: opts.OrderTTL, MsgTimeout: opts.MsgTimeout,
			Logger: opts.Logger, Registerer: opts.Registerer})
		if err != nil {
			return nil, err
		}
		s.writer = w
	}
	if opts.API {
		s.pub = newPublisher(opts.NSQDTCP, opts.Topic, opts.Logger)
		s.batch = newReserveBatcher(s.reserver)
		ln, err := net.Listen("tcp", opts.Addr)
		if err != nil {
			return nil, fmt.Errorf("seckill api: %w", err)
		}
		s.ln = ln
	}
	return s, nil
}

// Health reports whether the reservation Redis and the database answer.
func (s *Service) Health(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var errs []error
	if err := s.opts.Reservations.Ping(ctx).Err(); err != nil {
		errs = append(errs, fmt.Errorf("reservation redis: %w", err))
	}
	if err := s.opts.DB.PingContext(ctx); err != nil {
		errs = append(errs, fmt.Errorf("mysql: %w", err))
	}
	return errors.Join(errs...)
}

// Addr is the API's address, once New returned.
func (s *Service) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Handler is the API (for tests that serve it themselves).
func (s *Service) Handler() http.Handler { return s.mux() }

// Run runs the parts until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	goPart := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				errs <- err
				cancel()
			}
		}()
	}
	if err := s.ensureTopic(ctx); err != nil {
		s.opts.Logger.Warn("seckill: creating the reservations topic and channel (writers find it later through nsqlookupd or nsqd)", "err", err)
	}
	if s.writer != nil {
		goPart(func() error { return s.writer.Run(ctx) })
	}
	if s.opts.Expirer {
		goPart(func() error { s.every(ctx, s.opts.ExpireInterval, s.expireOnce); return nil })
	}
	if s.opts.Reconciler {
		goPart(func() error { s.every(ctx, s.opts.ReconcileInterval, s.reconcileAll); return nil })
	}
	if s.pub != nil {
		// The publisher and the Redis batcher outlive the HTTP server:
		// requests still being answered at shutdown can finish.
		pubCtx, stopPub := context.WithCancel(context.Background())
		pubDone := make(chan struct{}, 2)
		go func() { defer func() { pubDone <- struct{}{} }(); s.pub.run(pubCtx) }()
		go func() { defer func() { pubDone <- struct{}{} }(); s.batch.run(pubCtx) }()
		goPart(func() error {
			// Forgetting a bucket refills it; one idle for 10 s is full
			// again anyway unless its burst exceeds 10 s of its rate.
			s.every(ctx, 10*time.Second, func(context.Context) {
				s.limits.sweep(10 * time.Second)
				s.sweepActivities(time.Minute)
			})
			return nil
		})
		srv := &http.Server{Handler: s.mux(), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute}
		goPart(func() error {
			defer func() { stopPub(); <-pubDone; <-pubDone }()
			served := make(chan error, 1)
			go func() { served <- srv.Serve(s.ln) }()
			s.opts.Logger.Info("seckill api listening", "addr", s.ln.Addr().String())
			select {
			case err := <-served:
				return fmt.Errorf("seckill api: %w", err)
			case <-ctx.Done():
			}
			sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
			defer c()
			srv.Shutdown(sctx)
			<-served
			return nil
		})
	}

	<-ctx.Done()
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

// Close releases the listener and the publisher; it is safe to call more
// than once.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		if s.ln != nil {
			s.ln.Close()
		}
		if s.pub != nil {
			s.pub.close()
		}
	})
	return nil
}

// ensureTopic creates the reservations topic and the writers' channel on
// every nsqd of NSQDHTTP.
func (s *Service) ensureTopic(ctx context.Context) error {
	c := &http.Client{Timeout: 2 * time.Second}
	var errs []error
	for _, addr := range s.opts.NSQDHTTP {
		errs = append(errs, nsqio.CreateChannels(ctx, c, addr, s.opts.Topic, writerChannel))
	}
	return errors.Join(errs...)
}

// sweepActivities forgets activity copies not read again for idle.
func (s *Service) sweepActivities(idle time.Duration) {
	s.actMu.Lock()
	defer s.actMu.Unlock()
	for id, c := range s.acts {
		if time.Since(c.read) > idle {
			delete(s.acts, id)
		}
	}
}

func (s *Service) every(ctx context.Context, d time.Duration, f func(context.Context)) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f(ctx)
		}
	}
}

func (s *Service) expireOnce(ctx context.Context) {
	for {
		exp, err := ExpireDue(ctx, s.opts.DB, s.reserver, s.opts.Now(), 200)
		s.expired.Add(float64(len(exp)))
		if err != nil {
			if ctx.Err() == nil {
				s.opts.Logger.Warn("seckill expirer", "err", err)
			}
			return
		}
		if len(exp) < 200 {
			return
		}
	}
}

// reconcileAll reconciles every activity that is open or ended less than
// a day ago.
func (s *Service) reconcileAll(ctx context.Context) {
	now := s.opts.Now().UTC()
	rows, err := s.opts.DB.QueryContext(ctx, "SELECT id FROM activity WHERE start_at <= ? AND end_at > ?", now, now.Add(-24*time.Hour))
	if err != nil {
		s.opts.Logger.Warn("seckill reconciler", "err", err)
		return
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if rows.Scan(&id) == nil {
			ids = append(ids, id)
		}
	}
	rows.Close()
	for _, id := range ids {
		rep, err := Reconcile(ctx, s.opts.DB, s.reserver, id, s.opts.ReconcileGrace, s.opts.Now())
		if err != nil {
			s.opts.Logger.Warn("seckill reconciler", "activity", id, "err", err)
			continue
		}
		s.observeReconcile(rep)
	}
}

// activity returns the in-process copy of an activity, refreshed from
// MySQL after activityTTL. One load per activity runs at a time: the others
// keep selling on the stale copy meanwhile, or, with none yet, wait for that
// load (10,000 first requests must not open 10,000 MySQL connections).
func (s *Service) activity(ctx context.Context, id int64) (*Activity, error) {
	s.actMu.Lock()
	c, ok := s.acts[id]
	if ok && time.Since(c.read) < activityTTL {
		s.actMu.Unlock()
		return c.a, nil
	}
	l := s.actLoads[id]
	if l != nil {
		s.actMu.Unlock()
		if ok {
			return c.a, nil
		}
		select {
		case <-l.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return l.a, l.err
	}
	l = &activityLoad{done: make(chan struct{})}
	s.actLoads[id] = l
	s.actMu.Unlock()

	// Others wait on this load: the request that started it may go away.
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	a, err := LoadActivity(lctx, s.opts.DB, id)
	cancel()
	switch {
	case errors.Is(err, errNotFound):
		// Not remembered: ids that name nothing must not fill the map.
		l.err = refuse(http.StatusNotFound, "not_found", "no activity %d", id)
	case err != nil && ok:
		l.a = c.a // MySQL hiccup: keep selling on the last copy
	case err != nil:
		l.err = refuse(http.StatusServiceUnavailable, "unavailable", "activity %d: %v", id, err)
	default:
		l.a = a
	}
	s.actMu.Lock()
	delete(s.actLoads, id)
	if err == nil {
		s.acts[id] = cachedActivity{a: a, read: time.Now()}
	}
	s.actMu.Unlock()
	close(l.done)
	return l.a, l.err
}

// activityLoad is one MySQL read of an activity that other requests wait on.
type activityLoad struct {
	done chan struct{}
	a    *Activity
	err  error
}

// publisher batches reservations into messages: a request waits for
// nsqd's acknowledgement of the message that carried it.
type publisher struct {
	addrs []string
	topic string
	in    chan pubReq
	prods *nsqio.ProducerPool
	cur   int
}

type pubReq struct {
	body []byte
	done chan error
}

const maxPublishBatch = 256

func newPublisher(addrs []string, topic string, log *slog.Logger) *publisher {
	return &publisher{addrs: addrs, topic: topic, in: make(chan pubReq, 4*maxPublishBatch), prods: nsqio.NewProducerPool(2*time.Second, log)}
}

func (p *publisher) publish(ctx context.Context, body []byte) error {
	r := pubReq{body: body, done: make(chan error, 1)}
	select {
	case p.in <- r:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		// The batch may still go out: the reservation is then written;
		// otherwise the reconciler gives it back.
		return ctx.Err()
	}
}

func (p *publisher) run(ctx context.Context) {
	batch := make([]pubReq, 0, maxPublishBatch)
	bodies := make([][]byte, 0, maxPublishBatch)
	busy := false
	for {
		select {
		case <-ctx.Done():
			for {
				select {
				case r := <-p.in:
					r.done <- errors.New("shutting down")
				default:
					return
				}
			}
		case r := <-p.in:
			batch = append(batch[:0], r)
		}
		batch = gather(p.in, batch, maxPublishBatch, gatherLinger, busy)
		busy = len(batch) > 1
		bodies = bodies[:0]
		for _, r := range batch {
			bodies = append(bodies, r.body)
		}
		err := p.send(bodies)
		for _, r := range batch {
			r.done <- err
		}
	}
}

// send publishes the batch as one message (a JSON array of reservations:
// nsqd, the writers' FINs and requeues then cost one message per batch,
// not per reservation) to the current nsqd, moving on to the next when it
// fails.
func (p *publisher) send(bodies [][]byte) error {
	// Start with the nsqd that took the last batch.
	addrs := append(append([]string(nil), p.addrs[p.cur:]...), p.addrs[:p.cur]...)
	addr, err := p.prods.PublishFirst(addrs, p.topic, joinReservations(bodies))
	if err != nil {
		return err
	}
	p.cur = slices.Index(p.addrs, addr)
	return nil
}

func (p *publisher) close() { p.prods.Close() }

// joinReservations makes one message of encoded reservations.
func joinReservations(bodies [][]byte) []byte {
	n := 2
	for _, b := range bodies {
		n += len(b) + 1
	}
	out := make([]byte, 0, n)
	out = append(out, '[')
	for i, b := range bodies {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, b...)
	}
	return append(out, ']')
}
