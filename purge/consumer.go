package purge

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/flashsync/flashsync/internal/nsqio"
	"github.com/flashsync/flashsync/internal/retry"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/nsqio/go-nsq"
	"github.com/prometheus/client_golang/prometheus"
)

// This file is the consumer logic every purger shares (Redis, HTTP, and the
// CDN dispatcher in package cdn): one NSQ consumer per cache target (a Redis
// replica, an HTTP cache instance, a CDN node's console) on its own channel
// of its group's topic; a target that cannot be reached holds its
// message and retries with backoff without burning attempts; any other
// failure requeues with backoff until MaxAttempts sends the message to the
// dead-letter topic; metrics and Health per target.

// Defaults of ConsumerOptions and the purgers' options (configs' defaults
// are these).
const (
	DefaultMaxAttempts  = 10
	DefaultMaxInFlight  = 64
	DefaultTimeout      = 2 * time.Second
	DefaultPipelineKeys = 512
)

// ConsumerOptions are the NSQ and failure settings of a purger.
type ConsumerOptions struct {
	// NSQDTCP lists the nsqd to consume from when LookupdHTTP is empty, and
	// those dead letters go to (the first that takes them).
	NSQDTCP []string
	// LookupdHTTP lists nsqlookupd HTTP addresses. Set, each target's
	// consumer connects to every nsqd that nsqlookupd reports for its topic,
	// polling every LookupdPollInterval (default 5 s), so an nsqd added
	// later is consumed without a restart. Without NSQDTCP, dead letters go
	// to the nsqd that nsqlookupd lists.
	LookupdHTTP         []string
	LookupdPollInterval time.Duration
	TopicPrefix         string
	// MaxAttempts dead-letters a message that failed this many times for a
	// reason other than its target being unreachable (default 10).
	MaxAttempts uint16
	// MaxInFlight is the messages one target's consumer holds (default 64).
	MaxInFlight int
	// Timeout bounds one request to a target (default 2 s).
	Timeout time.Duration
	// MsgTimeout is the time nsqd gives a message in flight before it
	// redelivers it (0: nsqd's --msg-timeout, 60 s by default). A message
	// held longer (a target down, a long pattern purge) is touched every
	// third of it, at most every 10 s.
	MsgTimeout time.Duration
	Logger     *slog.Logger
}

// A failed message is requeued for requeueDelay times its attempts, at most
// maxRequeueDelay.
const (
	requeueDelay    = 100 * time.Millisecond
	maxRequeueDelay = 5 * time.Second
)

// nsqdMsgTimeout is nsqd's default --msg-timeout.
const nsqdMsgTimeout = 60 * time.Second

// touchInterval is how often a message held in hand is touched.
func (o *ConsumerOptions) touchInterval() time.Duration {
	return min(10*time.Second, cmp.Or(o.MsgTimeout, nsqdMsgTimeout)/3)
}

// ConsumerKind names a purger's targets in metrics, logs, dead letters and
// Health.
type ConsumerKind struct {
	// MetricPrefix starts every metric name, e.g. "flashsync_purger_".
	MetricPrefix string
	// Label is the metrics label of a target: "replica", "instance", "node".
	Label string
	// Noun names one target in messages: "redis replica", "http instance".
	Noun string
	// Tier names the purger in job acks: "redis", "http", "cdn".
	Tier invalidate.Tier
}

type consumerMetrics struct {
	messages *prometheus.CounterVec
	dead     *prometheus.CounterVec
	up       *prometheus.GaugeVec
	latency  *prometheus.HistogramVec
}

func newConsumerMetrics(reg prometheus.Registerer, k ConsumerKind) (consumerMetrics, error) {
	m := consumerMetrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: k.MetricPrefix + "messages_total",
			Help: "Purge messages handled per " + k.Noun + ", by result (ok, retry, unreachable, dead_letter).",
		}, []string{"group", k.Label, "result"}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: k.MetricPrefix + "dead_letters_total",
			Help: "Purge messages moved to the dead-letter topic after too many failed attempts, per " + k.Noun + ".",
		}, []string{"group", k.Label}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: k.MetricPrefix + k.Label + "_up",
			Help: "1 while the " + k.Noun + " answered its last request, 0 while it is unreachable.",
		}, []string{"group", k.Label}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    k.MetricPrefix + "commit_to_purge_seconds",
			Help:    "From the canal reading a commit to its targets purged, per " + k.Noun + ".",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"group", k.Label}),
	}
	for _, c := range []prometheus.Collector{m.messages, m.dead, m.up, m.latency} {
		if err := reg.Register(c); err != nil {
			return m, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

// Consumers runs the consumers of a purger's targets.
type Consumers struct {
	opts    ConsumerOptions
	kind    ConsumerKind
	metrics consumerMetrics
	targets []*targetConsumer
	acks    *AckSender

	// Dead-letter producers by nsqd address, created on first use, and the
	// address that took the last dead letter (tried first next time).
	deadProducers *nsqio.ProducerPool
	deadMu        sync.Mutex
	deadLast      string
}

// Target is one cache target of a purger: where its purges come from
// and how they are applied.
type Target struct {
	// Group and Name label the target in metrics, logs and job acks (a
	// Redis replica's or HTTP instance's address, a CDN node's name).
	Group, Name string
	// Topic is the group's topic; Channel the target's own channel
	// (default invalidate.ReplicaChannel(Name)).
	Topic, Channel string
	// Concurrency is the number of messages applied at once (default 1).
	// Purges commute (deleting twice or in another order leaves the same
	// cache), so a target whose requests each wait a round trip (HTTP)
	// takes several at a time.
	Concurrency int
	// Apply purges the message's targets once; Unreachable tells its errors
	// that mean the target cannot be talked to (hold and wait) from the
	// others (requeue, count the attempt); OK, if set, is called after a
	// success.
	Apply       func(ctx context.Context, msg *invalidate.Purge) error
	Unreachable func(error) bool
	OK          func(msg *invalidate.Purge)
	// Failed, if set, is told of a message that failed and was requeued
	// (attempts so far), and DeadLettered of one given up on, once it is on
	// the dead-letter topic.
	Failed       func(msg *invalidate.Purge, attempts uint16, err error)
	DeadLettered func(ctx context.Context, msg *invalidate.Purge)
}

// targetConsumer is a Target's NSQ handler and its state.
type targetConsumer struct {
	Target
	p   *Consumers
	log *slog.Logger
	ctx context.Context

	mu   sync.Mutex
	down bool
}

// Prepare checks the addresses and fills the defaults every purger shares
// (NewConsumers calls it; a purger calls it first to read the
// defaults); role names the purger in the error.
func (o *ConsumerOptions) Prepare(role string) error {
	if len(o.NSQDTCP) == 0 && len(o.LookupdHTTP) == 0 {
		return fmt.Errorf("%s: no nsqd or nsqlookupd address", role)
	}
	if o.LookupdPollInterval <= 0 {
		o.LookupdPollInterval = 5 * time.Second
	}
	o.TopicPrefix = cmp.Or(o.TopicPrefix, invalidate.DefaultTopicPrefix)
	if o.MaxAttempts == 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	o.Logger = cmp.Or(o.Logger, slog.Default())
	return nil
}

// NewConsumers checks opts and registers the metrics of kind on reg;
// nothing connects before Run.
func NewConsumers(opts ConsumerOptions, kind ConsumerKind, reg prometheus.Registerer) (*Consumers, error) {
	if err := opts.Prepare(kind.Noun + " purger"); err != nil {
		return nil, err
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m, err := newConsumerMetrics(reg, kind)
	if err != nil {
		return nil, err
	}
	acks, err := NewAckSender(AckSenderOptions{
		NSQDTCP: opts.NSQDTCP, LookupdHTTP: opts.LookupdHTTP, TopicPrefix: opts.TopicPrefix,
		Tier: kind.Tier, Timeout: opts.Timeout, Logger: opts.Logger, Registerer: reg,
	})
	if err != nil {
		return nil, err
	}
	return &Consumers{opts: opts, kind: kind, metrics: m, acks: acks, deadProducers: nsqio.NewProducerPool(opts.Timeout, opts.Logger)}, nil
}

// Add registers a target; its consumer starts with Run. Call it before Run.
func (p *Consumers) Add(t Target) {
	t.Channel = cmp.Or(t.Channel, invalidate.ReplicaChannel(t.Name))
	t.Concurrency = max(t.Concurrency, 1)
	p.targets = append(p.targets, &targetConsumer{
		Target: t, p: p,
		log: p.opts.Logger.With("group", t.Group, p.kind.Label, t.Name),
	})
}

// Run consumes until ctx ends, then stops every consumer, waiting for the
// messages in hand; name names the purger in logs.
func (p *Consumers) Run(ctx context.Context, name string) error {
	defer p.deadProducers.Close()
	defer p.acks.Close() // after the consumers stopped: no more acks

	var consumers []*nsq.Consumer
	stopAll := func() {
		for _, c := range consumers {
			c.Stop()
		}
		for _, c := range consumers {
			<-c.StopChan
		}
	}
	if len(p.opts.LookupdHTTP) > 0 {
		p.prepareTopics(ctx)
		if ctx.Err() != nil {
			return nil
		}
	}
	for _, r := range p.targets {
		r.ctx = ctx
		cfg := nsq.NewConfig()
		cfg.MaxInFlight = p.opts.MaxInFlight
		// Attempts are counted by the handler, which knows an unreachable
		// target from a bad message; go-nsq must never drop on its own.
		cfg.MaxAttempts = 0
		cfg.DefaultRequeueDelay = requeueDelay
		cfg.MaxRequeueDelay = maxRequeueDelay
		cfg.MaxBackoffDuration = 2 * time.Second
		cfg.BackoffMultiplier = 100 * time.Millisecond
		// nsqd buffers a consumer's messages for up to 250 ms by default;
		// a purge is latency-bound and already a batch, so send each at once.
		cfg.OutputBufferSize = -1
		cfg.OutputBufferTimeout = -1
		cfg.LookupdPollInterval = p.opts.LookupdPollInterval
		if p.opts.MsgTimeout > 0 {
			cfg.MsgTimeout = p.opts.MsgTimeout
		}
		// go-nsq's first nsqlookupd query runs inside Connect with a 1 m
		// timeout: an nsqlookupd that hangs would hold every target's
		// start that long.
		cfg.LookupdPollTimeout = p.opts.Timeout
		c, err := nsq.NewConsumer(r.Topic, r.Channel, cfg)
		if err != nil {
			stopAll()
			return fmt.Errorf("nsq consumer %s/%s: %w", r.Topic, r.Channel, err)
		}
		// go-nsq warns on every clean stop; its errors (lost nsqd
		// connections) matter, and the handler logs its own failures.
		c.SetLogger(nsqio.NewConsumerLogger(r.log, p.opts.LookupdPollInterval), nsq.LogLevelError)
		c.AddConcurrentHandlers(r, r.Concurrency)
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
			return fmt.Errorf("nsq consumer %s/%s: %w", r.Topic, r.Channel, err)
		}
		balanceRDY(c, p.opts.MaxInFlight)
		consumers = append(consumers, c)
		p.metrics.up.WithLabelValues(r.Group, r.Name).Set(1)
	}
	p.opts.Logger.Info(name+" running", p.kind.Label+"s", len(p.targets), "nsqd", p.opts.NSQDTCP, "nsqlookupd", p.opts.LookupdHTTP)
	<-ctx.Done()
	stopAll()
	return nil
}

// balanceRDY gives each nsqd connection of c its share of maxInFlight now.
// go-nsq v1.1.0 makes room for a new connection by lowering the RDY of
// every connection in map order: when the new one comes first, nothing is
// free yet, so it stays at RDY 0 and retries 5 s later, while the older
// ones drop to their share right after. The messages of that nsqd waited
// those 5 s (with two nsqd, some target's first purge in about a third of
// the starts). One more pass over the connections once all are made finds
// room for each; ChangeMaxInFlight is that pass, but only when the value
// changes, so it is raised by one and set back. An nsqd found at a later
// nsqlookupd poll may still wait the 5 s once.
func balanceRDY(c *nsq.Consumer, maxInFlight int) {
	if c.Stats().Connections > 1 {
		c.ChangeMaxInFlight(maxInFlight + 1)
		c.ChangeMaxInFlight(maxInFlight)
	}
}

// topicRegistrationWait bounds prepareTopics' wait for nsqlookupd to list
// the nsqd that took the topics; nsqd registers them within milliseconds.
const topicRegistrationWait = 2 * time.Second

// prepareTopics creates every target's topic and channel on every nsqd that
// nsqlookupd knows and waits until nsqlookupd lists those nsqd for the
// topics. A consumer asks nsqlookupd once as it connects, then every
// LookupdPollInterval (plus up to 30% jitter): on a first start, or for a
// group added later, no nsqd has the topic until the canal creates it, so
// without this the first purges waited for the next poll, 5 to 6.5 s. If
// nsqlookupd is down or lists no nsqd yet, the consumers find their nsqd at
// a later poll, as before; nothing is lost either way, since the canal
// creates every channel on every nsqd before it publishes.
func (p *Consumers) prepareTopics(ctx context.Context) {
	topics := map[string][]string{}
	for _, r := range p.targets {
		if !slices.Contains(topics[r.Topic], r.Channel) {
			topics[r.Topic] = append(topics[r.Topic], r.Channel)
		}
	}
	client := &http.Client{Timeout: p.opts.Timeout}
	err := nsqio.PrepareLookupdTopics(ctx, client, p.opts.LookupdHTTP, topics, topicRegistrationWait)
	switch {
	case err == nil || ctx.Err() != nil:
	case errors.Is(err, nsqio.ErrNoNSQD):
		p.opts.Logger.Info("nsqlookupd lists no nsqd yet; the consumers find theirs at a later poll", "every", p.opts.LookupdPollInterval, "err", err)
	default:
		p.opts.Logger.Warn("topics not ready on every nsqd before connecting; the consumers find the rest at a later poll", "every", p.opts.LookupdPollInterval, "err", err)
	}
}

// Health reports the targets that are currently unreachable.
func (p *Consumers) Health() error {
	var down []string
	for _, r := range p.targets {
		r.mu.Lock()
		if r.down {
			down = append(down, r.Group+"/"+r.Name)
		}
		r.mu.Unlock()
	}
	if len(down) > 0 {
		return fmt.Errorf("%ss unreachable (purges buffered in NSQ): %s", p.kind.Noun, strings.Join(down, ", "))
	}
	return nil
}

var _ nsq.Handler = (*targetConsumer)(nil)

// HandleMessage applies the message. While the target is unreachable it
// holds the message and waits for the target rather than burning attempts:
// the target's channel keeps the backlog, and it drains once the target
// answers. Any other failure is returned, so NSQ requeues the message with
// backoff, until MaxAttempts sends it to the dead-letter topic.
func (r *targetConsumer) HandleMessage(m *nsq.Message) error {
	msg, err := invalidate.DecodePurge(m.Body)
	if err == nil {
		// Never drop a kind this purger cannot apply: retry, then dead-letter.
		err = r.p.kind.canApply(msg)
	}
	if err == nil {
		err = r.purgeWaiting(m, msg)
	}
	if err == nil {
		r.p.metrics.messages.WithLabelValues(r.Group, r.Name, "ok").Inc()
		if r.OK != nil {
			r.OK(msg)
		}
		if msg.SeenUnixNano > 0 {
			r.p.metrics.latency.WithLabelValues(r.Group, r.Name).Observe(time.Since(time.Unix(0, msg.SeenUnixNano)).Seconds())
		}
		r.ack(m, msg, nil)
		return nil
	}
	if r.ctx.Err() != nil {
		// Shutting down: give the message back untouched for the next run.
		m.RequeueWithoutBackoff(0)
		return nil
	}
	if m.Attempts < r.p.opts.MaxAttempts {
		r.p.metrics.messages.WithLabelValues(r.Group, r.Name, "retry").Inc()
		r.log.Warn("purge failed; requeued with backoff", "attempt", m.Attempts, "max_attempts", r.p.opts.MaxAttempts, "err", err)
		if r.Failed != nil && msg != nil {
			r.Failed(msg, m.Attempts, err)
		}
		return err
	}
	if derr := r.deadLetter(m, err); derr != nil {
		r.log.Error("dead-letter publish failed; requeued", "err", derr, "purge_err", err)
		return derr
	}
	r.p.metrics.messages.WithLabelValues(r.Group, r.Name, "dead_letter").Inc()
	r.p.metrics.dead.WithLabelValues(r.Group, r.Name).Inc()
	r.log.Error("purge message dead-lettered", "topic", invalidate.DeadLetterTopic(r.p.opts.TopicPrefix), "attempts", m.Attempts, "err", err, "body", truncate(m.Body, 256))
	if msg != nil {
		r.ack(m, msg, err)
		if r.DeadLettered != nil {
			r.DeadLettered(r.ctx, msg)
		}
	}
	return nil
}

// ack reports the message of a job applied (cause nil) or dead-lettered, in
// the background: it never delays or fails the purge.
func (r *targetConsumer) ack(m *nsq.Message, msg *invalidate.Purge, cause error) {
	if msg.Job == "" {
		return
	}
	a := invalidate.Ack{Job: msg.Job, Tier: r.p.kind.Tier, Group: r.Group, Target: r.Name, OK: cause == nil,
		LatencyMS: invalidate.AckLatency(msg.SeenUnixNano, m.Timestamp)}
	if cause != nil {
		a.Error = cause.Error()
	}
	r.p.acks.Send(a)
}

// purgeWaiting applies msg, waiting for the target while it is unreachable.
func (r *targetConsumer) purgeWaiting(m *nsq.Message, msg *invalidate.Purge) error {
	lastTouch := time.Now()
	every := r.p.opts.touchInterval()
	var result error
	err := retry.Until(r.ctx, retry.Backoff{Min: 20 * time.Millisecond, Max: time.Second}, func() error {
		result = r.Apply(withTouch(r.ctx, m.Touch, every), msg)
		if result == nil || !r.Unreachable(result) {
			return nil // applied, or failed in a way that counts an attempt
		}
		r.p.metrics.messages.WithLabelValues(r.Group, r.Name, "unreachable").Inc()
		r.setDown(true, result)
		if time.Since(lastTouch) > every {
			m.Touch() // keep nsqd from timing the held message out
			lastTouch = time.Now()
		}
		return result
	}, nil)
	if err != nil {
		return err // shutting down while the target is unreachable
	}
	r.setDown(false, nil)
	return result
}

// canApply refuses the admin-only kinds a purger of kind does not apply:
// flush and patterns are the Redis purger's, bans the HTTP purger's.
func (k ConsumerKind) canApply(msg *invalidate.Purge) error {
	if k.Tier != invalidate.TierRedis && (msg.Flush || len(msg.Patterns) > 0) {
		return fmt.Errorf("a %s purger cannot apply flush or patterns", k.Noun)
	}
	if k.Tier != invalidate.TierHTTP && len(msg.Bans) > 0 {
		return fmt.Errorf("a %s purger cannot apply bans", k.Noun)
	}
	return nil
}

type touchKey struct{}

type toucher struct {
	touch func()
	every time.Duration
}

// withTouch gives Apply the message's Touch: a purge that may run longer
// than nsqd's message timeout (a pattern purge) calls touchDue as it goes,
// so the message is not redelivered mid-way.
func withTouch(ctx context.Context, touch func(), every time.Duration) context.Context {
	return context.WithValue(ctx, touchKey{}, toucher{touch, every})
}

// touchDue touches the message being applied under ctx if last is a touch
// interval ago, and returns when it was last touched.
func touchDue(ctx context.Context, last time.Time) time.Time {
	t, ok := ctx.Value(touchKey{}).(toucher)
	if !ok || time.Since(last) < t.every {
		return last
	}
	t.touch()
	return time.Now()
}

func (r *targetConsumer) setDown(down bool, err error) {
	r.mu.Lock()
	changed := r.down != down
	r.down = down
	r.mu.Unlock()
	if !changed {
		return
	}
	if down {
		r.p.metrics.up.WithLabelValues(r.Group, r.Name).Set(0)
		r.log.Warn(r.p.kind.Noun+" unreachable; holding its purges until it answers", "err", err)
	} else {
		r.p.metrics.up.WithLabelValues(r.Group, r.Name).Set(1)
		r.log.Info(r.p.kind.Noun + " reachable again; draining its backlog")
	}
}

// NetUnreachable tells the errors of a connection that could not be made or
// was lost, common to every kind of cache.
func NetUnreachable(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) ||
		errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, context.DeadlineExceeded)
}

// deadLetter publishes the record of a message given up on to the
// dead-letter topic: its topic and channel, the target (under the purger's
// label: "replica", "instance", "node"), attempts, last error, original body
// and time.
func (r *targetConsumer) deadLetter(m *nsq.Message, cause error) error {
	body, err := json.Marshal(map[string]any{
		"topic": r.Topic, "channel": r.Channel, r.p.kind.Label: r.Name, "group": r.Group,
		"attempts": m.Attempts, "error": cause.Error(), "body": m.Body,
		"at": time.Now().UTC().Format(time.RFC3339Nano),
	})
	if err != nil {
		return err
	}
	topic := invalidate.DeadLetterTopic(r.p.opts.TopicPrefix)
	return r.p.publishDead(topic, body)
}

// publishDead publishes body to the first nsqd that takes it, trying each in
// turn, starting with the one that took the last dead letter.
func (p *Consumers) publishDead(topic string, body []byte) error {
	addrs, err := p.deadLetterAddrs()
	if err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	p.deadMu.Lock()
	last := p.deadLast
	p.deadMu.Unlock()
	if i := slices.Index(addrs, last); i > 0 {
		addrs = append(append([]string{last}, addrs[:i]...), addrs[i+1:]...)
	}
	addr, err := p.deadProducers.PublishFirst(addrs, topic, body)
	if err != nil {
		return err
	}
	p.deadMu.Lock()
	p.deadLast = addr
	p.deadMu.Unlock()
	return nil
}

// deadLetterAddrs lists the nsqd TCP addresses dead letters may go to: the
// configured ones, or else those the first answering nsqlookupd knows.
func (p *Consumers) deadLetterAddrs() ([]string, error) {
	if len(p.opts.NSQDTCP) > 0 {
		return p.opts.NSQDTCP, nil
	}
	var errs []error
	for _, l := range p.opts.LookupdHTTP {
		addrs, err := nsqio.LookupdNodes(l, p.opts.Timeout)
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

func truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "…"
}
