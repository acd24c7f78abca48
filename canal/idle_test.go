package canal

import (
	"testing"
	"time"
)

// TestIdleWatch: the stream is taken for dead only after limit of ticks
// with the reader waiting and no event arriving; an event, or a reader busy
// elsewhere, starts the count again.
func TestIdleWatch(t *testing.T) {
	type step struct {
		waiting bool
		events  uint64 // arriving before the tick
	}
	w := func(n int) []step {
		s := make([]step, n)
		for i := range s {
			s[i].waiting = true
		}
		return s
	}
	cat := func(parts ...[]step) []step {
		var s []step
		for _, p := range parts {
			s = append(s, p...)
		}
		return s
	}
	for _, tc := range []struct {
		name  string
		steps []step
		dead  int // the tick (1-based) that finds it dead, 0 for none
	}{
		{"waiting and silent", w(10), 10},
		{"an event starts again", cat(w(9), []step{{waiting: true, events: 1}}, w(9)), 0},
		{"an event, then silent", cat(w(9), []step{{waiting: true, events: 1}}, w(10)), 20},
		{"busy reader is not idle", cat(w(9), []step{{waiting: false}}, w(9)), 0},
		{"busy throughout", make([]step, 12), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			iw := idleWatch{limit: 10 * time.Second}
			var received uint64
			dead := 0
			for i, st := range tc.steps {
				received += st.events
				if iw.tick(time.Second, st.waiting, received) && dead == 0 {
					dead = i + 1
				}
			}
			if dead != tc.dead {
				t.Fatalf("dead at tick %d, want %d", dead, tc.dead)
			}
		})
	}
}
