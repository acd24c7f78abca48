package cacheaside_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/flashsync/flashsync/cacheaside"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		at    time.Time
		value string
	}{
		{time.Unix(0, 0), ""},
		{time.Unix(1700000000, 123456789), `{"id":1,"name":"a:b"}`},
		{time.Unix(0, 1<<63-1), "\x00fs1:5:nested"},
		{time.Unix(1, 0), "\x00lease:abc"},
	} {
		b := cacheaside.EncodeValue(tt.at, []byte(tt.value))
		v, at, ok := cacheaside.DecodeValue(b)
		if !ok || string(v) != tt.value || !at.Equal(tt.at) {
			t.Errorf("DecodeValue(EncodeValue(%v, %q)) = %q %v %v", tt.at, tt.value, v, at, ok)
		}
		if cacheaside.IsLease(b) {
			t.Errorf("%q taken for a lease", b)
		}
	}
}

// TestDecodeForeignValues: what a Reader did not fill comes back as it is,
// without a fill start.
func TestDecodeForeignValues(t *testing.T) {
	for _, b := range []string{
		"", "plain", `{"id":1}`, "\x00fs1", "\x00fs1:", "\x00fs1:12", "\x00fs1::v", "\x00fs1:x:v",
		"\x00fs1:-5:v", "\x00fs1:+5:v", "\x00fs1:05:v", "\x00fs1:9223372036854775808:v", "\x00fs2:5:v",
		"\x00lease:0123456789abcdef",
	} {
		v, at, ok := cacheaside.DecodeValue([]byte(b))
		if ok || string(v) != b || !at.IsZero() {
			t.Errorf("DecodeValue(%q) = %q %v %v, want it as it is, not ok", b, v, at, ok)
		}
	}
	if !cacheaside.IsLease([]byte("\x00lease:0123456789abcdef")) || cacheaside.IsLease([]byte("lease:")) {
		t.Error("IsLease")
	}
}

// FuzzDecodeValue: DecodeValue never fails; what it decodes has exactly
// one spelling (EncodeValue gives back the input), and what it does not is
// returned untouched.
func FuzzDecodeValue(f *testing.F) {
	f.Add([]byte("\x00fs1:1700000000000000123:{\"id\":1}"))
	f.Add([]byte("\x00fs1:0:"))
	f.Add([]byte("\x00fs1:9223372036854775807:x:y"))
	f.Add([]byte("\x00lease:00ff"))
	f.Add([]byte("plain"))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, at, ok := cacheaside.DecodeValue(b)
		if !ok {
			if !bytes.Equal(v, b) || !at.IsZero() {
				t.Fatalf("DecodeValue(%q) not ok but changed it: %q %v", b, v, at)
			}
			return
		}
		if again := cacheaside.EncodeValue(at, v); !bytes.Equal(again, b) {
			t.Fatalf("DecodeValue(%q) = %q %v, which encodes as %q", b, v, at, again)
		}
	})
}
