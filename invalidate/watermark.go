package invalidate

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// WatermarkKey is the key in every cache Redis replica that holds its
// applied watermark: the purger writes it after the purges it covers, and
// readers (package cacheaside) read it with each value to bound how stale
// the replica may be. It lives and dies with the replica's data: a replica
// restarted from an old snapshot comes back with that snapshot's watermark,
// and a flushed one with none.
const WatermarkKey = "flashsync:watermark"

// Watermark is a replica's applied watermark: every change of its group up
// to binlog offset To (BinlogOffset) has been applied to it, and every
// commit the server had written before CaughtUp is at or before To.
type Watermark struct {
	To       uint64
	CaughtUp time.Time
}

// Staleness is how far behind MySQL the replica may be at now: the age of
// CaughtUp (canal clock; zero CaughtUp: unknown, the maximum duration).
func (w Watermark) Staleness(now time.Time) time.Duration {
	if w.CaughtUp.IsZero() {
		return time.Duration(1<<63 - 1)
	}
	return max(0, now.Sub(w.CaughtUp))
}

// String is the value stored under WatermarkKey: "1:<to>:<caught-up unix ns>".
func (w Watermark) String() string {
	return "1:" + strconv.FormatUint(w.To, 10) + ":" + strconv.FormatInt(unixNano(w.CaughtUp), 10)
}

// ParseWatermark parses a value stored under WatermarkKey.
func ParseWatermark(s string) (Watermark, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 || parts[0] != "1" {
		return Watermark{}, fmt.Errorf("watermark %q: want 1:<to>:<caught-up unix ns>", s)
	}
	to, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return Watermark{}, fmt.Errorf("watermark %q: to: %w", s, err)
	}
	ns, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil || ns < 0 {
		return Watermark{}, fmt.Errorf("watermark %q: caught-up time is not a non-negative integer", s)
	}
	w := Watermark{To: to}
	if ns > 0 {
		w.CaughtUp = time.Unix(0, ns)
	}
	return w, nil
}
