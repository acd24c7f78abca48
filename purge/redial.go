package purge

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// replicaClient is a replica's go-redis client, replaced by a new one when
// it stopped dialing a server that is reachable again.
//
// go-redis counts failed dials per pool and, once PoolSize of them failed,
// fails every command at once and probes the server in the background once
// a second until a dial succeeds. A replica that was down long enough (a
// restart from a big snapshot, a host reboot) thus stays unreachable to the
// purger for up to a second after it is back: its restart goes unseen, and
// the stale snapshot is neither flushed nor replayed for that long, while
// issue 11 wants it gone within 1 s. The library has no option to turn the
// back-off off, so the watcher, which checks each replica every
// CheckInterval, dials the server itself when a check failed to dial and
// swaps in a fresh client when its dial succeeds.
type replicaClient struct {
	opts *redis.Options
	cur  atomic.Pointer[redis.Client]

	mu     sync.Mutex // renew and Close
	closed bool
}

func newReplicaClient(opts *redis.Options) *replicaClient {
	c := &replicaClient{opts: opts}
	c.cur.Store(redis.NewClient(opts))
	return c
}

// get is the current client. A command on a client being replaced fails
// with redis.ErrClosed, like any failure of the replica: NSQ retries it.
func (c *replicaClient) get() *redis.Client { return c.cur.Load() }

// renew replaces the client when err is a failed dial and the server
// accepts a connection now; it tells whether it did.
func (c *replicaClient) renew(ctx context.Context, err error) bool {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "dial" {
		return false
	}
	d := net.Dialer{Timeout: c.opts.DialTimeout}
	conn, derr := d.DialContext(ctx, "tcp", c.opts.Addr)
	if derr != nil {
		return false // still down: the client's own probe is as good
	}
	conn.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	old := c.cur.Swap(redis.NewClient(c.opts))
	old.Close()
	return true
}

// Close closes the current client; it is idempotent.
func (c *replicaClient) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	return c.cur.Load().Close()
}
