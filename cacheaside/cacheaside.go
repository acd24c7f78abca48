// Package cacheaside reads display data through the Redis groups flashsync
// keeps consistent: a key is read from one replica of the group its route
// value hashes to (the same routing as the rules), and on a miss it is
// loaded from MySQL and written to every replica of the group.
//
// A fill never resurrects a value older than the last invalidation: the
// filler first puts a lease in the key itself (SET NX with a short expiry),
// loads, and then replaces the lease with the value only if the lease is
// still there. An invalidation (the purger's DEL) in between removes the
// lease, so that fill is dropped and the next read loads again. Readers that
// find a lease wait briefly for the value instead of all loading at once
// (a hot key purged during a sale would otherwise send every reader to
// MySQL).
package cacheaside

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/flashsync/flashsync/internal/route"
	"github.com/redis/go-redis/v9"
)

// Group is one Redis group's replicas.
type Group struct {
	Name     string
	Replicas []redis.UniversalClient
}

// Options configure a Reader.
type Options struct {
	Groups []Group
	// TTL bounds a cached value's life (default 10 min): invalidations
	// remove it sooner.
	TTL time.Duration
	// Lease bounds a fill (default 2 s).
	Lease time.Duration
	// LeaseWait bounds how long a reader that finds another reader's lease
	// waits for its value before loading itself (default 50 ms).
	LeaseWait time.Duration
}

// Reader reads keys cache-aside.
type Reader struct {
	opts Options
}

// New checks the options.
func New(opts Options) (*Reader, error) {
	if len(opts.Groups) == 0 {
		return nil, errors.New("cacheaside: no redis groups")
	}
	for _, g := range opts.Groups {
		if len(g.Replicas) == 0 {
			return nil, fmt.Errorf("cacheaside: group %s has no replicas", g.Name)
		}
	}
	if opts.TTL <= 0 {
		opts.TTL = 10 * time.Minute
	}
	if opts.Lease <= 0 {
		opts.Lease = 2 * time.Second
	}
	if opts.LeaseWait <= 0 {
		opts.LeaseWait = 50 * time.Millisecond
	}
	return &Reader{opts: opts}, nil
}

const leasePrefix = "\x00lease:"

// fillScript replaces the lease with the value if the lease is still there.
var fillScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
`)

// Result says where a value came from.
type Result int

const (
	Hit    Result = iota + 1
	Filled        // loaded and written to the group
	Loaded        // loaded; not written (another fill or an invalidation raced it)
)

// String is "hit", "filled" or "loaded".
func (r Result) String() string {
	switch r {
	case Hit:
		return "hit"
	case Filled:
		return "filled"
	case Loaded:
		return "loaded"
	}
	return "unknown"
}

// Get returns key's value from the group routeValue hashes to, loading it
// with load on a miss.
func (r *Reader) Get(ctx context.Context, key, routeValue string, load func(context.Context) ([]byte, error)) ([]byte, Result, error) {
	g := r.opts.Groups[route.GroupFor([]byte(routeValue), len(r.opts.Groups))]
	replica := g.Replicas[rand.IntN(len(g.Replicas))]
	v, err := replica.Get(ctx, key).Bytes()
	if err == nil && isLease(v) {
		// Another reader is filling the key: wait a little for its value
		// rather than load too, so a hot key purged under load costs the
		// database one read, not one per reader. Past LeaseWait, load.
		v, err = r.awaitFill(ctx, replica, key, false)
	}
	if err == nil && !isLease(v) {
		return v, Hit, nil
	}
	if err != nil && !errors.Is(err, redis.Nil) {
		// The cache is down: serve from MySQL rather than fail the read.
		v, lerr := load(ctx)
		return v, Loaded, lerr
	}
	// Miss (or another reader's lease): take a lease on every replica, load,
	// then fill where our lease survived.
	tok := make([]byte, 8)
	rand2(tok)
	lease := leasePrefix + hex.EncodeToString(tok)
	// The group's first replica decides who fills (one filler per key);
	// the filler then takes the others' leases too.
	held := make([]bool, len(g.Replicas))
	for i, c := range g.Replicas {
		ok, err := c.SetNX(ctx, key, lease, r.opts.Lease).Result()
		held[i] = err == nil && ok
		if i == 0 && !held[0] && err == nil {
			break
		}
	}
	if !held[0] {
		// Another reader took the leases between our GET and SETNX (its
		// lease may not have reached this replica yet): wait as above.
		if v, err := r.awaitFill(ctx, replica, key, true); err == nil && !isLease(v) {
			return v, Hit, nil
		} else if ctx.Err() != nil {
			return nil, 0, ctx.Err()
		}
	}
	v, err = load(ctx)
	if err != nil {
		return nil, 0, err
	}
	res := Loaded
	for i, c := range g.Replicas {
		if !held[i] {
			continue
		}
		if n, err := fillScript.Run(ctx, c, []string{key}, lease, v, r.opts.TTL.Milliseconds()).Int(); err == nil && n == 1 {
			res = Filled
		}
	}
	return v, res, nil
}

func rand2(b []byte) { _, _ = crand.Read(b) }

func isLease(v []byte) bool { return strings.HasPrefix(string(v), leasePrefix) }

// awaitFill reads key from c every leasePoll while it holds another
// reader's lease (or, with whileMissing, no value yet), for at most
// LeaseWait; it returns the last read: the filler's value, a lease when
// time ran out, redis.Nil, or the error that stopped it.
func (r *Reader) awaitFill(ctx context.Context, c redis.UniversalClient, key string, whileMissing bool) ([]byte, error) {
	var v []byte
	var err error = redis.Nil
	for waited := time.Duration(0); waited < r.opts.LeaseWait; waited += leasePoll {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(leasePoll):
		}
		v, err = c.Get(ctx, key).Bytes()
		switch {
		case err == nil && !isLease(v):
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
