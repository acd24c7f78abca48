package invalidate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/configs"
)

// RedisPurgerOptions configure a RedisPurger.
type RedisPurgerOptions struct {
	Groups []configs.RedisGroup
	// NSQDTCP lists the nsqd to consume from when LookupdHTTP is empty, and
	// those dead letters go to (the first that takes them).
	NSQDTCP []string
	// LookupdHTTP lists nsqlookupd HTTP addresses. Set, each replica's
	// consumer connects to every nsqd that nsqlookupd reports for its topic,
	// polling every LookupdPollInterval, so an nsqd added later is consumed
	// without a restart. Without NSQDTCP, dead letters go to the nsqd that
	// nsqlookupd lists.
	LookupdHTTP []string
	// LookupdPollInterval is how often nsqlookupd is asked (default 5 s).
	LookupdPollInterval time.Duration
	TopicPrefix         string
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
	metrics  purgerMetrics

	// Dead-letter producers by nsqd address, created on first use, and the
	// address that took the last dead letter (tried first next time).
	deadMu        sync.Mutex
	deadProducers map[string]*nsq.Producer
	deadLast      string

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
	if len(opts.NSQDTCP) == 0 && len(opts.LookupdHTTP) == 0 {
		return nil, errors.New("redis purger: no nsqd or nsqlookupd address")
	}
	if opts.LookupdPollInterval <= 0 {
		opts.LookupdPollInterval = 5 * time.Second
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
	p := &RedisPurger{opts: opts, metrics: m, deadProducers: map[string]*nsq.Producer{}}
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
	defer p.stopDeadProducers()

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
		cfg.LookupdPollInterval = p.opts.LookupdPollInterval
		c, err := nsq.NewConsumer(r.topic, r.channel, cfg)
		if err != nil {
			stopAll()
			return fmt.Errorf("nsq consumer %s/%s: %w", r.topic, r.channel, err)
		}
		// go-nsq warns on every clean stop; its errors (lost nsqd
		// connections) matter, and the handler logs its own failures.
		c.SetLogger(&consumerLogger{l: r.log, poll: p.opts.LookupdPollInterval}, nsq.LogLevelError)
		c.AddHandler(r)
		// A message is only in the channels of the nsqd it was published
		// to, so every consumer reads from every nsqd: all that nsqlookupd
		// knows for the topic, or else every configured one.
		if len(p.opts.LookupdHTTP) > 0 {
			err = c.ConnectToNSQLookupds(p.opts.LookupdHTTP)
		} else {
			err = c.ConnectToNSQDs(p.opts.NSQDTCP)
		}
		if err != nil {
			c.Stop()
			stopAll()
			return fmt.Errorf("nsq consumer %s/%s: %w", r.topic, r.channel, err)
		}
		consumers = append(consumers, c)
		p.metrics.up.WithLabelValues(r.group, r.addr).Set(1)
	}
	p.opts.Logger.Info("redis purger running", "replicas", len(p.replicas), "nsqd", p.opts.NSQDTCP, "nsqlookupd", p.opts.LookupdHTTP)
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
	if err := r.p.publishDead(topic, body); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	return nil
}

// publishDead publishes body to the first nsqd that takes it, trying each in
// turn, starting with the one that took the last dead letter.
func (p *RedisPurger) publishDead(topic string, body []byte) error {
	addrs, err := p.deadLetterAddrs()
	if err != nil {
		return err
	}
	p.deadMu.Lock()
	last := p.deadLast
	p.deadMu.Unlock()
	if i := slices.Index(addrs, last); i > 0 {
		addrs = append(append([]string{last}, addrs[:i]...), addrs[i+1:]...)
	}
	var errs []error
	for _, addr := range addrs {
		prod, err := p.deadProducer(addr)
		if err == nil {
			err = prod.Publish(topic, body)
		}
		if err == nil {
			p.deadMu.Lock()
			p.deadLast = addr
			p.deadMu.Unlock()
			return nil
		}
		errs = append(errs, fmt.Errorf("nsqd %s: %w", addr, err))
	}
	return errors.Join(errs...)
}

// deadLetterAddrs lists the nsqd TCP addresses dead letters may go to: the
// configured ones, or else those the first answering nsqlookupd knows.
func (p *RedisPurger) deadLetterAddrs() ([]string, error) {
	if len(p.opts.NSQDTCP) > 0 {
		return p.opts.NSQDTCP, nil
	}
	var errs []error
	for _, l := range p.opts.LookupdHTTP {
		addrs, err := lookupdNodes(l, p.opts.Timeout)
		if err == nil && len(addrs) == 0 {
			err = errors.New("no nsqd registered")
		}
		if err == nil {
			return addrs, nil
		}
		errs = append(errs, fmt.Errorf("nsqlookupd %s: %w", l, err))
	}
	return nil, errors.Join(errs...)
}

// lookupdNodes asks nsqlookupd for the TCP addresses of every nsqd
// registered with it.
func lookupdNodes(addr string, timeout time.Duration) ([]string, error) {
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	c := http.Client{Timeout: timeout}
	resp, err := c.Get(strings.TrimSuffix(addr, "/") + "/nodes")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/nodes: %s", resp.Status)
	}
	var nodes struct {
		Producers []struct {
			BroadcastAddress string `json:"broadcast_address"`
			TCPPort          int    `json:"tcp_port"`
		} `json:"producers"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&nodes); err != nil {
		return nil, fmt.Errorf("/nodes: %w", err)
	}
	var addrs []string
	for _, n := range nodes.Producers {
		addrs = append(addrs, net.JoinHostPort(n.BroadcastAddress, strconv.Itoa(n.TCPPort)))
	}
	return addrs, nil
}

// deadProducer returns the dead-letter producer of the nsqd at addr.
func (p *RedisPurger) deadProducer(addr string) (*nsq.Producer, error) {
	p.deadMu.Lock()
	defer p.deadMu.Unlock()
	if prod := p.deadProducers[addr]; prod != nil {
		return prod, nil
	}
	cfg := nsq.NewConfig()
	cfg.DialTimeout = p.opts.Timeout
	cfg.WriteTimeout = p.opts.Timeout
	prod, err := nsq.NewProducer(addr, cfg)
	if err != nil {
		return nil, err
	}
	prod.SetLogger(nsqLogger{p.opts.Logger.With("nsqd", addr)}, nsq.LogLevelWarning)
	p.deadProducers[addr] = prod
	return prod, nil
}

func (p *RedisPurger) stopDeadProducers() {
	p.deadMu.Lock()
	defer p.deadMu.Unlock()
	for addr, prod := range p.deadProducers {
		prod.Stop()
		delete(p.deadProducers, addr)
	}
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

// consumerLogger is nsqLogger for a replica's consumer. nsqlookupd answers
// TOPIC_NOT_FOUND until a canal has created the topic on some nsqd, which is
// normal on a first start: that is said once, at info level, not at every
// poll.
type consumerLogger struct {
	l        *slog.Logger
	poll     time.Duration
	notFound atomic.Bool
}

func (c *consumerLogger) Output(_ int, s string) error {
	if strings.Contains(s, "TOPIC_NOT_FOUND") {
		if !c.notFound.Swap(true) {
			c.l.Info("nsqlookupd knows no nsqd with this topic yet (the canal creates it at start); asking again", "every", c.poll)
		}
		return nil
	}
	c.l.Warn(s)
	return nil
}

func truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "…"
}
