package invalidate

import (
	"math"
	"strings"
	"testing"
)

func TestSyncVersionOrder(t *testing.T) {
	for _, tt := range []struct {
		a, b SyncVersion
		want int
	}{
		{SyncVersion{}, SyncVersion{}, 0},
		{SyncVersion{0, 1, 0}, SyncVersion{0, 2, 0}, -1},
		{SyncVersion{0, 2, 0}, SyncVersion{0, 1, 5}, 1},
		{SyncVersion{1, 0, 0}, SyncVersion{0, math.MaxUint64, math.MaxUint32}, 1},
		{SyncVersion{0, 7, 1}, SyncVersion{0, 7, 2}, -1},
		{SyncVersion{0, 1 << 53, 0}, SyncVersion{0, 1<<53 + 1, 0}, -1}, // past a double's exact range
	} {
		if got := tt.a.Compare(tt.b); got != tt.want {
			t.Errorf("%v.Compare(%v) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
		if got := strings.Compare(tt.a.String(), tt.b.String()); got != tt.want {
			t.Errorf("strings %q, %q compare %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
	for _, bad := range []string{"", "1:2:3", "0000000000:0000000000000000000x:0000000000", "9999999999:00000000000000000000:0000000000", "0000000000:99999999999999999999:0000000000"} {
		if _, err := ParseSyncVersion(bad); err == nil {
			t.Errorf("ParseSyncVersion(%q) accepted", bad)
		}
	}
}

// The stored form orders as the versions do, and parses back.
func FuzzSyncVersion(f *testing.F) {
	f.Add(uint32(0), uint64(0), uint32(0), uint32(0), uint64(1), uint32(0))
	f.Add(uint32(1), uint64(math.MaxUint64), uint32(math.MaxUint32), uint32(1), uint64(1<<53), uint32(7))
	f.Fuzz(func(t *testing.T, e1 uint32, o1 uint64, r1 uint32, e2 uint32, o2 uint64, r2 uint32) {
		a, b := SyncVersion{e1, o1, r1}, SyncVersion{e2, o2, r2}
		if got, want := strings.Compare(a.String(), b.String()), a.Compare(b); got != want {
			t.Fatalf("%v vs %v: strings compare %d, versions %d", a, b, got, want)
		}
		back, err := ParseSyncVersion(a.String())
		if err != nil || back != a {
			t.Fatalf("%v: parsed back %v, %v", a, back, err)
		}
	})
}
