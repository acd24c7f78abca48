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
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/invalidate"
	"github.com/flashsync/flashsync/purge"
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
	// ConsumerOptions: as the purgers'; Timeout bounds one POST to a
	// console, its fan-out included (default 10 s), and MaxInFlight is also
	// the POSTs in flight to one node (default 16).
	purge.ConsumerOptions
	Nodes      []Node
	Registerer prometheus.Registerer
}

// Dispatcher forwards the CDN topic's purges to every node's console, each
// node on its own NSQ channel with its own consumer (the
// purge.Consumers, shared with the Redis and HTTP purgers): a slow or dead
// node never delays the others, and its backlog waits in its channel.
type Dispatcher struct {
	opts    DispatcherOptions
	c       *purge.Consumers
	clients []*http.Client
	request *prometheus.HistogramVec
}

// DefaultDispatchTimeout bounds one POST to a console, its fan-out
// included, unless configured.
const DefaultDispatchTimeout = 10 * time.Second

// NewDispatcher checks the options and loads the CA files; nothing
// connects before Run.
func NewDispatcher(opts DispatcherOptions) (*Dispatcher, error) {
	if len(opts.Nodes) == 0 {
		return nil, errors.New("dispatcher: no cdn nodes")
	}
	// A console's answer waits for its fan-out: more time and more in
	// flight than one PURGE.
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = 16
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultDispatchTimeout
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	if err := opts.ConsumerOptions.Prepare("dispatcher"); err != nil {
		return nil, err
	}
	c, err := purge.NewConsumers(opts.ConsumerOptions, purge.ConsumerKind{
		MetricPrefix: "flashsync_dispatcher_", Label: "node", Noun: "cdn console", Tier: invalidate.TierCDN,
	}, opts.Registerer)
	if err != nil {
		return nil, err
	}
	d := &Dispatcher{
		opts: opts,
		c:    c,
		request: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "flashsync_dispatcher_request_seconds",
			Help:    "One POST to a node's console, its fan-out to the cache machines included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"node"}),
	}
	if err := opts.Registerer.Register(d.request); err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
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
		s := &nodeSender{
			d:      d,
			node:   n,
			url:    strings.TrimSuffix(n.ConsoleURL, "/") + PurgePath,
			client: &http.Client{Transport: tr, Timeout: opts.Timeout},
		}
		d.clients = append(d.clients, s.client)
		c.Add(purge.Target{
			Group: invalidate.CDNGroup, Name: n.Name,
			Topic: invalidate.CDNTopic(opts.TopicPrefix), Channel: invalidate.CDNChannel(n.Name),
			// Each POST waits for the node's whole fan-out.
			Concurrency: opts.MaxInFlight,
			Apply:       s.send,
			Unreachable: func(err error) bool { return errors.As(err, new(errUnreachable)) },
		})
	}
	return d, nil
}

// Run consumes until ctx ends, then stops every consumer, waiting for the
// messages in hand. Whoever built the dispatcher closes it.
func (d *Dispatcher) Run(ctx context.Context) error {
	return d.c.Run(ctx, "cdn dispatcher")
}

// Close drops the idle connections to the consoles, after Run returned (or
// instead of Run); it is safe to call more than once.
func (d *Dispatcher) Close() error {
	for _, c := range d.clients {
		c.CloseIdleConnections()
	}
	return nil
}

// Health reports nodes whose console is currently unreachable.
func (d *Dispatcher) Health() error { return d.c.Health() }

// nodeSender sends the CDN purges to one node's console.
type nodeSender struct {
	d      *Dispatcher
	node   Node
	url    string
	client *http.Client
}

// errUnreachable marks a console that could not be talked to: the consumer
// holds the message and retries without burning attempts. Any other error
// (a machine failed: 502; a refused request: 4xx) requeues with backoff
// until the message is dead-lettered.
type errUnreachable struct{ err error }

func (e errUnreachable) Error() string { return e.err.Error() }
func (e errUnreachable) Unwrap() error { return e.err }

// send posts the message's URLs and tags as one signed request (fresh
// timestamp and nonce on every attempt).
func (n *nodeSender) send(ctx context.Context, p *invalidate.Purge) error {
	body, err := json.Marshal(Request{Job: p.Job, URLs: p.URLs, Tags: p.Tags})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.url, bytes.NewReader(body))
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
		if purge.NetUnreachable(err) {
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
