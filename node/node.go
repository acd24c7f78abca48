// Package node runs the flashsync roles a configuration asks for in one
// process, with the HTTP endpoint for metrics and health.
package node

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/canal"
	"github.com/flashsync/flashsync/cdn"
	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/internal/retry"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/flashsync/flashsync/jobs"
	"github.com/flashsync/flashsync/nsqembed"
	"github.com/flashsync/flashsync/purge"
	"github.com/flashsync/flashsync/seckill"
)

// Role names, as subcommands.
const (
	RoleCanal       = "canal"
	RoleRedisPurger = "purger"
	// RoleHTTPPurger purges the URLs and xkey tags of every [[http_group]]
	// on each of its instances (Varnish).
	RoleHTTPPurger = "http-purger"
	// RoleConsole runs on a CDN node: it purges the node's cache machines
	// on signed requests from the dispatcher.
	RoleConsole = "console"
	// RoleDispatcher forwards the CDN topic to every [[cdn_node]]'s console.
	RoleDispatcher = "dispatcher"
)

// Roles lists every role in start order.
var Roles = []string{RoleCanal, RoleRedisPurger, RoleHTTPPurger, RoleDispatcher, RoleConsole, RoleSeckill}

// Options configure a Node.
type Options struct {
	Config *configs.Config
	// Roles to run; empty means every role the config has settings for.
	Roles  []string
	Logger *slog.Logger
	// ResetToCurrent starts the canal at the server's current position,
	// ignoring the saved one (recovery from error 1236); it requires
	// FlushAll, which empties every configured Redis group first, because
	// changes between the saved and the current position are never read.
	ResetToCurrent bool
	FlushAll       bool
}

// Node is one flashsync process.
type Node struct {
	cfg      *configs.Config
	opts     Options
	log      *slog.Logger
	registry *prometheus.Registry
	roles    []string

	nsqd       *nsqembed.Server
	nsqdTCP    []string
	nsqdHTTP   []string
	rules      *invalidate.Rules // every role has them, for /rules/explain
	publisher  *invalidate.Publisher
	jobs       *jobs.Store // with the canal role: the purge jobs it published
	canal      *canal.Canal
	lease      *canal.Lease
	purger     *purge.RedisPurger
	httpPurger *purge.HTTPPurger
	listener   net.Listener

	dispatcher      *cdn.Dispatcher
	console         *cdn.Console
	consoleListener net.Listener

	seckill      *seckill.Service
	seckillDB    *sql.DB
	seckillRedis *redis.Client
	cacheClients []*redis.Client

	closeOnce sync.Once
}

// New builds every requested role: templates are parsed, options checked,
// listeners bound. Nothing talks to MySQL, Redis or NSQ before Run.
func New(opts Options) (*Node, error) {
	cfg := opts.Config
	if cfg == nil {
		return nil, errors.New("node: no config")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ResetToCurrent && !opts.FlushAll {
		return nil, errors.New("--reset-to-current skips every change between the saved and the current position, so caches may keep stale values: add --flush-all")
	}
	n := &Node{cfg: cfg, opts: opts, log: opts.Logger, registry: prometheus.NewRegistry()}
	n.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	n.roles = opts.Roles
	if len(n.roles) == 0 {
		if len(cfg.Rules) > 0 {
			n.roles = append(n.roles, RoleCanal)
		}
		if len(cfg.RedisGroups) > 0 {
			n.roles = append(n.roles, RoleRedisPurger)
		}
		if len(cfg.HTTPGroups) > 0 {
			n.roles = append(n.roles, RoleHTTPPurger)
		}
		if len(cfg.CDNNodes) > 0 {
			n.roles = append(n.roles, RoleDispatcher)
		}
		if cfg.ConsoleConfigured() {
			n.roles = append(n.roles, RoleConsole)
		}
		if cfg.SeckillConfigured() {
			n.roles = append(n.roles, RoleSeckill)
		}
		if len(n.roles) == 0 {
			return nil, errors.New("config has neither [[rule]] nor [[redis_group]] (nor [[cdn_node]] or [console]): no role to run")
		}
	}
	for _, r := range n.roles {
		if !slices.Contains(Roles, r) {
			return nil, fmt.Errorf("unknown role %q (roles: %v)", r, Roles)
		}
	}
	if err := n.build(); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

func (n *Node) has(role string) bool { return slices.Contains(n.roles, role) }

func (n *Node) build() error {
	cfg := n.cfg
	rules, err := invalidate.RulesFromConfig(cfg)
	if err != nil {
		return err
	}
	n.rules = rules
	n.nsqdTCP, n.nsqdHTTP = cfg.NSQ.NSQDTCP, cfg.NSQ.NSQDHTTP
	// A console alone (on a CDN node) uses no NSQ.
	usesNSQ := slices.ContainsFunc(n.roles, func(r string) bool { return r != RoleConsole })
	if len(n.nsqdTCP) == 0 && usesNSQ {
		n.nsqd, err = nsqembed.New(nsqembed.Options{
			TCPAddress: cfg.NSQ.EmbeddedTCP, HTTPAddress: cfg.NSQ.EmbeddedHTTP,
			DataPath: cfg.NSQ.EmbeddedDataPath, Logger: n.log,
		})
		if err != nil {
			return err
		}
		n.nsqdTCP, n.nsqdHTTP = []string{n.nsqd.TCPAddr()}, []string{n.nsqd.HTTPAddr()}
	}
	if n.has(RoleCanal) {
		if len(cfg.Rules) == 0 {
			return errors.New("canal role: config has no [[rule]]")
		}
		// Keys go to the Redis groups' topics, URLs and tags to the HTTP
		// groups' topics, each with a channel per replica or instance.
		redisGroups, httpGroups := invalidate.GroupsFromConfig(cfg)
		// Every batch is a job its targets acknowledge on the acks topic.
		n.jobs, err = jobs.New(jobs.Options{Registerer: n.registry})
		if err != nil {
			return err
		}
		n.publisher, err = invalidate.NewPublisher(invalidate.PublisherOptions{
			NSQDTCP: n.nsqdTCP, NSQDHTTP: n.nsqdHTTP, TopicPrefix: cfg.NSQ.TopicPrefix,
			Groups: redisGroups, HTTPGroups: httpGroups, CDNNodes: cdnNodeNames(cfg),
			Timeout: cfg.NSQ.PublishTimeout, Logger: n.log, Registerer: n.registry,
			OnPublished: n.jobs.Expect,
		})
		if err != nil {
			return err
		}
		var lease *canal.Lease
		var checkpoint canal.Checkpoint
		if cfg.Canal.HA {
			lease, checkpoint, err = canal.NewLease(canal.LeaseOptions{MySQL: cfg.MySQL, Database: cfg.Canal.HADatabase, Name: cfg.Canal.HAName, TTL: cfg.Canal.LeaseTTL})
			if err != nil {
				return fmt.Errorf("canal ha: %w", err)
			}
			n.lease = lease
		}
		n.canal, err = canal.New(canal.Options{
			Lease: lease, Checkpoint: checkpoint,
			MySQL: cfg.MySQL, Canal: cfg.Canal, Rules: rules, Publisher: n.publisher,
			Logger: n.log, Registerer: n.registry,
			ResetToCurrent: n.opts.ResetToCurrent,
			OnReset:        func(ctx context.Context) error { return FlushAll(ctx, cfg, n.log) },
		})
		if err != nil {
			return err
		}
	}
	if n.has(RoleRedisPurger) {
		if len(cfg.RedisGroups) == 0 {
			return errors.New("purger role: config has no [[redis_group]]")
		}
		n.purger, err = purge.NewRedisPurger(purge.RedisPurgerOptions{
			ConsumerOptions: n.consumerOptions(RoleRedisPurger, cfg.Purger.Timeout),
			Groups:          cfg.RedisGroups, PipelineKeys: cfg.Purger.PipelineKeys, Registerer: n.registry,
		})
		if err != nil {
			return err
		}
	}
	if n.has(RoleHTTPPurger) {
		if len(cfg.HTTPGroups) == 0 {
			return errors.New("http-purger role: config has no [[http_group]]")
		}
		n.httpPurger, err = purge.NewHTTPPurger(purge.HTTPPurgerOptions{
			ConsumerOptions: n.consumerOptions(RoleHTTPPurger, cfg.Purger.Timeout),
			Groups:          cfg.HTTPGroups, Host: cfg.Purger.HTTPHost, SoftPurge: cfg.Purger.HTTPSoftPurge, Registerer: n.registry,
		})
		if err != nil {
			return err
		}
	}
	if err := n.buildCDN(); err != nil {
		return err
	}
	if n.has(RoleSeckill) {
		if err := n.buildSeckill(); err != nil {
			return err
		}
	}
	n.listener, err = net.Listen("tcp", cfg.HTTP.Addr)
	if err != nil {
		return fmt.Errorf("http.addr: %w", err)
	}
	return nil
}

// HTTPAddr is the bound address of /metrics and /healthz.
func (n *Node) HTTPAddr() string { return n.listener.Addr().String() }

// Run runs every role until ctx ends or one fails; a failing role stops the
// others. Shutdown order: the canal stops reading and saves its position,
// then purgers finish the messages in hand, then the embedded nsqd persists
// its queues.
func (n *Node) Run(ctx context.Context) error {
	defer n.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	srv := &http.Server{Handler: n.mux(), ReadHeaderTimeout: 5 * time.Second}
	httpDone := make(chan error, 1)
	go func() { httpDone <- srv.Serve(n.listener) }()
	n.log.Info("serving metrics and health", "addr", "http://"+n.HTTPAddr())

	var nsqdDone chan error
	nsqdCtx, stopNSQD := context.WithCancel(context.Background())
	defer stopNSQD()
	if n.nsqd != nil {
		nsqdDone = make(chan error, 1)
		go func() { nsqdDone <- n.nsqd.Run(nsqdCtx) }()
		n.log.Info("embedded nsqd running", "tcp", n.nsqd.TCPAddr(), "http", n.nsqd.HTTPAddr())
	}

	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(role string, err error) {
		if err != nil && ctx.Err() == nil {
			mu.Lock()
			errs = append(errs, fmt.Errorf("%s: %w", role, err))
			mu.Unlock()
			cancel()
		}
	}
	if n.canal != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Check the server before waiting on nsqd: a wrong binlog format
			// should fail the start at once, whatever nsqd is doing.
			if err := canal.Preflight(ctx, n.cfg.MySQL); err != nil {
				fail(RoleCanal, err)
				return
			}
			if err := n.ensureChannels(ctx); err != nil {
				fail(RoleCanal, err)
				return
			}
			fail(RoleCanal, n.canal.Run(ctx))
		}()
	}
	if n.jobs != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.consumeAcks(ctx)
		}()
	}
	if n.purger != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fail(RoleRedisPurger, n.purger.Run(ctx))
		}()
	}
	if n.httpPurger != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fail(RoleHTTPPurger, n.httpPurger.Run(ctx))
		}()
	}
	if n.dispatcher != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fail(RoleDispatcher, n.dispatcher.Run(ctx))
		}()
	}
	if n.seckill != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fail(RoleSeckill, n.runSeckill(ctx))
		}()
	}
	if n.console != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.log.Info("serving cdn console", "addr", n.consoleListener.Addr().String(), "tls", n.cfg.Console.TLSCert != "")
			fail(RoleConsole, n.console.Serve(ctx, n.consoleListener, n.cfg.Console.TLSCert, n.cfg.Console.TLSKey))
		}()
	}
	if nsqdDone != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case err := <-nsqdDone:
				nsqdDone <- err // for the shutdown below
				fail("nsqd", err)
			case <-ctx.Done():
			}
		}()
	}
	<-ctx.Done()
	wg.Wait()
	stopNSQD()
	if nsqdDone != nil {
		<-nsqdDone
	}
	shutCtx, done := context.WithTimeout(context.Background(), 2*time.Second)
	defer done()
	srv.Shutdown(shutCtx)
	<-httpDone
	return errors.Join(errs...)
}

// ensureChannels waits for nsqd and creates every replica's channel before
// the first publish. Every canal node of an HA group, standbys included,
// waits here for the same nsqd: jitter keeps them from polling it in step.
func (n *Node) ensureChannels(ctx context.Context) error {
	return retry.Until(ctx, retry.Backoff{Min: 100 * time.Millisecond, Max: 2 * time.Second, Jitter: 0.5},
		func() error { return n.publisher.EnsureChannels(ctx) },
		func(_ int, err error, next time.Duration) {
			n.log.Warn("create nsq channels; retrying", "err", err, "backoff", next)
		})
}

// consumeAcks feeds the acks topic to the job store until ctx ends. Acks
// are progress reports: a consumer that cannot connect is retried, never
// fails the node. Jittered, as every canal node runs one.
func (n *Node) consumeAcks(ctx context.Context) {
	retry.Until(ctx, retry.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second, Jitter: 0.5},
		func() error {
			err := n.jobs.Consume(ctx, jobs.ConsumerOptions{
				NSQDTCP: n.nsqdTCP, LookupdHTTP: n.cfg.NSQ.LookupdHTTP, TopicPrefix: n.cfg.NSQ.TopicPrefix,
				Logger: n.log.With("role", RoleCanal, "topic", invalidate.AckTopic(n.cfg.NSQ.TopicPrefix)),
			})
			if ctx.Err() != nil {
				return nil // stopped, not failed
			}
			return err
		},
		func(_ int, err error, next time.Duration) {
			n.log.Warn("job acks consumer; retrying", "err", err, "backoff", next)
		})
}

// Close releases what New acquired; it is safe to call more than once.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		if n.listener != nil {
			n.listener.Close()
		}
		if n.consoleListener != nil {
			n.consoleListener.Close()
		}
		if n.canal != nil {
			n.canal.Close()
		}
		if n.lease != nil {
			n.lease.Close()
		}
		if n.publisher != nil {
			n.publisher.Close()
		}
		if n.purger != nil {
			n.purger.Close()
		}
		if n.httpPurger != nil {
			n.httpPurger.Close()
		}
		n.closeSeckill()
		if n.nsqd != nil {
			n.nsqd.Close()
		}
	})
	return nil
}

// consumerOptions are a purger role's NSQ and failure settings.
func (n *Node) consumerOptions(role string, timeout time.Duration) purge.ConsumerOptions {
	cfg := n.cfg
	return purge.ConsumerOptions{
		NSQDTCP: n.nsqdTCP, LookupdHTTP: cfg.NSQ.LookupdHTTP, TopicPrefix: cfg.NSQ.TopicPrefix,
		MaxAttempts: cfg.Purger.MaxAttempts, MaxInFlight: cfg.Purger.MaxInFlight, Timeout: timeout,
		Logger: n.log.With("role", role),
	}
}

// cdnNodeNames lists the [[cdn_node]] names, for the CDN topic's channels.
func cdnNodeNames(cfg *configs.Config) []string {
	var names []string
	for _, c := range cfg.CDNNodes {
		names = append(names, c.Name)
	}
	return names
}

// buildCDN builds the dispatcher and console roles.
func (n *Node) buildCDN() error {
	cfg := n.cfg
	if n.has(RoleDispatcher) {
		if len(cfg.CDNNodes) == 0 {
			return errors.New("dispatcher role: config has no [[cdn_node]]")
		}
		var nodes []cdn.Node
		for i, c := range cfg.CDNNodes {
			key, err := configs.LoadKey(fmt.Sprintf("cdn_node[%d]", i), c.Key, c.KeyFile)
			if err != nil {
				return err
			}
			nodes = append(nodes, cdn.Node{Name: c.Name, ConsoleURL: c.ConsoleURL, Key: key, CAFile: c.CAFile})
		}
		var err error
		n.dispatcher, err = cdn.NewDispatcher(cdn.DispatcherOptions{
			ConsumerOptions: n.consumerOptions(RoleDispatcher, cfg.Dispatcher.Timeout),
			Nodes:           nodes, Registerer: n.registry,
		})
		if err != nil {
			return err
		}
	}
	if n.has(RoleConsole) {
		if !cfg.ConsoleConfigured() {
			return errors.New("console role: config has no [console]")
		}
		key, err := configs.LoadKey("console", cfg.Console.Key, cfg.Console.KeyFile)
		if err != nil {
			return err
		}
		n.console, err = cdn.NewConsole(cdn.ConsoleOptions{
			Key: key, Machines: cfg.Console.Machines, MaxBodyBytes: cfg.Console.MaxBodyBytes,
			MaxSkew: cfg.Console.MaxSkew, Concurrency: cfg.Console.Concurrency, HostTimeout: cfg.Console.HostTimeout,
			Logger: n.log.With("role", RoleConsole), Registerer: n.registry,
		})
		if err != nil {
			return err
		}
		n.consoleListener, err = net.Listen("tcp", cfg.Console.Addr)
		if err != nil {
			return fmt.Errorf("console.addr: %w", err)
		}
	}
	return nil
}
