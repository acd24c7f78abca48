package invalidate

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/prometheus/client_golang/prometheus"
)

// TierCDN is the tier of a JobTarget and an Ack of a CDN node; the others
// are Tier.String(): "redis", "http".
const TierCDN = "cdn"

// AckTopic receives the purgers' and the dispatcher's acks.
func AckTopic(prefix string) string { return prefix + ".acks" }

// AckChannel is the channel of AckTopic one center's job store reads:
// ephemeral and its own, so every center (the active canal and its standbys
// alike) sees every ack, and nothing piles up for a center that is gone.
func AckChannel(id string) string { return "jobs-" + id + "#ephemeral" }

// JobTarget is one cache target expected to acknowledge a job: a Redis
// replica, an HTTP cache instance or a CDN node.
type JobTarget struct {
	Tier   string `json:"tier"`
	Group  string `json:"group"`
	Target string `json:"target"`
}

// Ack reports that one target applied (OK) or dead-lettered (!OK) a message
// of a job. Acks are progress reports, not delivery: one may be lost.
type Ack struct {
	Job    string `json:"job"`
	Tier   string `json:"tier"`
	Group  string `json:"group"`
	Target string `json:"target"`
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
	// LatencyMS is from the canal reading the commit (or, without that,
	// from the message's publication) to the target done with it.
	LatencyMS float64   `json:"latency_ms"`
	At        time.Time `json:"at"`
}

// DecodeAck decodes an ack record.
func DecodeAck(body []byte) (*Ack, error) {
	var a Ack
	if err := json.Unmarshal(body, &a); err != nil {
		return nil, fmt.Errorf("decode ack: %w", err)
	}
	if a.Job == "" || a.Target == "" {
		return nil, errors.New("decode ack: no job or target")
	}
	return &a, nil
}

// NewJobID returns a new random job ID of 16 hex characters.
func NewJobID() string {
	var b [8]byte
	rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b[:])
}

// AckSenderOptions configure an AckSender.
type AckSenderOptions struct {
	// NSQDTCP lists the nsqd acks go to (the first that takes them); empty,
	// those that LookupdHTTP knows.
	NSQDTCP     []string
	LookupdHTTP []string
	TopicPrefix string
	// Tier labels the dropped-acks metric.
	Tier string
	// MaxInFlight bounds the acks being published; more are dropped
	// (default 256).
	MaxInFlight int
	Timeout     time.Duration
	Logger      *slog.Logger
	Registerer  prometheus.Registerer
}

// AckSender publishes acks asynchronously: Send never blocks on NSQ, and an
// ack that cannot be sent (too many in flight, no nsqd answering) is counted
// in flashsync_purger_acks_dropped_total and logged at debug level.
type AckSender struct {
	opts    AckSenderOptions
	sem     chan struct{}
	wg      sync.WaitGroup
	dropped prometheus.Counter

	producers *ProducerPool

	mu      sync.Mutex
	addrs   []string
	addrsAt time.Time
	last    string
	closed  bool
}

// NewAckSender registers the metric (shared by every sender of a registry);
// nothing connects before the first ack.
func NewAckSender(opts AckSenderOptions) (*AckSender, error) {
	if opts.TopicPrefix == "" {
		opts.TopicPrefix = "flashsync"
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = 256
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flashsync_purger_acks_dropped_total",
		Help: "Job acks that could not be published (too many in flight or no nsqd answering), by tier.",
	}, []string{"tier"})
	if err := opts.Registerer.Register(vec); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
		existing, ok := are.ExistingCollector.(*prometheus.CounterVec)
		if !ok {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
		vec = existing
	}
	return &AckSender{
		opts: opts, sem: make(chan struct{}, opts.MaxInFlight),
		dropped: vec.WithLabelValues(opts.Tier), producers: NewProducerPool(opts.Timeout, opts.Logger),
	}, nil
}

// Send publishes a in the background; it never blocks.
func (s *AckSender) Send(a Ack) {
	if a.At.IsZero() {
		a.At = time.Now().UTC()
	}
	body, err := json.Marshal(a)
	if err != nil {
		s.drop(a, err)
		return
	}
	select {
	case s.sem <- struct{}{}:
	default:
		s.drop(a, errors.New("too many acks in flight"))
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.sem
		s.drop(a, errors.New("ack sender closed"))
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer func() { <-s.sem }()
		if err := s.publish(body); err != nil {
			s.drop(a, err)
		}
	}()
}

func (s *AckSender) drop(a Ack, err error) {
	s.dropped.Inc()
	s.opts.Logger.Debug("job ack dropped", "job", a.Job, "target", a.Target, "err", err)
}

// publish sends body to the first nsqd that takes it, starting with the one
// that took the last ack.
func (s *AckSender) publish(body []byte) error {
	addrs, err := s.targets()
	if err != nil {
		return err
	}
	topic := AckTopic(s.opts.TopicPrefix)
	var errs []error
	for _, addr := range addrs {
		prod, err := s.producer(addr)
		if err == nil {
			done := make(chan *nsq.ProducerTransaction, 1)
			if err = prod.PublishAsync(topic, body, done); err == nil {
				select {
				case t := <-done:
					err = t.Error
				case <-time.After(2 * s.opts.Timeout):
					err = errors.New("publish timed out")
				}
			}
			if err != nil {
				s.producers.Failed(addr, prod)
			}
		}
		if err == nil {
			s.mu.Lock()
			s.last = addr
			s.mu.Unlock()
			return nil
		}
		errs = append(errs, fmt.Errorf("nsqd %s: %w", addr, err))
	}
	return errors.Join(errs...)
}

// targets lists the nsqd to try, the last good one first; nsqlookupd's
// answer is kept for 30 s.
func (s *AckSender) targets() ([]string, error) {
	s.mu.Lock()
	addrs, last := s.addrs, s.last
	fresh := len(s.opts.NSQDTCP) > 0 || time.Since(s.addrsAt) < 30*time.Second
	s.mu.Unlock()
	if len(s.opts.NSQDTCP) > 0 {
		addrs = s.opts.NSQDTCP
	} else if !fresh || len(addrs) == 0 {
		var errs []error
		addrs = nil
		for _, l := range s.opts.LookupdHTTP {
			a, err := lookupdNodes(l, s.opts.Timeout)
			if err == nil && len(a) > 0 {
				addrs = a
				break
			}
			errs = append(errs, fmt.Errorf("nsqlookupd %s: %v", l, err))
		}
		if len(addrs) == 0 {
			return nil, fmt.Errorf("no nsqd for acks: %w", errors.Join(errs...))
		}
		s.mu.Lock()
		s.addrs, s.addrsAt = addrs, time.Now()
		s.mu.Unlock()
	}
	if i := slices.Index(addrs, last); i > 0 {
		addrs = append(append([]string{last}, addrs[:i]...), addrs[i+1:]...)
	}
	return addrs, nil
}

func (s *AckSender) producer(addr string) (*nsq.Producer, error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, errors.New("ack sender closed")
	}
	return s.producers.Get(addr)
}

// Close waits for the acks in flight, then stops the producers.
func (s *AckSender) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.wg.Wait()
	s.producers.Close()
}

// AckLatency is the latency of an ack for a message seen by the canal at
// seenUnixNano (0: unknown) and published at publishedUnixNano.
func AckLatency(seenUnixNano, publishedUnixNano int64) float64 {
	from := seenUnixNano
	if from <= 0 {
		from = publishedUnixNano
	}
	if from <= 0 {
		return 0
	}
	return float64(time.Since(time.Unix(0, from))) / float64(time.Millisecond)
}
