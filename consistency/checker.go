// Package consistency is the Polaris-style consistency checker: it samples
// the canal's invalidations of Redis groups and, a window M after the canal
// read each sampled commit, reads the derived keys from every replica of the
// group. A replica still holding a value filled before the change is an
// inconsistency; values cacheaside fills carry their fill start (package
// cacheaside's envelope), which is what lets the checker tell a value's age.
// Keys it cannot judge are counted as unknown, never as consistent.
//
// Keys sync mode writes are judged by their version instead: a replica
// whose stored version (invalidate.SyncVersionPrefix) is older than the
// sampled write's still serves, or tombstones, an older row.
package consistency

import (
	"bytes"
	"cmp"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/flashsync/flashsync/internal/nsqio"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/nsqio/go-nsq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Defaults of Options (configs' defaults are these).
const (
	DefaultSampleRate = 0.01
	DefaultMaxPending = 10000
	// DefaultLookupdPollInterval is the purgers' (purge.ConsumerOptions).
	DefaultLookupdPollInterval = 5 * time.Second
	DefaultRecent              = 100
	DefaultTimeout             = 500 * time.Millisecond
	// SampleKeys is the most keys of one message a check reads: a message
	// is one sample, and a large transaction's thousands of keys would
	// otherwise cost thousands of reads per replica.
	SampleKeys = 5
	// Channel is the checker's channel on every group's topic. Ephemeral:
	// while the checker is down nsqd keeps no backlog for it, and a sample
	// delivered late would be checked past its window anyway.
	Channel = "consistency#ephemeral"
)

// DefaultWindows are the delays after the canal read a commit at which its
// keys are checked.
func DefaultWindows() []time.Duration {
	return []time.Duration{time.Second, 5 * time.Second, time.Minute}
}

// checkWorkers bounds the checks that read Redis at once; maxInFlight is
// the messages each consumer holds (the handler only samples: it is fast).
const (
	checkWorkers = 8
	maxInFlight  = 64
)

// Group is a Redis group the checker reads: every replica of it.
type Group struct {
	Name     string
	Replicas []string
	Password string
	DB       int
}

// Options configure a Checker.
type Options struct {
	Groups []Group
	// NSQDTCP lists the nsqd to consume from when LookupdHTTP is empty;
	// LookupdHTTP, set, finds every nsqd of each topic.
	NSQDTCP     []string
	LookupdHTTP []string
	TopicPrefix string
	// SampleRate is the probability that a message is checked, 0 < r <= 1
	// (default DefaultSampleRate).
	SampleRate float64
	// Windows are the delays after the canal read a commit at which its
	// keys are read (default DefaultWindows).
	Windows []time.Duration
	// MaxPending bounds the scheduled checks (default DefaultMaxPending);
	// a sample over it is dropped and counted. A sampled message stays
	// pending until its last window: size it at least SampleRate × key
	// purges per second × the sum of Windows (at 500 purges/s, 0.01 and
	// the default windows need 330; 1.0 needs 33,000).
	MaxPending int
	// Recent is how many inconsistencies GET /consistency keeps (default
	// DefaultRecent).
	Recent int
	// Timeout bounds one Redis read (default DefaultTimeout).
	Timeout time.Duration
	// LookupdPollInterval is how often nsqlookupd is asked for the nsqd
	// that hold each topic (default DefaultLookupdPollInterval): a topic
	// the canal creates after the checker started is found at the next
	// poll (go-nsq's own default, a minute, missed whole storms).
	LookupdPollInterval time.Duration
	Logger              *slog.Logger
	Registerer          prometheus.Registerer
}

func (o *Options) prepare() error {
	if len(o.NSQDTCP) == 0 && len(o.LookupdHTTP) == 0 {
		return errors.New("consistency checker: no nsqd or nsqlookupd address")
	}
	if len(o.Groups) == 0 {
		return errors.New("consistency checker: no redis group")
	}
	for _, g := range o.Groups {
		if g.Name == "" || len(g.Replicas) == 0 {
			return fmt.Errorf("consistency checker: group %q: want a name and replicas", g.Name)
		}
	}
	o.TopicPrefix = cmp.Or(o.TopicPrefix, invalidate.DefaultTopicPrefix)
	if o.SampleRate == 0 {
		o.SampleRate = DefaultSampleRate
	}
	if !(o.SampleRate > 0 && o.SampleRate <= 1) {
		return fmt.Errorf("consistency checker: sample rate %v: want 0 < rate <= 1", o.SampleRate)
	}
	if len(o.Windows) == 0 {
		o.Windows = DefaultWindows()
	}
	for _, w := range o.Windows {
		if w <= 0 {
			return fmt.Errorf("consistency checker: window %v: want positive", w)
		}
	}
	o.Windows = slices.Clone(o.Windows)
	slices.Sort(o.Windows)
	o.Windows = slices.Compact(o.Windows)
	if o.MaxPending == 0 {
		o.MaxPending = DefaultMaxPending
	}
	if o.LookupdPollInterval <= 0 {
		o.LookupdPollInterval = DefaultLookupdPollInterval
	}
	if o.Recent == 0 {
		o.Recent = DefaultRecent
	}
	if o.MaxPending < 0 || o.Recent < 0 {
		return fmt.Errorf("consistency checker: max pending %d, recent %d: want positive", o.MaxPending, o.Recent)
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	o.Logger = cmp.Or(o.Logger, slog.Default())
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	return nil
}

// Inconsistency is one confirmed stale value, as GET /consistency lists it.
type Inconsistency struct {
	Key     string `json:"key"`
	Group   string `json:"group"`
	Replica string `json:"replica"`
	Window  string `json:"window"`
	// Checked is when the confirming read returned; Seen when the canal
	// read the commit (canal clock); CommitUnix the commit's binlog
	// timestamp (MySQL clock, seconds); Pos its binlog position.
	Checked    time.Time `json:"checked"`
	Seen       time.Time `json:"seen"`
	CommitUnix int64     `json:"commit_unix"`
	Pos        string    `json:"pos"`
	// FillStart is when the stale value's filler started reading MySQL;
	// ValueAgeSeconds its age at Checked.
	FillStart       time.Time `json:"fill_start"`
	ValueAgeSeconds float64   `json:"value_age_seconds"`
	// PurgeApplied tells whether the replica's watermark had passed the
	// message's coverage: true, the purge was applied and the value came
	// back (a fill racing the purge); false, the purge is late or lost.
	PurgeApplied bool `json:"purge_applied"`
	// StoredVersion and WantVersion, for a synced key: the version the
	// replica held (empty: none) and the sampled write's.
	StoredVersion string `json:"stored_version,omitempty"`
	WantVersion   string `json:"want_version,omitempty"`
}

// WindowCounts are one window's checks since start.
type WindowCounts struct {
	Consistent   int64 `json:"consistent"`
	Inconsistent int64 `json:"inconsistent"`
	Unknown      int64 `json:"unknown"`
	// Nines is -log10(inconsistent / (consistent + inconsistent)); null
	// while nothing was found inconsistent (infinitely many nines).
	Nines *float64 `json:"nines"`
}

// Report is GET /consistency's answer: counts by window ("1s", "1m0s"),
// and the last inconsistencies, newest first.
type Report struct {
	Windows map[string]WindowCounts `json:"windows"`
	Recent  []Inconsistency         `json:"recent"`
}

// check is one scheduled read of a sample's keys.
type check struct {
	due    time.Time
	window time.Duration
	group  *group
	msg    *invalidate.Purge
	seen   time.Time
}

type checkHeap []*check

func (h checkHeap) Len() int           { return len(h) }
func (h checkHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h checkHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *checkHeap) Push(x any)        { *h = append(*h, x.(*check)) }
func (h *checkHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	*h = old[:len(old)-1]
	return c
}

type replica struct {
	addr   string
	client *redis.Client
}

type group struct {
	Group
	replicas []replica
}

// Checker samples invalidations and checks every replica at each window.
type Checker struct {
	opts   Options
	groups []*group

	checks  *prometheus.CounterVec
	nines   *prometheus.GaugeVec
	dropped prometheus.Counter

	mu      sync.Mutex
	pending checkHeap
	// inFlight counts the checks taken off the heap and not yet done:
	// MaxPending bounds both.
	inFlight int
	counts   map[time.Duration]*WindowCounts
	recent   []Inconsistency // newest last; reversed by Report
	wake     chan struct{}

	closeOnce sync.Once

	// beforeConfirm, set by tests, runs between a stale read and its
	// confirming read.
	beforeConfirm func(key, replica string)
}

// New checks opts and registers the metrics; nothing connects before Run.
func New(opts Options) (*Checker, error) {
	if err := opts.prepare(); err != nil {
		return nil, err
	}
	c := &Checker{opts: opts, counts: map[time.Duration]*WindowCounts{}, wake: make(chan struct{}, 1)}
	c.checks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flashsync_consistency_checks_total",
		Help: "Keys the consistency checker judged on one replica, by window after the canal read the commit and result (consistent, inconsistent, unknown).",
	}, []string{"window", "result"})
	c.nines = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "flashsync_consistency_nines",
		Help: "Nines of consistency per window since start: -log10(inconsistent / (consistent + inconsistent)); +Inf while none was inconsistent.",
	}, []string{"window"})
	c.dropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "flashsync_consistency_samples_dropped_total",
		Help: "Sampled messages not checked because max_pending checks were already scheduled.",
	})
	for _, m := range []prometheus.Collector{c.checks, c.nines, c.dropped} {
		if err := opts.Registerer.Register(m); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	for _, w := range opts.Windows {
		c.counts[w] = &WindowCounts{}
		for _, r := range []Result{Consistent, Inconsistent, Unknown} {
			c.checks.WithLabelValues(w.String(), string(r))
		}
		c.nines.WithLabelValues(w.String()).Set(math.Inf(1))
	}
	for _, g := range opts.Groups {
		gr := &group{Group: g}
		for _, addr := range g.Replicas {
			gr.replicas = append(gr.replicas, replica{addr: addr, client: redis.NewClient(&redis.Options{
				Addr: addr, Password: g.Password, DB: g.DB,
				DialTimeout: opts.Timeout, ReadTimeout: opts.Timeout, WriteTimeout: opts.Timeout,
				// A failed read is an unknown, not a retry; one dial attempt,
				// so that a replica down costs a check one timeout at most.
				PoolSize: 2, MaxRetries: -1, DialerRetries: 1,
			})})
		}
		c.groups = append(c.groups, gr)
	}
	return c, nil
}

// Close releases the Redis clients; call it once Run returned. Idempotent.
func (c *Checker) Close() error {
	var errs []error
	c.closeOnce.Do(func() {
		for _, g := range c.groups {
			for _, r := range g.replicas {
				errs = append(errs, r.client.Close())
			}
		}
	})
	return errors.Join(errs...)
}

// Run consumes every group's topic and runs the checks until ctx ends.
func (c *Checker) Run(ctx context.Context) error {
	due := make(chan *check)
	var wg sync.WaitGroup
	for range checkWorkers {
		wg.Go(func() {
			for ch := range due {
				c.run(ctx, ch)
			}
		})
	}
	defer wg.Wait()
	defer close(due)

	var consumers []*nsq.Consumer
	defer func() {
		for _, cons := range consumers {
			cons.Stop()
		}
		for _, cons := range consumers {
			<-cons.StopChan
		}
	}()
	for _, g := range c.groups {
		topic := invalidate.RedisTopic(c.opts.TopicPrefix, g.Name)
		cfg := nsq.NewConfig()
		cfg.MaxInFlight = maxInFlight
		cfg.LookupdPollTimeout = c.opts.Timeout
		cfg.LookupdPollInterval = c.opts.LookupdPollInterval
		cons, err := nsq.NewConsumer(topic, Channel, cfg)
		if err != nil {
			return fmt.Errorf("nsq consumer %s/%s: %w", topic, Channel, err)
		}
		log := c.opts.Logger.With("group", g.Name)
		cons.SetLogger(nsqio.NewConsumerLogger(log, 5*time.Second), nsq.LogLevelError)
		cons.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
			// Drawn before decoding: at the default rate of 0.01 most
			// messages cost the checker only their delivery.
			if !c.drawn() {
				return nil
			}
			msg, err := invalidate.DecodePurge(m.Body)
			if err != nil {
				log.Debug("consistency checker: message skipped", "err", err)
				return nil
			}
			c.schedule(g, msg, time.Now())
			return nil
		}))
		if len(c.opts.LookupdHTTP) > 0 {
			err = cons.ConnectToNSQLookupds(c.opts.LookupdHTTP)
		} else {
			err = cons.ConnectToNSQDs(c.opts.NSQDTCP)
		}
		if err != nil {
			cons.Stop()
			return fmt.Errorf("nsq consumer %s/%s: %w", topic, Channel, err)
		}
		consumers = append(consumers, cons)
	}
	c.opts.Logger.Info("consistency checker running", "groups", len(c.groups), "sample_rate", c.opts.SampleRate, "windows", c.opts.Windows)

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		c.mu.Lock()
		var next *check
		wait := time.Hour
		if len(c.pending) > 0 {
			if d := time.Until(c.pending[0].due); d <= 0 {
				next = heap.Pop(&c.pending).(*check)
				c.inFlight++
			} else {
				wait = d
			}
		}
		c.mu.Unlock()
		if next != nil {
			select {
			case due <- next:
			case <-ctx.Done():
				return nil
			}
			continue
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-c.wake:
		case <-ctx.Done():
			return nil
		}
	}
}

// sample schedules a check of msg at each window with probability
// SampleRate. Only the canal's key purges are samples: admin messages
// (no coverage) name no commit, heartbeats no keys.
func (c *Checker) sample(g *group, msg *invalidate.Purge, now time.Time) {
	if c.drawn() {
		c.schedule(g, msg, now)
	}
}

// drawn draws whether a message is sampled, with probability SampleRate.
func (c *Checker) drawn() bool { return c.opts.SampleRate >= 1 || rand.Float64() < c.opts.SampleRate }

// schedule schedules the checks of msg, a key purge of the canal (other
// messages are not checked).
func (c *Checker) schedule(g *group, msg *invalidate.Purge, now time.Time) {
	if !msg.Covers() || msg.Heartbeat || len(msg.Keys)+len(msg.Sync) == 0 {
		return
	}
	seen := now
	if msg.SeenUnixNano > 0 {
		seen = time.Unix(0, msg.SeenUnixNano)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending)+c.inFlight+len(c.opts.Windows) > c.opts.MaxPending {
		c.dropped.Inc()
		return
	}
	for _, w := range c.opts.Windows {
		heap.Push(&c.pending, &check{due: seen.Add(w), window: w, group: g, msg: msg, seen: seen})
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// run reads the check's keys from every replica and counts the results.
func (c *Checker) run(ctx context.Context, ch *check) {
	defer func() {
		c.mu.Lock()
		c.inFlight--
		c.mu.Unlock()
	}()
	keys := ch.msg.Keys[:min(len(ch.msg.Keys), SampleKeys)]
	for _, r := range ch.group.replicas {
		values, wm, err := c.read(ctx, r, keys)
		for i, key := range keys {
			if err != nil || values[i].unreadable {
				c.count(ch.window, Unknown, nil)
				continue
			}
			res, inc := c.judgeRead(ctx, ch, r, key, values[i], wm)
			c.count(ch.window, res, inc)
		}
		for _, w := range ch.msg.Sync[:min(len(ch.msg.Sync), SampleKeys)] {
			res, inc := c.judgeSync(ctx, ch, r, w)
			c.count(ch.window, res, inc)
		}
	}
}

// judgeSync judges a synced key on r against the sampled write w: the
// replica's stored version must be at least w's. Without a version, the
// key is judged as a purged one (a miss is consistent; a filled value by
// its fill start). An older version is read again before it is reported.
func (c *Checker) judgeSync(ctx context.Context, ch *check, r replica, w invalidate.SyncWrite) (Result, *Inconsistency) {
	want := w.Version.String()
	stored, res, inc, wm := c.readSync(ctx, ch, r, w.Key, want)
	if stored == "" {
		return res, inc
	}
	if c.beforeConfirm != nil {
		c.beforeConfirm(w.Key, r.addr)
	}
	if stored, res, inc, wm = c.readSync(ctx, ch, r, w.Key, want); stored == "" {
		return res, inc
	}
	applied := false
	if m, err := invalidate.ParseWatermark(wm); err == nil {
		applied = m.To >= ch.msg.To
	}
	return Inconsistent, &Inconsistency{
		Key: w.Key, Group: ch.group.Name, Replica: r.addr, Window: ch.window.String(),
		Checked: time.Now(), Seen: ch.seen, CommitUnix: ch.msg.CommitUnix, Pos: ch.msg.Pos,
		PurgeApplied: applied, StoredVersion: stored, WantVersion: want,
	}
}

// readSync reads key's version and value from r: stale, the stored version
// older than want; otherwise "" and the result.
func (c *Checker) readSync(ctx context.Context, ch *check, r replica, key, want string) (stale string, res Result, inc *Inconsistency, wm string) {
	values, wm, err := c.read(ctx, r, []string{invalidate.SyncVersionPrefix + key, key})
	switch {
	case err != nil || values[0].unreadable:
		return "", Unknown, nil, wm
	case !values[0].present && values[1].unreadable:
		return "", Unknown, nil, wm // a hash without a version to judge by
	case !values[0].present:
		res, inc = c.judgeRead(ctx, ch, r, key, values[1], wm)
		return "", res, inc, wm
	case string(values[0].value) >= want:
		return "", Consistent, nil, wm
	}
	return string(values[0].value), "", nil, wm
}

// stored is one key as a replica returned it; unreadable: the replica
// answered an error for it (WRONGTYPE: not a string).
type stored struct {
	value      []byte
	present    bool
	unreadable bool
}

// judgeRead judges key's value as r returned it (with r's watermark wm);
// a stale one is read again before it is reported.
func (c *Checker) judgeRead(ctx context.Context, ch *check, r replica, key string, first stored, wm string) (Result, *Inconsistency) {
	v, fillStart := judge(first.value, first.present, ch.msg.CommitUnix, ch.seen)
	switch v {
	case verdictConsistent:
		return Consistent, nil
	case verdictUnknown:
		return Unknown, nil
	}
	// Confirm: a later write's purge deletes the value, and a later fill
	// carries a newer fill start; only the same old value read again (or
	// another one also filled before the commit) is reported.
	if c.beforeConfirm != nil {
		c.beforeConfirm(key, r.addr)
	}
	again, wmAgain, err := c.read(ctx, r, []string{key})
	if err != nil || again[0].unreadable {
		return Unknown, nil
	}
	if !again[0].present || !bytes.Equal(again[0].value, first.value) {
		switch v, fillStart = judge(again[0].value, again[0].present, ch.msg.CommitUnix, ch.seen); v {
		case verdictConsistent:
			return Consistent, nil
		case verdictUnknown:
			return Unknown, nil
		}
	}
	now := time.Now()
	applied := false
	if w, err := invalidate.ParseWatermark(cmp.Or(wmAgain, wm)); err == nil {
		applied = w.To >= ch.msg.To
	}
	return Inconsistent, &Inconsistency{
		Key: key, Group: ch.group.Name, Replica: r.addr, Window: ch.window.String(),
		Checked: now, Seen: ch.seen, CommitUnix: ch.msg.CommitUnix, Pos: ch.msg.Pos,
		FillStart: fillStart, ValueAgeSeconds: now.Sub(fillStart).Seconds(), PurgeApplied: applied,
	}
}

// read gets keys and the replica's watermark ("" when it has none) in one
// round trip.
func (c *Checker) read(ctx context.Context, r replica, keys []string) ([]stored, string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	pipe := r.client.Pipeline()
	gets := make([]*redis.StringCmd, len(keys))
	for i, k := range keys {
		gets[i] = pipe.Get(ctx, k)
	}
	wm := pipe.Get(ctx, invalidate.WatermarkKey)
	// Exec returns the first command's error: a reply error (redis.Error)
	// is that key's, anything else the replica's.
	var reply redis.Error
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) && !errors.As(err, &reply) {
		return nil, "", fmt.Errorf("read %d keys from %s: %w", len(keys), r.addr, err)
	}
	out := make([]stored, len(keys))
	for i, g := range gets {
		b, err := g.Bytes()
		switch {
		case errors.Is(err, redis.Nil):
		case errors.As(err, &reply):
			out[i].unreadable = true
		case err != nil:
			return nil, "", fmt.Errorf("read %s from %s: %w", keys[i], r.addr, err)
		default:
			out[i] = stored{value: b, present: true}
		}
	}
	return out, wm.Val(), nil
}

func (c *Checker) count(w time.Duration, res Result, inc *Inconsistency) {
	c.checks.WithLabelValues(w.String(), string(res)).Inc()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.counts[w]
	switch res {
	case Consistent:
		n.Consistent++
	case Inconsistent:
		n.Inconsistent++
	case Unknown:
		n.Unknown++
	}
	c.nines.WithLabelValues(w.String()).Set(nines(*n))
	if inc != nil && c.opts.Recent > 0 {
		c.opts.Logger.Warn("stale value on a replica", "key", inc.Key, "group", inc.Group, "replica", inc.Replica,
			"window", inc.Window, "pos", inc.Pos, "value_age_seconds", inc.ValueAgeSeconds, "purge_applied", inc.PurgeApplied)
		if len(c.recent) == c.opts.Recent {
			c.recent = slices.Delete(c.recent, 0, 1)
		}
		c.recent = append(c.recent, *inc)
	}
}

// nines is -log10 of the inconsistent share of the judged checks (unknown
// ones are neither); +Inf while none was inconsistent.
func nines(n WindowCounts) float64 {
	if n.Inconsistent == 0 {
		return math.Inf(1)
	}
	return 0 - math.Log10(float64(n.Inconsistent)/float64(n.Consistent+n.Inconsistent)) // 0 - x: never -0 in JSON
}

// Report is the counts since start and the last inconsistencies.
func (c *Checker) Report() Report {
	c.mu.Lock()
	defer c.mu.Unlock()
	rep := Report{Windows: map[string]WindowCounts{}, Recent: make([]Inconsistency, 0, len(c.recent))}
	for w, n := range c.counts {
		wc := *n
		if x := nines(wc); !math.IsInf(x, 1) {
			wc.Nines = &x
		}
		rep.Windows[w.String()] = wc
	}
	for i := len(c.recent) - 1; i >= 0; i-- {
		rep.Recent = append(rep.Recent, c.recent[i])
	}
	return rep
}
