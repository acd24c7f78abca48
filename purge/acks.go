package purge

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/flashsync/flashsync/internal/nsqio"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/nsqio/go-nsq"
	"github.com/prometheus/client_golang/prometheus"
)

// AckSenderOptions configure an AckSender.
type AckSenderOptions struct {
	// NSQDTCP lists the nsqd acks go to (the first that takes them); empty,
	// those that LookupdHTTP knows.
	NSQDTCP     []string
	LookupdHTTP []string
	TopicPrefix string
	// Tier labels the dropped-acks metric.
	Tier invalidate.Tier
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

	producers *nsqio.ProducerPool

	mu      sync.Mutex
	addrs   []string
	addrsAt time.Time
	last    string
	closed  bool
}

// NewAckSender registers the metric (shared by every sender of a registry);
// nothing connects before the first ack.
func NewAckSender(opts AckSenderOptions) (*AckSender, error) {
	opts.TopicPrefix = cmp.Or(opts.TopicPrefix, invalidate.DefaultTopicPrefix)
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = 256
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Second
	}
	opts.Logger = cmp.Or(opts.Logger, slog.Default())
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
		dropped: vec.WithLabelValues(string(opts.Tier)), producers: nsqio.NewProducerPool(opts.Timeout, opts.Logger),
	}, nil
}

// Send publishes a in the background; it never blocks.
func (s *AckSender) Send(a invalidate.Ack) {
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

func (s *AckSender) drop(a invalidate.Ack, err error) {
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
	topic := invalidate.AckTopic(s.opts.TopicPrefix)
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
			a, err := nsqio.LookupdNodes(l, s.opts.Timeout)
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
