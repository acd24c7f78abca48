package consistency

import (
	"testing"
	"time"

	"github.com/flashsync/flashsync/cacheaside"
)

func TestJudge(t *testing.T) {
	commit := int64(1_700_000_000)
	seen := time.Unix(commit, 400_000_000) // the canal read the commit 0.4 s into its second
	lease := append([]byte("\x00lease:"), "token"...)
	for _, tc := range []struct {
		name      string
		value     []byte
		present   bool
		want      verdict
		fillStart time.Time
	}{
		{"absent", nil, false, verdictConsistent, time.Time{}},
		{"lease", lease, true, verdictConsistent, time.Time{}},
		{"filled at seen", cacheaside.EncodeValue(seen, []byte("v")), true, verdictConsistent, seen},
		{"filled after seen", cacheaside.EncodeValue(seen.Add(time.Second), []byte("v")), true, verdictConsistent, seen.Add(time.Second)},
		{"filled before the commit's second", cacheaside.EncodeValue(time.Unix(commit, 0).Add(-time.Nanosecond), []byte("v")), true, verdictStale, time.Unix(commit, 0).Add(-time.Nanosecond)},
		{"filled an hour before", cacheaside.EncodeValue(seen.Add(-time.Hour), []byte("v")), true, verdictStale, seen.Add(-time.Hour)},
		{"filled at the commit's second", cacheaside.EncodeValue(time.Unix(commit, 0), []byte("v")), true, verdictUnknown, time.Unix(commit, 0)},
		{"filled just before seen", cacheaside.EncodeValue(seen.Add(-time.Nanosecond), []byte("v")), true, verdictUnknown, seen.Add(-time.Nanosecond)},
		{"foreign value", []byte(`{"id":1}`), true, verdictUnknown, time.Time{}},
		{"empty foreign value", []byte{}, true, verdictUnknown, time.Time{}},
		{"broken envelope", []byte("\x00fs1:12x:v"), true, verdictUnknown, time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, fill := judge(tc.value, tc.present, commit, seen)
			if got != tc.want || !fill.Equal(tc.fillStart) {
				t.Errorf("judge = %v, %v; want %v, %v", got, fill, tc.want, tc.fillStart)
			}
		})
	}
}

func TestNines(t *testing.T) {
	for _, tc := range []struct {
		n    WindowCounts
		want float64
	}{
		{WindowCounts{Consistent: 999, Inconsistent: 1, Unknown: 50}, 3},
		{WindowCounts{Consistent: 9, Inconsistent: 1}, 1},
		{WindowCounts{Inconsistent: 1}, 0},
	} {
		if got := nines(tc.n); got < tc.want-1e-9 || got > tc.want+1e-9 {
			t.Errorf("nines(%+v) = %v, want %v", tc.n, got, tc.want)
		}
	}
	if got := nines(WindowCounts{Consistent: 10, Unknown: 3}); got <= 1e300 {
		t.Errorf("nines with none inconsistent = %v, want +Inf", got)
	}
}
