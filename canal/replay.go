package canal

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/flashsync/flashsync/invalidate"
)

// ErrStartGone is wrapped by Replay's error when the range starts before the
// oldest binlog the server still has (purged, or never written).
var ErrStartGone = errors.New("replay start is no longer on the server")

// ReplayBound is one end of a replay range: a binlog position (File set),
// or a time (Time set), never both.
type ReplayBound struct {
	File string
	Pos  uint32
	// Time: From is the first transaction whose binlog timestamp is at or
	// after it; To ends before the first one at or after it.
	Time time.Time
}

// ReplayOptions configure Replay.
type ReplayOptions struct {
	// MySQL is the server; its ServerID must be no canal's (two binlog
	// readers with one ID kick each other off).
	MySQL Source
	// From is required; a zero To is the server's position when Replay
	// starts.
	From, To ReplayBound
	// Tables limits the replay to some "db.table"s that have rules; empty:
	// every table with rules.
	Tables []string
	Rules  *invalidate.Rules
	// MaxBatchKeys bounds the keys (and URLs, tags) of one Publish (default
	// DefaultMaxBatchKeys); a batch ends on a transaction boundary.
	MaxBatchKeys int
	// Publish publishes the targets of the whole transactions read since
	// the last call; after is the position past the last of them, where a
	// replay resumes (From) to continue. An error ends the replay.
	Publish func(ctx context.Context, b *invalidate.Batch, after Position) error
	// Progress, set, is told the bytes of the range read and its total.
	Progress func(read, total int64)
	Logger   *slog.Logger
}

// ReplayResult summarises a replay.
type ReplayResult struct {
	Transactions, Rows    int64
	BytesRead, BytesTotal int64
	// End is the position past the last transaction read.
	End Position
}

// Replay re-reads the binlog between From and To with the current rules and
// publishes what they render, as the canal would have; it returns when the
// range is read, ctx ends, or Publish fails.
func Replay(ctx context.Context, opts ReplayOptions) (ReplayResult, error) {
	return ReplayResult{}, errors.New("replay: not built yet")
}
