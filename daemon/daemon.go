// Package daemon runs the flashsync roles a configuration asks for in one
// process, with the HTTP endpoint for metrics and health.
//
// Ownership: whoever builds a component closes it, once. New builds every
// component of the daemon's roles (and, when it fails, closes those it had
// built); Close releases them all, in the reverse order, and does nothing
// the second time. Run only runs: it stops what it started before it
// returns and closes nothing New built, so a daemon is used as
//
//	d, err := daemon.New(opts)
//	if err != nil { ... }
//	err = errors.Join(d.Run(ctx), d.Close())
//
// The components of the roles (purge.RedisPurger, purge.HTTPPurger,
// cdn.Dispatcher, canal.Canal, invalidate.Publisher, ...) are used the same
// way by the daemon: their New builds, their Run runs, their Close, called
// once by the daemon after Run returned, releases.
package daemon

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

	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/flashsync/flashsync/admin"
	"github.com/flashsync/flashsync/canal"
	"github.com/flashsync/flashsync/cdn"
	"github.com/flashsync/flashsync/configs"
	"github.com/flashsync/flashsync/consistency"
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
	// RoleConsole runs on a CDN node: it purges the daemon's cache machines
	// on signed requests from the dispatcher.
	RoleConsole = "console"
	// RoleDispatcher forwards the CDN topic to every [[cdn_node]]'s console.
	RoleDispatcher = "dispatcher"
)

// Roles lists every role in start order.
var Roles = []string{RoleCanal, RoleRedisPurger, RoleHTTPPurger, RoleDispatcher, RoleConsole, RoleSeckill, RoleAdmin, RoleChecker}

// Options configure a Daemon.
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

// Daemon is one flashsync process.
type Daemon struct {
	cfg      *configs.Config
	opts     Options
	log      *slog.Logger
	registry *metricsRegistry
	roles    []string

	nsqd       *nsqembed.Server
	nsqdTCP    []string
	nsqdHTTP   []string
	rules      *invalidate.Rules     // every role has them, for /rules/explain
	publisher  *invalidate.Publisher // the canal's and the admin API's
	jobs       *jobs.Store           // with the canal or admin role: the purge jobs published
	canal      *canal.Canal
	purger     *purge.RedisPurger
	httpPurger *purge.HTTPPurger
	listener   net.Listener

	dispatcher      *cdn.Dispatcher
	console         *cdn.Console
	consoleListener net.Listener

	seckill   *seckill.Service
	seckillDB *sql.DB

	admin *admin.Server

	checker *consistency.Checker

	// owned is what New built, in build order; Close closes it backwards.
	owned     []component
	closeOnce sync.Once
	closeErr  error
}

// component is one thing New built and Close releases.
type component struct {
	name  string
	close func() error
}

// own records what New just built, for Close.
func (n *Daemon) own(name string, close func() error) {
	n.owned = append(n.owned, component{name: name, close: close})
}

// closeNoErr adapts a Close without a result.
func closeNoErr(close func()) func() error {
	return func() error { close(); return nil }
}

// onceListener closes its listener once: http.Server.Serve closes the
// listener it serves, and Close closes it in case it was never served.
type onceListener struct {
	net.Listener
	close func() error
}

func listenOnce(addr string) (*onceListener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &onceListener{Listener: ln, close: sync.OnceValue(ln.Close)}, nil
}

func (l *onceListener) Close() error { return l.close() }

// New builds every requested role: templates are parsed, options checked,
// listeners bound. Nothing talks to MySQL, Redis or NSQ before Run.
func New(opts Options) (*Daemon, error) {
	cfg := opts.Config
	if cfg == nil {
		return nil, errors.New("daemon: no config")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ResetToCurrent && !opts.FlushAll {
		return nil, errors.New("--reset-to-current skips every change between the saved and the current position, so caches may keep stale values: add --flush-all")
	}
	n := &Daemon{cfg: cfg, opts: opts, log: opts.Logger, registry: newMetricsRegistry()}
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
		if cfg.AdminConfigured() {
			n.roles = append(n.roles, RoleAdmin)
		}
		if cfg.CheckerConfigured() {
			n.roles = append(n.roles, RoleChecker)
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

func (n *Daemon) has(role string) bool { return slices.Contains(n.roles, role) }

func (n *Daemon) build() error {
	cfg := n.cfg
	rules, err := cfg.BuildRules()
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
		n.own("embedded nsqd", n.nsqd.Close)
		n.nsqdTCP, n.nsqdHTTP = []string{n.nsqd.TCPAddr()}, []string{n.nsqd.HTTPAddr()}
	}
	if n.has(RoleCanal) && len(cfg.Rules) == 0 {
		return errors.New("canal role: config has no [[rule]]")
	}
	if n.has(RoleCanal) || n.has(RoleAdmin) {
		// Keys go to the Redis groups' topics, URLs and tags to the HTTP
		// groups' topics, each with a channel per replica or instance.
		// The canal and the admin API publish through this one publisher.
		redisGroups, httpGroups := cfg.Groups()
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
		n.own("publisher", closeNoErr(n.publisher.Close))
	}
	if n.has(RoleCanal) {
		var lease *canal.Lease
		var checkpoint canal.Checkpoint
		if cfg.Canal.HA {
			lease, checkpoint, err = canal.NewLease(cfg.LeaseOptions())
			if err != nil {
				return fmt.Errorf("canal ha: %w", err)
			}
			n.own("canal lease", closeNoErr(lease.Close))
		}
		co := cfg.CanalOptions()
		co.Lease, co.Checkpoint = lease, checkpoint
		co.Rules, co.Publisher = rules, n.publisher
		co.Logger, co.Registerer = n.log, n.registry
		co.ResetToCurrent = n.opts.ResetToCurrent
		co.OnReset = func(ctx context.Context) error { return FlushAll(ctx, cfg, n.log) }
		n.canal, err = canal.New(co)
		if err != nil {
			return err
		}
		n.own(RoleCanal, n.canal.Close)
	}
	if n.has(RoleRedisPurger) {
		if len(cfg.RedisGroups) == 0 {
			return errors.New("purger role: config has no [[redis_group]]")
		}
		po := cfg.RedisPurgerOptions()
		po.ConsumerOptions, po.Registerer = n.consumerOptions(RoleRedisPurger, cfg.Purger.Timeout), n.registry
		n.purger, err = purge.NewRedisPurger(po)
		if err != nil {
			return err
		}
		n.own(RoleRedisPurger, n.purger.Close)
	}
	if n.has(RoleHTTPPurger) {
		if len(cfg.HTTPGroups) == 0 {
			return errors.New("http-purger role: config has no [[http_group]]")
		}
		n.httpPurger, err = purge.NewHTTPPurger(purge.HTTPPurgerOptions{
			ConsumerOptions: n.consumerOptions(RoleHTTPPurger, cfg.Purger.Timeout),
			Groups:          cfg.PurgerHTTPGroups(), Host: cfg.Purger.HTTPHost, SoftPurge: cfg.Purger.HTTPSoftPurge, Registerer: n.registry,
		})
		if err != nil {
			return err
		}
		n.own(RoleHTTPPurger, n.httpPurger.Close)
	}
	if err := n.buildCDN(); err != nil {
		return err
	}
	if n.has(RoleSeckill) {
		if err := n.buildSeckill(); err != nil {
			return err
		}
	}
	if n.has(RoleAdmin) {
		if err := n.buildAdmin(); err != nil {
			return err
		}
	}
	if n.has(RoleChecker) {
		if err := n.buildChecker(); err != nil {
			return err
		}
	}
	ln, err := listenOnce(cfg.HTTP.Addr)
	if err != nil {
		return fmt.Errorf("http.addr: %w", err)
	}
	n.listener = ln
	n.own("http listener", ln.Close)
	return nil
}

// HTTPAddr is the bound address of /metrics and /healthz.
func (n *Daemon) HTTPAddr() string { return n.listener.Addr().String() }

// Run runs every role until ctx ends, a clean exit (nil), or one of them
// fails, whose error Run returns after the role's name. Either way it then
// stops the roles one after another, each once the one before it returned,
// in the order they are added below. Run closes nothing: Close does, after
// Run returned.
func (n *Daemon) Run(ctx context.Context) error {
	g := newRoleGroup(ctx, n.log)
	g.stopWhenDone(ctx)

	// The shutdown order, top to bottom.
	// 1. The canal stops reading, finishes the batches being published and
	//    saves its position.
	if n.canal != nil {
		g.add(RoleCanal, n.runCanal)
	}
	//    The admin API answers the purges in hand (each once nsqd acked).
	if n.admin != nil {
		g.add(RoleAdmin, n.runAdmin)
	}
	//    The checker stops reading samples and drops the checks pending:
	//    they are samples, and a later run takes new ones.
	if n.checker != nil {
		g.add(RoleChecker, n.checker.Run)
	}
	// 2. The purgers finish the messages in hand, and so does the
	//    dispatcher (whose console may be this daemon's: it stops later).
	if n.purger != nil {
		g.add(RoleRedisPurger, n.purger.Run)
	}
	if n.httpPurger != nil {
		g.add(RoleHTTPPurger, n.httpPurger.Run)
	}
	if n.dispatcher != nil {
		g.add(RoleDispatcher, n.dispatcher.Run)
	}
	// 3. The job-ack consumer, once the purgers sent their last acks.
	if n.jobs != nil {
		g.add("job acks", n.consumeAcks)
	}
	// 4. The flash-sale service answers the requests in hand and its
	//    writers store the orders read.
	if n.seckill != nil {
		g.add(RoleSeckill, n.runSeckill)
	}
	// 5. The console answers the requests in hand.
	if n.console != nil {
		g.add(RoleConsole, n.serveConsole)
	}
	// 6. The embedded nsqd persists its queues, once nothing in this
	//    process reads or writes them.
	if n.nsqd != nil {
		g.add("nsqd", n.runNSQD)
	}
	// 7. The HTTP server last: /metrics and /healthz answer to the end.
	g.add("http", n.serveHTTP)
	return g.run()
}

// runCanal checks the server, creates the channels, then runs the canal.
func (n *Daemon) runCanal(ctx context.Context) error {
	// Check the server before waiting on nsqd: a wrong binlog format
	// should fail the start at once, whatever nsqd is doing.
	if err := canal.Preflight(ctx, n.cfg.MySQL.Source()); err != nil {
		return err
	}
	if err := n.ensureChannels(ctx); err != nil {
		return err
	}
	return n.canal.Run(ctx)
}

func (n *Daemon) serveConsole(ctx context.Context) error {
	n.log.Info("serving cdn console", "addr", n.consoleListener.Addr().String(), "tls", n.cfg.Console.TLSCert != "")
	return n.console.Serve(ctx, n.consoleListener, n.cfg.Console.TLSCert, n.cfg.Console.TLSKey)
}

func (n *Daemon) runNSQD(ctx context.Context) error {
	n.log.Info("embedded nsqd running", "tcp", n.nsqd.TCPAddr(), "http", n.nsqd.HTTPAddr())
	return n.nsqd.Run(ctx)
}

// serveHTTP serves /metrics, /healthz and the API until ctx ends, then
// lets the requests in hand finish (for up to 2 s).
func (n *Daemon) serveHTTP(ctx context.Context) error {
	srv := &http.Server{Handler: n.mux(), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(n.listener) }()
	n.log.Info("serving metrics and health", "addr", "http://"+n.HTTPAddr())
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutCtx, done := context.WithTimeout(context.Background(), 2*time.Second)
	defer done()
	err := srv.Shutdown(shutCtx)
	if err != nil {
		srv.Close()
	}
	<-served
	return err
}

// ensureChannels waits for nsqd and creates every replica's channel before
// the first publish. Every canal process of an HA group, standbys included,
// waits here for the same nsqd: jitter keeps them from polling it in step.
func (n *Daemon) ensureChannels(ctx context.Context) error {
	return retry.Until(ctx, retry.Backoff{Min: 100 * time.Millisecond, Max: 2 * time.Second, Jitter: 0.5},
		func() error { return n.publisher.EnsureChannels(ctx) },
		func(_ int, err error, next time.Duration) {
			n.log.Warn("create nsq channels; retrying", "err", err, "backoff", next)
		})
}

// consumeAcks feeds the acks topic to the job store until ctx ends. Acks
// are progress reports: a consumer that cannot connect is retried, never
// fails the daemon: it returns nil once ctx ended. Jittered, as every canal
// process runs one.
func (n *Daemon) consumeAcks(ctx context.Context) error {
	retry.Until(ctx, retry.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second, Jitter: 0.5},
		func() error {
			err := n.jobs.Consume(ctx, jobs.ConsumerOptions{
				NSQDTCP: n.nsqdTCP, LookupdHTTP: n.cfg.NSQ.LookupdHTTP, TopicPrefix: n.cfg.NSQ.TopicPrefix,
				Logger: n.log.With("component", "job acks", "topic", invalidate.AckTopic(n.cfg.NSQ.TopicPrefix)),
			})
			if ctx.Err() != nil {
				return nil // stopped, not failed
			}
			return err
		},
		func(_ int, err error, next time.Duration) {
			n.log.Warn("job acks consumer; retrying", "err", err, "backoff", next)
		})
	return nil
}

// Close releases what New built, each component once, in the reverse order
// of building; call it after Run returned, or instead of Run. It is safe to
// call more than once: the second call only returns the first's result.
func (n *Daemon) Close() error {
	n.closeOnce.Do(func() {
		var errs []error
		for _, c := range slices.Backward(n.owned) {
			if err := c.close(); err != nil {
				errs = append(errs, fmt.Errorf("close %s: %w", c.name, err))
			}
		}
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}

// consumerOptions are a purger role's NSQ and failure settings.
func (n *Daemon) consumerOptions(role string, timeout time.Duration) purge.ConsumerOptions {
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
func (n *Daemon) buildCDN() error {
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
		n.own(RoleDispatcher, n.dispatcher.Close)
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
		ln, err := listenOnce(cfg.Console.Addr)
		if err != nil {
			return fmt.Errorf("console.addr: %w", err)
		}
		n.consoleListener = ln
		n.own("console listener", ln.Close)
	}
	return nil
}
