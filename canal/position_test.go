package canal

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestPositionFileRoundTrip(t *testing.T) {
	f := NewPositionFile(filepath.Join(t.TempDir(), "sub", "position"))
	if _, ok, err := f.Load(); ok || err != nil {
		t.Fatalf("Load of missing file = ok %v err %v, want nothing", ok, err)
	}
	want := Position{File: "mysql-bin.000002", Pos: 1234, GTID: "0-1-17", Flavor: "mariadb", SavedAt: time.Unix(1, 0).UTC()}
	for i := 0; i < 2; i++ { // the second save replaces the first
		if err := f.Save(want); err != nil {
			t.Fatal(err)
		}
	}
	got, ok, err := f.Load()
	if err != nil || !ok || !got.samePlace(want) || got.Flavor != want.Flavor || !got.SavedAt.Equal(want.SavedAt) {
		t.Fatalf("Load = %+v, %v, %v; want %+v", got, ok, err, want)
	}
	entries, _ := os.ReadDir(filepath.Dir(f.path))
	if len(entries) != 1 {
		t.Fatalf("temp files left behind: %v", entries)
	}
}

func TestPositionFileCorrupt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "position")
	for _, body := range []string{"{", `{"pos":4}`} {
		os.WriteFile(path, []byte(body), 0o644)
		if _, _, err := NewPositionFile(path).Load(); err == nil {
			t.Fatalf("Load(%q) succeeded, want an error", body)
		}
	}
}

// A start that chooses its position afresh gets an epoch above the one it
// replaces, even with a clock behind it, and the clock's second otherwise.
func TestNewEpoch(t *testing.T) {
	now := time.Unix(1796221194, 0)
	for _, tt := range []struct{ prev, want uint32 }{{0, 1796221194}, {5, 1796221194}, {1796221194, 1796221195}, {1896221194, 1896221195}} {
		if got := newEpoch(now, tt.prev); got != tt.want {
			t.Errorf("newEpoch(%d) = %d, want %d", tt.prev, got, tt.want)
		}
	}
}
