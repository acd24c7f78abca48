package invalidate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/configs"
)

// RedisPurgerOptions configure a RedisPurger.
type RedisPurgerOptions struct {
	Groups      []configs.RedisGroup
	NSQDTCP     []string
	TopicPrefix string
	// MaxAttempts dead-letters a message that failed this many times for a
	// reason other than its replica being unreachable.
	MaxAttempts  uint16
	MaxInFlight  int
	Timeout      time.Duration
	PipelineKeys int
	Logger       *slog.Logger
	Registerer   prometheus.Registerer
}

// RedisPurger deletes purged keys from every replica of every group. Each
// replica has its own NSQ consumer on its own channel.
type RedisPurger struct {
	opts     RedisPurgerOptions
	replicas []*replicaPurger
	dead     *nsq.Producer
	metrics  purgerMetrics

	mu      sync.Mutex
	stopped bool
}

type purgerMetrics struct {
	messages *prometheus.CounterVec
	keys     *prometheus.CounterVec
	dead     *prometheus.CounterVec
	up       *prometheus.GaugeVec
	latency  *prometheus.HistogramVec
}

func newPurgerMetrics(reg prometheus.Registerer) (purgerMetrics, error) {
	m := purgerMetrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashsync_purger_messages_total",
			Help: "Purge messages handled per replica, by result (ok, retry, unreachable, dead_letter).",
		}, []string{"group", "replica", "result"}),
		keys: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashsync_purger_keys_deleted_total",
			Help: "Keys sent to DEL per replica (deleted or already absent).",
		}, []string{"group", "replica"}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashsync_purger_dead_letters_total",
			Help: "Messages moved to the dead-letter topic after too many attempts.",
		}, []string{"group", "replica"}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flashsync_purger_replica_up",
			Help: "1 while the replica answered its last command, 0 while it is unreachable.",
		}, []string{"group", "replica"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "flashsync_purger_commit_to_purge_seconds",
			Help:    "From the canal reading a commit to its keys deleted on a replica.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"group"}),
	}
	for _, c := range []prometheus.Collector{m.messages, m.keys, m.dead, m.up, m.latency} {
		if err := reg.Register(c); err != nil {
			return m, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

// NewRedisPurger checks the options; nothing connects before Run.
func NewRedisPurger(opts RedisPurgerOptions) (*RedisPurger, error) {
	if len(opts.Groups) == 0 {
		return nil, errors.New("redis purger: no redis groups")
	}
	if len(opts.NSQDTCP) == 0 {
		return nil, errors.New("redis purger: no nsqd address")
	}
	if opts.TopicPrefix == "" {
		opts.TopicPrefix = "flashsync"
	}
	if opts.MaxAttempts == 0 {
		opts.MaxAttempts = 10
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = 64
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Second
	}
	if opts.PipelineKeys <= 0 {
		opts.PipelineKeys = 512
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	m, err := newPurgerMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	p := &RedisPurger{opts: opts, metrics: m}
	for _, g := range opts.Groups {
		for _, addr := range g.Replicas {
			p.replicas = append(p.replicas, &replicaPurger{
				p:       p,
				group:   g.Name,
				addr:    addr,
				topic:   RedisTopic(opts.TopicPrefix, g.Name),
				channel: ReplicaChannel(addr),
				log:     opts.Logger.With("group", g.Name, "replica", addr),
				client: redis.NewClient(&redis.Options{
					Addr:         addr,
					Password:     g.Password,
					DB:           g.DB,
					DialTimeout:  opts.Timeout,
					ReadTimeout:  opts.Timeout,
					WriteTimeout: opts.Timeout,
					PoolSize:     4,
					MaxRetries:   -1, // retries belong to NSQ, not to the client
				}),
			})
		}
	}
	return p, nil
}

// Run consumes until ctx ends, then stops every consumer, waiting for the
// messages in hand.
func (p *RedisPurger) Run(ctx context.Context) error {
	cfg := nsq.NewConfig()
	dead, err := nsq.NewProducer(p.opts.NSQDTCP[0], cfg)
	if err != nil {
		return fmt.Errorf("nsq producer %s: %w", p.opts.NSQDTCP[0], err)
	}
	dead.SetLogger(nsqLogger{p.opts.Logger}, nsq.LogLevelWarning)
	p.dead = dead
	defer dead.Stop()

	var consumers []*nsq.Consumer
	stopAll := func() {
		for _, c := range consumers {
			c.Stop()
		}
		for _, c := range consumers {
			<-c.StopChan
		}
	}
	for _, r := range p.replicas {
		r.ctx = ctx
		cfg := nsq.NewConfig()
		cfg.MaxInFlight = p.opts.MaxInFlight
		// Attempts are counted by the handler, which knows an unreachable
		// replica from a bad message; go-nsq must never drop on its own.
		cfg.MaxAttempts = 0
		cfg.DefaultRequeueDelay = 100 * time.Millisecond
		cfg.MaxRequeueDelay = 5 * time.Second
		cfg.MaxBackoffDuration = 2 * time.Second
		cfg.BackoffMultiplier = 100 * time.Millisecond
		// nsqd buffers a consumer's messages for up to 250 ms by default;
		// a purge is latency-bound and already a batch, so send each at once.
		cfg.OutputBufferSize = -1
		cfg.OutputBufferTimeout = -1
		c, err := nsq.NewConsumer(r.topic, r.channel, cfg)
		if err != nil {
			stopAll()
			return fmt.Errorf("nsq consumer %s/%s: %w", r.topic, r.channel, err)
		}
		// go-nsq warns on every clean stop; its errors (lost nsqd
		// connections) matter, and the handler logs its own failures.
		c.SetLogger(nsqLogger{r.log}, nsq.LogLevelError)
		c.AddHandler(r)
		if err := c.ConnectToNSQDs(p.opts.NSQDTCP); err != nil {
			c.Stop()
			stopAll()
			return fmt.Errorf("nsq consumer %s/%s: %w", r.topic, r.channel, err)
		}
		consumers = append(consumers, c)
		p.metrics.up.WithLabelValues(r.group, r.addr).Set(1)
	}
	p.opts.Logger.Info("redis purger running", "replicas", len(p.replicas))
	<-ctx.Done()
	stopAll()
	return p.Close()
}

// Close releases the Redis clients; it is safe to call more than once.
func (p *RedisPurger) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return nil
	}
	p.stopped = true
	var errs []error
	for _, r := range p.replicas {
		errs = append(errs, r.client.Close())
	}
	return errors.Join(errs...)
}

// Health reports replicas that are currently unreachable.
func (p *RedisPurger) Health() error {
	var down []string
	for _, r := range p.replicas {
		r.mu.Lock()
		if r.down {
			down = append(down, r.group+"/"+r.addr)
		}
		r.mu.Unlock()
	}
	if len(down) > 0 {
		return fmt.Errorf("redis replicas unreachable (purges buffered in NSQ): %s", strings.Join(down, ", "))
	}
	return nil
}

// replicaPurger applies one group's purges to one replica.
type replicaPurger struct {
	p              *RedisPurger
	group, addr    string
	topic, channel string
	client         *redis.Client
	log            *slog.Logger
	ctx            context.Context

	mu   sync.Mutex
	down bool
}

var _ nsq.Handler = (*replicaPurger)(nil)

// HandleMessage deletes the message's keys. While the replica is unreachable
// it holds the message and waits for the replica rather than burning
// attempts: the replica's channel keeps the backlog, and it drains once the
// replica answers. Any other failure is returned, so NSQ requeues the message
// with backoff, until MaxAttempts sends it to the dead-letter topic.
func (r *replicaPurger) HandleMessage(m *nsq.Message) error {
	msg, err := DecodePurge(m.Body)
	if err == nil {
		err = r.purgeWaiting(m, msg.Keys)
	}
	if err == nil {
		r.p.metrics.messages.WithLabelValues(r.group, r.addr, "ok").Inc()
		r.p.metrics.keys.WithLabelValues(r.group, r.addr).Add(float64(len(msg.Keys)))
		if msg.SeenUnixNano > 0 {
			r.p.metrics.latency.WithLabelValues(r.group).Observe(time.Since(time.Unix(0, msg.SeenUnixNano)).Seconds())
		}
		return nil
	}
	if r.ctx.Err() != nil {
		// Shutting down: give the message back untouched for the next run.
		m.RequeueWithoutBackoff(0)
		return nil
	}
	if m.Attempts < r.p.opts.MaxAttempts {
		r.p.metrics.messages.WithLabelValues(r.group, r.addr, "retry").Inc()
		r.log.Warn("purge failed; requeued with backoff", "attempt", m.Attempts, "max_attempts", r.p.opts.MaxAttempts, "err", err)
		return err
	}
	if derr := r.deadLetter(m, err); derr != nil {
		r.log.Error("dead-letter publish failed; requeued", "err", derr, "purge_err", err)
		return derr
	}
	r.p.metrics.messages.WithLabelValues(r.group, r.addr, "dead_letter").Inc()
	r.p.metrics.dead.WithLabelValues(r.group, r.addr).Inc()
	r.log.Error("purge message dead-lettered", "topic", DeadLetterTopic(r.p.opts.TopicPrefix), "attempts", m.Attempts, "err", err, "body", truncate(m.Body, 256))
	return nil
}

// purgeWaiting deletes keys, waiting for the replica while it is unreachable.
func (r *replicaPurger) purgeWaiting(m *nsq.Message, keys []string) error {
	backoff := 20 * time.Millisecond
	lastTouch := time.Now()
	for {
		err := r.purge(keys)
		if err == nil || !unreachable(err) {
			r.setDown(false, nil)
			return err
		}
		r.p.metrics.messages.WithLabelValues(r.group, r.addr, "unreachable").Inc()
		r.setDown(true, err)
		select {
		case <-r.ctx.Done():
			return err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
		if time.Since(lastTouch) > 10*time.Second {
			m.Touch() // keep nsqd from timing the held message out
			lastTouch = time.Now()
		}
	}
}

func (r *replicaPurger) setDown(down bool, err error) {
	r.mu.Lock()
	changed := r.down != down
	r.down = down
	r.mu.Unlock()
	if !changed {
		return
	}
	if down {
		r.p.metrics.up.WithLabelValues(r.group, r.addr).Set(0)
		r.log.Warn("redis replica unreachable; holding its purges until it answers", "err", err)
	} else {
		r.p.metrics.up.WithLabelValues(r.group, r.addr).Set(1)
		r.log.Info("redis replica reachable again; draining its backlog")
	}
}

// purge sends DEL in pipelines of at most PipelineKeys keys.
func (r *replicaPurger) purge(keys []string) error {
	ctx, cancel := context.WithTimeout(r.ctx, r.p.opts.Timeout)
	defer cancel()
	for len(keys) > 0 {
		n := min(len(keys), r.p.opts.PipelineKeys)
		chunk := keys[:n]
		keys = keys[n:]
		pipe := r.client.Pipeline()
		// One DEL per 64 keys keeps each command small while the pipeline
		// saves the round trips.
		for len(chunk) > 0 {
			k := min(len(chunk), 64)
			pipe.Del(ctx, chunk[:k]...)
			chunk = chunk[k:]
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("redis %s DEL: %w", r.addr, err)
		}
	}
	return nil
}

// deadLetter is the record published to the dead-letter topic.
type deadLetter struct {
	Topic    string `json:"topic"`
	Channel  string `json:"channel"`
	Replica  string `json:"replica"`
	Attempts uint16 `json:"attempts"`
	Error    string `json:"error"`
	Body     []byte `json:"body"`
	At       string `json:"at"`
}

func (r *replicaPurger) deadLetter(m *nsq.Message, cause error) error {
	body, err := json.Marshal(deadLetter{
		Topic: r.topic, Channel: r.channel, Replica: r.addr, Attempts: m.Attempts,
		Error: cause.Error(), Body: m.Body, At: time.Now().UTC().Format(time.RFC3339Nano),
	})
	if err != nil {
		return err
	}
	topic := DeadLetterTopic(r.p.opts.TopicPrefix)
	if err := r.p.dead.Publish(topic, body); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	return nil
}

// unreachable tells a replica that cannot be talked to (whose purges must
// wait) from one that answered with an error.
func unreachable(err error) bool {
	var ne net.Error
	switch {
	case errors.As(err, &ne),
		errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE),
		errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, redis.ErrPoolTimeout),
		errors.Is(err, redis.ErrClosed):
		return true
	}
	// A restarting Redis answers LOADING until its dataset is in memory.
	msg := err.Error()
	for _, p := range []string{"LOADING", "MASTERDOWN", "TRYAGAIN", "BUSY"} {
		if strings.Contains(msg, p+" ") {
			return true
		}
	}
	return false
}

func truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "…"
}
