package purge

import (
	"context"
	_ "embed"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/invalidate"
)

// The replica side of sync mode: writing a row's new image to a key,
// fenced by the row's version (sync.lua).

//go:embed sync.lua
var syncLua string

// DefaultSyncTombstoneTTL is how long a deleted synced key's version is
// kept: an older write of the key delivered within it (a redelivery, a
// replay from the canal's checkpoint) is refused.
const DefaultSyncTombstoneTTL = time.Hour

// syncScript applies versioned writes in one round trip.
type syncScript struct {
	script    *redis.Script
	tombstone time.Duration
}

func newSyncScript(tombstone time.Duration) *syncScript {
	return &syncScript{script: redis.NewScript(syncLua), tombstone: tombstone}
}

// syncResult is what the script did with one write.
type syncResult int8

const (
	syncOlder   syncResult = iota // older than the key's version: dropped
	syncApplied                   // written
	syncCold                      // HotOnly and the replica holds no such key: left alone
)

// apply runs writes on c in one script call and tells what it did with
// each.
func (s *syncScript) apply(ctx context.Context, c redis.Scripter, writes []invalidate.SyncWrite) ([]syncResult, error) {
	keys := make([]string, 1, 1+2*len(writes))
	keys[0] = invalidate.SyncEpochKey
	var epoch uint32
	for _, w := range writes {
		epoch = max(epoch, w.Version.Epoch)
	}
	args := []any{s.tombstone.Milliseconds(), fmt.Sprintf("%010d", epoch)}
	for _, w := range writes {
		keys = append(keys, w.Key, invalidate.SyncVersionPrefix+w.Key)
		op := string(w.Op)
		if w.HotOnly && w.Op != invalidate.SyncDel {
			op = "r" + op // rset, rhash: only where the key is held
		}
		args = append(args, op, w.Version.String(), w.TTL.Milliseconds())
		switch w.Op {
		case invalidate.SyncSet:
			args = append(args, 1, w.Value)
		case invalidate.SyncHash:
			if len(w.Fields)%2 != 0 {
				return nil, fmt.Errorf("sync %s: %d hash arguments, want field and value pairs", w.Key, len(w.Fields))
			}
			args = append(args, len(w.Fields))
			for _, f := range w.Fields {
				args = append(args, f)
			}
		case invalidate.SyncDel:
			args = append(args, 0)
		default:
			return nil, fmt.Errorf("sync %s: op %q", w.Key, w.Op)
		}
	}
	v, err := s.script.Run(ctx, c, keys, args...).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("sync script: %w", err)
	}
	if len(v) != len(writes) {
		return nil, fmt.Errorf("sync script: %d results for %d writes", len(v), len(writes))
	}
	res := make([]syncResult, len(v))
	for i, x := range v {
		if x < int64(syncOlder) || x > int64(syncCold) {
			return nil, fmt.Errorf("sync script: result %d", x)
		}
		res[i] = syncResult(x)
	}
	return res, nil
}
