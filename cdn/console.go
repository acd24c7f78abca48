package cdn

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/internal/httpapi"
)

// ConsoleOptions configure a Console.
type ConsoleOptions struct {
	// Key is the secret shared with the dispatcher.
	Key []byte
	// Machines are the node's cache machines (host:port), Varnish-compatible:
	// PURGE <path> purges a URL, PURGE / with an xkey-purge header tags.
	Machines []string
	// MaxBodyBytes bounds a request body (default 1 MiB).
	MaxBodyBytes int64
	// MaxSkew is the largest accepted distance between a request's timestamp
	// and the console's clock (default 30 s); nonces are remembered for
	// twice as long.
	MaxSkew time.Duration
	// Concurrency bounds the PURGE requests in flight to one machine
	// (default 8).
	Concurrency int
	// HostTimeout bounds one PURGE request to a machine (default 2 s).
	HostTimeout time.Duration
	// MaxNonces bounds the replay cache (default 1<<20); when it is full of
	// unexpired nonces the console answers 503 rather than forget one early.
	MaxNonces  int
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Console receives signed purge batches from the dispatcher and purges
// them from every cache machine of its node.
type Console struct {
	opts   ConsoleOptions
	client *http.Client
	nonces *nonceCache

	requests *prometheus.CounterVec
	machine  *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	targets  *prometheus.CounterVec
}

// Defaults of ConsoleOptions (configs' defaults are these).
const (
	DefaultMaxBodyBytes = 1 << 20
	DefaultMaxSkew      = 30 * time.Second
	DefaultConcurrency  = 8
	DefaultHostTimeout  = 2 * time.Second
)

// NewConsole checks the options.
func NewConsole(opts ConsoleOptions) (*Console, error) {
	if len(opts.Key) == 0 {
		return nil, errors.New("console: no key")
	}
	if len(opts.Machines) == 0 {
		return nil, errors.New("console: no machines")
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.MaxSkew <= 0 {
		opts.MaxSkew = DefaultMaxSkew
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultConcurrency
	}
	if opts.HostTimeout <= 0 {
		opts.HostTimeout = DefaultHostTimeout
	}
	if opts.MaxNonces <= 0 {
		opts.MaxNonces = 1 << 20
	}
	opts.Logger = cmp.Or(opts.Logger, slog.Default())
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	c := &Console{
		opts:   opts,
		nonces: newNonceCache(opts.MaxNonces),
		client: &http.Client{
			Transport: &http.Transport{
				Proxy:               nil,
				DialContext:         (&net.Dialer{Timeout: opts.HostTimeout}).DialContext,
				MaxIdleConnsPerHost: opts.Concurrency,
				IdleConnTimeout:     90 * time.Second,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashsync_console_requests_total",
			Help: "Purge requests received, by answer status code.",
		}, []string{"code"}),
		machine: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashsync_console_machine_purges_total",
			Help: "Batches purged on each cache machine, by result (ok, error).",
		}, []string{"machine", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "flashsync_console_machine_seconds",
			Help:    "Time to purge one batch on one cache machine.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"machine"}),
		targets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashsync_console_targets_total",
			Help: "URLs (kind=url) and tags (kind=tag) received in accepted requests.",
		}, []string{"kind"}),
	}
	for _, col := range []prometheus.Collector{c.requests, c.machine, c.latency, c.targets} {
		if err := opts.Registerer.Register(col); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return c, nil
}

// Handler serves POST /v1/purge and GET /v1/health.
func (c *Console) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(PurgePath, httpapi.Handler(c.opts.Logger, c.serve))
	mux.Handle("GET "+HealthPath, httpapi.Handler(c.opts.Logger, func(w http.ResponseWriter, _ *http.Request) error {
		return httpapi.WriteJSON(w, http.StatusOK, map[string]any{"ok": true, "machines": len(c.opts.Machines)})
	}))
	return mux
}

// Serve answers on ln until ctx ends; with certFile and keyFile set it
// serves TLS.
func (c *Console) Serve(ctx context.Context, ln net.Listener, certFile, keyFile string) error {
	srv := &http.Server{
		Handler:           c.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		// Room for every machine's share plus the answer.
		WriteTimeout: 30*time.Second + 4*c.opts.HostTimeout,
		IdleTimeout:  2 * time.Minute,
		ErrorLog:     slog.NewLogLogger(c.opts.Logger.Handler(), slog.LevelWarn),
	}
	if certFile != "" {
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	done := make(chan error, 1)
	go func() {
		if certFile != "" {
			done <- srv.ServeTLS(ln, certFile, keyFile)
		} else {
			done <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(shutCtx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = srv.Close()
	}
	if serr := <-done; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}

// serve adapts purge to the project's API adapter, which answers its
// errors (and logs those of 500 and more); serve counts every request by
// the status it answered and logs refusals: an unsigned or replayed
// request is worth a line.
func (c *Console) serve(w http.ResponseWriter, r *http.Request) error {
	status, err := c.purge(w, r)
	if err != nil {
		status = httpapi.Answer(err).Status
		if status < 500 {
			c.opts.Logger.Info("console request refused", "status", status, "err", err, "remote", r.RemoteAddr)
		}
	}
	c.requests.WithLabelValues(strconv.Itoa(status)).Inc()
	return err
}

// Request is the body of POST /v1/purge.
type Request struct {
	Job  string   `json:"job"`
	URLs []string `json:"urls,omitempty"`
	Tags []string `json:"tags,omitempty"`
}

// Response is the answer to an accepted POST /v1/purge: 200 when every
// machine purged the batch, 502 when any failed.
type Response struct {
	Job      string          `json:"job"`
	Machines []MachineResult `json:"machines"`
}

// MachineResult is one cache machine's part of a Response.
type MachineResult struct {
	Machine   string  `json:"machine"`
	OK        bool    `json:"ok"`
	Status    int     `json:"status"`
	LatencyMS float64 `json:"latency_ms"`
	Error     string  `json:"error"`
}

// Limits of one target: a URL travels in a request line, a tag in a header.
const (
	maxTargetLen = 8 << 10
	maxJobLen    = 256
)

// DecodeRequest parses and checks a request body: at least one target, no
// empty or oversized target, none with control characters, URLs absolute
// paths or http(s) URLs.
func DecodeRequest(body []byte) (*Request, error) {
	var q Request
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&q); err != nil {
		return nil, fmt.Errorf("decode body: %w", err)
	}
	if dec.More() {
		return nil, errors.New("decode body: data after the JSON object")
	}
	if len(q.Job) > maxJobLen {
		return nil, fmt.Errorf("job: longer than %d", maxJobLen)
	}
	if len(q.URLs)+len(q.Tags) == 0 {
		return nil, errors.New("no urls or tags")
	}
	for i, u := range q.URLs {
		if err := checkTarget(u); err != nil {
			return nil, fmt.Errorf("urls[%d]: %w", i, err)
		}
		if _, _, err := splitURL(u); err != nil {
			return nil, fmt.Errorf("urls[%d]: %w", i, err)
		}
	}
	for i, t := range q.Tags {
		if err := checkTarget(t); err != nil {
			return nil, fmt.Errorf("tags[%d]: %w", i, err)
		}
		if strings.ContainsAny(t, " \t") {
			return nil, fmt.Errorf("tags[%d]: contains a space", i)
		}
	}
	return &q, nil
}

func checkTarget(s string) error {
	if s == "" || len(s) > maxTargetLen {
		return fmt.Errorf("length %d (1 to %d)", len(s), maxTargetLen)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return errors.New("contains a control character")
		}
	}
	return nil
}

// splitURL returns the host (empty for a path) and the request target of a
// URL to purge.
func splitURL(s string) (host, target string, err error) {
	if strings.HasPrefix(s, "/") {
		if strings.HasPrefix(s, "//") {
			return "", "", errors.New("must be a path or an http(s) URL")
		}
		return "", s, nil
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return "", "", errors.New("must be a path or an http(s) URL")
	}
	target = u.EscapedPath()
	if target == "" {
		target = "/"
	}
	if u.RawQuery != "" {
		target += "?" + u.RawQuery
	}
	return u.Host, target, nil
}

// purge answers POST /v1/purge, and returns the status it answered, or
// the error to answer.
func (c *Console) purge(w http.ResponseWriter, r *http.Request) (int, error) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return 0, httpapi.Errorf(http.StatusMethodNotAllowed, "method %s not allowed; use POST", r.Method)
	}
	q, err := c.verify(w, r)
	if err != nil {
		return 0, err
	}
	c.targets.WithLabelValues("url").Add(float64(len(q.URLs)))
	c.targets.WithLabelValues("tag").Add(float64(len(q.Tags)))
	resp := Response{Job: q.Job, Machines: c.fanOut(r.Context(), q)}
	status := http.StatusOK
	for _, m := range resp.Machines {
		if !m.OK {
			status = http.StatusBadGateway
		}
	}
	if status != http.StatusOK {
		c.opts.Logger.Warn("purge failed on some cache machines", "job", q.Job, "machines", resp.Machines)
	}
	return status, httpapi.WriteJSON(w, status, resp)
}

// verify reads, authenticates and decodes a request: 413 for a body over
// MaxBodyBytes, 401 for a bad signature or a stale timestamp, 409 for a
// replayed nonce, 503 when the replay cache is full, 400 for a bad body.
func (c *Console) verify(w http.ResponseWriter, r *http.Request) (*Request, error) {
	if r.ContentLength > c.opts.MaxBodyBytes {
		return nil, httpapi.Errorf(http.StatusRequestEntityTooLarge, "body of %d bytes, max %d", r.ContentLength, c.opts.MaxBodyBytes)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, c.opts.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, httpapi.Errorf(http.StatusRequestEntityTooLarge, "body over %d bytes", c.opts.MaxBodyBytes)
		}
		return nil, httpapi.Errorf(http.StatusBadRequest, "read body: %w", err)
	}
	return c.check(r.Header, body)
}

// check is verify after the body is read.
func (c *Console) check(h http.Header, body []byte) (*Request, error) {
	now := c.opts.Now()
	_, nonce, err := Verify(c.opts.Key, h, body, now, c.opts.MaxSkew)
	if err != nil {
		return nil, httpapi.Wrap(http.StatusUnauthorized, err)
	}
	switch c.nonces.add(strings.ToLower(nonce), now, now.Add(2*c.opts.MaxSkew)) {
	case nonceReplayed:
		return nil, httpapi.Errorf(http.StatusConflict, "nonce already used")
	case nonceFull:
		return nil, httpapi.Errorf(http.StatusServiceUnavailable, "replay cache full (%d nonces within %s); retry later", c.opts.MaxNonces, 2*c.opts.MaxSkew)
	}
	q, err := DecodeRequest(body)
	if err != nil {
		return nil, httpapi.Wrap(http.StatusBadRequest, err)
	}
	return q, nil
}

// fanOut purges q on every machine at once.
func (c *Console) fanOut(ctx context.Context, q *Request) []MachineResult {
	reqs := purgeRequests(q)
	results := make([]MachineResult, len(c.opts.Machines))
	var wg sync.WaitGroup
	for i, m := range c.opts.Machines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			status, err := c.purgeMachine(ctx, m, reqs)
			d := time.Since(start)
			res := MachineResult{Machine: m, OK: err == nil, Status: status, LatencyMS: float64(d.Microseconds()) / 1000}
			result := "ok"
			if err != nil {
				res.Error = err.Error()
				result = "error"
			}
			c.machine.WithLabelValues(m, result).Inc()
			c.latency.WithLabelValues(m).Observe(d.Seconds())
			results[i] = res
		}()
	}
	wg.Wait()
	return results
}

// purgeReq is one PURGE request, sent to every machine.
type purgeReq struct {
	host, target string
	xkeys        string // space-separated tags, for PURGE / with xkey-purge
}

// maxXkeyHeader bounds one xkey-purge header; more tags take more requests.
const maxXkeyHeader = 4 << 10

func purgeRequests(q *Request) []purgeReq {
	var reqs []purgeReq
	for _, u := range q.URLs {
		host, target, _ := splitURL(u) // checked by DecodeRequest
		reqs = append(reqs, purgeReq{host: host, target: target})
	}
	var b strings.Builder
	for _, t := range q.Tags {
		if b.Len() > 0 && b.Len()+1+len(t) > maxXkeyHeader {
			reqs = append(reqs, purgeReq{target: "/", xkeys: b.String()})
			b.Reset()
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(t)
	}
	if b.Len() > 0 {
		reqs = append(reqs, purgeReq{target: "/", xkeys: b.String()})
	}
	return reqs
}

// purgeMachine sends reqs to one machine, Concurrency at a time, each
// bounded by HostTimeout. It stops at the first failure and returns the last
// status seen (the failing one, if any). 2xx and 404 (nothing cached) are
// success.
func (c *Console) purgeMachine(ctx context.Context, machine string, reqs []purgeReq) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		status   int
		firstErr error
		wg       sync.WaitGroup
	)
	sem := make(chan struct{}, c.opts.Concurrency)
	for _, pr := range reqs {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			st, err := c.send(ctx, machine, pr)
			mu.Lock()
			defer mu.Unlock()
			if firstErr != nil {
				return
			}
			status = st
			if err != nil {
				firstErr = err
				cancel()
			}
		}()
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	return status, firstErr
}

func (c *Console) send(ctx context.Context, machine string, pr purgeReq) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.HostTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "PURGE", "http://"+machine+"/", nil)
	if err != nil {
		return 0, err
	}
	req.URL.Opaque = pr.target // sent as is: the cache matches its own key
	if pr.host != "" {
		req.Host = pr.host
	}
	if pr.xkeys != "" {
		req.Header.Set("xkey-purge", pr.xkeys)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("PURGE %s: %w", pr.target, err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 && resp.StatusCode != http.StatusNotFound {
		return resp.StatusCode, fmt.Errorf("PURGE %s: %s", pr.target, resp.Status)
	}
	return resp.StatusCode, nil
}

// nonceCache remembers nonces until they expire. Expiries are added in
// non-decreasing order (now + a constant), so the oldest is always first.
type nonceCache struct {
	mu    sync.Mutex
	max   int
	seen  map[string]time.Time
	order []nonceEntry
}

type nonceEntry struct {
	nonce  string
	expiry time.Time
}

type nonceResult int

const (
	nonceNew nonceResult = iota
	nonceReplayed
	nonceFull
)

func newNonceCache(max int) *nonceCache {
	return &nonceCache{max: max, seen: map[string]time.Time{}}
}

func (n *nonceCache) add(nonce string, now, expiry time.Time) nonceResult {
	n.mu.Lock()
	defer n.mu.Unlock()
	i := 0
	for i < len(n.order) && !n.order[i].expiry.After(now) {
		delete(n.seen, n.order[i].nonce)
		n.order[i] = nonceEntry{}
		i++
	}
	// Slicing forward is amortized O(1): append copies only the live
	// entries when it grows the array.
	n.order = n.order[i:]
	if exp, ok := n.seen[nonce]; ok && exp.After(now) {
		return nonceReplayed
	}
	if len(n.order) >= n.max {
		return nonceFull
	}
	n.seen[nonce] = expiry
	n.order = append(n.order, nonceEntry{nonce, expiry})
	return nonceNew
}

// Len is the number of remembered nonces.
func (n *nonceCache) Len() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.order)
}
