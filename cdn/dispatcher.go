package cdn

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/invalidate"
)

// Node is one CDN node the dispatcher sends to.
type Node struct {
	Name string
	// ConsoleURL is the console's base URL, e.g. "https://cdn1:16100".
	ConsoleURL string
	Key        []byte
	// CAFile is a PEM bundle to verify an https console with (optional).
	CAFile string
}

// DispatcherOptions configure a Dispatcher.
type DispatcherOptions struct {
	Nodes []Node
	// NSQDTCP lists the nsqd to consume from when LookupdHTTP is empty, and
	// those dead letters go to (the first that takes them).
	NSQDTCP             []string
	LookupdHTTP         []string
	LookupdPollInterval time.Duration
	TopicPrefix         string
	// MaxAttempts dead-letters a message that failed this many times for a
	// reason other than its console being unreachable.
	MaxAttempts uint16
	MaxInFlight int
	// Timeout bounds one POST to a console (default 10 s).
	Timeout    time.Duration
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Dispatcher forwards the CDN topic's purges to every node's console, each
// node on its own NSQ channel with its own consumer: a slow or dead node
// never delays the others, and its backlog waits in its channel.
type Dispatcher struct {
	opts  DispatcherOptions
	nodes []*nodeSender

	messages *prometheus.CounterVec
	dead     *prometheus.CounterVec
	up       *prometheus.GaugeVec
	request  *prometheus.HistogramVec
	latency  *prometheus.HistogramVec

	deadMu        sync.Mutex
	deadProducers map[string]*nsq.Producer

	acks *invalidate.AckSender
}

// NewDispatcher checks the options and loads the CA files; nothing
// connects before Run.
func NewDispatcher(opts DispatcherOptions) (*Dispatcher, error) {
	if len(opts.Nodes) == 0 {
		return nil, errors.New("dispatcher: no cdn nodes")
	}
	if len(opts.NSQDTCP) == 0 && len(opts.LookupdHTTP) == 0 {
		return nil, errors.New("dispatcher: no nsqd or nsqlookupd address")
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
		opts.MaxInFlight = 16
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	d := &Dispatcher{
		opts:          opts,
		deadProducers: map[string]*nsq.Producer{},
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashsync_dispatcher_messages_total",
			Help: "CDN purge messages handled per node, by result (ok, retry, unreachable, dead_letter).",
		}, []string{"node", "result"}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashsync_dispatcher_dead_letters_total",
			Help: "CDN purge messages moved to the dead-letter topic after too many attempts.",
		}, []string{"node"}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flashsync_dispatcher_console_up",
			Help: "1 while the node's console answered its last request, 0 while it is unreachable.",
		}, []string{"node"}),
		request: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "flashsync_dispatcher_request_seconds",
			Help:    "One POST to a node's console, its fan-out to the cache machines included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"node"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "flashsync_dispatcher_commit_to_purge_seconds",
			Help:    "From the canal reading a commit to its URLs and tags purged on a node.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"node"}),
	}
	for _, c := range []prometheus.Collector{d.messages, d.dead, d.up, d.request, d.latency} {
		if err := opts.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	var err error
	d.acks, err = invalidate.NewAckSender(invalidate.AckSenderOptions{
		NSQDTCP: opts.NSQDTCP, LookupdHTTP: opts.LookupdHTTP, TopicPrefix: opts.TopicPrefix,
		Tier: invalidate.TierCDN, Timeout: opts.Timeout, Logger: opts.Logger, Registerer: opts.Registerer,
	})
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, n := range opts.Nodes {
		if n.Name == "" || seen[n.Name] {
			return nil, fmt.Errorf("dispatcher: node name %q empty or used twice", n.Name)
		}
		seen[n.Name] = true
		if len(n.Key) == 0 {
			return nil, fmt.Errorf("dispatcher: node %s: no key", n.Name)
		}
		tr := &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DialContext:         (&net.Dialer{Timeout: opts.Timeout, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout: opts.Timeout,
			MaxIdleConnsPerHost: opts.MaxInFlight,
			IdleConnTimeout:     90 * time.Second,
		}
		if n.CAFile != "" {
			pem, err := os.ReadFile(n.CAFile)
			if err != nil {
				return nil, fmt.Errorf("dispatcher: node %s: ca_file: %w", n.Name, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("dispatcher: node %s: ca_file %s: no PEM certificate", n.Name, n.CAFile)
			}
			tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}
		d.nodes = append(d.nodes, &nodeSender{
			d:       d,
			node:    n,
			url:     strings.TrimSuffix(n.ConsoleURL, "/") + PurgePath,
			channel: invalidate.CDNChannel(n.Name),
			client:  &http.Client{Transport: tr, Timeout: opts.Timeout},
			log:     opts.Logger.With("cdn_node", n.Name),
		})
	}
	return d, nil
}

// Run consumes until ctx ends, then stops every consumer, waiting for the
// messages in hand.
func (d *Dispatcher) Run(ctx context.Context) error {
	defer d.stopDeadProducers()
	defer d.acks.Close() // after the consumers stopped: no more acks
	topic := invalidate.CDNTopic(d.opts.TopicPrefix)
	var consumers []*nsq.Consumer
	stopAll := func() {
		for _, c := range consumers {
			c.Stop()
		}
		for _, c := range consumers {
			<-c.StopChan
		}
	}
	for _, n := range d.nodes {
		n.ctx = ctx
		cfg := nsq.NewConfig()
		cfg.MaxInFlight = d.opts.MaxInFlight
		cfg.MaxAttempts = 0 // counted by the handler, which knows unreachable from failed
		cfg.DefaultRequeueDelay = 100 * time.Millisecond
		cfg.MaxRequeueDelay = 5 * time.Second
		cfg.MaxBackoffDuration = 2 * time.Second
		cfg.BackoffMultiplier = 100 * time.Millisecond
		cfg.OutputBufferSize = -1
		cfg.OutputBufferTimeout = -1
		cfg.LookupdPollInterval = d.opts.LookupdPollInterval
		c, err := nsq.NewConsumer(topic, n.channel, cfg)
		if err != nil {
			stopAll()
			return fmt.Errorf("nsq consumer %s/%s: %w", topic, n.channel, err)
		}
		c.SetLogger(nsqLogger{n.log}, nsq.LogLevelError)
		c.AddConcurrentHandlers(n, d.opts.MaxInFlight)
		if len(d.opts.LookupdHTTP) > 0 {
			err = c.ConnectToNSQLookupds(d.opts.LookupdHTTP)
		} else {
			err = c.ConnectToNSQDs(d.opts.NSQDTCP)
		}
		if err != nil {
			c.Stop()
			stopAll()
			return fmt.Errorf("nsq consumer %s/%s: %w", topic, n.channel, err)
		}
		consumers = append(consumers, c)
		d.up.WithLabelValues(n.node.Name).Set(1)
	}
	d.opts.Logger.Info("cdn dispatcher running", "nodes", len(d.nodes), "topic", topic)
	<-ctx.Done()
	stopAll()
	return nil
}

// Health reports nodes whose console is currently unreachable.
func (d *Dispatcher) Health() error {
	var down []string
	for _, n := range d.nodes {
		n.mu.Lock()
		if n.down {
			down = append(down, n.node.Name)
		}
		n.mu.Unlock()
	}
	if len(down) > 0 {
		return fmt.Errorf("cdn consoles unreachable (purges buffered in NSQ): %s", strings.Join(down, ", "))
	}
	return nil
}

// nodeSender sends the CDN purges to one node's console.
type nodeSender struct {
	d       *Dispatcher
	node    Node
	url     string
	channel string
	client  *http.Client
	log     *slog.Logger
	ctx     context.Context

	mu   sync.Mutex
	down bool
}

// HandleMessage posts the message's URLs and tags to the console. While the
// console is unreachable it holds the message and retries without burning
// attempts; any other failure (a machine failed: 502; a refused request:
// 4xx) is returned so NSQ requeues with backoff, until MaxAttempts sends it
// to the dead-letter topic.
func (n *nodeSender) HandleMessage(m *nsq.Message) error {
	p, err := invalidate.DecodePurge(m.Body)
	if err == nil {
		err = n.sendWaiting(m, p)
	}
	if err == nil {
		n.d.messages.WithLabelValues(n.node.Name, "ok").Inc()
		if p.SeenUnixNano > 0 {
			n.d.latency.WithLabelValues(n.node.Name).Observe(time.Since(time.Unix(0, p.SeenUnixNano)).Seconds())
		}
		n.ack(m, p, nil)
		return nil
	}
	if n.ctx.Err() != nil {
		m.RequeueWithoutBackoff(0)
		return nil
	}
	if m.Attempts < n.d.opts.MaxAttempts {
		n.d.messages.WithLabelValues(n.node.Name, "retry").Inc()
		n.log.Warn("cdn purge failed; requeued with backoff", "attempt", m.Attempts, "max_attempts", n.d.opts.MaxAttempts, "err", err)
		return err
	}
	if derr := n.deadLetter(m, err); derr != nil {
		n.log.Error("dead-letter publish failed; requeued", "err", derr, "purge_err", err)
		return derr
	}
	n.d.messages.WithLabelValues(n.node.Name, "dead_letter").Inc()
	n.d.dead.WithLabelValues(n.node.Name).Inc()
	n.log.Error("cdn purge message dead-lettered", "topic", invalidate.DeadLetterTopic(n.d.opts.TopicPrefix), "attempts", m.Attempts, "err", err)
	if p != nil {
		n.ack(m, p, err)
	}
	return nil
}

// ack reports a message of a job sent to the node (cause nil) or
// dead-lettered, in the background: it never delays or fails the purge.
func (n *nodeSender) ack(m *nsq.Message, p *invalidate.Purge, cause error) {
	if p.Job == "" {
		return
	}
	a := invalidate.Ack{Job: p.Job, Tier: invalidate.TierCDN, Group: invalidate.CDNGroup, Target: n.node.Name,
		OK: cause == nil, LatencyMS: invalidate.AckLatency(p.SeenUnixNano, m.Timestamp)}
	if cause != nil {
		a.Error = cause.Error()
	}
	n.d.acks.Send(a)
}

// errUnreachable marks a console that could not be talked to.
type errUnreachable struct{ err error }

func (e errUnreachable) Error() string { return e.err.Error() }
func (e errUnreachable) Unwrap() error { return e.err }

func (n *nodeSender) sendWaiting(m *nsq.Message, p *invalidate.Purge) error {
	body, err := json.Marshal(Request{Job: string(m.ID[:]), URLs: p.URLs, Tags: p.Tags})
	if err != nil {
		return err
	}
	backoff := 20 * time.Millisecond
	lastTouch := time.Now()
	for {
		err := n.send(body)
		var ue errUnreachable
		if !errors.As(err, &ue) {
			n.setDown(false, nil)
			return err
		}
		n.d.messages.WithLabelValues(n.node.Name, "unreachable").Inc()
		n.setDown(true, err)
		select {
		case <-n.ctx.Done():
			return err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
		if time.Since(lastTouch) > 10*time.Second {
			m.Touch()
			lastTouch = time.Now()
		}
	}
}

// send posts one signed request (fresh timestamp and nonce).
func (n *nodeSender) send(body []byte) error {
	req, err := http.NewRequestWithContext(n.ctx, http.MethodPost, n.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if err := SignRequest(req, n.node.Key, body, time.Now()); err != nil {
		return err
	}
	start := time.Now()
	resp, err := n.client.Do(req)
	if err != nil {
		if unreachable(err) {
			return errUnreachable{fmt.Errorf("console %s: %w", n.url, err)}
		}
		return fmt.Errorf("console %s: %w", n.url, err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	n.d.request.WithLabelValues(n.node.Name).Observe(time.Since(start).Seconds())
	switch {
	case resp.StatusCode == http.StatusOK:
		return nil
	case resp.StatusCode == http.StatusServiceUnavailable:
		// The console is up but cannot take requests (replay cache full).
		return errUnreachable{fmt.Errorf("console %s: %s: %s", n.url, resp.Status, bytes.TrimSpace(answer))}
	case resp.StatusCode == http.StatusBadGateway:
		return fmt.Errorf("console %s: some cache machines failed: %s", n.url, summarize(answer))
	default:
		return fmt.Errorf("console %s: %s: %s", n.url, resp.Status, bytes.TrimSpace(answer))
	}
}

// summarize names the failed machines of a 502 answer.
func summarize(answer []byte) string {
	var r Response
	if err := json.Unmarshal(answer, &r); err != nil {
		return string(bytes.TrimSpace(answer))
	}
	var failed []string
	for _, m := range r.Machines {
		if !m.OK {
			failed = append(failed, m.Machine+": "+m.Error)
		}
	}
	return strings.Join(failed, "; ")
}

func (n *nodeSender) setDown(down bool, err error) {
	n.mu.Lock()
	changed := n.down != down
	n.down = down
	n.mu.Unlock()
	if !changed {
		return
	}
	if down {
		n.d.up.WithLabelValues(n.node.Name).Set(0)
		n.log.Warn("cdn console unreachable; holding its purges until it answers", "err", err)
	} else {
		n.d.up.WithLabelValues(n.node.Name).Set(1)
		n.log.Info("cdn console reachable again; draining its backlog")
	}
}

// unreachable tells a console that cannot be talked to from one that
// answered.
func unreachable(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) ||
		errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, context.DeadlineExceeded)
}

// deadLetter is the record published to the dead-letter topic.
type deadLetter struct {
	Topic    string `json:"topic"`
	Channel  string `json:"channel"`
	Node     string `json:"node"`
	Attempts uint16 `json:"attempts"`
	Error    string `json:"error"`
	Body     []byte `json:"body"`
	At       string `json:"at"`
}

func (n *nodeSender) deadLetter(m *nsq.Message, cause error) error {
	body, err := json.Marshal(deadLetter{
		Topic: invalidate.CDNTopic(n.d.opts.TopicPrefix), Channel: n.channel, Node: n.node.Name,
		Attempts: m.Attempts, Error: cause.Error(), Body: m.Body, At: time.Now().UTC().Format(time.RFC3339Nano),
	})
	if err != nil {
		return err
	}
	topic := invalidate.DeadLetterTopic(n.d.opts.TopicPrefix)
	if len(n.d.opts.NSQDTCP) == 0 {
		return errors.New("no nsqd_tcp to publish dead letters to")
	}
	var errs []error
	for _, addr := range n.d.opts.NSQDTCP {
		prod, err := n.d.deadProducer(addr)
		if err == nil {
			err = prod.Publish(topic, body)
		}
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("publish %s on nsqd %s: %w", topic, addr, err))
	}
	return errors.Join(errs...)
}

func (d *Dispatcher) deadProducer(addr string) (*nsq.Producer, error) {
	d.deadMu.Lock()
	defer d.deadMu.Unlock()
	if prod := d.deadProducers[addr]; prod != nil {
		return prod, nil
	}
	cfg := nsq.NewConfig()
	cfg.DialTimeout = d.opts.Timeout
	cfg.WriteTimeout = d.opts.Timeout
	prod, err := nsq.NewProducer(addr, cfg)
	if err != nil {
		return nil, err
	}
	prod.SetLogger(nsqLogger{d.opts.Logger.With("nsqd", addr)}, nsq.LogLevelWarning)
	d.deadProducers[addr] = prod
	return prod, nil
}

func (d *Dispatcher) stopDeadProducers() {
	d.deadMu.Lock()
	defer d.deadMu.Unlock()
	for addr, prod := range d.deadProducers {
		prod.Stop()
		delete(d.deadProducers, addr)
	}
}

// nsqLogger adapts go-nsq's logger to slog.
type nsqLogger struct{ l *slog.Logger }

func (n nsqLogger) Output(_ int, s string) error {
	n.l.Warn(s)
	return nil
}
