package purge

import "testing"

// Redis visits a table of 8 buckets in the cursor order 0 4 2 6 1 5 3 7
// (reverse-binary increments): the estimate grows by an eighth at each.
func TestScanRatio(t *testing.T) {
	for i, cursor := range []uint64{0, 4, 2, 6, 1, 5, 3, 7} {
		if got, want := scanRatio(cursor), float64(i)/8; got != want {
			t.Errorf("scanRatio(%d) = %v, want %v", cursor, got, want)
		}
	}
	// A table of 2^20 buckets: after the first cursor, one bucket of 2^20.
	if got, want := scanRatio(1<<19), 1.0/(1<<20); got != want {
		t.Errorf("scanRatio(1<<19) = %v, want %v", got, want)
	}
}
