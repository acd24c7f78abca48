package purge

import (
	"context"
	_ "embed"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/invalidate"
)

// This file is each Redis replica's applied watermark (issue 11): how far
// the purges of its group have been applied to it, as a binlog offset and
// the time the canal had caught up to it (invalidate.Watermark), stored in
// the replica under invalidate.WatermarkKey for readers to bound staleness.
//
// The canal's messages carry coverage: the Parts messages of one batch
// together carry every target derived from the binlog offsets (From, To],
// and a heartbeat covers a stretch without targets. A range is complete once
// all its parts are applied; the watermark is the end of the unbroken run of
// complete ranges from where it started. NSQ delivers out of order,
// redelivers, and a restarted canal repeats and overlaps ranges: coverage is
// a set of offsets, so none of that can move the watermark past a purge that
// is pending, requeued, held or dead-lettered, nor backwards.
//
// The state lives in the replica, not in the purger: watermark.lua updates
// it atomically with each message's DELs, in one round trip. That is what
// lets several purger processes share a replica's channel (NSQ hands each
// message to one of them: no process sees every range), makes a purger
// restart resume where the replica is, and makes the state die with the
// data: a replica restarted from a snapshot brings back the snapshot's
// watermark, consistent with the snapshot's data, and a flushed one has
// none. A marker key holds the run_id of the server the state was started
// on, so a restart is seen in the replica itself, by whichever purger next
// talks to it, even if the purger was down too.
//
// Rejoin: a replica that restarted (marker's run_id is not the server's),
// lost its watermark (deleted, evicted), waits on a missing range longer
// than GapTimeout, or had a covered purge dead-lettered, is flushed
// (FLUSHDB ASYNC) and its watermark restarted at the newest range end seen,
// in one script: an empty replica is consistent with every change
// published before the flush. Until then readers see the watermark that is
// in the replica — a snapshot's is old, a stuck one stops aging forward —
// so they skip the replica once it exceeds their max_staleness.

//go:embed watermark.lua
var watermarkLua string

// Defaults of the watermark options.
const (
	// DefaultGapTimeout is how long a watermark may wait on a missing range
	// before the replica is flushed. The wait does not count while a
	// requeued purge that may fill the range is due back (its requeue delay,
	// at most 5 s, after its last failure): it ends in success, or in a dead
	// letter and a flush at once. So the timeout passes only for a purge
	// that is gone (lost with an nsqd) or never sent.
	DefaultGapTimeout = 5 * time.Second
	// DefaultCheckInterval is how often each replica's state is read while no
	// message arrives: a replica restarted while the canal is down is
	// flushed within about this long (plus its reload).
	DefaultCheckInterval = 250 * time.Millisecond
	// RejoinFlush makes a replica that cannot be trusted consistent by
	// FLUSHDB (the default).
	RejoinFlush = "flush"
	// RejoinReplay makes a replica restarted from a snapshot consistent by
	// purging again every message applied since its snapshot, from the
	// purger's rejoin log (rejoinlog.go), and falls back to a flush where
	// the log does not reach. The other reasons (lost, gap, dead_letter)
	// still flush: what they lack was never applied, so no log has it.
	RejoinReplay = "replay"
)

// Defaults of the rejoin log's bounds.
const (
	DefaultRejoinLogMaxBytes = 64 << 20
	DefaultRejoinLogMaxAge   = 10 * time.Minute
)

// The keys next to invalidate.WatermarkKey (see watermark.lua). Purges
// never delete them: a rule or pattern that matches them is skipped.
const (
	watermarkMarkerKey = invalidate.WatermarkKey + ":run_id"
	watermarkDoneKey   = invalidate.WatermarkKey + ":done"
	watermarkPartsKey  = invalidate.WatermarkKey + ":parts"
	watermarkSeqKey    = invalidate.WatermarkKey + ":seq"
	watermarkReplayKey = invalidate.WatermarkKey + ":replay"
)

// maxParts bounds a message's Parts: the script walks a range's parts when
// it completes; the canal sends a handful (MaxBatchKeys / MaxKeysPerMessage).
const maxParts = 1 << 12

// Rejoin reasons (the reason label of flashsync_purger_replica_rejoins_total).
const (
	reasonRestarted  = "restarted"
	reasonLost       = "lost"
	reasonGap        = "gap"
	reasonDeadLetter = "dead_letter"
	reasonFlush      = "flush" // the admin's flush: restarts the watermark, not a rejoin
)

// reservedKey tells the keys of the watermark's state and the synced keys'
// versions, which purges and sync writes skip.
func reservedKey(k string) bool {
	return k == invalidate.WatermarkKey || strings.HasPrefix(k, invalidate.WatermarkKey+":") || strings.HasPrefix(k, invalidate.SyncVersionPrefix)
}

// watermarkReply is what watermark.lua returns.
type watermarkReply struct {
	status, reason string
	found, now     string // the watermark before and after, as stored
	wm             invalidate.Watermark
	pending        int    // completed ranges beyond the watermark
	lowest         uint64 // the lowest From among them
	runID          string
	seq            uint64 // the applied sequence (a message's own, in mode apply)
	replay         string // the replay in progress, "" for none
}

func parseWatermarkReply(v any) (watermarkReply, error) {
	a, ok := v.([]any)
	if !ok || len(a) != 9 {
		return watermarkReply{}, fmt.Errorf("watermark script: reply %v, want 9 values", v)
	}
	s := make([]string, 9)
	for i, x := range a {
		switch x := x.(type) {
		case string:
			s[i] = x
		case int64:
			s[i] = strconv.FormatInt(x, 10)
		default:
			return watermarkReply{}, fmt.Errorf("watermark script: reply value %d is %T", i, x)
		}
	}
	r := watermarkReply{status: s[0], reason: s[1], found: s[2], now: s[3], runID: s[6], replay: s[8]}
	var err error
	if r.seq, err = strconv.ParseUint(s[7], 10, 64); err != nil {
		return r, fmt.Errorf("watermark script: sequence: %w", err)
	}
	if r.now != "" {
		if r.wm, err = invalidate.ParseWatermark(r.now); err != nil {
			return r, fmt.Errorf("watermark script: %w", err)
		}
	}
	if r.pending, err = strconv.Atoi(s[4]); err != nil {
		return r, fmt.Errorf("watermark script: ranges beyond: %w", err)
	}
	if s[5] != "" {
		if r.lowest, err = strconv.ParseUint(s[5], 10, 64); err != nil {
			return r, fmt.Errorf("watermark script: lowest from: %w", err)
		}
	}
	return r, nil
}

// digits20 is n as the script takes it: 20 digits, zero-padded.
func digits20[T uint64 | int64](n T) string { return fmt.Sprintf("%020d", n) }

// Script modes.
const (
	modeApply    = "apply"
	modeState    = "state"
	modeRejoin   = "rejoin"
	modeReplayed = "replayed"
)

// runScript runs watermark.lua on r: mode, then the mode's arguments after
// the server's run_id (read on the script's connection) and what the
// purger has seen; keys are DELeted first.
// The caller holds r.scriptMu. Every mode is idempotent: a call whose
// reply was lost may run again.
func (p *RedisPurger) runScript(ctx context.Context, r *redisReplica, mode string, keys []string, args ...any) (watermarkReply, error) {
	ks := append([]string{invalidate.WatermarkKey, watermarkMarkerKey, watermarkDoneKey, watermarkPartsKey,
		watermarkSeqKey, watermarkReplayKey}, keys...)
	// The floor must be at least the sequence the replica had before a
	// restart: the log's last, or larger where the log lost its tail or
	// was lost (a new disk). A purger knows it only once it has read the
	// replica's sequence from the server itself: until then a restart is
	// flushed, not replayed (see redisReplica.seqRead).
	replay, floor := "0", uint64(0)
	if r.log != nil {
		floor = max(r.log.floor(), r.seqRead)
		if r.seqKnown {
			replay = "1"
		}
	}
	conn, runID, err := r.scriptConnection(ctx)
	if err != nil {
		return watermarkReply{}, err
	}
	seenTo, seenCU := r.wm.scriptArgs()
	all := append([]any{mode, runID, digits20(seenTo), digits20(seenCU), replay, digits20(floor)}, args...)
	v, err := p.script.Run(ctx, conn, ks, all...).Result()
	if err != nil {
		r.dropScriptConnection()
		return watermarkReply{}, err
	}
	rep, err := parseWatermarkReply(v)
	if err != nil {
		return rep, err
	}
	if rep.status != "replaying" {
		r.seqRead, r.seqKnown = max(r.seqRead, rep.seq), true
	}
	return rep, nil
}

// scriptConnection is the connection r's scripts run on, and the run_id
// of the server it reached, read on it (the caller holds r.scriptMu).
//
// The script trusts the run_id it is given to tell a restart: a marker
// equal to it is this server's. Only a run_id read on the very connection
// the script runs on is certain to be the server's (a TCP connection does
// not outlive the server process); one read on another connection of the
// pool may be the old server's while the script reaches a restarted one,
// which then looked like itself to the script: a snapshot's stale data
// got a fresh watermark until the next call (a read of a 3 s old value in
// TestWatermarkRestartUnderReaders).
func (r *redisReplica) scriptConnection(ctx context.Context) (*redis.Conn, string, error) {
	if r.scriptConn != nil && r.scriptClient == r.client.get() {
		return r.scriptConn, r.scriptRunID, nil
	}
	r.dropScriptConnection()
	c := r.client.get()
	conn := c.Conn()
	info, err := conn.Info(ctx, "server").Result()
	if err != nil {
		conn.Close()
		return nil, "", err
	}
	id := infoField(info, "run_id")
	if id == "" {
		conn.Close()
		return nil, "", fmt.Errorf("redis %s: INFO server names no run_id", r.addr)
	}
	r.scriptConn, r.scriptClient, r.scriptRunID = conn, c, id
	return conn, id, nil
}

// dropScriptConnection closes r's script connection (after an error: the
// next call dials and reads the run_id again).
func (r *redisReplica) dropScriptConnection() {
	if r.scriptConn != nil {
		r.scriptConn.Close()
		r.scriptConn, r.scriptClient, r.scriptRunID = nil, nil, ""
	}
}

// applyCoverage runs the script for msg: keys (its last DELs), its flush
// and its coverage.
func (p *RedisPurger) applyCoverage(ctx context.Context, r *redisReplica, msg *invalidate.Purge, keys []string) (watermarkReply, error) {
	flush := "0"
	if msg.Flush {
		flush = "1"
	}
	from, to, cu, parts, part := uint64(0), uint64(0), int64(0), 0, 0
	if msg.Covers() {
		if msg.Parts > maxParts {
			return watermarkReply{}, fmt.Errorf("coverage of %d parts, at most %d", msg.Parts, maxParts)
		}
		from, to, cu, parts, part = msg.From, msg.To, msg.CaughtUpUnixNano, msg.Parts, msg.Part
	}
	return p.runScript(ctx, r, modeApply, keys, digits20(from), digits20(to), digits20(cu), parts, part, flush)
}

// observe records a script reply of r: metrics and logs of a rejoin, and
// the state that the watcher, Health and the metrics read.
func (p *RedisPurger) observe(r *redisReplica, rep watermarkReply) {
	ev := r.wm.observe(rep, time.Now())
	log := p.opts.Logger.With("group", r.group, "replica", r.addr)
	switch {
	case ev.rejoined != "":
		p.rejoins.WithLabelValues(r.group, r.addr, ev.rejoined).Inc()
		log.Warn("redis replica rejoined: flushed, its watermark restarted", "reason", ev.rejoined,
			"known", ev.known, "found", rep.found, "watermark", rep.now, "run_id", rep.runID)
	case rep.status == "started" && rep.reason == "unmarked":
		log.Warn("redis replica holds data but no watermark (first start with watermarks?): trusting its data once, watermark started at the first purge's range",
			"watermark", rep.now)
	case rep.status == "started":
		log.Info("redis replica empty and without watermark: watermark started", "watermark", rep.now)
	case rep.status == "rejoined" && rep.reason == reasonFlush:
		log.Info("redis replica flushed (admin); watermark restarted", "watermark", rep.now)
	}
}

// watch reads r's state every CheckInterval until ctx ends, so that a
// replica restarted or stuck on a gap is made consistent even while no
// message arrives, and runs the rejoins that are due.
func (p *RedisPurger) watch(ctx context.Context, r *redisReplica) {
	t := time.NewTicker(p.opts.CheckInterval)
	defer t.Stop()
	for {
		p.check(ctx, r)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// check reads r's state once and runs a rejoin if one is due. A check that
// could not dial a replica that accepts connections again runs once more
// on a new client (replicaClient).
func (p *RedisPurger) check(ctx context.Context, r *redisReplica) {
	mode, args := modeState, []any(nil)
	if reason, cond, ok := r.wm.rejoinDue(time.Now(), p.opts.GapTimeout); ok {
		mode, args = modeRejoin, []any{reason, cond}
	}
	run := func() (watermarkReply, error) {
		cctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
		defer cancel()
		r.scriptMu.Lock()
		defer r.scriptMu.Unlock()
		rep, err := p.runScript(cctx, r, mode, nil, args...)
		if err == nil && rep.status == "rejoined" && r.log != nil {
			p.logFlush(r, rep.seq)
		}
		return rep, err
	}
	rep, err := run()
	if err != nil && ctx.Err() == nil && p.redial(ctx, r, err) {
		rep, err = run()
	}
	if err != nil {
		if ctx.Err() == nil {
			r.wm.failedCheck(err)
		}
		return
	}
	p.observe(r, rep)
	if r.log != nil {
		if first, _ := r.log.reach(); first > 0 {
			_, at := r.log.reach()
			p.logReach.WithLabelValues(r.group, r.addr).Set(time.Since(at).Seconds())
		}
	}
	if rep.status == "replaying" && r.log != nil {
		if err := p.replay(ctx, r, rep.replay); err != nil && ctx.Err() == nil {
			r.wm.failedCheck(err) // the next check tries again
		}
	}
}

// replay makes r, restarted from a snapshot, consistent again from its
// rejoin log (RejoinReplay): the messages applied after the snapshot's
// sequence, up to the largest the purger had logged, are purged again, and
// the watermark is set to where it was before the restart. Where the log
// does not hold all of them, r is flushed instead. replay is the script's
// "<snapshot seq>:<floor>:<caught-up>".
func (p *RedisPurger) replay(ctx context.Context, r *redisReplica, replay string) error {
	log := p.opts.Logger.With("group", r.group, "replica", r.addr)
	var snap, floor uint64
	if _, err := fmt.Sscanf(replay, "%d:%d:", &snap, &floor); err != nil {
		return fmt.Errorf("replay %q: %w", replay, err)
	}
	start := time.Now()
	set, err := r.log.since(snap+1, floor)
	if err != nil {
		return err
	}
	oldest, oldestAt := r.log.reach()
	finish := func(mode string, args ...any) (watermarkReply, error) {
		cctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
		defer cancel()
		r.scriptMu.Lock()
		defer r.scriptMu.Unlock()
		rep, err := p.runScript(cctx, r, mode, nil, args...)
		if err == nil && rep.status == "rejoined" {
			p.logFlush(r, rep.seq)
		}
		return rep, err
	}
	if set.missing != 0 || set.flush {
		why := fmt.Sprintf("the log lacks sequence %d (it reaches back to %d, applied %s)", set.missing, oldest, oldestAt.Format(time.RFC3339Nano))
		if set.missing == 0 {
			why = "a flush was applied since the snapshot"
		}
		rep, err := finish(modeRejoin, reasonRestarted, replay)
		if err != nil {
			return fmt.Errorf("replay fallback: %w", err)
		}
		if rep.status == "rejoined" {
			p.replays.WithLabelValues(r.group, r.addr, "fell_back").Inc()
			log.Warn("redis replica restarted from a snapshot: cannot replay, flushing it", "snapshot_seq", snap, "floor", floor, "why", why)
		}
		p.observe(r, rep)
		return nil
	}
	keys := slices.DeleteFunc(set.keys, reservedKey)
	for rest := keys; len(rest) > 0; { // a timeout per pipeline, not for all of them
		n := min(len(rest), p.opts.PipelineKeys)
		if err := p.purge(ctx, r, rest[:n]); err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		rest = rest[n:]
	}
	for _, pat := range set.patterns {
		if err := p.purgePattern(ctx, r.group, r, pat); err != nil {
			return fmt.Errorf("replay: %w", err)
		}
	}
	cu := int64(0)
	if !set.wm.CaughtUp.IsZero() {
		cu = set.wm.CaughtUp.UnixNano()
	}
	rep, err := finish(modeReplayed, replay, digits20(set.wm.To), digits20(cu))
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	if rep.status == "replayed" {
		p.replays.WithLabelValues(r.group, r.addr, "replayed").Inc()
		p.replayKeys.WithLabelValues(r.group, r.addr).Add(float64(len(keys)))
		log.Warn("redis replica restarted from a snapshot: rejoined by replay", "snapshot_seq", snap, "floor", floor,
			"messages", floor-snap, "keys", len(keys), "patterns", len(set.patterns), "took", time.Since(start), "watermark", rep.now)
	}
	p.observe(r, rep)
	return nil
}

// redial gives r a new client when err is a failed dial and the replica
// accepts connections now; it tells whether it did.
func (p *RedisPurger) redial(ctx context.Context, r *redisReplica, err error) bool {
	cctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	if !r.client.renew(cctx, err) {
		return false
	}
	p.redials.WithLabelValues(r.group, r.addr).Inc()
	p.opts.Logger.Info("redis replica accepts connections again: new client (the old one had stopped dialing it)",
		"group", r.group, "replica", r.addr, "error", err)
	return true
}

// deadLettered makes r rejoin at once: a covered purge that was given up on
// leaves a gap nothing will fill.
func (p *RedisPurger) deadLettered(ctx context.Context, r *redisReplica, msg *invalidate.Purge) {
	if !msg.Covers() || !r.wm.deadLettered(msg) {
		return
	}
	p.check(ctx, r) // on failure the watcher retries
}

// replicaWatermark is what a purger knows of one replica's watermark: the
// last state a script returned, and what the replica's messages told it.
type replicaWatermark struct {
	mu sync.Mutex
	// runID is the run_id the last reply named.
	runID string
	// seenTo and seenCU are the largest To and CaughtUp of the covered
	// messages received: after a flush, the watermark restarts there.
	seenTo uint64
	seenCU int64

	read     bool // a reply was observed
	unmarked bool // the replica holds data but no watermark yet
	raw      string
	wm       invalidate.Watermark
	pending  int
	lowest   uint64
	// stuckSince is when the watermark started to wait on a missing range
	// (zero: not waiting): pending ranges beyond it and no advance.
	stuckSince time.Time
	// failing is the last covered purge that failed (requeued) with a range
	// beyond the watermark, until the watermark passes it.
	failing *failingPurge
	// due is a rejoin decided but not done yet.
	due *dueRejoin
	// replay is the replay in progress (the script's), "" for none.
	replay string
	// err is the error of the last state read while it fails.
	err error
}

type failingPurge struct {
	from, to uint64
	attempts uint16
	err      string
	at       time.Time
}

type dueRejoin struct {
	reason string
	// cond is the script's condition: the watermark seen stuck (gap), the
	// dead purge's To (dead_letter).
	cond string
	to   uint64
	at   time.Time
}

// watermarkEvent is what observe noticed.
type watermarkEvent struct {
	rejoined string // the rejoin's reason, "" for none
	known    string // the watermark the purger knew before
}

func (w *replicaWatermark) scriptArgs() (seenTo uint64, seenCU int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seenTo, w.seenCU
}

// saw records a message received for the replica.
func (w *replicaWatermark) saw(msg *invalidate.Purge) {
	if !msg.Covers() {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seenTo = max(w.seenTo, msg.To)
	w.seenCU = max(w.seenCU, msg.CaughtUpUnixNano)
}

// observe records a script reply at now.
func (w *replicaWatermark) observe(rep watermarkReply, now time.Time) watermarkEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	ev := watermarkEvent{known: w.raw}
	if rep.status == "rejoined" && rep.reason != reasonFlush {
		ev.rejoined = rep.reason
	}
	// An empty replica starts a watermark without a flush; after a run_id
	// that changed, that is a restart (without persistence) all the same.
	if rep.status == "started" && rep.reason == "empty" && w.runID != "" && rep.runID != w.runID {
		ev.rejoined = reasonRestarted
	}
	if rep.runID != "" {
		w.runID = rep.runID
	}
	if w.err != nil && w.pending > 0 {
		w.stuckSince = now // reachable again: the backlog gets its time to drain
	}
	w.err = nil
	w.read = true
	if rep.status == "unmarked" {
		w.unmarked, w.raw, w.wm, w.pending, w.stuckSince = true, "", invalidate.Watermark{}, 0, time.Time{}
		return ev
	}
	w.replay = rep.replay
	if rep.status != "ok" && rep.status != "replaying" && rep.status != "replayed" {
		w.due = nil // done, or skipped: no longer needed
	}
	prev := w.wm.To
	w.unmarked, w.raw, w.wm, w.pending, w.lowest = false, rep.now, rep.wm, rep.pending, rep.lowest
	switch {
	case w.pending == 0:
		w.stuckSince = time.Time{}
	case w.stuckSince.IsZero() || w.wm.To != prev || ev.rejoined != "":
		w.stuckSince = now
	}
	if w.failing != nil && w.failing.to <= w.wm.To {
		w.failing = nil
	}
	if w.due != nil && w.due.reason == reasonDeadLetter && w.due.to <= w.wm.To {
		w.due = nil // covered since (another session's overlapping range)
	}
	return ev
}

// failedCheck records a state read that failed: an unreachable replica
// gets no gap rejoin (its backlog waits in NSQ), and Health reports it.
func (w *replicaWatermark) failedCheck(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.err = err
}

// applied records a covered purge applied: it no longer holds anything.
func (w *replicaWatermark) applied(msg *invalidate.Purge) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failing != nil && w.failing.from == msg.From && w.failing.to == msg.To {
		w.failing = nil
	}
}

// failed records a covered purge that failed and was requeued: until it is
// due back, a gap it may fill does not count (rejoinDue).
func (w *replicaWatermark) failed(msg *invalidate.Purge, attempts uint16, err error, now time.Time) {
	if !msg.Covers() {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if msg.To <= w.wm.To {
		return
	}
	w.failing = &failingPurge{from: msg.From, to: msg.To, attempts: attempts, err: err.Error(), at: now}
}

// deadLettered records a covered purge given up on; it tells whether the
// replica must rejoin (the watermark had not passed it).
func (w *replicaWatermark) deadLettered(msg *invalidate.Purge) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failing != nil && w.failing.from == msg.From && w.failing.to == msg.To {
		w.failing = nil
	}
	if w.read && msg.To <= w.wm.To {
		return false
	}
	if w.due == nil || w.due.reason != reasonDeadLetter || w.due.to < msg.To {
		w.due = &dueRejoin{reason: reasonDeadLetter, cond: digits20(msg.To), to: msg.To, at: time.Now()}
	}
	return true
}

// rejoinDue tells the rejoin to run at now, if any, with the script's
// condition: a dead letter's, or a gap older than timeout.
func (w *replicaWatermark) rejoinDue(now time.Time, timeout time.Duration) (reason, cond string, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.due != nil {
		return w.due.reason, w.due.cond, true
	}
	// While a replica is replayed, the ranges applied since its snapshot
	// lack their coverage marks: its watermark looks stuck, and the replay
	// ends that (or flushes).
	if w.err != nil || w.pending == 0 || w.stuckSince.IsZero() || w.replay != "" {
		return "", "", false
	}
	start := w.stuckSince
	if f := w.failing; f != nil && f.from <= w.wm.To {
		// The purge that may fill the gap is requeued: the wait counts from
		// when it is due back.
		start = later(start, f.at.Add(maxRequeueDelay))
	}
	if now.Sub(start) >= timeout {
		w.due = &dueRejoin{reason: reasonGap, cond: w.raw, at: now}
		return reasonGap, w.raw, true
	}
	return "", "", false
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// staleness is how far behind MySQL the replica may be at now, +Inf while
// unknown (no watermark read, or none with a caught-up time).
func (w *replicaWatermark) staleness(now time.Time) float64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.raw == "" || w.wm.CaughtUp.IsZero() {
		return math.Inf(1)
	}
	return w.wm.Staleness(now).Seconds()
}

// gapSeconds is how long the watermark has waited on a missing range.
func (w *replicaWatermark) gapSeconds(now time.Time) float64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stuckSince.IsZero() {
		return 0
	}
	return now.Sub(w.stuckSince).Seconds()
}

// ReplicaStatus is one Redis replica's watermark in /healthz.
type ReplicaStatus struct {
	Group   string `json:"group"`
	Replica string `json:"replica"`
	// State is ok, starting (not read yet), unmarked (data but no watermark
	// yet: it starts at the first purge), unreachable, requeued (a failing
	// purge holds the watermark), gap (waiting on a missing range),
	// rejoin_pending (a flush is due but has not run), replaying (restarted
	// from a snapshot, being replayed), or error (its state cannot be
	// read); the last six are not healthy.
	State string `json:"state"`
	// Reason says why the watermark does not advance.
	Reason string `json:"reason,omitempty"`
	// To and CaughtUp are the watermark as last read (invalidate.Watermark).
	To       uint64     `json:"to"`
	CaughtUp *time.Time `json:"caught_up,omitempty"`
	// StalenessSeconds is how far behind MySQL the replica may be (now −
	// CaughtUp); null while unknown.
	StalenessSeconds *float64 `json:"staleness_seconds"`
	// WaitingFor is the missing range (from, to] the watermark waits on,
	// and Since since when.
	WaitingFor *[2]uint64 `json:"waiting_for,omitempty"`
	Since      *time.Time `json:"since,omitempty"`
}

// healthy tells the states Health does not report.
func (s ReplicaStatus) healthy() bool {
	return s.State == "ok" || s.State == "starting" || s.State == "unmarked"
}

// gapReportAfter is how long a watermark may wait on a missing range before
// Health reports it: out-of-order delivery leaves short gaps all the time.
func gapReportAfter(timeout time.Duration) time.Duration { return min(time.Second, timeout/2) }

// status is the replica's ReplicaStatus at now.
func (w *replicaWatermark) status(group, addr string, now time.Time, gapTimeout time.Duration) ReplicaStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := ReplicaStatus{Group: group, Replica: addr, State: "ok", To: w.wm.To}
	if w.raw != "" && !w.wm.CaughtUp.IsZero() {
		c := w.wm.CaughtUp
		st := w.wm.Staleness(now).Seconds()
		s.CaughtUp, s.StalenessSeconds = &c, &st
	}
	if w.pending > 0 && !w.stuckSince.IsZero() {
		since := w.stuckSince
		s.WaitingFor, s.Since = &[2]uint64{w.wm.To, w.lowest}, &since
	}
	switch {
	case w.err != nil && unreachable(w.err):
		s.State, s.Reason = "unreachable", "unreachable: "+w.err.Error()
	case w.err != nil:
		s.State, s.Reason = "error", "watermark not readable: "+w.err.Error()
	case !w.read:
		s.State, s.Reason = "starting", "watermark not read yet"
	case w.due != nil:
		s.State, s.Reason = "rejoin_pending", fmt.Sprintf("flush (%s) due since %s, not done yet", w.due.reason, w.due.at.Format(time.RFC3339Nano))
	case w.replay != "":
		s.State, s.Reason = "replaying", "restarted from a snapshot: purging again what was applied since (rejoin log, sequence:floor:caught-up "+w.replay+"); not to be read until done"
	case w.unmarked:
		s.State, s.Reason = "unmarked", "data but no watermark: it starts at the first purge"
	case w.failing != nil:
		f := w.failing
		s.State, s.Reason = "requeued", fmt.Sprintf("watermark held at %d by the purge of (%d, %d], failing (attempt %d): %s", w.wm.To, f.from, f.to, f.attempts, f.err)
	case s.WaitingFor != nil && now.Sub(w.stuckSince) >= gapReportAfter(gapTimeout):
		s.State, s.Reason = "gap", fmt.Sprintf("watermark waits since %s for (%d, %d]; flushed if still missing at %s",
			w.stuckSince.Format(time.RFC3339Nano), w.wm.To, w.lowest, w.stuckSince.Add(gapTimeout).Format(time.RFC3339Nano))
	}
	return s
}

// watermarkCollector collects each replica's staleness and gap wait at
// scrape time.
type watermarkCollector struct {
	p              *RedisPurger
	staleness, gap *prometheus.Desc
}

func newWatermarkCollector(p *RedisPurger) *watermarkCollector {
	return &watermarkCollector{
		p: p,
		staleness: prometheus.NewDesc("flashsync_purger_replica_staleness_seconds",
			"How far behind MySQL each replica may be: now minus the caught-up time of its applied watermark (+Inf while unknown).",
			[]string{"group", "replica"}, nil),
		gap: prometheus.NewDesc("flashsync_purger_replica_watermark_gap_seconds",
			"How long each replica's watermark has waited on a missing range (0: not waiting); it is flushed at [purger] gap_timeout.",
			[]string{"group", "replica"}, nil),
	}
}

var _ prometheus.Collector = (*watermarkCollector)(nil)

func (c *watermarkCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.staleness
	ch <- c.gap
}

func (c *watermarkCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	for _, r := range c.p.replicas {
		ch <- prometheus.MustNewConstMetric(c.staleness, prometheus.GaugeValue, r.wm.staleness(now), r.group, r.addr)
		ch <- prometheus.MustNewConstMetric(c.gap, prometheus.GaugeValue, r.wm.gapSeconds(now), r.group, r.addr)
	}
}

// infoField is a field of an INFO reply.
func infoField(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}
