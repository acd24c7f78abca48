package purge

import (
	"context"
	_ "embed"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/invalidate"
)

// This file is the replica side of sync mode (issue 12): writing a row's
// new image to a key, fenced by the row's version (sync.lua). The rules
// and messages that carry sync writes come next; this is the script and
// its contract, tested on real Redis.

//go:embed sync.lua
var syncLua string

// syncVersionPrefix names a synced key's version key: the prefix, then
// the key.
const syncVersionPrefix = "flashsync:v:"

// DefaultSyncTombstoneTTL is how long a deleted synced key's version is
// kept: an older write of the key delivered within it (a redelivery, a
// replay from the canal's checkpoint) is refused.
const DefaultSyncTombstoneTTL = time.Hour

// syncOp is what a sync write does to its key.
type syncOp string

const (
	syncSet  syncOp = "set"  // a string value (JSON, a template's text)
	syncHash syncOp = "hash" // a hash of column values
	syncDel  syncOp = "del"  // the row was deleted (or moved: a key change)
)

// syncWrite is one versioned write of a key.
type syncWrite struct {
	key     string
	op      syncOp
	version invalidate.SyncVersion
	ttl     time.Duration // the value's; 0: none
	value   []byte        // syncSet
	fields  []string      // syncHash: field, value, ...
}

// syncScript applies versioned writes in one round trip.
type syncScript struct {
	script    *redis.Script
	tombstone time.Duration
}

func newSyncScript(tombstone time.Duration) *syncScript {
	return &syncScript{script: redis.NewScript(syncLua), tombstone: tombstone}
}

// apply runs writes on c in one script call and tells which were applied
// (false: older than the key's version, dropped).
func (s *syncScript) apply(ctx context.Context, c redis.Scripter, writes []syncWrite) ([]bool, error) {
	keys := make([]string, 0, 2*len(writes))
	args := []any{s.tombstone.Milliseconds()}
	for _, w := range writes {
		keys = append(keys, w.key, syncVersionPrefix+w.key)
		args = append(args, string(w.op), w.version.String(), w.ttl.Milliseconds())
		switch w.op {
		case syncSet:
			args = append(args, 1, w.value)
		case syncHash:
			if len(w.fields)%2 != 0 {
				return nil, fmt.Errorf("sync %s: %d hash arguments, want field and value pairs", w.key, len(w.fields))
			}
			args = append(args, len(w.fields))
			for _, f := range w.fields {
				args = append(args, f)
			}
		case syncDel:
			args = append(args, 0)
		default:
			return nil, fmt.Errorf("sync %s: op %q", w.key, w.op)
		}
	}
	v, err := s.script.Run(ctx, c, keys, args...).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("sync script: %w", err)
	}
	if len(v) != len(writes) {
		return nil, fmt.Errorf("sync script: %d results for %d writes", len(v), len(writes))
	}
	applied := make([]bool, len(v))
	for i, x := range v {
		applied[i] = x == 1
	}
	return applied, nil
}
