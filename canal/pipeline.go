package canal

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flashsync/flashsync/invalidate"
)

// pipeline sits between the binlog reader and NSQ. It hands each batch to
// one publishing goroutine in order and moves the position to a batch's last
// commit only after NSQ acknowledged the batch.
//
// Coalescing adapts to load: a commit goes out at once when the publisher is
// idle (no added latency when traffic is light); while a publish is in
// flight, the transactions committed meanwhile gather in one batch, for at
// most the window, so under load a key changed by many of them is purged
// once and publishes carry many targets. The pipeline holds at most
// pipelineBatches batches, each bounded by maxKeys and maxBytes: when the
// publisher falls behind, the reader blocks, and the binlog connection with
// it.
type pipeline struct {
	// stream, set, puts coverage on every batch (invalidate.Meta.Stream):
	// each batch covers the binlog up to the offset of the last event whose
	// targets it holds, so the purgers can tell when a replica has applied
	// every change up to an offset (its watermark).
	stream   *invalidate.Stream
	publish  func(context.Context, *invalidate.Batch, invalidate.Meta) error
	ack      func(Position)
	fail     func(error)
	window   time.Duration
	maxKeys  int
	maxBytes int

	mu      sync.Mutex
	cur     *invalidate.Batch
	commit  *Position       // last commit whose targets are all in cur or before
	meta    invalidate.Meta // of that commit
	started time.Time       // when cur got its first content
	timer   *time.Timer     // flushes cur when the window ends
	closed  bool
	// lastTo is the binlog offset of the last event applied or committed:
	// cur and the batches before it hold every target up to it.
	lastTo uint64
	// heartbeat asks the next flush to carry heartbeats (heartbeat).
	heartbeat bool
	// probes are the server's end offsets read at known times and not yet
	// reached; caughtUp is the time of the last one reached: every commit
	// the server had written before it is at or before lastTo.
	probes   []probe
	caughtUp time.Time
	pending  atomic.Int32 // batches handed to the publisher and not yet done
	out      chan flushItem
	free     chan *invalidate.Batch
	done     chan struct{}
	err      error // set by the publishing goroutine before done closes
}

type flushItem struct {
	batch  *invalidate.Batch
	commit *Position
	meta   invalidate.Meta
}

// probe is the server's binlog end offset, read at a time.
type probe struct {
	at  time.Time
	end uint64
}

// maxProbes bounds the probes a canal that is behind keeps: when full, the
// newest is replaced, which only delays its caught-up time.
const maxProbes = 64

const pipelineBatches = 4 // being filled + queued + being published

func newPipeline(ctx context.Context, newBatch func() *invalidate.Batch, window time.Duration, maxKeys, maxBytes int, stream *invalidate.Stream,
	publish func(context.Context, *invalidate.Batch, invalidate.Meta) error, ack func(Position), fail func(error)) *pipeline {
	p := &pipeline{
		stream: stream, publish: publish, ack: ack, fail: fail,
		window: window, maxKeys: maxKeys, maxBytes: maxBytes,
		out:  make(chan flushItem, pipelineBatches-2),
		free: make(chan *invalidate.Batch, pipelineBatches),
		done: make(chan struct{}),
	}
	p.cur = newBatch()
	for range pipelineBatches - 1 {
		p.free <- newBatch()
	}
	go p.run(ctx)
	return p
}

// apply lets fn add the targets of the event ending at binlog offset to
// the current batch; a batch that outgrew its bounds goes out at once,
// mid-transaction if need be.
func (p *pipeline) apply(offset uint64, fn func(*invalidate.Batch)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	empty := p.cur.Len() == 0
	fn(p.cur)
	p.lastTo = max(p.lastTo, offset)
	if p.full() {
		p.flushLocked()
		return
	}
	if empty && p.cur.Len() > 0 {
		p.arm()
	}
}

// commitAt records a transaction boundary. The batch goes out now if the
// publisher is idle, the batch is full or its window has passed; otherwise
// the publisher takes it when it is done, or the window's timer does.
func (p *pipeline) commitAt(pos Position, offset uint64, meta invalidate.Meta) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.commit, p.meta = &pos, meta
	p.lastTo = max(p.lastTo, offset)
	if p.pending.Load() == 0 || p.window <= 0 || p.full() || (!p.started.IsZero() && time.Since(p.started) >= p.window) {
		p.flushLocked()
		return
	}
	p.arm()
}

// beat is a heartbeat tick: the server's binlog ended at end when read at
// at, and the reader has handled every event up to read. The next batch
// carries heartbeats for the groups it has no targets for; with nothing
// gathering, that is a heartbeat batch now (behind any batch in flight).
func (p *pipeline) beat(at time.Time, end, read uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.stream == nil {
		return
	}
	if len(p.probes) == maxProbes {
		p.probes = p.probes[:maxProbes-1]
	}
	p.probes = append(p.probes, probe{at, end})
	p.heartbeat = true
	if p.cur.Len() == 0 {
		// Nothing is gathering: the events up to read left no targets
		// behind the batches already handed on.
		p.lastTo = max(p.lastTo, read)
		p.flushLocked()
	}
}

func (p *pipeline) full() bool {
	return p.cur.Len() >= p.maxKeys || p.cur.Bytes() >= p.maxBytes
}

func (p *pipeline) arm() {
	if p.started.IsZero() {
		p.started = time.Now()
	}
	if p.timer == nil && p.window > 0 {
		p.timer = time.AfterFunc(p.window, p.flushDue)
	}
}

func (p *pipeline) flushDue() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.timer = nil
	if !p.closed {
		p.flushLocked()
	}
}

// flushLocked hands the batch to the publisher, in order. Waiting for a
// free batch is the backpressure on the reader.
func (p *pipeline) flushLocked() {
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	if p.cur.Len() == 0 && p.commit == nil && !p.heartbeat {
		return
	}
	meta := p.meta
	if p.stream != nil {
		for len(p.probes) > 0 && p.probes[0].end <= p.lastTo {
			p.caughtUp = p.probes[0].at
			p.probes = p.probes[1:]
		}
		meta.Stream, meta.To, meta.CaughtUp, meta.Heartbeat = p.stream, p.lastTo, p.caughtUp, p.heartbeat
		if p.heartbeat && p.commit == nil {
			meta.Seen = time.Now()
		}
	}
	p.pending.Add(1)
	p.out <- flushItem{batch: p.cur, commit: p.commit, meta: meta}
	p.cur = <-p.free
	p.commit, p.started, p.heartbeat = nil, time.Time{}, false
}

func (p *pipeline) run(ctx context.Context) {
	defer close(p.done)
	for item := range p.out {
		if p.err == nil && (item.batch.Len() > 0 || item.meta.Heartbeat) {
			if p.err = p.publish(ctx, item.batch, item.meta); p.err != nil {
				p.fail(p.err) // stop the reader; keep draining so it never blocks
			}
		}
		if p.err == nil && item.commit != nil {
			if p.stream != nil {
				item.commit.Covered = p.stream.Covered()
			}
			p.ack(*item.commit)
		}
		item.batch.Reset()
		p.free <- item.batch
		// Idle again: send what gathered while this batch was out. If the
		// lock is taken, its holder is the reader, whose next commit sees
		// the publisher idle and flushes, or the window's timer: never wait
		// for it here, the reader may be waiting for this goroutine.
		if p.pending.Add(-1) == 0 && p.mu.TryLock() {
			if p.commit != nil && !p.closed {
				p.flushLocked()
			}
			p.mu.Unlock()
		}
	}
}

// close publishes what is left (a partial transaction's targets go out too:
// purges are harmless) and waits for every publish; it returns the first
// publish error.
func (p *pipeline) close() error {
	p.mu.Lock()
	p.closed = true
	p.flushLocked()
	close(p.out)
	p.mu.Unlock()
	<-p.done
	return p.err
}
