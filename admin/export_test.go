package admin

import "time"

// AdvanceClock moves the clock of sessions and approvals forward by d
// until the returned restore is called.
func AdvanceClock(d time.Duration) (restore func()) {
	clockSkew.Add(int64(d))
	return func() { clockSkew.Add(-int64(d)) }
}
