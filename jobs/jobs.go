// Package jobs tracks purge jobs on the center: every Publish call is a job
// whose targets (Redis replicas, HTTP instances, CDN nodes) acknowledge it
// on the acks topic; a job is pending until all did, then done, or failed
// if any dead-lettered. Recent jobs are kept in memory, the oldest evicted.
package jobs

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/internal/nsqio"
	"github.com/flashsync/flashsync/invalidate"
)

// States of a job and of one of its targets.
const (
	StatePending = "pending"
	StateDone    = "done"
	StateFailed  = "failed"
)

// Options configure a Store.
type Options struct {
	// Max bounds the jobs kept (default 10000); the oldest is evicted.
	Max        int
	Registerer prometheus.Registerer
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Target is one target's progress in a job.
type Target struct {
	Tier   invalidate.Tier `json:"tier"`
	Group  string          `json:"group"`
	Target string          `json:"target"`
	State  string          `json:"state"`
	Error  string          `json:"error,omitempty"`
	// LatencyMS is the ack's latency (commit seen → target purged).
	LatencyMS float64    `json:"latency_ms,omitempty"`
	AckedAt   *time.Time `json:"acked_at,omitempty"`
}

// Group is one group's progress in a job.
type Group struct {
	Tier    invalidate.Tier `json:"tier"`
	Group   string          `json:"group"`
	Pending int             `json:"pending"`
	Done    int             `json:"done"`
	Failed  int             `json:"failed"`
}

// Job is a job's progress.
type Job struct {
	ID      string    `json:"id"`
	State   string    `json:"state"`
	Created time.Time `json:"created"`
	// StartedBy and Reason name who asked for a job by hand (the admin
	// API) and why; a job of the binlog path has neither.
	StartedBy string `json:"started_by,omitempty"`
	Reason    string `json:"reason,omitempty"`
	// Finished is when the last target acknowledged.
	Finished *time.Time `json:"finished,omitempty"`
	// LatencyMS is from the publication to the last ack, once finished.
	LatencyMS float64  `json:"latency_ms,omitempty"`
	Pending   int      `json:"pending"`
	Done      int      `json:"done"`
	Failed    int      `json:"failed"`
	Groups    []Group  `json:"groups"`
	Targets   []Target `json:"targets,omitempty"`
}

type job struct {
	Job
	index map[invalidate.JobTarget]int // into Targets
}

// Store keeps the recent jobs; it is safe for concurrent use.
type Store struct {
	max int
	now func() time.Time

	mu    sync.Mutex
	order *list.List // of *job, newest at the front
	byID  map[string]*list.Element

	tracked  prometheus.Gauge
	total    *prometheus.CounterVec
	evicted  prometheus.Counter
	unknown  prometheus.Counter
	received prometheus.Counter
}

// New creates a Store and registers its metrics.
func New(opts Options) (*Store, error) {
	if opts.Max <= 0 {
		opts.Max = 10000
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Store{
		max: opts.Max, now: opts.Now, order: list.New(), byID: map[string]*list.Element{},
		tracked: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flashsync_jobs_tracked",
			Help: "Purge jobs kept in memory (pending or finished).",
		}),
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashsync_jobs_total",
			Help: "Purge jobs finished, by state (done, failed).",
		}, []string{"state"}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flashsync_jobs_evicted_total",
			Help: "Purge jobs dropped from memory to make room for newer ones.",
		}),
		unknown: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flashsync_jobs_unknown_acks_total",
			Help: "Acks ignored: their job or target is not tracked here (another center's, or evicted).",
		}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flashsync_jobs_acks_total",
			Help: "Acks received on the acks topic.",
		}),
	}
	for _, c := range []prometheus.Collector{s.tracked, s.total, s.evicted, s.unknown, s.received} {
		if err := opts.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return s, nil
}

// Expect starts tracking job with the targets that must acknowledge it. A
// job without targets is done at once.
func (s *Store) Expect(id string, targets []invalidate.JobTarget) {
	now := s.now()
	j := &job{Job: Job{ID: id, State: StatePending, Created: now}, index: map[invalidate.JobTarget]int{}}
	for _, t := range targets {
		if _, dup := j.index[t]; dup {
			continue
		}
		j.index[t] = len(j.Targets)
		j.Targets = append(j.Targets, Target{Tier: t.Tier, Group: t.Group, Target: t.Target, State: StatePending})
		j.Pending++
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.byID[id]; ok {
		s.order.Remove(e)
		delete(s.byID, id)
	}
	s.byID[id] = s.order.PushFront(j)
	for s.order.Len() > s.max {
		old := s.order.Back()
		s.order.Remove(old)
		delete(s.byID, old.Value.(*job).ID)
		s.evicted.Inc()
	}
	s.tracked.Set(float64(s.order.Len()))
	if j.Pending == 0 {
		s.finish(j, now)
	}
}

// Describe records who started a job by hand and why; false if the job is
// not tracked (Expect was not called, or it was evicted).
func (s *Store) Describe(id, startedBy, reason string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.byID[id]
	if !ok {
		return false
	}
	j := e.Value.(*job)
	j.StartedBy, j.Reason = startedBy, reason
	return true
}

// Ack records one target's ack. Acks of unknown jobs or targets are counted
// and ignored; a target's later acks (redeliveries) too.
func (s *Store) Ack(a invalidate.Ack) {
	s.received.Inc()
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.byID[a.Job]
	if !ok {
		s.unknown.Inc()
		return
	}
	j := e.Value.(*job)
	i, ok := j.index[invalidate.JobTarget{Tier: a.Tier, Group: a.Group, Target: a.Target}]
	if !ok {
		s.unknown.Inc()
		return
	}
	t := &j.Targets[i]
	if t.State != StatePending {
		return
	}
	at := a.At
	if at.IsZero() {
		at = s.now()
	}
	t.AckedAt, t.LatencyMS = &at, a.LatencyMS
	j.Pending--
	if a.OK {
		t.State = StateDone
		j.Done++
	} else {
		t.State, t.Error = StateFailed, a.Error
		j.Failed++
	}
	if j.Pending == 0 {
		s.finish(j, at)
	}
}

func (s *Store) finish(j *job, at time.Time) {
	j.State = StateDone
	if j.Failed > 0 {
		j.State = StateFailed
	}
	j.Finished = &at
	j.LatencyMS = max(0, float64(at.Sub(j.Created))/float64(time.Millisecond))
	s.total.WithLabelValues(j.State).Inc()
}

// Get returns a copy of the job with its targets.
func (s *Store) Get(id string) (Job, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.byID[id]
	if !ok {
		return Job{}, false
	}
	return e.Value.(*job).snapshot(true), true
}

// Recent returns up to n jobs, newest first, without their targets.
func (s *Store) Recent(n int) []Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Job, 0, min(max(n, 0), s.order.Len()))
	for e := s.order.Front(); e != nil && len(out) < n; e = e.Next() {
		out = append(out, e.Value.(*job).snapshot(false))
	}
	return out
}

// Len is the number of jobs kept.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.order.Len()
}

func (j *job) snapshot(targets bool) Job {
	c := j.Job
	c.Targets = nil
	if targets {
		c.Targets = append([]Target(nil), j.Targets...)
	}
	if j.Finished != nil {
		f := *j.Finished
		c.Finished = &f
	}
	groups := map[[2]string]*Group{}
	for _, t := range j.Targets {
		k := [2]string{string(t.Tier), t.Group}
		g := groups[k]
		if g == nil {
			g = &Group{Tier: t.Tier, Group: t.Group}
			groups[k] = g
		}
		switch t.State {
		case StatePending:
			g.Pending++
		case StateDone:
			g.Done++
		default:
			g.Failed++
		}
	}
	c.Groups = make([]Group, 0, len(groups))
	for _, g := range groups {
		c.Groups = append(c.Groups, *g)
	}
	sort.Slice(c.Groups, func(a, b int) bool {
		if c.Groups[a].Tier != c.Groups[b].Tier {
			return c.Groups[a].Tier < c.Groups[b].Tier
		}
		return c.Groups[a].Group < c.Groups[b].Group
	})
	return c
}

// ConsumerOptions configure the acks consumer.
type ConsumerOptions struct {
	// NSQDTCP is read when LookupdHTTP is empty.
	NSQDTCP             []string
	LookupdHTTP         []string
	LookupdPollInterval time.Duration
	TopicPrefix         string
	Logger              *slog.Logger
}

// Consume feeds the acks on <prefix>.acks, channel jobs, to the store until
// ctx ends.
func (s *Store) Consume(ctx context.Context, opts ConsumerOptions) error {
	if len(opts.NSQDTCP) == 0 && len(opts.LookupdHTTP) == 0 {
		return errors.New("jobs: no nsqd or nsqlookupd address")
	}
	if opts.TopicPrefix == "" {
		opts.TopicPrefix = invalidate.DefaultTopicPrefix
	}
	if opts.LookupdPollInterval <= 0 {
		opts.LookupdPollInterval = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	topic := invalidate.AckTopic(opts.TopicPrefix)
	cfg := nsq.NewConfig()
	cfg.MaxInFlight = 256
	cfg.LookupdPollInterval = opts.LookupdPollInterval
	cfg.OutputBufferSize = -1
	cfg.OutputBufferTimeout = -1
	channel := invalidate.AckChannel(invalidate.NewJobID())
	c, err := nsq.NewConsumer(topic, channel, cfg)
	if err != nil {
		return fmt.Errorf("nsq consumer %s/%s: %w", topic, channel, err)
	}
	c.SetLogger(nsqio.NewConsumerLogger(opts.Logger, opts.LookupdPollInterval), nsq.LogLevelError)
	log := opts.Logger
	c.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
		a, err := invalidate.DecodeAck(m.Body)
		if err != nil {
			log.Debug("bad job ack dropped", "err", err)
			return nil // a bad ack never gets better
		}
		s.Ack(*a)
		return nil
	}))
	if len(opts.LookupdHTTP) > 0 {
		// As the purgers do: have the topic on every nsqd first, so that
		// go-nsq's first nsqlookupd query finds it and the first job's
		// acks are not a poll interval late. Only the topic: the channel
		// is ephemeral and would outlive a consumer that never came.
		client := &http.Client{Timeout: 2 * time.Second}
		if perr := nsqio.PrepareLookupdTopics(ctx, client, opts.LookupdHTTP, map[string][]string{topic: nil}, 2*time.Second); perr != nil && ctx.Err() == nil {
			log.Debug("acks topic not on every nsqd yet; the consumer finds the rest at a later poll", "err", perr)
		}
		err = c.ConnectToNSQLookupds(opts.LookupdHTTP)
	} else {
		err = c.ConnectToNSQDs(opts.NSQDTCP)
	}
	if err != nil {
		c.Stop()
		return fmt.Errorf("nsq consumer %s/%s: %w", topic, channel, err)
	}
	<-ctx.Done()
	c.Stop()
	<-c.StopChan
	return nil
}
