package purge

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/bits"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"github.com/flashsync/flashsync/invalidate"
)

// RedisGroup is a set of Redis replicas that all hold the same hot data:
// each gets every purge of the group, on its own NSQ channel.
type RedisGroup struct {
	Name     string
	Replicas []string
	Password string
	DB       int
}

// RedisPurgerOptions configure a RedisPurger.
type RedisPurgerOptions struct {
	// ConsumerOptions: where the purges come from, attempts before a dead
	// letter, messages in flight, the request timeout, the logger.
	ConsumerOptions
	Groups       []RedisGroup
	PipelineKeys int
	// PatternKeysPerSecond bounds the keys a pattern purge unlinks per
	// second on each replica (default DefaultPatternKeysPerSecond).
	PatternKeysPerSecond int
	// GapTimeout is how long a replica's watermark may wait on a missing
	// range before the replica is flushed (default DefaultGapTimeout).
	GapTimeout time.Duration
	// CheckInterval is how often each replica's watermark state is read
	// while no message arrives (default DefaultCheckInterval).
	CheckInterval time.Duration
	// Rejoin is how a replica restarted from a snapshot is made consistent:
	// RejoinFlush (the default) or RejoinReplay, which needs RejoinLogDir.
	Rejoin string
	// RejoinLogDir holds each replica's rejoin log (RejoinReplay): what
	// the purger applied to it, message by message.
	RejoinLogDir string
	// RejoinLogMaxBytes and RejoinLogMaxAge bound each replica's rejoin log
	// (defaults DefaultRejoinLogMaxBytes, DefaultRejoinLogMaxAge): a replica
	// whose snapshot is older than the log reaches is flushed.
	RejoinLogMaxBytes int64
	RejoinLogMaxAge   time.Duration
	// SyncTombstoneTTL is how long a deleted synced key keeps its version,
	// refusing older writes (default DefaultSyncTombstoneTTL).
	SyncTombstoneTTL time.Duration
	Registerer       prometheus.Registerer
}

// DefaultPatternKeysPerSecond is the default of PatternKeysPerSecond.
const DefaultPatternKeysPerSecond = 10000

// maxScanCount bounds SCAN's COUNT hint (and so one UNLINK) of a pattern purge.
const maxScanCount = 1000

// RedisPurger deletes purged keys from every replica of every group. Each
// replica has its own NSQ consumer on its own channel (see Consumers
// for the failure semantics).
type RedisPurger struct {
	opts     RedisPurgerOptions
	c        *Consumers
	replicas []*redisReplica
	keys     *prometheus.CounterVec
	unlinked *prometheus.CounterVec
	scanned  *prometheus.GaugeVec
	rejoins  *prometheus.CounterVec
	redials  *prometheus.CounterVec
	// replays, replayKeys and logReach are the rejoins by replay
	// (RejoinReplay).
	replays    *prometheus.CounterVec
	replayKeys *prometheus.CounterVec
	logReach   *prometheus.GaugeVec
	script     *redis.Script
	// sync applies sync writes (sync.lua); syncWrites counts them.
	sync       *syncScript
	syncWrites *prometheus.CounterVec

	mu      sync.Mutex
	stopped bool
}

// redisReplica is one replica's client and what the purger knows of its
// watermark.
type redisReplica struct {
	group, addr string
	client      *replicaClient
	// limit paces this replica's pattern purges (PatternKeysPerSecond).
	limit *rate.Limiter
	wm    replicaWatermark
	// log is the replica's rejoin log (nil unless RejoinReplay). scriptMu
	// makes the script's sequences and the log's appends one order: held
	// from a script call to the append of its reply.
	log      *rejoinLog
	scriptMu sync.Mutex
	// seqRead is the largest applied sequence a reply of the replica's
	// own server named, and seqKnown whether one did since Run started
	// (under scriptMu).
	seqRead  uint64
	seqKnown bool
	// scriptConn is the connection the scripts run on, to the server
	// whose run_id is scriptRunID, from scriptClient (under scriptMu).
	scriptConn   *redis.Conn
	scriptClient *redis.Client
	scriptRunID  string
}

// NewRedisPurger checks the options; nothing connects before Run.
func NewRedisPurger(opts RedisPurgerOptions) (*RedisPurger, error) {
	if len(opts.Groups) == 0 {
		return nil, errors.New("redis purger: no redis groups")
	}
	if err := opts.ConsumerOptions.Prepare("redis purger"); err != nil {
		return nil, err
	}
	if opts.PipelineKeys <= 0 {
		opts.PipelineKeys = DefaultPipelineKeys
	}
	if opts.PatternKeysPerSecond <= 0 {
		opts.PatternKeysPerSecond = DefaultPatternKeysPerSecond
	}
	if opts.GapTimeout <= 0 {
		opts.GapTimeout = DefaultGapTimeout
	}
	if opts.CheckInterval <= 0 {
		opts.CheckInterval = DefaultCheckInterval
	}
	opts.Rejoin = cmp.Or(opts.Rejoin, RejoinFlush)
	switch {
	case opts.Rejoin != RejoinFlush && opts.Rejoin != RejoinReplay:
		return nil, fmt.Errorf("redis purger: rejoin %q: want %q or %q", opts.Rejoin, RejoinFlush, RejoinReplay)
	case opts.Rejoin == RejoinReplay && opts.RejoinLogDir == "":
		return nil, fmt.Errorf("redis purger: rejoin %q needs a rejoin log directory", RejoinReplay)
	}
	if opts.RejoinLogMaxBytes <= 0 {
		opts.RejoinLogMaxBytes = DefaultRejoinLogMaxBytes
	}
	if opts.RejoinLogMaxAge <= 0 {
		opts.RejoinLogMaxAge = DefaultRejoinLogMaxAge
	}
	if opts.SyncTombstoneTTL <= 0 {
		opts.SyncTombstoneTTL = DefaultSyncTombstoneTTL
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	c, err := NewConsumers(opts.ConsumerOptions, ConsumerKind{MetricPrefix: "flashsync_purger_", Label: "replica", Noun: "redis replica", Tier: invalidate.TierRedis}, opts.Registerer)
	if err != nil {
		return nil, err
	}
	p := &RedisPurger{opts: opts, c: c, script: redis.NewScript(watermarkLua), sync: newSyncScript(opts.SyncTombstoneTTL)}
	p.syncWrites = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flashsync_purger_sync_writes_total",
		Help: "Sync writes per replica by result: applied (newer than the key's stored version), older (the key holds a newer version: dropped, as a redelivered or replayed write must be) or cold (refresh_hot, and the replica does not hold the key: left alone).",
	}, []string{"group", "replica", "result"})
	p.keys = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flashsync_purger_keys_deleted_total",
		Help: "Keys sent to DEL per replica (deleted or already absent).",
	}, []string{"group", "replica"})
	p.unlinked = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flashsync_purger_pattern_keys_unlinked_total",
		Help: "Keys a pattern purge unlinked per replica (matched by SCAN and sent to UNLINK).",
	}, []string{"group", "replica"})
	p.scanned = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "flashsync_purger_pattern_scan_ratio",
		Help: "Progress of the running (or last) pattern purge per replica: the fraction of the keyspace its SCAN has covered, 0 to 1.",
	}, []string{"group", "replica"})
	p.rejoins = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flashsync_purger_replica_rejoins_total",
		Help: "Replicas flushed to be trusted again, by reason: restarted (another run_id), lost (its watermark deleted or evicted), gap (a missing range for [purger] gap_timeout), dead_letter (a covered purge given up on).",
	}, []string{"group", "replica", "reason"})
	p.redials = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flashsync_purger_replica_redials_total",
		Help: "New Redis clients made for a replica that accepted connections again while the old client had stopped dialing it (go-redis backs off for a second after failed dials).",
	}, []string{"group", "replica"})
	p.replays = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flashsync_purger_replica_replays_total",
		Help: "Replicas restarted from a snapshot that [purger] rejoin = \"replay\" made consistent, by result: replayed (every message applied since the snapshot purged again from the rejoin log) or fell_back (the log did not hold them all: flushed instead, also counted in flashsync_purger_replica_rejoins_total).",
	}, []string{"group", "replica", "result"})
	p.replayKeys = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flashsync_purger_replica_replay_keys_total",
		Help: "Distinct keys a replay purged again on a replica restarted from a snapshot.",
	}, []string{"group", "replica"})
	p.logReach = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "flashsync_purger_rejoin_log_reach_seconds",
		Help: "How far back each replica's rejoin log reaches: the age of its oldest record. A replica restarted from a snapshot older than this is flushed, not replayed.",
	}, []string{"group", "replica"})
	for _, m := range []prometheus.Collector{p.keys, p.syncWrites, p.unlinked, p.scanned, p.rejoins, p.redials, p.replays, p.replayKeys, p.logReach, newWatermarkCollector(p)} {
		if err := opts.Registerer.Register(m); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	for _, g := range opts.Groups {
		for _, addr := range g.Replicas {
			r := &redisReplica{
				group: g.Name,
				addr:  addr,
				limit: rate.NewLimiter(rate.Limit(opts.PatternKeysPerSecond), scanCount(opts.PatternKeysPerSecond)),
			}
			r.client = newReplicaClient(&redis.Options{
				Addr:         addr,
				Password:     g.Password,
				DB:           g.DB,
				DialTimeout:  opts.Timeout,
				ReadTimeout:  opts.Timeout,
				WriteTimeout: opts.Timeout,
				PoolSize:     4,
				MaxRetries:   -1, // retries belong to NSQ, not to the client
			})
			p.replicas = append(p.replicas, r)
			c.Add(Target{
				Group: r.group, Name: addr, Topic: invalidate.RedisTopic(opts.TopicPrefix, g.Name),
				Apply: func(ctx context.Context, msg *invalidate.Purge) error {
					return p.apply(ctx, r, msg)
				},
				Unreachable: unreachable,
				OK: func(msg *invalidate.Purge) {
					p.keys.WithLabelValues(r.group, addr).Add(float64(len(msg.Keys)))
					r.wm.applied(msg)
				},
				Failed: func(msg *invalidate.Purge, attempts uint16, err error) {
					r.wm.failed(msg, attempts, err, time.Now())
				},
				DeadLettered: func(ctx context.Context, msg *invalidate.Purge) {
					p.deadLettered(ctx, r, msg)
				},
			})
		}
	}
	return p, nil
}

// Run consumes until ctx ends, then stops every consumer, waiting for the
// messages in hand, and each replica's watermark watcher. It leaves the
// Redis clients open: whoever built the purger closes it.
func (p *RedisPurger) Run(ctx context.Context) error {
	if p.opts.Rejoin == RejoinReplay {
		for _, r := range p.replicas {
			l, err := openRejoinLog(filepath.Join(p.opts.RejoinLogDir, rejoinLogName(r.group, r.addr)), p.opts.RejoinLogMaxBytes, p.opts.RejoinLogMaxAge)
			if err != nil {
				return fmt.Errorf("redis purger: replica %s: %w", r.addr, err)
			}
			r.log = l
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, r := range p.replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.watch(ctx, r)
		}()
	}
	err := p.c.Run(ctx, "redis purger")
	cancel() // Run returned early on an error: stop the watchers too
	wg.Wait()
	return err
}

// Close releases the Redis clients, after Run returned (or instead of Run);
// it is safe to call more than once.
func (p *RedisPurger) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return nil
	}
	p.stopped = true
	var errs []error
	for _, r := range p.replicas {
		r.scriptMu.Lock()
		r.dropScriptConnection()
		r.scriptMu.Unlock()
		errs = append(errs, r.client.Close())
		if r.log != nil {
			errs = append(errs, r.log.Close())
		}
	}
	return errors.Join(errs...)
}

// Health reports the replicas that are unreachable, and those whose
// watermark is held by a failing purge, waits on a missing range or awaits
// its flush (ReplicaStatus).
func (p *RedisPurger) Health() error {
	errs := []error{p.c.Health()}
	var stuck []string
	for _, s := range p.Replicas() {
		if !s.healthy() && s.State != "unreachable" { // the consumers name those
			stuck = append(stuck, s.Group+"/"+s.Replica+": "+s.Reason)
		}
	}
	if len(stuck) > 0 {
		errs = append(errs, fmt.Errorf("redis replica watermarks not advancing: %s", strings.Join(stuck, "; ")))
	}
	return errors.Join(errs...)
}

// Replicas is every replica's watermark, as last read, in config order.
func (p *RedisPurger) Replicas() []ReplicaStatus {
	now := time.Now()
	out := make([]ReplicaStatus, len(p.replicas))
	for i, r := range p.replicas {
		out[i] = r.wm.status(r.group, r.addr, now, p.opts.GapTimeout)
	}
	return out
}

// scanCount is a pattern purge's SCAN COUNT, and the burst of its limiter.
func scanCount(keysPerSecond int) int { return max(1, min(maxScanCount, keysPerSecond)) }

// apply applies one message: its keys, then its patterns, then, in one
// script with the last of its keys, its flush and its coverage of the
// watermark (watermark.go), so that a message marks the watermark only once
// all of it is applied. Each part is idempotent, so a redelivered message
// (after a crash mid-way) is applied again harmlessly.
func (p *RedisPurger) apply(ctx context.Context, r *redisReplica, msg *invalidate.Purge) error {
	r.wm.saw(msg)
	keys := slices.DeleteFunc(slices.Clone(msg.Keys), reservedKey)
	for len(keys) > p.opts.PipelineKeys {
		if err := p.purge(ctx, r, keys[:p.opts.PipelineKeys]); err != nil {
			return err
		}
		keys = keys[p.opts.PipelineKeys:]
	}
	for _, pat := range msg.Patterns {
		if err := p.purgePattern(ctx, r.group, r, pat); err != nil {
			return err
		}
	}
	sctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	r.scriptMu.Lock()
	// Sync writes go before the coverage, on the script's connection: the
	// watermark passes a message only once its writes are in.
	if err := p.applySync(sctx, r, slices.DeleteFunc(slices.Clone(msg.Sync), func(w invalidate.SyncWrite) bool { return reservedKey(w.Key) })); err != nil {
		r.scriptMu.Unlock()
		return err
	}
	rep, err := p.applyCoverage(sctx, r, msg, keys)
	if err != nil {
		r.scriptMu.Unlock()
		if len(keys) > 0 {
			return fmt.Errorf("redis %s DEL and watermark: %w", r.addr, err)
		}
		return fmt.Errorf("redis %s watermark: %w", r.addr, err)
	}
	if r.log != nil && rep.status != "unmarked" {
		if rep.status == "rejoined" { // the flush before the message has the number before its
			p.logFlush(r, rep.seq-1)
		}
		p.logRecord(r, logRecord{seq: rep.seq, at: time.Now().UnixNano(), wm: rep.wm, flush: msg.Flush, keys: slices.Concat(msg.Keys, syncKeys(msg.Sync)), patterns: msg.Patterns})
	}
	r.scriptMu.Unlock()
	p.observe(r, rep)
	if msg.Flush && rep.status != "rejoined" {
		p.opts.Logger.Info("redis replica flushed (admin)", "group", r.group, "replica", r.addr, "job", msg.Job)
	}
	return nil
}

// applySync runs the sync script for writes on r's script connection (the
// caller holds r.scriptMu), at most PipelineKeys writes per call.
func (p *RedisPurger) applySync(ctx context.Context, r *redisReplica, writes []invalidate.SyncWrite) error {
	for len(writes) > 0 {
		n := min(len(writes), p.opts.PipelineKeys)
		conn, _, err := r.scriptConnection(ctx)
		if err != nil {
			return fmt.Errorf("redis %s sync: %w", r.addr, err)
		}
		results, err := p.sync.apply(ctx, conn, writes[:n])
		if err != nil {
			r.dropScriptConnection()
			return fmt.Errorf("redis %s %w", r.addr, err)
		}
		var count [syncCold + 1]int
		for _, res := range results {
			count[res]++
		}
		for res, label := range [...]string{syncOlder: "older", syncApplied: "applied", syncCold: "cold"} {
			p.syncWrites.WithLabelValues(r.group, r.addr, label).Add(float64(count[res]))
		}
		writes = writes[n:]
	}
	return nil
}

// syncKeys are the keys of writes: a replay after a restart from a
// snapshot deletes them (their versions stay, refusing older writes).
func syncKeys(writes []invalidate.SyncWrite) []string {
	keys := make([]string, len(writes))
	for i, w := range writes {
		keys[i] = w.Key
	}
	return keys
}

// logRecord appends rec to r's rejoin log (the caller holds r.scriptMu).
func (p *RedisPurger) logRecord(r *redisReplica, rec logRecord) {
	if err := r.log.append(rec); err != nil {
		// What it records is applied; a replay across it would miss it
		// (the sequence is a hole in the log), so it falls back to a flush.
		p.opts.Logger.Error("rejoin log", "group", r.group, "replica", r.addr, "error", err)
	}
}

// logFlush logs a rejoin's flush, numbered seq by the script.
func (p *RedisPurger) logFlush(r *redisReplica, seq uint64) {
	p.logRecord(r, logRecord{seq: seq, at: time.Now().UnixNano(), flush: true})
}

// purgePattern unlinks every key that matches pattern: SCAN MATCH COUNT
// and UNLINK of each page, at most PatternKeysPerSecond keys a second. It
// touches the NSQ message as it goes (each UNLINK waits at most 100 ms for
// the limiter) so nsqd does not redeliver it while it runs. Keys written during the scan may or may not be seen, as
// SCAN guarantees only the keys present throughout.
func (p *RedisPurger) purgePattern(ctx context.Context, group string, r *redisReplica, pattern string) error {
	count := int64(scanCount(p.opts.PatternKeysPerSecond))
	// One UNLINK takes at most a tenth of a second's keys: the waits
	// between them, and so between touches, stay short.
	chunk := max(1, min(int(count), p.opts.PatternKeysPerSecond/10))
	lastTouch := time.Now()
	progress := p.scanned.WithLabelValues(group, r.addr)
	progress.Set(0)
	var cursor uint64
	for {
		cctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
		keys, next, err := r.client.get().Scan(cctx, cursor, pattern, count).Result()
		cancel()
		if err != nil {
			return fmt.Errorf("redis %s SCAN MATCH %q: %w", r.addr, pattern, err)
		}
		keys = slices.DeleteFunc(keys, reservedKey) // the watermark outlives patterns
		// A page may hold more keys than COUNT: unlink it in chunks.
		for len(keys) > 0 {
			n := min(len(keys), chunk)
			if err := r.limit.WaitN(ctx, n); err != nil {
				return fmt.Errorf("redis %s pattern %q: %w", r.addr, pattern, err)
			}
			cctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
			err := r.client.get().Unlink(cctx, keys[:n]...).Err()
			cancel()
			if err != nil {
				return fmt.Errorf("redis %s UNLINK: %w", r.addr, err)
			}
			p.unlinked.WithLabelValues(group, r.addr).Add(float64(n))
			keys = keys[n:]
			lastTouch = touchDue(ctx, lastTouch)
		}
		if next == 0 {
			progress.Set(1)
			return nil
		}
		cursor = next
		progress.Set(scanRatio(cursor))
	}
}

// scanRatio estimates how much of the keyspace a SCAN has covered from its
// next cursor. Redis walks its hash table's buckets in reverse-binary order
// (it increments the cursor's reversed bits), so the cursor with its bits
// reversed, over 2^64, is the fraction of buckets visited: exact for a
// table that does not resize during the scan.
func scanRatio(cursor uint64) float64 {
	return float64(bits.Reverse64(cursor)) / (1 << 64)
}

// purge sends DEL in pipelines of at most PipelineKeys keys.
func (p *RedisPurger) purge(ctx context.Context, r *redisReplica, keys []string) error {
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	for len(keys) > 0 {
		n := min(len(keys), p.opts.PipelineKeys)
		chunk := keys[:n]
		keys = keys[n:]
		pipe := r.client.get().Pipeline()
		// One DEL per 64 keys keeps each command small while the pipeline
		// saves the round trips.
		for len(chunk) > 0 {
			k := min(len(chunk), 64)
			pipe.Del(ctx, chunk[:k]...)
			chunk = chunk[k:]
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("redis %s DEL: %w", r.addr, err)
		}
	}
	return nil
}

// unreachable tells a replica that cannot be talked to (whose purges must
// wait) from one that answered with an error.
func unreachable(err error) bool {
	if NetUnreachable(err) || errors.Is(err, redis.ErrPoolTimeout) || errors.Is(err, redis.ErrClosed) {
		return true
	}
	// A restarting Redis answers LOADING until its dataset is in memory.
	msg := err.Error()
	for _, p := range []string{"LOADING", "MASTERDOWN", "TRYAGAIN", "BUSY"} {
		if strings.Contains(msg, p+" ") {
			return true
		}
	}
	return false
}
