package invalidate

import (
	"testing"
	"time"
)

func TestWatermarkRoundTrip(t *testing.T) {
	for _, w := range []Watermark{{}, {To: 1<<32 | 4}, {To: 7, CaughtUp: time.Unix(1700000000, 123)}} {
		got, err := ParseWatermark(w.String())
		if err != nil || got.To != w.To || !got.CaughtUp.Equal(w.CaughtUp) {
			t.Errorf("ParseWatermark(%q) = %+v, %v; want %+v", w.String(), got, err, w)
		}
	}
	for _, bad := range []string{"", "1", "1:2", "2:1:1", "1:x:1", "1:1:-5", "1:1:1:1", "1:-1:0"} {
		if _, err := ParseWatermark(bad); err == nil {
			t.Errorf("ParseWatermark(%q) accepted", bad)
		}
	}
}

func TestWatermarkStaleness(t *testing.T) {
	now := time.Unix(100, 0)
	if got := (Watermark{CaughtUp: time.Unix(99, 0)}).Staleness(now); got != time.Second {
		t.Errorf("staleness %v, want 1s", got)
	}
	if got := (Watermark{CaughtUp: time.Unix(101, 0)}).Staleness(now); got != 0 {
		t.Errorf("staleness of a watermark ahead of the clock %v, want 0", got)
	}
	if got := (Watermark{}).Staleness(now); got < 100*365*24*time.Hour {
		t.Errorf("staleness without a caught-up time %v, want the maximum", got)
	}
}

func FuzzParseWatermark(f *testing.F) {
	f.Add("1:4294967300:1700000000000000123")
	f.Add("1:0:0")
	f.Fuzz(func(t *testing.T, s string) {
		w, err := ParseWatermark(s)
		if err != nil {
			return
		}
		again, err := ParseWatermark(w.String())
		if err != nil || again != w && !(again.To == w.To && again.CaughtUp.Equal(w.CaughtUp)) {
			t.Fatalf("%q parsed to %+v, which does not round-trip (%+v, %v)", s, w, again, err)
		}
	})
}
