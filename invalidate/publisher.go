package invalidate

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flashsync/flashsync/internal/nsqio"
	"github.com/flashsync/flashsync/internal/retry"
	"github.com/nsqio/go-nsq"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultPublishTimeout bounds one publish attempt unless configured.
const DefaultPublishTimeout = 5 * time.Second

// PublisherOptions configure a Publisher.
type PublisherOptions struct {
	// NSQDTCP and NSQDHTTP list the nsqd daemons, same order.
	NSQDTCP  []string
	NSQDHTTP []string
	// TopicPrefix starts every topic name.
	TopicPrefix string
	// Groups are the Redis groups in routing order, with the replica
	// addresses whose channels must exist before anything is published.
	Groups []Group
	// HTTPGroups are the HTTP cache groups in routing order, with their
	// instance addresses (in Replicas), published to <prefix>.http.<group>.
	HTTPGroups []Group
	// CDNNodes names the [[cdn_node]]s. Set, every batch's URLs and tags
	// (of all HTTP groups) are also published to <prefix>.cdn, which has
	// one channel per node (CDNChannel).
	CDNNodes []string
	// Timeout bounds one publish attempt.
	Timeout time.Duration
	// MaxKeysPerMessage splits a group's keys (or URLs and tags) into
	// messages.
	MaxKeysPerMessage int
	// RetryMin and RetryMax bound the backoff between failed attempts.
	RetryMin, RetryMax time.Duration
	Logger             *slog.Logger
	Registerer         prometheus.Registerer
	// OnPublished, set, is told the job ID of every Publish call and the
	// targets expected to acknowledge it: every replica of a Redis group
	// and every instance of an HTTP group the batch has targets for, and
	// every CDN node when the batch has URLs or tags. It is called once
	// the batch is encoded, before it is sent, so no ack can beat it.
	OnPublished func(job string, targets []JobTarget)
}

// Group is a cache group of either tier: its name and the addresses of its
// caches (a Redis group's replicas, an HTTP group's instances), each of which
// gets every purge of the group on its own channel.
type Group struct {
	Name  string
	Addrs []string
}

// Meta describes where a batch comes from.
type Meta struct {
	Pos        string
	GTID       string
	CommitUnix int64
	Seen       time.Time
	// Job, set, is the batch's job ID (as NewJobID makes them), for a
	// caller that must name the job before it is published (the admin API
	// audits it first); empty, Publish makes one.
	Job string

	// Stream, set (the canal), puts coverage on the batch's Redis messages:
	// each group's messages cover the binlog from the group's last message
	// of the stream up to To. With Heartbeat, every Redis group the batch
	// has no targets for gets a heartbeat covering the same range (a batch
	// without targets is then a heartbeat to every group). CaughtUp is a
	// time before which every commit the server had written is at or
	// before To (zero: unknown).
	Stream    *Stream
	To        uint64
	CaughtUp  time.Time
	Heartbeat bool
}

// Stream is one canal session's coverage: per Redis group, the binlog
// offset its last message reached. Publish with Meta.Stream moves it once
// nsqd acknowledged the batch; the canal publishes one batch at a time.
type Stream struct {
	mu   sync.Mutex
	last []uint64
}

// NewStream starts a stream of groups Redis groups at a binlog offset (the
// canal's checkpoint: every change before it was published before).
func NewStream(groups int, start uint64) *Stream {
	s := &Stream{last: make([]uint64, groups)}
	for i := range s.last {
		s.last[i] = start
	}
	return s
}

// From is the offset group g's next message starts after.
func (s *Stream) From(g int) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last[g]
}

// Covered is the offset every group's messages have reached.
func (s *Stream) Covered() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Min(s.last)
}

func (s *Stream) advance(g int, to uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last[g] = max(s.last[g], to)
}

// Publisher sends batches to NSQ and returns only once nsqd acknowledged
// them, retrying across nsqd daemons with backoff.
type Publisher struct {
	opts PublisherOptions
	// producers has one producer per nsqd of NSQDTCP, tried in turn from
	// next.
	producers *nsqio.ProducerPool
	topics    []string // Redis groups' topics, then HTTP groups', then the CDN topic
	// next is the index of the producer to try first; atomic, as the
	// canal and the admin API publish through one Publisher.
	next atomic.Int64

	published   *prometheus.CounterVec
	keys        *prometheus.CounterVec
	syncWrites  *prometheus.CounterVec
	httpTargets *prometheus.CounterVec
	latency     prometheus.Histogram

	closeOnce sync.Once
}

// NewPublisher checks the options and connects lazily (go-nsq dials on the
// first publish).
func NewPublisher(opts PublisherOptions) (*Publisher, error) {
	if len(opts.NSQDTCP) == 0 {
		return nil, errors.New("publisher: no nsqd address")
	}
	if len(opts.NSQDHTTP) != len(opts.NSQDTCP) {
		return nil, errors.New("publisher: need one nsqd HTTP address per TCP address")
	}
	if len(opts.Groups)+len(opts.HTTPGroups)+len(opts.CDNNodes) == 0 {
		return nil, errors.New("publisher: no groups")
	}
	opts.TopicPrefix = cmp.Or(opts.TopicPrefix, DefaultTopicPrefix)
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultPublishTimeout
	}
	if opts.MaxKeysPerMessage <= 0 {
		opts.MaxKeysPerMessage = 1000
	}
	if opts.RetryMin <= 0 {
		opts.RetryMin = 50 * time.Millisecond
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = 2 * time.Second
	}
	opts.Logger = cmp.Or(opts.Logger, slog.Default())
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	p := &Publisher{opts: opts}
	for _, g := range opts.Groups {
		p.topics = append(p.topics, RedisTopic(opts.TopicPrefix, g.Name))
	}
	for _, g := range opts.HTTPGroups {
		p.topics = append(p.topics, HTTPTopic(opts.TopicPrefix, g.Name))
	}
	if len(opts.CDNNodes) > 0 {
		p.topics = append(p.topics, CDNTopic(opts.TopicPrefix))
	}
	p.producers = nsqio.NewProducerPool(opts.Timeout, opts.Logger)
	p.published = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flashsync_invalidate_publishes_total",
		Help: "NSQ publish attempts of purge messages by result.",
	}, []string{"result"})
	p.keys = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flashsync_invalidate_keys_published_total",
		Help: "Cache keys published for purging, by group.",
	}, []string{"group"})
	p.syncWrites = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flashsync_invalidate_sync_writes_published_total",
		Help: "Versioned sync writes (sets and deletes of synced keys) published, by group.",
	}, []string{"group"})
	p.httpTargets = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flashsync_invalidate_http_targets_published_total",
		Help: "HTTP cache URLs and tags published for purging, by group and kind (url, tag).",
	}, []string{"group", "kind"})
	p.latency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "flashsync_invalidate_publish_seconds",
		Help:    "Time to publish one batch until nsqd acknowledged it, retries included.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
	})
	for _, c := range []prometheus.Collector{p.published, p.keys, p.syncWrites, p.httpTargets, p.latency} {
		if err := opts.Registerer.Register(c); err != nil {
			p.Close()
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return p, nil
}

// EnsureChannels creates every group's topic with one channel per replica
// (or HTTP instance) on every nsqd, the dead-letter topic, and the acks
// topic (each job store reads it on its own ephemeral channel). NSQ copies a message only to the
// channels that exist when it is published, so a replica whose purger has
// never connected must already have its channel buffering for it.
func (p *Publisher) EnsureChannels(ctx context.Context) error {
	client := &http.Client{Timeout: p.opts.Timeout}
	for _, addr := range p.opts.NSQDHTTP {
		// Until a job store's channel exists, the topic keeps the acks.
		for _, topic := range []string{DeadLetterTopic(p.opts.TopicPrefix), AckTopic(p.opts.TopicPrefix)} {
			if err := nsqio.CreateChannels(ctx, client, addr, topic); err != nil {
				return err
			}
		}
		for i, g := range slices.Concat(p.opts.Groups, p.opts.HTTPGroups, p.cdnGroup()) {
			channels := make([]string, len(g.Addrs))
			for j, r := range g.Addrs {
				channels[j] = ReplicaChannel(r) // unchanged for CDN channels
			}
			if err := nsqio.CreateChannels(ctx, client, addr, p.topics[i], channels...); err != nil {
				return err
			}
		}
	}
	return nil
}

// Publish sends every group's targets of b — keys to the Redis groups'
// topics, URLs and tags to the HTTP groups' topics — and returns when nsqd
// acknowledged all of them. It retries failed groups with backoff, moving to
// the next nsqd, until ctx ends; only then does it return an error. It is
// safe for concurrent use.
func (p *Publisher) Publish(ctx context.Context, b *Batch, meta Meta) error {
	heartbeat := meta.Heartbeat && meta.Stream != nil
	if b.Len() == 0 && !heartbeat {
		return nil
	}
	if meta.Stream != nil && len(meta.Stream.last) != len(p.opts.Groups) {
		return fmt.Errorf("publish: stream of %d redis groups, the publisher has %d", len(meta.Stream.last), len(p.opts.Groups))
	}
	if b.Len() == 0 {
		return p.publishHeartbeat(ctx, meta)
	}
	if b.NumGroups() > len(p.opts.Groups) || b.NumHTTPGroups() > len(p.opts.HTTPGroups) {
		return fmt.Errorf("publish: batch has %d redis and %d http groups, the publisher %d and %d",
			b.NumGroups(), b.NumHTTPGroups(), len(p.opts.Groups), len(p.opts.HTTPGroups))
	}
	start := time.Now()
	job := meta.Job
	if job == "" {
		job = NewJobID()
	}
	nRedis := len(p.opts.Groups)
	bodies := make([][][]byte, len(p.topics))
	encode := func(i int, msg Purge) error {
		msg.Job = job
		msg.V = PurgeVersionBasic
		switch {
		case len(msg.Sync) > 0:
			msg.V = PurgeVersionSync
		case msg.Flush || len(msg.Patterns)+len(msg.Bans) > 0:
			msg.V = PurgeVersion
		}
		msg.Pos, msg.GTID, msg.CommitUnix, msg.SeenUnixNano = meta.Pos, meta.GTID, meta.CommitUnix, meta.Seen.UnixNano()
		body, err := msg.Marshal()
		if err != nil {
			return fmt.Errorf("encode purge: %w", err)
		}
		bodies[i] = append(bodies[i], body)
		return nil
	}
	for g := 0; g < b.NumGroups(); g++ {
		keys, pats := b.Keys(g), b.Patterns(g)
		syncs := syncChunks(b.Sync(g), p.opts.MaxKeysPerMessage, maxSyncMessageBytes)
		// With a stream, every message of the group is one part of its
		// coverage: the group's range is covered once all parts are applied.
		var cov Purge
		if meta.Stream != nil {
			m := p.opts.MaxKeysPerMessage
			cov = Purge{From: meta.Stream.From(g), To: meta.To, Parts: (len(keys)+m-1)/m + (len(pats)+m-1)/m + len(syncs), CaughtUpUnixNano: unixNano(meta.CaughtUp)}
			if b.Flush(g) {
				cov.Parts++
			}
		}
		encodeRedis := func(msg Purge) error {
			if cov.Parts > 0 {
				cov.Part++
				msg.From, msg.To, msg.Part, msg.Parts, msg.CaughtUpUnixNano = cov.From, cov.To, cov.Part, cov.Parts, cov.CaughtUpUnixNano
			}
			return encode(g, msg)
		}
		for len(keys) > 0 {
			n := min(len(keys), p.opts.MaxKeysPerMessage)
			if err := encodeRedis(Purge{Group: p.opts.Groups[g].Name, Keys: keys[:n]}); err != nil {
				return err
			}
			keys = keys[n:]
		}
		for len(pats) > 0 {
			n := min(len(pats), p.opts.MaxKeysPerMessage)
			if err := encodeRedis(Purge{Group: p.opts.Groups[g].Name, Patterns: pats[:n]}); err != nil {
				return err
			}
			pats = pats[n:]
		}
		for _, writes := range syncs {
			if err := encodeRedis(Purge{Group: p.opts.Groups[g].Name, Sync: writes}); err != nil {
				return err
			}
		}
		if b.Flush(g) {
			if err := encodeRedis(Purge{Group: p.opts.Groups[g].Name, Flush: true}); err != nil {
				return err
			}
		}
	}
	if heartbeat {
		for g := range p.opts.Groups {
			if g >= b.NumGroups() || !b.HasRedis(g) {
				bodies[g] = append(bodies[g], p.heartbeatBody(g, meta))
			}
		}
	}
	for g := 0; g < b.NumHTTPGroups(); g++ {
		urls, tags := b.URLs(g), b.Tags(g)
		for len(urls)+len(tags) > 0 {
			nu := min(len(urls), p.opts.MaxKeysPerMessage)
			nt := min(len(tags), p.opts.MaxKeysPerMessage-nu)
			msg := Purge{Group: p.opts.HTTPGroups[g].Name}
			if nu > 0 {
				msg.URLs = urls[:nu]
			}
			if nt > 0 {
				msg.Tags = tags[:nt]
			}
			if err := encode(nRedis+g, msg); err != nil {
				return err
			}
			urls, tags = urls[nu:], tags[nt:]
		}
		for bans := b.Bans(g); len(bans) > 0; {
			n := min(len(bans), p.opts.MaxKeysPerMessage)
			if err := encode(nRedis+g, Purge{Group: p.opts.HTTPGroups[g].Name, Bans: bans[:n]}); err != nil {
				return err
			}
			bans = bans[n:]
		}
	}
	if len(p.opts.CDNNodes) > 0 {
		if err := p.encodeCDN(b, func(msg Purge) error { return encode(len(p.topics)-1, msg) }); err != nil {
			return err
		}
	}
	if p.opts.OnPublished != nil {
		p.opts.OnPublished(job, p.jobTargets(b))
	}
	if err := p.send(ctx, bodies, "purge batch", meta.Pos); err != nil {
		return err
	}
	p.published.WithLabelValues("ok").Inc()
	if meta.Stream != nil {
		for g := range p.opts.Groups {
			if heartbeat || (g < b.NumGroups() && b.HasRedis(g)) {
				meta.Stream.advance(g, meta.To)
			}
		}
	}
	for g := 0; g < b.NumGroups(); g++ {
		if n := len(b.Keys(g)); n > 0 {
			p.keys.WithLabelValues(p.opts.Groups[g].Name).Add(float64(n))
		}
		if n := len(b.Sync(g)); n > 0 {
			p.syncWrites.WithLabelValues(p.opts.Groups[g].Name).Add(float64(n))
		}
	}
	for g := 0; g < b.NumHTTPGroups(); g++ {
		name := p.opts.HTTPGroups[g].Name
		if n := len(b.URLs(g)); n > 0 {
			p.httpTargets.WithLabelValues(name, "url").Add(float64(n))
		}
		if n := len(b.Tags(g)); n > 0 {
			p.httpTargets.WithLabelValues(name, "tag").Add(float64(n))
		}
	}
	p.latency.Observe(time.Since(start).Seconds())
	return nil
}

// publishHeartbeat sends one coverage-only message to every Redis group:
// nothing of any group between its last message and meta.To had targets.
// It has no job (nothing to acknowledge) and is retried like a batch.
func (p *Publisher) publishHeartbeat(ctx context.Context, meta Meta) error {
	bodies := make([][][]byte, len(p.topics))
	for g := range p.opts.Groups {
		bodies[g] = [][]byte{p.heartbeatBody(g, meta)}
	}
	if err := p.send(ctx, bodies, "heartbeat", meta.Pos); err != nil {
		return err
	}
	for g := range p.opts.Groups {
		meta.Stream.advance(g, meta.To)
	}
	return nil
}

// heartbeatBody is group g's heartbeat: its coverage, no targets.
func (p *Publisher) heartbeatBody(g int, meta Meta) []byte {
	// A Purge of plain fields always marshals.
	body, _ := (&Purge{V: PurgeVersionHeartbeat, Group: p.opts.Groups[g].Name, Heartbeat: true, From: meta.Stream.From(g), To: meta.To,
		Part: 1, Parts: 1, CaughtUpUnixNano: unixNano(meta.CaughtUp), Pos: meta.Pos, SeenUnixNano: unixNano(meta.Seen)}).Marshal()
	return body
}

// send publishes bodies until nsqd acknowledged all of them, retrying with
// backoff across the nsqd daemons until ctx ends. Exact delays (no
// jitter): RetryMin and RetryMax are the configured bounds, and one canal
// publishes at a time (the admin API's manual purges are rare).
func (p *Publisher) send(ctx context.Context, bodies [][][]byte, what, pos string) error {
	err := retry.Until(ctx, retry.Backoff{Min: p.opts.RetryMin, Max: p.opts.RetryMax}, func() error {
		err := p.publishOnce(bodies)
		if err != nil {
			p.published.WithLabelValues("error").Inc()
			p.next.Add(1) // the next attempt starts at the next nsqd
		}
		return err
	}, func(attempt int, err error, next time.Duration) {
		p.opts.Logger.Warn("publish "+what+"; retrying", "attempt", attempt, "backoff", next, "err", err)
	})
	if err != nil {
		return fmt.Errorf("publish %s at %s: %w (last error: %v)", what, pos, ctx.Err(), err)
	}
	return nil
}

// unixNano is t in Unix nanoseconds, 0 for the zero time.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// jobTargets lists the targets expected to acknowledge b's job.
func (p *Publisher) jobTargets(b *Batch) []JobTarget {
	var ts []JobTarget
	for g := 0; g < b.NumGroups(); g++ {
		if b.HasRedis(g) {
			for _, r := range p.opts.Groups[g].Addrs {
				ts = append(ts, JobTarget{Tier: TierRedis, Group: p.opts.Groups[g].Name, Target: r})
			}
		}
	}
	web := false
	for g := 0; g < b.NumHTTPGroups(); g++ {
		if len(b.URLs(g))+len(b.Tags(g)) > 0 {
			web = true // the CDN gets URLs and tags, not bans
		}
		if len(b.URLs(g))+len(b.Tags(g))+len(b.Bans(g)) > 0 {
			for _, r := range p.opts.HTTPGroups[g].Addrs {
				ts = append(ts, JobTarget{Tier: TierHTTP, Group: p.opts.HTTPGroups[g].Name, Target: r})
			}
		}
	}
	if web {
		for _, n := range p.opts.CDNNodes {
			ts = append(ts, JobTarget{Tier: TierCDN, Group: CDNGroup, Target: n})
		}
	}
	return ts
}

// CDNTopic is the NSQ topic of the CDN cascade: every batch's URLs and tags.
func CDNTopic(prefix string) string { return prefix + ".cdn" }

// CDNChannel is the channel of one CDN node on CDNTopic.
func CDNChannel(node string) string { return "node-" + node }

// CDNGroup is the Group of the messages on CDNTopic.
const CDNGroup = "cdn"

// cdnGroup is the CDN topic's channels, as a group for EnsureChannels.
func (p *Publisher) cdnGroup() []Group {
	if len(p.opts.CDNNodes) == 0 {
		return nil
	}
	g := Group{Name: CDNGroup}
	for _, n := range p.opts.CDNNodes {
		g.Addrs = append(g.Addrs, CDNChannel(n))
	}
	return []Group{g}
}

// encodeCDN splits every HTTP group's URLs and tags of b, once each, into
// messages for the CDN topic.
func (p *Publisher) encodeCDN(b *Batch, encode func(Purge) error) error {
	var urls, tags []string
	seenURL, seenTag := map[string]bool{}, map[string]bool{}
	for g := 0; g < b.NumHTTPGroups(); g++ {
		for _, u := range b.URLs(g) {
			if !seenURL[u] {
				seenURL[u] = true
				urls = append(urls, u)
			}
		}
		for _, t := range b.Tags(g) {
			if !seenTag[t] {
				seenTag[t] = true
				tags = append(tags, t)
			}
		}
	}
	for len(urls)+len(tags) > 0 {
		nu := min(len(urls), p.opts.MaxKeysPerMessage)
		nt := min(len(tags), p.opts.MaxKeysPerMessage-nu)
		msg := Purge{Group: CDNGroup}
		if nu > 0 {
			msg.URLs = urls[:nu]
		}
		if nt > 0 {
			msg.Tags = tags[:nt]
		}
		if err := encode(msg); err != nil {
			return err
		}
		urls, tags = urls[nu:], tags[nt:]
	}
	return nil
}

// publishOnce sends every non-empty group of both tiers on one nsqd (one
// MultiPublishAsync per topic), all groups in flight at once, and clears each group that nsqd acknowledged so a retry sends only
// what failed.
func (p *Publisher) publishOnce(bodies [][][]byte) error {
	addr := p.opts.NSQDTCP[int(uint64(p.next.Load())%uint64(len(p.opts.NSQDTCP)))]
	prod, err := p.producers.Get(addr)
	if err != nil {
		return fmt.Errorf("nsqd %s: %w", addr, err)
	}
	err = p.multiPublish(prod, bodies)
	if err != nil {
		p.producers.Failed(addr, prod)
	}
	return err
}

func (p *Publisher) multiPublish(prod *nsq.Producer, bodies [][][]byte) error {
	done := make(chan *nsq.ProducerTransaction, len(bodies))
	inflight := 0
	for g, bs := range bodies {
		if len(bs) == 0 {
			continue
		}
		if err := prod.MultiPublishAsync(p.topics[g], bs, done, g); err != nil {
			return fmt.Errorf("publish %s: %w", p.topics[g], err)
		}
		inflight++
	}
	var errs []error
	for ; inflight > 0; inflight-- {
		t := <-done
		g := t.Args[0].(int)
		if t.Error != nil {
			errs = append(errs, fmt.Errorf("publish %s: %w", p.topics[g], t.Error))
			continue
		}
		bodies[g] = nil
	}
	return errors.Join(errs...)
}

// Close stops the producers; it is safe to call more than once.
func (p *Publisher) Close() {
	p.closeOnce.Do(func() {
		p.producers.Close()
	})
}
