package purge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/invalidate"
)

// HTTPGroup is a set of HTTP caches that all hold the same pages: each
// instance gets every URL and tag purge of the group.
type HTTPGroup struct {
	Name      string
	Instances []string
}

// HTTPPurgerOptions configure an HTTPPurger.
type HTTPPurgerOptions struct {
	// ConsumerOptions: as in RedisPurgerOptions; Timeout bounds one purge
	// request (connect, send, response headers and body).
	ConsumerOptions
	Groups []HTTPGroup
	// Host is the Host header of a URL purge whose URL is a path; empty
	// means the instance's address (what a client talking to the instance
	// directly sends). An absolute URL's own host always wins.
	Host string
	// SoftPurge sends tags as xkey-softpurge (objects are kept stale for
	// grace) instead of xkey-purge.
	SoftPurge bool
	// MaxConnsPerInstance bounds the keep-alive connections to one instance
	// and the messages applied to it at once (default 8).
	MaxConnsPerInstance int
	Registerer          prometheus.Registerer
}

// maxXkeyHeader bounds the tags sent in one xkey header; Varnish's default
// http_req_hdr_len is 8 KB.
const maxXkeyHeader = 4000

// HTTPPurger sends PURGE requests for the URLs and xkey tags of each HTTP
// group's purges to every instance of the group (Varnish with
// configs/varnish/flashsync.vcl). Failure semantics are the Redis purger's
// (shared in Consumers): an instance that is unreachable or answers 5xx
// holds its messages, a refused purge (4xx other than 404) is retried and,
// after MaxAttempts, dead-lettered.
type HTTPPurger struct {
	opts    HTTPPurgerOptions
	c       *Consumers
	clients []*http.Client
	urls    *prometheus.CounterVec
	tags    *prometheus.CounterVec
	reqs    *prometheus.CounterVec
}

// httpStatusError is a purge answered with a status that is not a success.
type httpStatusError struct {
	instance, what string
	status         int
	body           string
}

// httpUnreachable tells an instance that cannot take purges now: no
// connection, or a 5xx answer (the cache itself is failing: overloaded,
// restarting, out of workspace). Its purges are held, not counted as
// attempts; a purge it refuses (4xx: ACL, method) is a bad message.
func httpUnreachable(err error) bool {
	var se *httpStatusError
	if errors.As(err, &se) {
		return se.status >= 500
	}
	return NetUnreachable(err)
}

func (e *httpStatusError) Error() string {
	return fmt.Sprintf("http %s PURGE %s: status %d %s", e.instance, e.what, e.status, e.body)
}

// NewHTTPPurger checks the options; nothing connects before Run.
func NewHTTPPurger(opts HTTPPurgerOptions) (*HTTPPurger, error) {
	if len(opts.Groups) == 0 {
		return nil, errors.New("http purger: no http groups")
	}
	if err := opts.ConsumerOptions.Prepare("http purger"); err != nil {
		return nil, err
	}
	if opts.MaxConnsPerInstance <= 0 {
		opts.MaxConnsPerInstance = 8
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	c, err := NewConsumers(opts.ConsumerOptions, ConsumerKind{MetricPrefix: "flashsync_purger_http_", Label: "instance", Noun: "http instance", Tier: invalidate.TierHTTP}, opts.Registerer)
	if err != nil {
		return nil, err
	}
	p := &HTTPPurger{opts: opts, c: c}
	p.urls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flashsync_purger_http_urls_purged_total",
		Help: "URLs purged per HTTP cache instance (PURGE answered 2xx or 404).",
	}, []string{"group", "instance"})
	p.tags = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flashsync_purger_http_tags_purged_total",
		Help: "xkey tags purged per HTTP cache instance.",
	}, []string{"group", "instance"})
	p.reqs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flashsync_purger_http_requests_total",
		Help: "PURGE requests per HTTP cache instance, by kind (url, xkey, ban) and status code (0: no answer).",
	}, []string{"group", "instance", "kind", "code"})
	for _, col := range []prometheus.Collector{p.urls, p.tags, p.reqs} {
		if err := opts.Registerer.Register(col); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	for _, g := range opts.Groups {
		for _, addr := range g.Instances {
			client := &http.Client{
				Timeout: opts.Timeout,
				Transport: &http.Transport{
					DialContext:           (&net.Dialer{Timeout: opts.Timeout, KeepAlive: 30 * time.Second}).DialContext,
					MaxConnsPerHost:       opts.MaxConnsPerInstance,
					MaxIdleConnsPerHost:   opts.MaxConnsPerInstance,
					IdleConnTimeout:       90 * time.Second,
					ResponseHeaderTimeout: opts.Timeout,
					DisableCompression:    true,
				},
				// A purge is never redirected.
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			}
			p.clients = append(p.clients, client)
			group, addr := g.Name, addr
			c.Add(Target{
				Group: group, Name: addr, Topic: invalidate.HTTPTopic(opts.TopicPrefix, g.Name),
				// One message's PURGEs wait their round trips; take as many
				// messages at once as there are connections.
				Concurrency: opts.MaxConnsPerInstance,
				Apply:       func(ctx context.Context, msg *invalidate.Purge) error { return p.purge(ctx, client, group, addr, msg) },
				Unreachable: httpUnreachable,
				OK: func(msg *invalidate.Purge) {
					p.urls.WithLabelValues(group, addr).Add(float64(len(msg.URLs)))
					p.tags.WithLabelValues(group, addr).Add(float64(len(msg.Tags)))
				},
			})
		}
	}
	return p, nil
}

// Run consumes until ctx ends, then stops every consumer, waiting for the
// messages in hand. Whoever built the purger closes it.
func (p *HTTPPurger) Run(ctx context.Context) error {
	return p.c.Run(ctx, "http purger")
}

// Close drops the idle keep-alive connections, after Run returned (or
// instead of Run); it is safe to call more than once.
func (p *HTTPPurger) Close() error {
	for _, c := range p.clients {
		c.CloseIdleConnections()
	}
	return nil
}

// Health reports instances that are currently unreachable.
func (p *HTTPPurger) Health() error { return p.c.Health() }

// purge sends one PURGE per URL and one per batch of tags (xkey header),
// all at once: they commute, and a message's latency is then one round trip
// rather than one per request. A message is applied again in full after a
// failure: purging twice is harmless.
func (p *HTTPPurger) purge(ctx context.Context, client *http.Client, group, addr string, msg *invalidate.Purge) error {
	host := p.opts.Host
	if host == "" {
		host = addr
	}
	type request struct{ kind, path, host, header, value string }
	var reqs []request
	for _, u := range msg.URLs {
		path, h := u, host
		if pu, err := url.Parse(u); err == nil && pu.Host != "" {
			path, h = pu.RequestURI(), pu.Host
		}
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		reqs = append(reqs, request{kind: "url", path: path, host: h})
	}
	header := "xkey-purge"
	if p.opts.SoftPurge {
		header = "xkey-softpurge"
	}
	for tags := msg.Tags; len(tags) > 0; {
		n, size := 0, 0
		for n < len(tags) && (n == 0 || size+1+len(tags[n]) <= maxXkeyHeader) {
			size += 1 + len(tags[n])
			n++
		}
		reqs = append(reqs, request{kind: "xkey", path: "/", host: host, header: header, value: strings.Join(tags[:n], " ")})
		tags = tags[n:]
	}
	// A ban is a regex on the request URL: BAN / with X-Ban-Url (what
	// configs/varnish/flashsync.vcl turns into ban("req.url ~ ...")).
	for _, b := range msg.Bans {
		reqs = append(reqs, request{kind: "ban", path: "/", host: host, header: "X-Ban-Url", value: b})
	}
	if len(reqs) == 1 {
		r := reqs[0]
		return p.send(ctx, client, group, addr, r.kind, r.path, r.host, r.header, r.value)
	}
	// At most MaxConnsPerInstance at once: more would only queue for a
	// connection inside the transport.
	sem := make(chan struct{}, p.opts.MaxConnsPerInstance)
	errs := make([]error, len(reqs))
	var wg sync.WaitGroup
	for i, r := range reqs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[i] = p.send(ctx, client, group, addr, r.kind, r.path, r.host, r.header, r.value)
		}()
	}
	wg.Wait()
	return firstUnreachableOr(errs)
}

// firstUnreachableOr returns the first error that says the instance cannot
// be reached (the message is then held, not counted as an attempt), else
// the first error.
func firstUnreachableOr(errs []error) error {
	var first error
	for _, err := range errs {
		if err == nil {
			continue
		}
		if httpUnreachable(err) {
			return err
		}
		if first == nil {
			first = err
		}
	}
	return first
}

func (p *HTTPPurger) send(ctx context.Context, client *http.Client, group, addr, kind, path, host, header, value string) error {
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	method := "PURGE"
	if kind == "ban" {
		method = "BAN"
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, nil)
	if err != nil {
		// %v: a URL that cannot be sent is a bad message, never an
		// unreachable instance (url.Error is a net.Error).
		return fmt.Errorf("http %s %s %q: %v", addr, method, path, err)
	}
	req.Host = host
	if header != "" {
		req.Header.Set(header, value)
	}
	resp, err := client.Do(req)
	if err != nil {
		p.reqs.WithLabelValues(group, addr, kind, "0").Inc()
		return fmt.Errorf("http %s %s %s: %w", addr, method, path, err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	p.reqs.WithLabelValues(group, addr, kind, fmt.Sprint(resp.StatusCode)).Inc()
	if resp.StatusCode/100 == 2 || (resp.StatusCode == http.StatusNotFound && kind != "ban") {
		return nil
	}
	what := path
	if header != "" {
		what += " " + header + ": " + value
	}
	return &httpStatusError{instance: addr, what: truncate([]byte(what), 200), status: resp.StatusCode, body: truncate(body, 200)}
}
