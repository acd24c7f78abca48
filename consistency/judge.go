package consistency

import (
	"time"

	"github.com/flashsync/flashsync/cacheaside"
)

// Result is the judgement of one key on one replica.
type Result string

// The results, as the metrics' result label and the API name them.
const (
	Consistent   Result = "consistent"
	Inconsistent Result = "inconsistent"
	Unknown      Result = "unknown"
)

// verdict is what one read of a key tells: stale is a candidate
// inconsistency that a second read must confirm.
type verdict int

const (
	verdictConsistent verdict = iota
	verdictUnknown
	verdictStale
)

// judge tells what a replica holding value (present false: the key is
// absent) says about a change committed in the second commitUnix (MySQL's
// clock, whole seconds) and read by the canal at seen (canal clock); it
// returns the value's fill start when it has an envelope.
//
//   - absent, or a lease: consistent. A miss loads MySQL, and a lease's fill
//     is guarded by the lease (the purge deletes it, so the fill does not
//     land): nothing stale can be served.
//   - fill start at or after seen: consistent, loaded after the canal read
//     the commit, so after the commit.
//   - fill start before commitUnix (before the commit's second began):
//     loaded before the change, stale.
//   - fill start in [commitUnix, seen): the whole-second commit stamp cannot
//     order it against the commit: unknown.
//   - no envelope (another writer's value): its age is unknown.
func judge(value []byte, present bool, commitUnix int64, seen time.Time) (verdict, time.Time) {
	if !present || cacheaside.IsLease(value) {
		return verdictConsistent, time.Time{}
	}
	_, fillStart, ok := cacheaside.DecodeValue(value)
	switch {
	case !ok:
		return verdictUnknown, time.Time{}
	case !fillStart.Before(seen):
		return verdictConsistent, fillStart
	case fillStart.Before(time.Unix(commitUnix, 0)):
		return verdictStale, fillStart
	}
	return verdictUnknown, fillStart
}
