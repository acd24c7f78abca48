package admin

import "time"

// AdvanceSessionClock moves the sessions' clock forward by d until the
// returned restore is called.
func AdvanceSessionClock(d time.Duration) (restore func()) {
	clockSkew.Add(int64(d))
	return func() { clockSkew.Add(-int64(d)) }
}
