package admin

import (
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
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/cdn"
	"github.com/flashsync/flashsync/internal/httpapi"
	"github.com/flashsync/flashsync/invalidate"
)

// Defaults of HealthOptions.
const (
	// DefaultHealthTimeout bounds one GET /api/v1/health: every check and
	// the nsqd stats together.
	DefaultHealthTimeout = 2 * time.Second
	// DefaultHealthCheckTimeout bounds the check of one target, so that a
	// few hung targets leave time for the others.
	DefaultHealthCheckTimeout = time.Second
	// DefaultHealthConcurrency bounds the checks in flight.
	DefaultHealthConcurrency = 16
)

// HealthOptions are what GET /api/v1/health checks besides the rules'
// Redis replicas and HTTP instances.
type HealthOptions struct {
	// NSQDHTTP are the nsqd HTTP addresses whose channels hold the
	// targets' backlogs (summed over them).
	NSQDHTTP []string
	// RedisPasswords are the replicas' AUTH passwords, by Redis group.
	RedisPasswords map[string]string
	// CDNConsoles are the CDN nodes' consoles, checked at cdn.HealthPath.
	CDNConsoles []CDNConsole
	// Timeout bounds one check of them all (default DefaultHealthTimeout),
	// CheckTimeout each target's (default DefaultHealthCheckTimeout); a
	// target that has not answered by then is down.
	Timeout, CheckTimeout time.Duration
	// Concurrency bounds the checks in flight (default
	// DefaultHealthConcurrency).
	Concurrency int
}

// CDNConsole is one [[cdn_node]]'s console.
type CDNConsole struct {
	Name string
	// URL is the console's base URL, http:// or https://.
	URL string
	// CAFile, optional, verifies an https URL (default: the system roots).
	CAFile string
}

// TargetHealth is one target's health: whether it answers now, and what
// waits for it on its NSQ channel.
type TargetHealth struct {
	Tier   invalidate.Tier `json:"tier"`
	Group  string          `json:"group"`
	Target string          `json:"target"`
	Up     bool            `json:"up"`
	Error  string          `json:"error,omitempty"`
	// Backlog is the messages of the target's channel its purger has not
	// finished, over every nsqd that answered: queued, deferred (requeued
	// with a delay) and in flight.
	Backlog int64 `json:"backlog"`
	// InFlight is the part of Backlog delivered to the purger (held while
	// the target is unreachable).
	InFlight int64 `json:"in_flight"`
}

// NSQDHealth tells whether an nsqd's stats were read: without them the
// backlogs leave that nsqd out.
type NSQDHealth struct {
	Addr  string `json:"addr"`
	Up    bool   `json:"up"`
	Error string `json:"error,omitempty"`
}

// Health answers GET /api/v1/health.
type Health struct {
	Targets []TargetHealth `json:"targets"`
	NSQD    []NSQDHealth   `json:"nsqd"`
	Checked time.Time      `json:"checked"`
}

// health checks the targets. Its HTTP clients keep no connection: nothing
// is left open between checks.
type health struct {
	opts HealthOptions
	web  *http.Client   // HTTP instances and nsqd
	cdn  []*http.Client // per console, with its CA
}

// newHealth checks the options and loads the consoles' CA files.
func newHealth(o HealthOptions) (*health, error) {
	if o.Timeout <= 0 {
		o.Timeout = DefaultHealthTimeout
	}
	if o.CheckTimeout <= 0 {
		o.CheckTimeout = min(DefaultHealthCheckTimeout, o.Timeout)
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultHealthConcurrency
	}
	client := func(tc *tls.Config) *http.Client {
		return &http.Client{
			Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true, TLSClientConfig: tc,
				DialContext: (&net.Dialer{Timeout: o.CheckTimeout}).DialContext, TLSHandshakeTimeout: o.CheckTimeout},
			// Any answer is one: a redirection is not followed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	h := &health{opts: o, web: client(nil)}
	for _, c := range o.CDNConsoles {
		var tc *tls.Config
		if c.CAFile != "" {
			pem, err := os.ReadFile(c.CAFile)
			if err != nil {
				return nil, fmt.Errorf("admin: cdn node %s: ca_file: %w", c.Name, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("admin: cdn node %s: ca_file %s: no PEM certificate", c.Name, c.CAFile)
			}
			tc = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}
		h.cdn = append(h.cdn, client(tc))
	}
	return h, nil
}

// getHealth answers GET /api/v1/health (viewer and up): every Redis
// replica, HTTP instance and CDN node, up or not, with its backlog. A
// target that is down is up=false with its error, never an error answer.
func (s *Server) getHealth(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.authenticate(w, r); err != nil {
		return s.count(actionHealth, err)
	}
	s.count(actionHealth, nil)
	w.Header().Set("Cache-Control", "no-store")
	return httpapi.WriteJSON(w, http.StatusOK, s.health.check(r.Context(), s.opts.Rules, s.opts.TopicPrefix))
}

// channelStats are one channel's counts on one nsqd.
type channelStats struct {
	Name     string `json:"channel_name"`
	Depth    int64  `json:"depth"`
	InFlight int64  `json:"in_flight_count"`
	Deferred int64  `json:"deferred_count"`
}

// check runs every check concurrently, at most Concurrency at a time,
// within Timeout, and waits for them all.
func (h *health) check(ctx context.Context, rules *invalidate.Rules, prefix string) Health {
	ctx, cancel := context.WithTimeout(ctx, h.opts.Timeout)
	defer cancel()
	out := Health{Checked: time.Now()}
	var checks []func(context.Context) error
	var channels [][2]string // topic, channel of each target
	for _, g := range rules.RedisGroups() {
		for _, addr := range g.Addrs {
			out.Targets = append(out.Targets, TargetHealth{Tier: invalidate.TierRedis, Group: g.Name, Target: addr})
			channels = append(channels, [2]string{invalidate.RedisTopic(prefix, g.Name), invalidate.ReplicaChannel(addr)})
			password := h.opts.RedisPasswords[g.Name]
			checks = append(checks, func(ctx context.Context) error { return pingRedis(ctx, addr, password, h.opts.CheckTimeout) })
		}
	}
	for _, g := range rules.HTTPGroups() {
		for _, addr := range g.Addrs {
			out.Targets = append(out.Targets, TargetHealth{Tier: invalidate.TierHTTP, Group: g.Name, Target: addr})
			channels = append(channels, [2]string{invalidate.HTTPTopic(prefix, g.Name), invalidate.ReplicaChannel(addr)})
			checks = append(checks, func(ctx context.Context) error {
				_, err := h.ask(ctx, h.web, http.MethodHead, "http://"+addr+"/")
				return err // any answer: the cache serves
			})
		}
	}
	for i, c := range h.opts.CDNConsoles {
		out.Targets = append(out.Targets, TargetHealth{Tier: invalidate.TierCDN, Group: invalidate.CDNGroup, Target: c.Name})
		channels = append(channels, [2]string{invalidate.CDNTopic(prefix), invalidate.CDNChannel(c.Name)})
		url := strings.TrimSuffix(c.URL, "/") + cdn.HealthPath
		checks = append(checks, func(ctx context.Context) error {
			status, err := h.ask(ctx, h.cdn[i], http.MethodGet, url)
			if err == nil && status != http.StatusOK {
				err = fmt.Errorf("GET %s: HTTP %d", url, status)
			}
			return err
		})
	}
	out.NSQD = make([]NSQDHealth, len(h.opts.NSQDHTTP))
	stats := make([]map[[2]string]channelStats, len(h.opts.NSQDHTTP))
	errs := make([]error, len(checks))
	sem := make(chan struct{}, h.opts.Concurrency)
	var wg sync.WaitGroup
	// The nsqd, few, are read outside the bound: a hung target does not
	// take the backlogs of the others with it.
	nsqdErrs := make([]error, len(h.opts.NSQDHTTP))
	for i, addr := range h.opts.NSQDHTTP {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stats[i], nsqdErrs[i] = h.nsqdStats(ctx, addr)
		}()
	}
	for i, f := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				errs[i] = fmt.Errorf("not checked: %w", ctx.Err())
				return
			}
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(ctx, h.opts.CheckTimeout)
			defer cancel()
			errs[i] = f(cctx)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		out.Targets[i].Up = err == nil
		if err != nil {
			out.Targets[i].Error = err.Error()
		}
	}
	for i, addr := range h.opts.NSQDHTTP {
		out.NSQD[i] = NSQDHealth{Addr: addr, Up: nsqdErrs[i] == nil}
		if err := nsqdErrs[i]; err != nil {
			out.NSQD[i].Error = err.Error()
			continue
		}
		for j, ch := range channels {
			c := stats[i][ch]
			out.Targets[j].Backlog += c.Depth + c.Deferred + c.InFlight
			out.Targets[j].InFlight += c.InFlight
		}
	}
	return out
}

// pingRedis PINGs a replica on a connection of its own, closed after.
func pingRedis(ctx context.Context, addr, password string, timeout time.Duration) error {
	c := redis.NewClient(&redis.Options{Addr: addr, Password: password, DialTimeout: timeout, ReadTimeout: timeout, WriteTimeout: timeout,
		PoolSize: 1, MaxRetries: -1, DialerRetries: 1, DisableIdentity: true}) // one attempt: a refusal is an answer
	defer c.Close()
	if err := c.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis %s: PING: %w", addr, err)
	}
	return nil
}

// ask sends one request and returns the answer's status.
func (h *health) ask(ctx context.Context, client *http.Client, method, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp.StatusCode, nil
}

// nsqdStats reads the channels of every topic of one nsqd, by topic and
// channel.
func (h *health) nsqdStats(ctx context.Context, addr string) (map[[2]string]channelStats, error) {
	url := "http://" + addr + "/stats?format=json&include_clients=false&include_mem=false"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := h.web.Do(req)
	if err != nil {
		return nil, fmt.Errorf("nsqd %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("nsqd %s: GET /stats: HTTP %d", addr, resp.StatusCode)
	}
	var stats struct {
		Topics []struct {
			Name     string         `json:"topic_name"`
			Channels []channelStats `json:"channels"`
		} `json:"topics"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&stats); err != nil {
		return nil, fmt.Errorf("nsqd %s: /stats: %w", addr, err)
	}
	if stats.Topics == nil {
		return nil, errors.New("nsqd " + addr + ": /stats: no topics field (not an nsqd?)")
	}
	out := map[[2]string]channelStats{}
	for _, t := range stats.Topics {
		for _, c := range t.Channels {
			out[[2]string{t.Name, c.Name}] = c
		}
	}
	return out, nil
}
