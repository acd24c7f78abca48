// Package cacheaside reads display data through the Redis groups flashsync
// keeps consistent: a key is read from one replica of the group its route
// value hashes to (the same routing as the rules), and on a miss it is
// loaded from MySQL and written to that replica (and to the group's other
// replicas that miss it too).
//
// Bounded staleness: each read fetches the value and the replica's applied
// watermark (invalidate.WatermarkKey, written by the purger) in one MGET,
// and uses the replica only if the watermark is at most MaxStaleness old.
// Otherwise it tries the group's other replicas, and when none is fresh
// enough it reads MySQL and caches nothing (Bypassed). docs/consistency.md
// states the guarantee and its limits.
//
// A fill never resurrects a value older than the last invalidation: the
// filler first puts a lease in the key itself (SET NX with a short expiry),
// loads, and then replaces the lease with the value only if the lease is
// still there. An invalidation (the purger's DEL, or a flush) in between
// removes the lease, so that fill is dropped and the next read loads again.
// Each replica has its own lease, so a replica that lost a key another one
// still holds (a restart, a flush, an eviction) is filled on its first miss.
// Readers that find a lease wait briefly for the value instead of all
// loading at once (a hot key purged during a sale would otherwise send every
// reader to MySQL).
//
// A key flashsync's sync mode writes (it has a version key,
// invalidate.SyncVersionPrefix) is read like any other but never filled: a
// fill carries no version, so it could land a row older than a sync write
// still on its way. Its misses (a deleted row, an expired or evicted
// value) are served from MySQL until the next sync write of the key.
package cacheaside

import (
	"bytes"
	"cmp"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"

	"github.com/flashsync/flashsync/internal/route"
	"github.com/flashsync/flashsync/invalidate"
)

// Group is one Redis group's replicas.
type Group struct {
	Name string
	// Replicas must bound each command by its context's deadline: a
	// *redis.Client needs ContextTimeoutEnabled (New refuses one without),
	// or a stopped replica would hold every read that picks it for the
	// client's ReadTimeout.
	Replicas []redis.UniversalClient
}

// Defaults of Options (configs' defaults come from these).
const (
	DefaultTTL            = 10 * time.Minute
	DefaultLease          = 2 * time.Second
	DefaultLeaseWait      = 50 * time.Millisecond
	DefaultMaxStaleness   = time.Second
	DefaultReplicaTimeout = 100 * time.Millisecond
	DefaultErrorBackoff   = time.Second
)

// NoStalenessCheck as Options.MaxStaleness reads replicas without their
// watermark: for caches no flashsync purger writes watermarks to. Any
// negative duration does the same.
const NoStalenessCheck = -time.Second

// Options configure a Reader.
type Options struct {
	Groups []Group
	// TTL bounds a cached value's life (default DefaultTTL): invalidations
	// remove it sooner.
	TTL time.Duration
	// Lease bounds a fill (default DefaultLease).
	Lease time.Duration
	// LeaseWait bounds how long a reader that finds another reader's lease
	// waits for its value before loading itself (default DefaultLeaseWait).
	LeaseWait time.Duration
	// MaxStaleness is how old a replica's watermark may be for the replica
	// to be read (default DefaultMaxStaleness; NoStalenessCheck or any
	// negative value: replicas are read without their watermark).
	MaxStaleness time.Duration
	// ReplicaTimeout bounds each command to one replica (default
	// DefaultReplicaTimeout): a replica that does not answer in time is
	// left for the group's next one, so a stopped Redis costs a read this
	// much, not the client's ReadTimeout.
	ReplicaTimeout time.Duration
	// ErrorBackoff is how long a replica that failed a read (an error or
	// ReplicaTimeout) is tried only after the group's other replicas
	// (default DefaultErrorBackoff); then one read tries it first again.
	// While a replica hangs, one read per ErrorBackoff pays
	// ReplicaTimeout, not every read that picks it.
	ErrorBackoff time.Duration
	// Registerer takes the Reader's metrics (nil: a private registry).
	Registerer prometheus.Registerer
}

// Reader reads keys cache-aside.
type Reader struct {
	opts   Options
	check  bool
	groups []*group
	// flight makes concurrent loads of one key that fill nothing (bypassed
	// and loaded reads) one MySQL read: when every replica of a hot key's
	// group stalls, its readers would otherwise all go to MySQL at once.
	flight singleflight.Group
	shared prometheus.Counter
}

// group is a Group with its replicas' state and its metrics.
type group struct {
	replicas []*replica
	// reads are indexed by Result, skips by skipReason.
	reads [Bypassed + 1]prometheus.Counter
	skips [numSkipReasons]prometheus.Counter
}

type replica struct {
	c redis.UniversalClient
	// downUntil (unix ns) is when reads try the replica again after it
	// failed a command; 0 or past: it is up.
	downUntil atomic.Int64
	// lastWatermark is the replica's watermark as last parsed: it changes
	// about every 100 ms (the canal's heartbeats) and is read with every
	// value, so most reads compare it instead of parsing it again.
	lastWatermark atomic.Pointer[parsedWatermark]
}

type parsedWatermark struct {
	raw string
	w   invalidate.Watermark
	ok  bool
}

// watermark parses raw, the replica's watermark as stored (ok false: it
// does not parse).
func (rep *replica) watermark(raw string) (invalidate.Watermark, bool) {
	if last := rep.lastWatermark.Load(); last != nil && last.raw == raw {
		return last.w, last.ok
	}
	w, err := invalidate.ParseWatermark(raw)
	rep.lastWatermark.Store(&parsedWatermark{raw: raw, w: w, ok: err == nil})
	return w, err == nil
}

type skipReason int

const (
	skipStale skipReason = iota
	skipNoWatermark
	skipError
	numSkipReasons
)

var skipReasonNames = [numSkipReasons]string{"stale", "no_watermark", "error"}

// New checks the options and registers the metrics; it dials nothing.
func New(opts Options) (*Reader, error) {
	if len(opts.Groups) == 0 {
		return nil, errors.New("cacheaside: no redis groups")
	}
	opts.TTL = positiveOr(opts.TTL, DefaultTTL)
	opts.Lease = positiveOr(opts.Lease, DefaultLease)
	opts.LeaseWait = positiveOr(opts.LeaseWait, DefaultLeaseWait)
	opts.MaxStaleness = cmp.Or(opts.MaxStaleness, DefaultMaxStaleness)
	opts.ReplicaTimeout = positiveOr(opts.ReplicaTimeout, DefaultReplicaTimeout)
	opts.ErrorBackoff = positiveOr(opts.ErrorBackoff, DefaultErrorBackoff)
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	reads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flashsync_cacheaside_reads_total",
		Help: "Cache-aside reads that returned a value, by group and result: hit, filled (loaded and cached), loaded (a fresh replica missed and the fill did not land: it raced an invalidation or another filler), bypassed (no replica fresh enough or up: read from MySQL, nothing cached).",
	}, []string{"group", "result"})
	skips := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flashsync_cacheaside_replica_skips_total",
		Help: "Replicas a read tried and did not use, by group and reason: stale (watermark older than max_staleness), no_watermark (missing or unreadable: a flushed or restarted replica, or no flashsync purger), error (the replica failed or timed out; reads then try it after the others for a while).",
	}, []string{"group", "reason"})
	r := &Reader{opts: opts, check: opts.MaxStaleness > 0}
	r.shared = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "flashsync_cacheaside_shared_loads_total",
		Help: "Reads that would have loaded MySQL without filling (bypassed, loaded) and took the result of another reader's load of the same key already running instead.",
	})
	for _, g := range opts.Groups {
		if len(g.Replicas) == 0 {
			return nil, fmt.Errorf("cacheaside: group %s has no replicas", g.Name)
		}
		if len(g.Replicas) > maxReplicas {
			return nil, fmt.Errorf("cacheaside: group %s has %d replicas, more than %d", g.Name, len(g.Replicas), maxReplicas)
		}
		gr := &group{}
		for i, c := range g.Replicas {
			if rc, ok := c.(*redis.Client); ok && !rc.Options().ContextTimeoutEnabled {
				return nil, fmt.Errorf("cacheaside: group %s replica %d (%s): the client needs ContextTimeoutEnabled, so that a replica that does not answer costs a read ReplicaTimeout, not the client's ReadTimeout", g.Name, i, rc.Options().Addr)
			}
			gr.replicas = append(gr.replicas, &replica{c: c})
		}
		for res := Hit; res <= Bypassed; res++ {
			gr.reads[res] = reads.WithLabelValues(g.Name, res.String())
		}
		for reason, name := range skipReasonNames {
			gr.skips[reason] = skips.WithLabelValues(g.Name, name)
		}
		r.groups = append(r.groups, gr)
	}
	for _, c := range []prometheus.Collector{reads, skips, r.shared} {
		if err := opts.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("cacheaside: %w", err)
		}
	}
	return r, nil
}

func positiveOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

const leasePrefix = "\x00lease:"

// maxReplicas bounds a group's replicas: a read keeps which of them it
// tries later in the bits of a uint64. Every replica of a group holds the
// same keys and gets every purge; 64 is far beyond any use.
const maxReplicas = 64

// fillScript replaces the lease with the value if the lease is still there.
var fillScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
`)

// releaseScript removes the lease if it is still there: a filler that has
// nothing to fill lets the next reader load at once instead of waiting out
// the lease.
// fillVersionedScript is fillScript for GetSynced: with the value it
// writes the key's version, the replica's sync epoch (the key's own
// version's, or the newest any sync write brought; the larger) with the
// read's binlog offset and the largest row index, so that every sync write
// of a change the read saw (at or before that offset) is older and
// refused. With neither a version nor an epoch, no sync write has reached
// the replica since its data began: the value is written alone.
// KEYS: key, its version key, the epoch key; ARGV: lease, value, TTL ms,
// offset (20 digits), version TTL ms.
var fillVersionedScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local cur = redis.call('GET', KEYS[2])
local epoch = redis.call('GET', KEYS[3])
if cur and (not epoch or string.sub(cur, 1, 10) > epoch) then epoch = string.sub(cur, 1, 10) end
if not epoch then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
local ver = epoch .. ':' .. ARGV[4] .. ':4294967295'
if cur and cur >= ver then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ver, 'PX', ARGV[5])
return 1
`)

// versionOutlives is how much longer than its value a filled version is
// kept: the purger keeps a deleted key's version for its tombstone TTL
// (1 h by default), and a fill's should fence as long.
const versionOutlives = time.Hour

var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// Result says where a value came from.
type Result int

const (
	Hit      Result = iota + 1
	Filled          // loaded and written to the replica read (and others missing it)
	Loaded          // loaded; not written (another fill or an invalidation raced it)
	Bypassed        // no replica fresh enough or up: loaded, nothing written
)

// String is "hit", "filled", "loaded" or "bypassed".
func (r Result) String() string {
	switch r {
	case Hit:
		return "hit"
	case Filled:
		return "filled"
	case Loaded:
		return "loaded"
	case Bypassed:
		return "bypassed"
	}
	return "unknown"
}

// Get returns key's value from the group routeValue hashes to, loading it
// with load on a miss. A value is served only from a replica whose
// watermark is within MaxStaleness; with none, Get loads and caches
// nothing.
//
// Get never fills a key that sync mode writes (it has a version): such a
// miss is served from MySQL. GetSynced fills it.
func (r *Reader) Get(ctx context.Context, key, routeValue string, load func(context.Context) ([]byte, error)) ([]byte, Result, error) {
	return r.read(ctx, key, routeValue, loader{plain: load})
}

// GetSynced is Get for a key that sync mode writes ([[rule.sync]]): load
// returns the value and the binlog offset (invalidate.BinlogOffset) of the
// consistent snapshot it was read at (LoadAtSnapshot reads one), and a fill
// writes the key's version with it, so that a sync write of a change the
// read already saw, still on its way, is refused by the purger instead of
// taking the value back. load must read the server the canal reads.
func (r *Reader) GetSynced(ctx context.Context, key, routeValue string, load func(context.Context) ([]byte, uint64, error)) ([]byte, Result, error) {
	return r.read(ctx, key, routeValue, loader{at: load})
}

func (r *Reader) read(ctx context.Context, key, routeValue string, l loader) ([]byte, Result, error) {
	g := r.groups[route.GroupFor([]byte(routeValue), len(r.groups))]
	v, res, err := r.get(ctx, g, key, l)
	if err == nil {
		g.reads[res].Inc()
	}
	return v, res, err
}

// loader loads a key's value from MySQL: plain, or at a binlog offset.
type loader struct {
	plain func(context.Context) ([]byte, error)
	at    func(context.Context) ([]byte, uint64, error)
}

// load loads the value; offset is 0 for a plain loader.
func (l loader) load(ctx context.Context) (v []byte, offset uint64, err error) {
	if l.at != nil {
		return l.at(ctx)
	}
	v, err = l.plain(ctx)
	return v, 0, err
}

func (r *Reader) get(ctx context.Context, g *group, key string, load loader) ([]byte, Result, error) {
	n := len(g.replicas)
	first := rand.IntN(n)
	var others []int // the rest in random order, drawn when needed
	// Replicas that failed lately are tried after the others (a hung one
	// costs one read per ErrorBackoff its ReplicaTimeout), but still
	// before MySQL: a slow moment of every replica must not turn into a
	// storm of loads.
	var later uint64
	for pass := range 2 {
		for i := range n {
			idx := first
			if i > 0 {
				if others == nil {
					others = otherOrder(n, first)
				}
				idx = others[i-1]
			}
			rep := g.replicas[idx]
			if pass == 0 && !rep.ready(r.opts.ErrorBackoff) {
				later |= 1 << idx
				continue
			}
			if pass == 1 && later&(1<<idx) == 0 {
				continue
			}
			v, trusted, err := r.probe(ctx, g, rep, key)
			if err != nil {
				if ctx.Err() != nil {
					return nil, 0, ctx.Err()
				}
				continue
			}
			if !trusted {
				continue
			}
			if v != nil && !IsLease(v) {
				v, _, _ = DecodeValue(v)
				return v, Hit, nil
			}
			return r.miss(ctx, g, idx, key, v != nil, load)
		}
		if later == 0 {
			break
		}
	}
	// No replica is fresh enough: MySQL, and nothing cached, since a fill
	// could only go to a replica that is behind or down (the purger may be
	// about to flush it).
	v, err := r.loadShared(ctx, key, load)
	if err != nil {
		return nil, 0, err
	}
	return v, Bypassed, nil
}

// loadShared loads key for a read that fills nothing, joining a load of
// the same key another such read has running. The joined load started
// before this read, by at most its own duration: its value is that much
// older than this read's own would be, well within MaxStaleness. A joined
// load that failed on its caller's context is loaded again on ours.
func (r *Reader) loadShared(ctx context.Context, key string, load loader) ([]byte, error) {
	ran := false // set by the load if it is ours; read after it returned
	ch := r.flight.DoChan(key, func() (any, error) {
		ran = true
		v, _, err := load.load(ctx)
		return v, err
	})
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case res := <-ch:
		if !ran {
			r.shared.Inc()
		}
		if res.Err != nil && (errors.Is(res.Err, context.Canceled) || errors.Is(res.Err, context.DeadlineExceeded)) && ctx.Err() == nil {
			v, _, err := load.load(ctx)
			return v, err
		}
		if res.Err != nil {
			return nil, res.Err
		}
		v := res.Val.([]byte)
		if res.Shared {
			return bytes.Clone(v), nil // each caller owns what it is given
		}
		return v, nil
	}
}

// otherOrder is a random order of 0..n-1 without first.
func otherOrder(n, first int) []int {
	p := rand.Perm(n - 1)
	for i, j := range p {
		if j >= first {
			p[i] = j + 1
		}
	}
	return p
}

// probe reads key from rep, and with the staleness check the replica's
// watermark, in one MGET: one round trip, and both values of the same
// instant (MGET is atomic), so a value read with a fresh watermark was
// there after every invalidation the watermark covers. trusted is false
// when the watermark is missing, unreadable or too old; err when the
// replica failed (or is left out after a failure). v is nil on a miss.
func (r *Reader) probe(ctx context.Context, g *group, rep *replica, key string) (v []byte, trusted bool, err error) {
	cctx, cancel := context.WithTimeout(ctx, r.opts.ReplicaTimeout)
	defer cancel()
	if !r.check {
		v, err := rep.c.Get(cctx, key).Bytes()
		if errors.Is(err, redis.Nil) {
			return nil, true, nil
		}
		if err != nil {
			r.failed(ctx, g, rep, err)
			return nil, false, err
		}
		rep.up()
		return v, true, nil
	}
	vals, err := rep.c.MGet(cctx, key, invalidate.WatermarkKey).Result()
	if err == nil && len(vals) != 2 {
		err = fmt.Errorf("MGET answered %d values for 2 keys", len(vals))
	}
	if err != nil {
		r.failed(ctx, g, rep, err)
		return nil, false, err
	}
	rep.up()
	if reason, ok := r.fresh(rep, vals[1]); !ok {
		g.skips[reason].Inc()
		return nil, false, nil
	}
	if s, ok := vals[0].(string); ok {
		return []byte(s), true, nil
	}
	return nil, true, nil
}

var errReplicaDown = errors.New("replica failed lately")

// errSynced: the key has a sync version (invalidate.SyncVersionPrefix), so
// sync mode writes it and readers do not fill it.
var errSynced = errors.New("key is written by sync mode")

// fresh tells whether a replica whose watermark is raw (as MGET or GET
// returned it) may be read, and if not why.
func (r *Reader) fresh(rep *replica, raw any) (skipReason, bool) {
	s, ok := raw.(string)
	if !ok {
		return skipNoWatermark, false
	}
	w, ok := rep.watermark(s)
	if !ok {
		return skipNoWatermark, false
	}
	if w.Staleness(time.Now()) > r.opts.MaxStaleness {
		return skipStale, false
	}
	return 0, true
}

// failed counts rep's failure and has reads try it after the group's
// other replicas for ErrorBackoff, unless the command failed because the
// caller gave up or because of the key (WRONGTYPE: another writer's hash
// under a cache key; every other read of the replica would succeed).
func (r *Reader) failed(ctx context.Context, g *group, rep *replica, err error) {
	if ctx.Err() != nil {
		return
	}
	g.skips[skipError].Inc()
	var rerr redis.Error
	if errors.As(err, &rerr) && strings.HasPrefix(rerr.Error(), "WRONGTYPE") {
		return
	}
	rep.markDown(r.opts.ErrorBackoff)
}

func (rep *replica) markDown(backoff time.Duration) {
	rep.downUntil.Store(time.Now().Add(backoff).UnixNano())
}

// up records that rep answered.
func (rep *replica) up() {
	if rep.downUntil.Load() != 0 {
		rep.downUntil.Store(0)
	}
}

// ready tells whether a read may try rep first: it has not failed lately,
// or its backoff has passed and this read is the one that tries it again
// (the others keep it for later until that read is done: one read per
// backoff pays a hung replica's timeout, not every read meanwhile).
func (rep *replica) ready(backoff time.Duration) bool {
	until := rep.downUntil.Load()
	if until == 0 {
		return true
	}
	now := time.Now()
	if now.UnixNano() < until {
		return false
	}
	return rep.downUntil.CompareAndSwap(until, now.Add(backoff).UnixNano())
}

// failedLately tells whether rep failed within its backoff: leases are not
// tried there.
func (rep *replica) failedLately() bool {
	until := rep.downUntil.Load()
	return until != 0 && time.Now().UnixNano() < until
}

// miss handles a miss on g.replicas[own], a replica fresh enough to read
// (sawLease: it holds another reader's lease).
//
// Every replica has its own lease, and a filler loads only where it holds
// one, so a replica missing a key the others hold is filled on its own
// first miss, at most one load per key and replica in flight. So that a key
// missing everywhere costs MySQL one load and not one per replica, leases
// are taken in the group's replica order and the reader that takes the
// first one fills every fresh replica that misses the key: a reader that
// finds another reader's lease before it holds any waits for that filler,
// which is ahead of it in the same order, to fill its replica too.
//
// Why a replica is filled from MySQL and not copied from a replica that
// holds the key: the copy could resurrect an old value. Say a row changes;
// its invalidation reaches replica A, then a reader misses on A and takes
// its lease, and reads replica B before the invalidation reaches B: it
// holds the old value, and the lease on A is intact, since A's
// invalidation came before the lease. A would keep the old value until its
// TTL, no invalidation to come. A load that starts after the lease cannot
// be older than the row was when the lease was set, and every later
// invalidation removes the lease.
func (r *Reader) miss(ctx context.Context, g *group, own int, key string, sawLease bool, load loader) ([]byte, Result, error) {
	rep := g.replicas[own]
	if sawLease {
		// Another reader is filling the key: wait a little for its value
		// rather than load too, so a hot key purged under load costs the
		// database one read, not one per reader.
		v, err := r.awaitFill(ctx, rep, key, false)
		switch {
		case err == nil && !IsLease(v):
			v, _, _ = DecodeValue(v)
			return v, Hit, nil
		case ctx.Err() != nil:
			return nil, 0, ctx.Err()
		case !errors.Is(err, redis.Nil):
			// The filler is slow or gone (its lease outlives LeaseWait),
			// or the replica fails: load, and leave the key to the lease
			// holder.
			return r.loadOnly(ctx, key, load)
		}
		// The lease is gone (an invalidation, or its filler had nothing
		// to fill): take one.
	}
	tok := make([]byte, 8)
	_, _ = crand.Read(tok) // never fails (crypto/rand panics instead)
	lease := leasePrefix + hex.EncodeToString(tok)
	var held []*replica
	for j, c := range g.replicas {
		took, cur, fresh, err := r.tryLease(ctx, c, key, lease, load.at != nil)
		switch {
		case ctx.Err() != nil:
			r.release(context.WithoutCancel(ctx), held, key, lease)
			return nil, 0, ctx.Err()
		case errors.Is(err, errSynced):
			// flashsync's sync mode writes this key, fenced by version; a
			// fill, which has no version, could put an older row over a
			// sync write still on its way. Serve from MySQL, fill nothing.
			r.release(ctx, held, key, lease)
			return r.loadOnly(ctx, key, load)
		case err != nil:
			continue
		case took && fresh:
			held = append(held, c)
			continue
		case took:
			r.release(ctx, []*replica{c}, key, lease)
			continue
		}
		if len(held) > 0 {
			continue // that replica is another filler's, or holds the key
		}
		if IsLease(cur) && fresh {
			// A filler ahead of us in the order: it takes our replica's
			// lease next, if nobody holds it yet. Wait for its value. (A
			// lease on a stale replica is one a filler is taking back.)
			v, err := r.awaitFill(ctx, rep, key, true)
			if err == nil && !IsLease(v) {
				v, _, _ = DecodeValue(v)
				return v, Hit, nil
			}
			if ctx.Err() != nil {
				return nil, 0, ctx.Err()
			}
			return r.loadOnly(ctx, key, load)
		}
		if j == own && cur != nil && fresh {
			// A fill landed on our replica since we read it.
			v, _, _ := DecodeValue(cur)
			return v, Hit, nil
		}
	}
	if len(held) == 0 {
		return r.loadOnly(ctx, key, load)
	}
	fillStart := time.Now()
	v, offset, err := load.load(ctx)
	if err != nil {
		r.release(ctx, held, key, lease)
		return nil, 0, err
	}
	env := EncodeValue(fillStart, v)
	res := Loaded
	for _, c := range held {
		cctx, cancel := context.WithTimeout(ctx, r.opts.ReplicaTimeout)
		var n int
		if load.at != nil {
			n, err = fillVersionedScript.Run(cctx, c.c, []string{key, invalidate.SyncVersionPrefix + key, invalidate.SyncEpochKey},
				lease, env, r.opts.TTL.Milliseconds(), fmt.Sprintf("%020d", offset), (r.opts.TTL + versionOutlives).Milliseconds()).Int()
		} else {
			n, err = fillScript.Run(cctx, c.c, []string{key}, lease, env, r.opts.TTL.Milliseconds()).Int()
		}
		cancel()
		if err == nil && n == 1 {
			res = Filled
		}
	}
	return v, res, nil
}

func (r *Reader) loadOnly(ctx context.Context, key string, load loader) ([]byte, Result, error) {
	v, err := r.loadShared(ctx, key, load)
	if err != nil {
		return nil, 0, err
	}
	return v, Loaded, nil
}

// tryLease puts lease on key in rep if the key is missing, and reads the
// key and rep's watermark in the same pipeline: took says whether the lease
// is in, cur is what the key held if not (nil: nothing any more), fresh
// whether rep may be read (always with the check off). A replica that is
// left out after a failure is not tried (err).
//
// A key with a sync version is refused (errSynced) unless the fill is
// versioned (GetSynced).
func (r *Reader) tryLease(ctx context.Context, rep *replica, key, lease string, versioned bool) (took bool, cur []byte, fresh bool, err error) {
	if rep.failedLately() {
		return false, nil, false, errReplicaDown
	}
	cctx, cancel := context.WithTimeout(ctx, r.opts.ReplicaTimeout)
	defer cancel()
	var set *redis.BoolCmd
	var get, wm *redis.StringCmd
	var synced *redis.IntCmd
	_, _ = rep.c.Pipelined(cctx, func(p redis.Pipeliner) error {
		synced = p.Exists(cctx, invalidate.SyncVersionPrefix+key)
		set = p.SetNX(cctx, key, lease, r.opts.Lease)
		get = p.Get(cctx, key)
		if r.check {
			wm = p.Get(cctx, invalidate.WatermarkKey)
		}
		return nil
	})
	if err := set.Err(); err != nil {
		if ctx.Err() == nil {
			rep.markDown(r.opts.ErrorBackoff)
		}
		return false, nil, false, err
	}
	if synced.Val() > 0 && !versioned {
		if set.Val() {
			r.release(ctx, []*replica{rep}, key, lease)
		}
		return false, nil, false, errSynced
	}
	fresh = true
	if wm != nil {
		var raw any
		if s, err := wm.Result(); err == nil {
			raw = s
		}
		_, fresh = r.fresh(rep, raw)
	}
	if set.Val() {
		return true, nil, fresh, nil
	}
	if b, err := get.Bytes(); err == nil {
		cur = b
	}
	return false, cur, fresh, nil
}

// release takes lease back from the replicas that still hold it.
func (r *Reader) release(ctx context.Context, reps []*replica, key, lease string) {
	for _, rep := range reps {
		cctx, cancel := context.WithTimeout(ctx, r.opts.ReplicaTimeout)
		_ = releaseScript.Run(cctx, rep.c, []string{key}, lease).Err() // a lease left behind expires after Lease
		cancel()
	}
}

// awaitFill reads key from rep every leasePoll while it holds another
// reader's lease (or, with whileMissing, no value yet), for at most
// LeaseWait; it returns the last read: the filler's value, a lease when
// time ran out, redis.Nil, or the error that stopped it.
func (r *Reader) awaitFill(ctx context.Context, rep *replica, key string, whileMissing bool) ([]byte, error) {
	var v []byte
	var err error = redis.Nil
	for waited := time.Duration(0); waited < r.opts.LeaseWait; waited += leasePoll {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(leasePoll):
		}
		cctx, cancel := context.WithTimeout(ctx, r.opts.ReplicaTimeout)
		v, err = rep.c.Get(cctx, key).Bytes()
		cancel()
		switch {
		case err == nil && !IsLease(v):
			return v, nil
		case errors.Is(err, redis.Nil) && whileMissing, err == nil:
			continue
		default:
			return v, err
		}
	}
	return v, err
}

// leasePoll is how often a reader that found a lease looks again.
const leasePoll = 2 * time.Millisecond
