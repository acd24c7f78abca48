// Package nsqio is the NSQ plumbing every role shares: producers that never
// reconnect in place, topic and channel creation, nsqlookupd queries and the
// go-nsq consumer logger.
package nsqio

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nsqio/go-nsq"
)

// ProducerPool hands out one go-nsq Producer per nsqd address and never lets
// one reconnect. go-nsq v1.1.0's Producer reconnects by replacing its
// connection while the router goroutine of the lost one may still read it
// (a data race; nsqio/go-nsq#345's router panic lives there too). A producer
// whose connection ended (its router said "exiting router") or whose
// publish failed is stopped and replaced by a new one instead.
type ProducerPool struct {
	timeout time.Duration
	log     *slog.Logger
	level   nsq.LogLevel

	mu     sync.Mutex
	m      map[string]*pooledProducer
	closed bool
	// stopping counts the replaced producers being stopped; Close waits.
	stopping sync.WaitGroup
}

type pooledProducer struct {
	*nsq.Producer
	gone atomic.Bool
}

// NewProducerPool makes producers with the dial and write timeout; their
// warnings go to log.
func NewProducerPool(timeout time.Duration, log *slog.Logger) *ProducerPool {
	if log == nil {
		log = slog.Default()
	}
	return &ProducerPool{timeout: timeout, log: log, m: map[string]*pooledProducer{}}
}

var errPoolClosed = errors.New("nsq producers closed")

// Get returns the producer of addr, a new one if the last one's connection
// ended.
func (p *ProducerPool) Get(addr string) (*nsq.Producer, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errPoolClosed
	}
	if pp := p.m[addr]; pp != nil {
		if !pp.gone.Load() {
			return pp.Producer, nil
		}
		delete(p.m, addr)
		p.stopLocked(pp.Producer)
	}
	cfg := nsq.NewConfig()
	cfg.DialTimeout = p.timeout
	cfg.WriteTimeout = p.timeout
	prod, err := nsq.NewProducer(addr, cfg)
	if err != nil {
		return nil, err
	}
	pp := &pooledProducer{Producer: prod}
	// Info level, to see the router exit; only warnings and errors are
	// passed on.
	prod.SetLogger(producerLogger{pp: pp, l: p.log.With("nsqd", addr)}, nsq.LogLevelInfo)
	p.m[addr] = pp
	return prod, nil
}

// Failed drops prod, the producer of addr, after a failed publish: the
// next Get makes a new one.
func (p *ProducerPool) Failed(addr string, prod *nsq.Producer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pp := p.m[addr]; pp != nil && pp.Producer == prod {
		delete(p.m, addr)
		p.stopLocked(prod)
	}
}

// stopLocked stops a replaced producer in the background (Stop waits for
// its connection to close) and counts it for Close; p.mu is held.
func (p *ProducerPool) stopLocked(prod *nsq.Producer) {
	p.stopping.Add(1)
	go func() {
		defer p.stopping.Done()
		prod.Stop()
	}()
}

// PublishFirst publishes body to topic on the first nsqd of addrs that
// takes it and returns that address; the errors of all of them otherwise.
func (p *ProducerPool) PublishFirst(addrs []string, topic string, body []byte) (string, error) {
	var errs []error
	for _, addr := range addrs {
		prod, err := p.Get(addr)
		if err == nil {
			if err = prod.Publish(topic, body); err != nil {
				p.Failed(addr, prod)
			}
		}
		if err == nil {
			return addr, nil
		}
		errs = append(errs, fmt.Errorf("publish %s on nsqd %s: %w", topic, addr, err))
	}
	if len(errs) == 0 {
		return "", fmt.Errorf("publish %s: no nsqd address", topic)
	}
	return "", errors.Join(errs...)
}

// Close stops every producer; it is safe to call more than once.
func (p *ProducerPool) Close() {
	p.mu.Lock()
	p.closed = true
	all := p.m
	p.m = map[string]*pooledProducer{}
	p.mu.Unlock()
	for _, pp := range all {
		pp.Stop()
	}
	p.stopping.Wait()
}

// producerLogger marks its producer gone when the router of its connection
// exits, and passes warnings and errors to slog.
type producerLogger struct {
	pp *pooledProducer
	l  *slog.Logger
}

func (l producerLogger) Output(_ int, s string) error {
	if strings.Contains(s, "exiting router") {
		l.pp.gone.Store(true)
	}
	if strings.HasPrefix(s, "WRN") || strings.HasPrefix(s, "ERR") {
		l.l.Warn(s)
	}
	return nil
}
